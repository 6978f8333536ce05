//! TLS for the harness: certificates from `strata certs`, and the flags and
//! options that point etcd, etcdctl and etcd-client at them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::run_bounded;

/// A certificate set as `strata certs` writes it (`ca.pem`, `server.pem`,
/// `client.pem`, `peer.pem`, each with its `-key.pem`).
#[derive(Clone, Debug)]
pub struct TlsPaths {
    pub dir: PathBuf,
}

impl TlsPaths {
    pub fn in_dir(dir: &Path) -> TlsPaths {
        TlsPaths {
            dir: dir.to_path_buf(),
        }
    }

    /// `NAME` in the set's directory, as a string.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// etcd's client-port flags for this set (client certificates required).
    pub fn etcd_server_args(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.file("server.pem")),
            format!("--key-file={}", self.file("server-key.pem")),
            format!("--trusted-ca-file={}", self.file("ca.pem")),
            "--client-cert-auth".into(),
        ]
    }

    /// etcdctl's flags to trust this CA and present its client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.file("ca.pem")),
            format!("--cert={}", self.file("client.pem")),
            format!("--key={}", self.file("client-key.pem")),
        ]
    }

    /// etcd-client's TLS options: this CA, and the client certificate `name`
    /// (`client` or `client-CN`).
    pub fn client_tls(&self, name: &str) -> TlsOptions {
        let read = |f: String| std::fs::read(&f).unwrap_or_else(|e| panic!("read {f}: {e}"));
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(self.file("ca.pem"))))
            .identity(Identity::from_pem(
                read(self.file(&format!("{name}.pem"))),
                read(self.file(&format!("{name}-key.pem"))),
            ))
    }
}

/// Writes a new CA and certificates into `dir` with `strata certs` (one more
/// client certificate per name in `client_cns`).
pub fn make_certs(dir: &Path, client_cns: &[&str]) -> TlsPaths {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("certs").arg("--dir").arg(dir);
    for cn in client_cns {
        cmd.args(["--client-cn", cn]);
    }
    let out = run_bounded(cmd, None, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "strata certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TlsPaths::in_dir(dir)
}

/// The URL and options to reach `endpoint` (`host:port`): `https` and this
/// set's CA and client certificate with `tls`.
pub fn client_url(
    endpoint: &str,
    tls: Option<&TlsPaths>,
    opts: ConnectOptions,
) -> (String, ConnectOptions) {
    match tls {
        Some(t) => (
            format!("https://{endpoint}"),
            opts.with_tls(t.client_tls("client")),
        ),
        None => (endpoint.to_string(), opts),
    }
}
