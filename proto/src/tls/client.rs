//! The client side: a tonic connector that opens TCP, then TLS with the
//! client configuration current at that moment (so replaced certificate files
//! are used from the next connection on).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::ClientTls;

/// A `tower::Service<Uri>` for `Endpoint::connect_with_connector`.
#[derive(Clone)]
pub(super) struct Connector(pub(super) ClientTls);

type Io = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {uri}"));
            let host = uri.host().ok_or_else(bad)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(bad)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tls.handshake(tcp, &host).await?))
        })
    }
}

impl ClientTls {
    /// A TLS session over `tcp` with the server `host` (a name or an IP
    /// address: its certificate must carry it as a SAN).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad host name {host:?}"),
            )
        })?;
        tokio_rustls::TlsConnector::from(self.config())
            .connect(name, tcp)
            .await
    }
}
