//! TLS for every port (rustls, ring provider), in one place.
//!
//! - **Client port** (router): [`ClientPortFlags`] (etcd's `--cert-file`,
//!   `--key-file`, `--trusted-ca-file`, `--client-cert-auth`) give a
//!   [`ServerTls`]; [`peer_common_name`] is the CN of the client certificate a
//!   request came with.
//! - **Internal links** (router→node, node→node, everything→placement,
//!   placement→node, placement↔placement): [`PeerFlags`] (etcd's
//!   `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`) are set
//!   once per process with [`set_internal`]. Then [`internal_server`] requires
//!   and verifies a client certificate signed by that CA on internal servers,
//!   and [`endpoint`] + [`connect`] / [`connect_lazy`] dial with TLS,
//!   presenting the peer certificate. Without them everything is plaintext
//!   (and the internal ports must not be reachable by anyone else).
//! - **Reload**: certificate, key and CA files are looked at again (at most
//!   once a second) when a connection is accepted or dialled; replaced files
//!   apply to new connections, open ones keep what they negotiated.
//!
//! Servers take their connections from [`incoming`], plaintext or TLS.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tonic::transport::{Channel, Endpoint};

mod client;
mod reload;
mod server;

pub use server::{incoming, incoming_from, Conn, ConnInfo, Incoming};

use reload::{Files, Reloading};

/// etcd's client-port TLS flags (router).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientPortFlags {
    /// Certificate (PEM, chain) served on the client port; with --key-file,
    /// clients must use TLS.
    #[arg(long, value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// CA (PEM) that client certificates are verified against.
    #[arg(long, value_name = "FILE", requires = "cert_file")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file")]
    pub client_cert_auth: bool,
}

/// etcd's peer TLS flags: mutual TLS on every internal link.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PeerFlags {
    /// Certificate (PEM) presented on internal links, as server and as client
    /// (it needs both key usages and the SANs this process is dialled by).
    #[arg(long, value_name = "FILE", requires_all = ["peer_key_file", "peer_trusted_ca_file"])]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, value_name = "FILE", requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// CA (PEM) every internal peer's certificate must be signed by; callers
    /// of internal ports without one are refused.
    #[arg(long, value_name = "FILE", requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,
}

/// A server's TLS: its configuration, reloaded when its files change.
#[derive(Clone)]
pub struct ServerTls(Arc<Reloading<rustls::ServerConfig>>);

impl ServerTls {
    /// Serves `cert`/`key`, speaking the ALPN protocols `alpn`; verifies client
    /// certificates against `ca` when given, and requires one when
    /// `require_client_cert`.
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        ca: Option<PathBuf>,
        require_client_cert: bool,
        alpn: &'static [&'static [u8]],
    ) -> Result<Self, String> {
        let f = Files { cert, key, ca };
        let paths = f.paths();
        let r = Reloading::new(paths, move || {
            reload::server_config(&f, require_client_cert, alpn)
        })?;
        Ok(ServerTls(Arc::new(r)))
    }

    pub(crate) fn config(&self) -> Arc<rustls::ServerConfig> {
        self.0.get()
    }
}

/// A client's TLS: trusted CA and optional client certificate, reloaded when
/// the files change.
#[derive(Clone)]
pub struct ClientTls(Arc<Reloading<rustls::ClientConfig>>);

impl ClientTls {
    pub fn new(ca: PathBuf, identity: Option<(PathBuf, PathBuf)>) -> Result<Self, String> {
        let mut paths = vec![ca.clone()];
        if let Some((c, k)) = &identity {
            paths.extend([c.clone(), k.clone()]);
        }
        let r = Reloading::new(paths, move || {
            let id = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
            reload::client_config(&ca, id)
        })?;
        Ok(ClientTls(Arc::new(r)))
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        self.0.get()
    }

    /// A channel through `ep` over TLS, connected when first used.
    pub fn connect_lazy(&self, ep: &Endpoint) -> Channel {
        ep.connect_with_connector_lazy(client::Connector(self.clone()))
    }

    /// A channel through `ep` over TLS, connected now.
    pub async fn connect(&self, ep: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        ep.connect_with_connector(client::Connector(self.clone()))
            .await
    }
}

/// HTTP/2 only: gRPC.
pub const ALPN_H2: &[&[u8]] = &[b"h2"];
/// HTTP/1.1: the metrics endpoint.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// Both: the router's client port (gRPC, and the HTTP/JSON gateway for
/// HTTP/1.1 clients).
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

impl ClientPortFlags {
    /// The client port's TLS (its protocols `alpn`), `None` without --cert-file.
    pub fn server(&self, alpn: &'static [&'static [u8]]) -> Result<Option<ServerTls>, String> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            return Ok(None);
        };
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err("--client-cert-auth needs --trusted-ca-file".into());
        }
        ServerTls::new(
            cert.clone(),
            key.clone(),
            self.trusted_ca_file.clone(),
            self.client_cert_auth,
            alpn,
        )
        .map(Some)
    }
}

struct Internal {
    flags: (PathBuf, PathBuf, PathBuf),
    server: ServerTls,
    client: ClientTls,
    /// The metrics endpoint of nodes and placement (HTTP/1.1).
    metrics: ServerTls,
}

/// `None`: internal links are plaintext.
static INTERNAL: OnceLock<Option<Internal>> = OnceLock::new();

/// Sets this process's internal TLS from its peer flags; once per process (a
/// second call must name the same files, as several components in one test
/// process do).
pub fn set_internal(flags: &PeerFlags) -> Result<(), String> {
    let want = match (
        &flags.peer_cert_file,
        &flags.peer_key_file,
        &flags.peer_trusted_ca_file,
    ) {
        (None, None, None) => None,
        (Some(c), Some(k), Some(ca)) => Some((c.clone(), k.clone(), ca.clone())),
        _ => {
            return Err(
                "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file \
                        go together"
                    .into(),
            )
        }
    };
    let mut built: Result<(), String> = Ok(());
    let set = INTERNAL.get_or_init(|| {
        let (c, k, ca) = want.clone()?;
        let peer_server = |alpn| ServerTls::new(c.clone(), k.clone(), Some(ca.clone()), true, alpn);
        let made = (|| -> Result<Internal, String> {
            Ok(Internal {
                server: peer_server(ALPN_H2)?,
                metrics: peer_server(ALPN_HTTP1)?,
                client: ClientTls::new(ca.clone(), Some((c.clone(), k.clone())))?,
                flags: (c.clone(), k.clone(), ca.clone()),
            })
        })();
        match made {
            Ok(i) => Some(i),
            Err(e) => {
                built = Err(e);
                None
            }
        }
    });
    built?;
    if set.as_ref().map(|i| &i.flags) != want.as_ref() {
        return Err("internal TLS was already set differently in this process".into());
    }
    Ok(())
}

fn internal() -> Option<&'static Internal> {
    INTERNAL.get().and_then(|i| i.as_ref())
}

/// The TLS of internal servers (`None`: plaintext).
pub fn internal_server() -> Option<ServerTls> {
    internal().map(|i| i.server.clone())
}

/// The TLS of the metrics endpoint of nodes and placement: the peer
/// certificate, a client certificate of the peer CA required (`None`:
/// plaintext).
pub fn internal_metrics_server() -> Option<ServerTls> {
    internal().map(|i| i.metrics.clone())
}

/// The TLS of internal clients (`None`: plaintext).
pub fn internal_client() -> Option<ClientTls> {
    internal().map(|i| i.client.clone())
}

/// An endpoint for the internal server at `addr` (`host:port`), to be
/// connected with [`connect`] or [`connect_lazy`]. Its URI says `http` even
/// with TLS: our connector does the TLS (tonic's own would refuse `https`
/// without its TLS config).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{addr}"))
}

/// A channel to an internal server, connected when first used (TLS when set).
pub fn connect_lazy(ep: &Endpoint) -> Channel {
    match internal() {
        Some(i) => i.client.connect_lazy(ep),
        None => ep.connect_lazy(),
    }
}

/// A channel to an internal server, connected now (TLS when set).
pub async fn connect(ep: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    match internal() {
        Some(i) => i.client.connect(ep).await,
        None => ep.connect().await,
    }
}

/// The Common Name of the verified client certificate of the connection
/// `req` came on: `None` without TLS, without a client certificate, or
/// without a CN. (etcd's CN authentication uses the first CN of the
/// subject.)
pub fn peer_common_name<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.extensions().get::<ConnInfo>()?.peer_certs.clone()?;
    common_name(certs.first()?)
}

fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests;
