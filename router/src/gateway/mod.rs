//! etcd's HTTP/JSON gateway and etcd 3.6's health endpoints, on the client
//! port beside gRPC. A tower layer in front of the tonic routes: HTTP/2
//! requests with a gRPC content type go straight through; every other
//! request (HTTP/1.1 or HTTP/2) is the gateway's:
//! - `POST /v3/...` (`routes.rs`): the JSON body is the request message, the
//!   answer its response message in etcd's JSON (`json.rs`); streaming calls
//!   answer newline-delimited `{"result":..}` objects (`call.rs`). Each call
//!   goes through the same in-process gRPC services as a gRPC client's, so
//!   no request logic lives here; a `Grpc-Timeout` header bounds the call
//!   as etcd's gateway bounds it (`deadline.rs`);
//! - `GET /health`, `/livez`, `/readyz` (`health.rs`);
//! - anything else: 404 (405 for a known path with another method).

mod call;
mod deadline;
mod health;
mod json;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use prost_reflect::DescriptorPool;
use tonic::body::Body;
use tower_service::Service;

pub use routes::{Close, KEEP_OPEN, ROUTES};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Gateway {
    routes: HashMap<String, routes::Route>,
    health: health::Health,
}

/// The layer to put outermost on the client port's tonic server (with
/// `accept_http1(true)`).
#[derive(Clone)]
pub struct GatewayLayer(Arc<Gateway>);

impl GatewayLayer {
    /// `kv` serves the health checks' reads, each bounded by `read_timeout`.
    pub fn new(kv: Arc<crate::kv::Kv>, read_timeout: Duration) -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(strata_proto::GATEWAY_DESCRIPTORS)?;
        let routes = routes::resolve(&pool, ROUTES).map_err(anyhow::Error::msg)?;
        Ok(GatewayLayer(Arc::new(Gateway {
            routes,
            health: health::Health::new(kv, read_timeout),
        })))
    }
}

impl<S> tower_layer::Layer<S> for GatewayLayer {
    type Service = GatewayService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GatewayService {
            inner,
            gw: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GatewayService<S> {
    inner: S,
    gw: Arc<Gateway>,
}

/// A gRPC call: HTTP/2 with `content-type: application/grpc[+proto...]`.
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_2
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S, B> Service<Request<Body>> for GatewayService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_grpc(&req) {
            // The instance polled ready takes the call; a clone stays.
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            let fut = ready.call(req);
            return Box::pin(async move { fut.await.map(|r| r.map(Body::new)) });
        }
        let inner = self.inner.clone();
        let gw = self.gw.clone();
        // Taken now: tonic's own timer for the header started just before.
        let now = tokio::time::Instant::now();
        Box::pin(async move { Ok(gw.serve(inner, req, now).await) })
    }
}

impl Gateway {
    async fn serve<S, B>(
        &self,
        inner: S,
        req: Request<Body>,
        now: tokio::time::Instant,
    ) -> Response<Body>
    where
        S: Service<Request<Body>, Response = Response<B>>,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Nothing of `req` (its body is not Sync) is held across an await.
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if let Some(resp) = self.health.handle(&method, &path, &query).await {
            return resp;
        }
        let Some(route) = self.routes.get(req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "Not Found\n");
        };
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        }
        let deadline = match deadline::Deadline::from_headers(req.headers(), now) {
            Ok(d) => d,
            Err(m) => return call::unary_error(tonic::Code::InvalidArgument, &m),
        };
        call::forward(route, inner, req, deadline).await
    }
}

/// A text answer as Go's `http.Error` writes it.
pub(crate) fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Full::new(body.into())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}
