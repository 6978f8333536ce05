//! `strata certs`: a throwaway CA and the certificates a TLS cluster needs
//! (rcgen), as `strata dev --tls` makes them under `DATA_DIR/tls/`. For
//! development and tests only: the CA's key lies next to its certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::Serialize;

pub const CERTS_ABOUT: &str =
    "Write a throwaway CA and TLS certificates (what `strata dev --tls` uses)";
pub const CERTS_LONG_ABOUT: &str = "\
Write a throwaway CA and TLS certificates for development and tests into --dir:
  ca.pem, ca-key.pem          the CA (its key is kept there: not for production)
  server.pem, server-key.pem  the routers' client port (SANs 127.0.0.1, localhost)
  client.pem, client-key.pem  a client certificate with CN root
  client-NAME.pem, client-NAME-key.pem  one more client certificate per --client-cn
  peer.pem, peer-key.pem      internal links, server and client (SANs 127.0.0.1,
                              localhost)
Existing files are replaced.";

#[derive(clap::Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// More client certificates, one per common name (`client-NAME.pem`).
    #[arg(long = "client-cn", value_name = "NAME")]
    pub client_cns: Vec<String>,
}

/// Where the files of a generated set are (absolute when `dir` is).
#[derive(Serialize, Debug, Clone)]
pub struct TlsFiles {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
    pub peer_cert: String,
    pub peer_key: String,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> TlsFiles {
        let f = |n: &str| dir.join(n).to_string_lossy().into_owned();
        TlsFiles {
            ca: f("ca.pem"),
            server_cert: f("server.pem"),
            server_key: f("server-key.pem"),
            client_cert: f("client.pem"),
            client_key: f("client-key.pem"),
            peer_cert: f("peer.pem"),
            peer_key: f("peer-key.pem"),
        }
    }
}

impl TlsFiles {
    /// The peer flags of every component: mutual TLS on internal links.
    pub fn peer_args(&self) -> Vec<String> {
        let (c, k, ca) = (&self.peer_cert, &self.peer_key, &self.ca);
        [
            "--peer-cert-file",
            c,
            "--peer-key-file",
            k,
            "--peer-trusted-ca-file",
            ca,
        ]
        .map(String::from)
        .to_vec()
    }

    /// A router's client-port flags: TLS, client certificates required.
    pub fn client_port_args(&self) -> Vec<String> {
        let (c, k, ca) = (&self.server_cert, &self.server_key, &self.ca);
        [
            "--cert-file",
            c,
            "--key-file",
            k,
            "--trusted-ca-file",
            ca,
            "--client-cert-auth",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The same peer files as this process's own internal TLS.
    pub fn peer_flags(&self) -> strata_proto::tls::PeerFlags {
        strata_proto::tls::PeerFlags {
            peer_cert_file: Some(self.peer_cert.clone().into()),
            peer_key_file: Some(self.peer_key.clone().into()),
            peer_trusted_ca_file: Some(self.ca.clone().into()),
        }
    }

    /// etcd-client's TLS options for these files (CA and client certificate).
    pub fn etcd_client_tls(&self) -> anyhow::Result<etcd_client::TlsOptions> {
        let read = |p: &str| fs::read(p).with_context(|| format!("reading {p}"));
        Ok(etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client_cert)?,
                read(&self.client_key)?,
            )))
    }
}

pub fn main(args: CertsArgs) -> ExitCode {
    let cns: Vec<&str> = args.client_cns.iter().map(String::as_str).collect();
    match generate(&args.dir, &cns) {
        Ok(_) => {
            println!("wrote a CA and certificates to {}", args.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A leaf certificate for `cn` signed by `ca`, written as `NAME.pem` and
/// `NAME-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
    ca: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = usages.to_vec();
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca)?;
    write(&dir.join(format!("{name}.pem")), &cert.pem(), false)?;
    write(
        &dir.join(format!("{name}-key.pem")),
        &key.serialize_pem(),
        true,
    )
}

/// Writes a new CA and its certificates into `dir` (see `CERTS_LONG_ABOUT`).
pub fn generate(dir: &Path, extra_client_cns: &[&str]) -> anyhow::Result<TlsFiles> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "strata throwaway CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);
    let hosts = ["127.0.0.1", "localhost"];
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    leaf(dir, "server", "strata", &hosts, &[ServerAuth], &issuer)?;
    leaf(dir, "client", "root", &[], &[ClientAuth], &issuer)?;
    for cn in extra_client_cns {
        anyhow::ensure!(
            !cn.is_empty()
                && cn
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "--client-cn {cn:?}: use letters, digits, '-', '_' and '.'"
        );
        leaf(
            dir,
            &format!("client-{cn}"),
            cn,
            &[],
            &[ClientAuth],
            &issuer,
        )?;
    }
    leaf(
        dir,
        "peer",
        "strata-peer",
        &hosts,
        &[ServerAuth, ClientAuth],
        &issuer,
    )?;
    Ok(TlsFiles::in_dir(dir))
}
