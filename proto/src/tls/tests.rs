//! Handshakes through [`incoming`] on 127.0.0.1: client certificates
//! required and verified, the CN read back, files replaced and picked up.

use std::path::Path;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;

use super::*;

/// A CA in `dir` (`ca.pem`) with a server (`server*.pem`, SAN 127.0.0.1) and a
/// client certificate with CN `cn` (`client*.pem`).
fn make_certs(dir: &Path, cn: &str) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, sans, subject) in [
        ("server", vec!["127.0.0.1".to_string()], "srv"),
        ("client", vec![], cn),
    ] {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, subject);
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

fn server(dir: &Path) -> ServerTls {
    ServerTls::new(
        dir.join("server.pem"),
        dir.join("server-key.pem"),
        Some(dir.join("ca.pem")),
        true,
        ALPN_H2,
    )
    .unwrap()
}

/// Dials `addr` trusting `ca_dir`'s CA, presenting its client certificate
/// when `with_cert`; true when a byte written was echoed back (the server
/// accepted the handshake).
async fn echo(addr: std::net::SocketAddr, ca_dir: &Path, with_cert: bool) -> bool {
    let (c, k) = (ca_dir.join("client.pem"), ca_dir.join("client-key.pem"));
    let id = with_cert.then_some((c.as_path(), k.as_path()));
    let cfg = reload::client_config(&ca_dir.join("ca.pem"), id).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let attempt = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .ok()?;
        s.write_all(b"x").await.ok()?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        Some(b == *b"x")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Serves `tls` on a port; each connection echoes one byte; the CN of each
/// accepted client comes out of the returned channel.
async fn serve(
    tls: ServerTls,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<Option<String>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut conns = incoming(l, Some(tls));
        while let Some(Ok(mut c)) = conns.next().await {
            use tonic::transport::server::Connected;
            let certs = c.connect_info().peer_certs;
            let _ = tx.send(certs.and_then(|c| common_name(&c[0]))).await;
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if c.read_exact(&mut b).await.is_ok() {
                    let _ = c.write_all(&b).await;
                    let _ = c.flush().await;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn client_certificates_are_required_and_their_cn_read() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "alice");
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path(), "mallory");
    let (addr, mut cns) = serve(server(dir.path())).await;

    assert!(
        echo(addr, dir.path(), true).await,
        "a client of the CA is served"
    );
    assert_eq!(cns.recv().await.unwrap().as_deref(), Some("alice"));
    assert!(
        !echo(addr, dir.path(), false).await,
        "no client certificate: refused"
    );
    assert!(!echo(addr, other.path(), true).await, "another CA: refused");
    // A plaintext client (HTTP/2's preface) gets at most a TLS alert record
    // (content type 21), then the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut b = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut b)).await;
    assert!(r.is_ok(), "the connection was not closed");
    assert!(b.is_empty() || b[0] == 21, "plaintext answered with {b:?}");
    // A plaintext HTTP/1 request is told what went wrong, as Go servers do.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut b)).await;
    assert!(r.is_ok(), "the connection was not closed");
    let text = String::from_utf8_lossy(&b);
    assert!(
        text.contains("Client sent an HTTP request to an HTTPS server"),
        "{text}"
    );
    assert!(
        cns.try_recv().is_err(),
        "no refused connection was handed to the server"
    );
}

#[tokio::test]
async fn replaced_files_apply_to_new_connections() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "alice");
    let old = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(dir.path().join(f), old.path().join(f)).unwrap();
    }
    let (addr, _cns) = serve(server(dir.path())).await;
    assert!(echo(addr, old.path(), true).await);

    // The files replaced by a new CA's: within a few seconds new connections
    // verify against it, and the old CA's clients are refused.
    make_certs(dir.path(), "bob");
    let mut switched = false;
    for _ in 0..50 {
        if echo(addr, dir.path(), true).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        switched,
        "the new certificates were not picked up within 5 s"
    );
    assert!(
        !echo(addr, old.path(), true).await,
        "the old CA no longer works"
    );
}

#[tokio::test]
async fn a_client_picks_up_replaced_files() {
    // A server of CA "a"; a client of CA "b" until its files are replaced
    // by "a"'s.
    let a = tempfile::tempdir().unwrap();
    make_certs(a.path(), "alice");
    let b = tempfile::tempdir().unwrap();
    make_certs(b.path(), "bob");
    let answer = |_| Ok(crate::strata::AllocResponse::default());
    let served = crate::placement_client::fake::serve_tls(answer, Some(server(a.path()))).await;
    let (c, k) = (b.path().join("client.pem"), b.path().join("client-key.pem"));
    let client = ClientTls::new(b.path().join("ca.pem"), Some((c, k))).unwrap();
    let ep = endpoint(&served.addr)
        .unwrap()
        .timeout(Duration::from_secs(5));
    assert!(
        client.connect(&ep).await.is_err(),
        "another CA's client connected"
    );
    for f in ["ca.pem", "client.pem", "client-key.pem"] {
        std::fs::copy(a.path().join(f), b.path().join(f)).unwrap();
    }
    let mut connected = None;
    for _ in 0..50 {
        if let Ok(ch) = client.connect(&ep).await {
            connected = Some(ch);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ch = connected.expect("the replaced files were not used within 5 s");
    let req = crate::strata::AllocRequest::default();
    use crate::strata::placement_client::PlacementClient;
    PlacementClient::new(ch).alloc(req).await.expect("served");
    assert_eq!(served.last_cn.lock().unwrap().as_deref(), Some("alice"));
}

#[tokio::test]
async fn broken_files_keep_the_previous_configuration() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "alice");
    let (addr, _cns) = serve(server(dir.path())).await;
    std::fs::write(dir.path().join("server.pem"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        echo(addr, dir.path(), true).await,
        "still served with the old files"
    );
}

#[tokio::test]
async fn grpc_over_tls_sees_the_client_cn() {
    use crate::strata::placement_client::PlacementClient;
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "alice");
    let answer = |_| Ok(crate::strata::AllocResponse::default());
    let served = crate::placement_client::fake::serve_tls(answer, Some(server(dir.path()))).await;
    let (c, k) = (
        dir.path().join("client.pem"),
        dir.path().join("client-key.pem"),
    );
    let client = ClientTls::new(dir.path().join("ca.pem"), Some((c, k))).unwrap();
    let ep = endpoint(&served.addr)
        .unwrap()
        .timeout(Duration::from_secs(5));
    let ch = client.connect(&ep).await.expect("TLS connect");
    let req = crate::strata::AllocRequest::default();
    PlacementClient::new(ch)
        .alloc(req)
        .await
        .expect("a gRPC call over TLS");
    assert_eq!(served.last_cn.lock().unwrap().as_deref(), Some("alice"));

    // Plaintext gRPC to the TLS port fails (and nothing reached the service).
    let plain = endpoint(&served.addr)
        .unwrap()
        .timeout(Duration::from_secs(5));
    let r = match plain.connect().await {
        Ok(ch) => PlacementClient::new(ch)
            .alloc(crate::strata::AllocRequest::default())
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(r.is_err(), "plaintext served");
    assert_eq!(served.calls(), 1);
}

#[test]
fn flags_go_together() {
    let half = PeerFlags {
        peer_cert_file: Some("a".into()),
        ..Default::default()
    };
    assert!(set_internal(&half).is_err());
    let bad = ClientPortFlags {
        cert_file: Some("a".into()),
        key_file: Some("b".into()),
        client_cert_auth: true,
        ..Default::default()
    };
    assert!(bad.server(ALPN_H2).is_err());
}
