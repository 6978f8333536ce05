//! rustls configurations built from PEM files and rebuilt when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often, at most, the files' modification times are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies a version of a file: its modification time and length
/// (`None` when it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A configuration made from `paths`, made again from them when one of them
/// changed (checked at most once a second, when asked for). A rebuild that
/// fails (a file half written, a key not matching its certificate) keeps the
/// previous configuration and is tried again at the next check.
pub(super) struct Reloading<T> {
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: Arc<T>,
    stamps: Vec<Stamp>,
    checked: Instant,
}

impl<T> Reloading<T> {
    /// Builds the first configuration (an error here is the caller's to report).
    pub(super) fn new(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self, String> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let current = Arc::new(build()?);
        Ok(Reloading {
            paths,
            build: Box::new(build),
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection.
    pub(super) fn get(&self) -> Arc<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= CHECK_EVERY {
            st.checked = Instant::now();
            let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
            if stamps != st.stamps {
                match (self.build)() {
                    Ok(c) => {
                        tracing::info!(files = ?self.paths, "TLS certificates reloaded");
                        st.current = Arc::new(c);
                        st.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!("TLS certificates changed but cannot be loaded (keeping the previous ones): {e}")
                    }
                }
            }
        }
        st.current.clone()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(Arc::new(store))
}

/// Files of one TLS identity: certificate chain, its key, and the CA that
/// certificates of the other side must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl Files {
    pub(super) fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// A server configuration speaking HTTP/2 (`alpn`): client certificates are
/// verified against `f.ca` when given, and required when `require_client_cert`.
pub(super) fn server_config(
    f: &Files,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &f.ca {
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            let v = if require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs(&f.cert)?, key(&f.key)?)
        .map_err(|e| format!("{} / {}: {e}", f.cert.display(), f.key.display()))?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A client configuration trusting `ca` and presenting `cert`/`key` when given.
pub(super) fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match identity {
        Some((cert, k)) => builder
            .with_client_auth_cert(certs(cert)?, key(k)?)
            .map_err(|e| format!("{} / {}: {e}", cert.display(), k.display()))?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}
