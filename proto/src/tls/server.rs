//! The server side: accepted connections, plaintext or TLS, as one stream for
//! tonic's `serve_with_incoming` (and the metrics endpoint).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

use super::ServerTls;

/// A TLS handshake not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once, at most (the rest wait in the backlog).
const HANDSHAKES_MAX: usize = 256;

/// What a request knows of its connection (in its extensions, as tonic puts a
/// connection's `ConnectInfo` there).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The client's verified certificate chain (leaf first), on TLS connections
    /// where the client presented one.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted connection.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo {
                remote_addr: s.peer_addr().ok(),
                peer_certs: None,
            },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    peer_certs: session
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect())),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, b),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a plaintext HTTP/1 client is told (as Go's HTTPS servers, etcd's
/// among them, tell it).
const PLAINTEXT_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The server side of a TLS handshake on `s`. A client that starts with an
/// HTTP/1 request instead (curl on an `http://` URL) is answered
/// [`PLAINTEXT_HTTP_ANSWER`]; any other non-TLS start fails in rustls,
/// which answers with an alert.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    s: TcpStream,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut start = [0u8; 5];
    if s.peek(&mut start).await? == start.len()
        && [b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO"].contains(&&start)
    {
        use tokio::io::AsyncWriteExt;
        let mut s = s;
        s.write_all(PLAINTEXT_HTTP_ANSWER).await?;
        let _ = s.shutdown().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "plaintext HTTP request on a TLS port",
        ));
    }
    acceptor.accept(s).await
}

/// Accepted connections (of [`incoming`]).
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// The connections `listener` accepts (TCP_NODELAY on: small messages, and
/// Nagle + delayed ACKs would add ~40 ms), through a TLS handshake with
/// `tls`'s current configuration when given. Handshakes run on their own
/// tasks, so a slow or silent client holds up no one; a failed one (a
/// plaintext client, a certificate no trusted CA signed) closes that
/// connection and is logged.
pub fn incoming(listener: TcpListener, tls: Option<ServerTls>) -> Incoming {
    let tcp = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    incoming_from(tcp, tls)
}

/// As [`incoming`], for connections accepted elsewhere (TCP_NODELAY is the
/// caller's to set).
pub fn incoming_from<S>(tcp: S, tls: Option<ServerTls>) -> Incoming
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let Some(tls) = tls else {
        return Box::pin(tcp.map(|s| s.map(Conn::Plain)));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
        let mut tcp = std::pin::pin!(tcp);
        while let Some(accepted) = tcp.next().await {
            let s = match accepted {
                Ok(s) => s,
                Err(e) => {
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let out = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let peer = s.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, s)).await {
                    Ok(Ok(t)) => {
                        let _ = out.send(Ok(Conn::Tls(Box::new(t)))).await;
                    }
                    Ok(Err(e)) => tracing::info!(?peer, "TLS handshake refused: {e}"),
                    Err(_) => tracing::info!(?peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
