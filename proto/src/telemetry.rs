//! Telemetry shared by every component (placement, node, router).
//!
//! - [`serve`]: the HTTP endpoint on `--metrics-addr`: `GET /metrics` (Prometheus text
//!   format), `GET /health` (the process is up: always 200) and `GET /ready` (200 once
//!   the component serves, 503 before).
//! - Metrics live in the `prometheus` crate's default registry, which also carries the
//!   process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//!   `process_open_fds`, ...). [`serve`] adds `strata_build_info{version, role} 1`.
//! - [`on_scrape`]: hooks that refresh gauges (range counts, RocksDB sizes, ...) right
//!   before each scrape, so nothing polls in the background.
//! - [`GrpcMetricsLayer`]: a tower layer for tonic servers counting requests by
//!   service, method and gRPC code, with a latency histogram per unary method.
//! - The oracle client's metrics (`strata_oracle_client_*`, see `oracle.rs`).
//!
//! Conventions (DESIGN.md): `strata_` prefix, base units (seconds, bytes), `_total`
//! counters, labels of low cardinality only (method, code, role, cf; never a range
//! id or a key). Every metric is registered at start (see each crate's
//! `metrics::init`), so dashboards and `rate()` see it from the first scrape.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge_vec,
    Encoder, Histogram, HistogramVec, IntCounterVec, IntGaugeVec, TextEncoder,
};

pub use prometheus;

/// Latency buckets (seconds) for request and disk latencies: 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets for counts (entries per round, batch sizes): 1 to 4096, powers of 2.
pub fn count_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(1.0, 2.0, 13).expect("valid buckets")
}

/// Buckets for sizes in bytes: 64 B to 64 MiB, powers of 4.
pub fn byte_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(64.0, 4.0, 11).expect("valid buckets")
}

type Hook = Box<dyn Fn() + Send + Sync>;

static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Runs `f` before every scrape (to refresh gauges computed from live state). Keep it
/// quick: it runs on a blocking thread while the scraper waits.
pub fn on_scrape(f: impl Fn() + Send + Sync + 'static) {
    HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(f));
}

static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_build_info",
        "Always 1; labels say which Strata version and component this process runs.",
        &["version", "role"]
    )
    .expect("register strata_build_info")
});

/// Renders every registered metric in the Prometheus text format (after the hooks).
pub fn render() -> String {
    for hook in HOOKS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        hook();
    }
    let families = prometheus::gather();
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::warn!("encoding metrics failed: {e}");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// The running metrics endpoint of a component.
#[derive(Clone)]
pub struct Telemetry {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl Telemetry {
    /// The address `/metrics` is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `/ready` answers from now on (200 when true, 503 when false).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

/// Binds `addr` and serves `/metrics`, `/health` and `/ready` until the runtime stops,
/// over TLS with `tls` (HTTPS; see `tls::ALPN_HTTP1`).
/// `role` is `placement`, `node` or `router` (the `role` label of `strata_build_info`).
/// `/ready` answers 503 until [`Telemetry::set_ready`]. Fails only if `addr` cannot be
/// bound.
pub async fn serve(
    addr: SocketAddr,
    role: &'static str,
    tls: Option<crate::tls::ServerTls>,
) -> std::io::Result<Telemetry> {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION"), role])
        .set(1);
    LazyLock::force(&ORACLE_WAIT);
    LazyLock::force(&ORACLE_RPCS);
    LazyLock::force(&ORACLE_BATCH);
    for outcome in ["ok", "error"] {
        ORACLE_RPCS.with_label_values(&[outcome]);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}"))
    })?;
    let addr = listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let ready = r.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let conns = Conns(crate::tls::incoming(listener, tls), addr);
        if let Err(e) = axum::serve(conns, app).await {
            tracing::error!("metrics server on {addr} stopped: {e}");
        }
    });
    tracing::info!(%addr, "serving /metrics, /health and /ready");
    Ok(Telemetry { addr, ready })
}

/// `tls::incoming`'s connections, as axum's listener.
struct Conns(crate::tls::Incoming, SocketAddr);

impl axum::serve::Listener for Conns {
    type Io = crate::tls::Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (crate::tls::Conn, SocketAddr) {
        use tokio_stream::StreamExt;
        use tonic::transport::server::Connected;
        loop {
            match self.0.next().await {
                Some(Ok(c)) => {
                    let from = c.connect_info().remote_addr.unwrap_or(self.1);
                    return (c, from);
                }
                Some(Err(e)) => {
                    // Out of file descriptors and the like: wait, as axum does.
                    tracing::warn!("metrics endpoint cannot accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.1)
    }
}

async fn metrics() -> axum::response::Response {
    match tokio::task::spawn_blocking(render).await {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

// ---------------------------------------------------------------------------
// Oracle client (used by nodes and routers; see `oracle.rs`).

/// Time a caller waits for the oracle client to answer an allocation.
pub static ORACLE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "strata_oracle_client_wait_seconds",
        "Time callers wait for revisions from the batching oracle client (queue + RPC).",
        LATENCY_BUCKETS.to_vec()
    )
    .expect("register strata_oracle_client_wait_seconds")
});

/// Oracle RPCs to placement, by outcome (`ok`, `error`).
pub static ORACLE_RPCS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_oracle_client_rpcs_total",
        "Alloc RPCs the oracle client sent to placement, by outcome (ok, error).",
        &["outcome"]
    )
    .expect("register strata_oracle_client_rpcs_total")
});

/// Counts one oracle RPC by outcome.
pub fn oracle_rpc_done(ok: bool) {
    ORACLE_RPCS
        .with_label_values(&[if ok { "ok" } else { "error" }])
        .inc();
}

/// Callers served by one oracle RPC.
pub static ORACLE_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "strata_oracle_client_batch_waiters",
        "Callers served by one Alloc RPC of the oracle client.",
        count_buckets()
    )
    .expect("register strata_oracle_client_batch_waiters")
});

// ---------------------------------------------------------------------------
// gRPC request metrics.

/// One method a server knows: `(service, method, streaming)`, e.g.
/// `("etcdserverpb.KV", "Put", false)`. Only these get their own label values;
/// any other path is counted as `service="unknown", method="unknown"`.
pub type GrpcMethod = (&'static str, &'static str, bool);

struct GrpcMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    methods: &'static [GrpcMethod],
}

impl GrpcMetrics {
    fn classify(&self, path: &str) -> GrpcMethod {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (svc, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        self.methods
            .iter()
            .find(|(s, m, _)| *s == svc && *m == method)
            .copied()
            .unwrap_or(("unknown", "unknown", false))
    }
}

/// Tower layer for a tonic server: `<prefix>_grpc_requests_total{service,method,code}`
/// (counted when the call ends, with its gRPC status code in Go's spelling: `OK`,
/// `InvalidArgument`, ...) and `<prefix>_grpc_request_duration_seconds{service,method}`
/// (unary methods only: a stream's lifetime is not a latency).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    m: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    /// Registers the two metric families `<prefix>_grpc_requests_total` and
    /// `<prefix>_grpc_request_duration_seconds` (call once per prefix) and pre-creates
    /// the series of every known method (code `OK`), so rates start at zero.
    pub fn new(prefix: &str, what: &str, methods: &'static [GrpcMethod]) -> Self {
        let requests = register_int_counter_vec!(
            format!("{prefix}_grpc_requests_total"),
            format!("gRPC requests {what} handled, by service, method and gRPC status code."),
            &["service", "method", "code"]
        )
        .expect("register grpc requests counter");
        let duration = register_histogram_vec!(
            format!("{prefix}_grpc_request_duration_seconds"),
            format!("Time to handle a unary gRPC request {what}, by service and method."),
            &["service", "method"],
            LATENCY_BUCKETS.to_vec()
        )
        .expect("register grpc duration histogram");
        for (svc, method, streaming) in methods {
            requests.with_label_values(&[svc, method, "OK"]);
            if !streaming {
                duration.with_label_values(&[svc, method]);
            }
        }
        Self {
            m: Arc::new(GrpcMetrics {
                requests,
                duration,
                methods,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            m: self.m.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    m: Arc<GrpcMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call {
            m: self.m.clone(),
            method: self.m.classify(req.uri().path()),
            start: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(e) => {
                    call.finish("Unavailable");
                    return Err(e);
                }
            };
            // A trailers-only response (every error of a unary call) carries the
            // status in its headers; otherwise it comes in the trailers.
            if let Some(code) = resp.headers().get("grpc-status") {
                call.finish(code_name(code.as_bytes()));
            } else if resp.status() != http::StatusCode::OK {
                call.finish("Unavailable");
            }
            Ok(resp.map(|inner| MeteredBody { inner, call }))
        })
    }
}

struct Call {
    m: Arc<GrpcMetrics>,
    method: GrpcMethod,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: &str) {
        if self.done {
            return;
        }
        self.done = true;
        let (svc, method, streaming) = self.method;
        self.m
            .requests
            .with_label_values(&[svc, method, code])
            .inc();
        if !streaming {
            self.m
                .duration
                .with_label_values(&[svc, method])
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The response body went away before its trailers: the client cancelled.
        self.finish("Canceled");
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the call's gRPC status when its trailers pass.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: http_body::Body> http_body::Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    this.call.finish(code_name(code.as_bytes()));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish("Internal"),
            Poll::Ready(None) => this.call.finish("OK"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A `grpc-status` value as Go's `codes.Code.String()` spells it (what etcd's
/// `grpc_code` label and most dashboards use).
pub fn code_name(status: &[u8]) -> &'static str {
    match status {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// A gauge that counts live instances of something (streams, watchers): `inc` on
/// creation, `dec` when the guard drops, whichever way the owner ends.
pub struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    pub fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"14"), "Unavailable");
        assert_eq!(code_name(b"99"), "Unknown");
    }

    #[test]
    fn classify_known_and_unknown() {
        static M: &[GrpcMethod] = &[("svc.A", "Get", false), ("svc.A", "Watch", true)];
        let l = GrpcMetricsLayer::new("strata_test", "in a test", M);
        assert_eq!(l.m.classify("/svc.A/Get"), ("svc.A", "Get", false));
        assert_eq!(l.m.classify("/svc.A/Watch"), ("svc.A", "Watch", true));
        assert_eq!(l.m.classify("/svc.A/Nope"), ("unknown", "unknown", false));
        assert_eq!(l.m.classify("/x"), ("unknown", "unknown", false));
        let text = render();
        assert!(
            text.contains(
                r#"strata_test_grpc_requests_total{code="OK",method="Get",service="svc.A"} 0"#
            ),
            "{text}"
        );
    }
}
