//! Connections, the closed-loop client runner and the progress bar.
//!
//! As in etcd's tool, `--conns` gRPC connections are opened and `--clients` clients
//! share them round-robin (client i uses connection i % conns). Every client runs one
//! request at a time; request numbers 0, 1, 2, … are handed out from one counter, so a
//! `--total` run issues exactly `--total` requests. A run stops issuing at `--total` or
//! after `--duration`, whichever comes first, and every request is bounded by the
//! request timeout.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use etcd_client::{Client, ConnectOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use strata_proto::tls::ClientTls;

use crate::ratelimit::RateLimiter;
use crate::stats::Recorder;

/// One request: `Err` carries the error text.
pub type OpFuture = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;
/// Makes request number i: the index of the recorder it belongs to (0 unless the
/// workload has several kinds of request) and the request itself. A client's requests
/// never overlap.
pub type Worker = Box<dyn FnMut(u64) -> (usize, OpFuture) + Send>;

/// Short text of a client error (for the error distribution).
pub fn err_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            format!("rpc error: code = {:?} desc = {}", s.code(), s.message())
        }
        other => other.to_string(),
    }
}

/// Opens `conns` connections to `endpoints`, each its own HTTP/2 connection.
///
/// With one endpoint, a connection is a bare hyper HTTP/2 connection: a request goes
/// from the client's task straight to the connection's task, as a Go grpc client's
/// does to its writer goroutine. (etcd-client's `Client::connect` puts a balancer and
/// tonic's channel in front, each with its own queue and task: two more task hops per
/// request, which on a small, busy machine cost a measurable share of throughput.)
/// Such a connection is not re-established if it breaks: the remaining requests of
/// that connection fail and are counted as errors. Several endpoints are balanced over
/// with a tonic channel.
pub async fn connect(
    endpoints: &[String],
    conns: usize,
    dial_timeout: Duration,
    tls: Option<&ClientTls>,
    user: Option<&(String, String)>,
) -> Result<Vec<Client>> {
    if conns == 0 {
        return Err(anyhow!("--conns must be at least 1"));
    }
    if endpoints.is_empty() {
        return Err(anyhow!("no --endpoints"));
    }
    let mut out = Vec::with_capacity(conns);
    for _ in 0..conns {
        let channel = if endpoints.len() == 1 {
            tokio::time::timeout(
                dial_timeout + Duration::from_secs(1),
                direct_channel(&endpoints[0], dial_timeout, tls),
            )
            .await
            .map_err(|_| anyhow!("dial {}: timed out after {dial_timeout:?}", endpoints[0]))?
            .with_context(|| format!("dial {}", endpoints[0]))?
        } else if tls.is_some() {
            return Err(anyhow!("TLS (--cacert) takes one endpoint"));
        } else {
            let eps = endpoints
                .iter()
                .map(|e| {
                    let url = if e.contains("://") {
                        e.clone()
                    } else {
                        format!("http://{e}")
                    };
                    Ok(tonic::transport::Endpoint::from_shared(url)
                        .with_context(|| format!("bad endpoint {e:?}"))?
                        .connect_timeout(dial_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_timeout(Duration::from_secs(10)))
                })
                .collect::<Result<Vec<_>>>()?;
            etcd_client::Channel::Tonic(tonic::transport::Channel::balance_list(eps.into_iter()))
        };
        let opts = match user {
            Some((name, password)) => ConnectOptions::new().with_user(name, password),
            None => ConnectOptions::new(),
        };
        let c = Client::from_channel(channel, Some(opts))
            .await
            .with_context(|| format!("client for {endpoints:?}"))?;
        out.push(c);
    }
    Ok(out)
}

/// One HTTP/2 connection to `endpoint` (`host:port`, `http://host:port` or,
/// with `tls`, `https://host:port`), over TLS with `tls`.
async fn direct_channel(
    endpoint: &str,
    dial_timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<etcd_client::Channel> {
    let addr = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    if endpoint.starts_with("https://") && tls.is_none() {
        return Err(anyhow!("https endpoints need --cacert"));
    }
    let authority: http::uri::Authority = addr
        .parse()
        .with_context(|| format!("bad endpoint {endpoint:?}"))?;
    let stream = tokio::time::timeout(dial_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    stream.set_nodelay(true)?;
    let send = match tls {
        Some(tls) => {
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let s = tokio::time::timeout(dial_timeout, tls.handshake(stream, host))
                .await
                .map_err(|_| anyhow!("TLS handshake timed out"))??;
            http2(s).await?
        }
        None => http2(stream).await?,
    };
    let svc = tower::service_fn(move |mut req: http::Request<tonic::body::Body>| {
        let mut send = send.clone();
        let authority = authority.clone();
        async move {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority);
            *req.uri_mut() = http::Uri::from_parts(parts)?;
            let resp = send.send_request(req).await?;
            Ok::<_, tower::BoxError>(resp.map(tonic::body::Body::new))
        }
    });
    Ok(etcd_client::Channel::Custom(
        tower::util::BoxCloneSyncService::new(svc),
    ))
}

type Sender = hyper::client::conn::http2::SendRequest<tonic::body::Body>;

/// An HTTP/2 client connection over `io`, driven by its own task.
async fn http2<IO>(io: IO) -> Result<Sender>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake::<_, tonic::body::Body>(hyper_util::rt::TokioIo::new(io))
            .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// `clients` clients over the connections, round-robin.
pub fn share(conns: &[Client], clients: usize) -> Vec<Client> {
    (0..clients)
        .map(|i| conns[i % conns.len()].clone())
        .collect()
}

/// How much load to offer.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Requests to issue (u64::MAX: as many as fit in `duration`).
    pub total: u64,
    pub duration: Option<Duration>,
    /// Requests per second over all clients; 0 is unlimited.
    pub rate: f64,
    pub request_timeout: Duration,
}

/// Result of one closed-loop phase: one recorder per kind of request.
pub struct Phase {
    pub recorders: Vec<Recorder>,
    pub wall: Duration,
    /// Requests issued (successes + errors).
    pub issued: u64,
}

/// Runs `workers` (one per client) until the load is done.
pub async fn run_closed_loop(
    kinds: usize,
    workers: Vec<Worker>,
    load: Load,
    progress: &Progress,
    label: &str,
) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let limiter = Arc::new(RateLimiter::optional(load.rate));
    let start = Instant::now();
    let deadline = load.duration.map(|d| start + d);
    let bar = progress.track(label, load.total, load.duration, done.clone());
    let mut tasks = Vec::with_capacity(workers.len());
    for mut w in workers {
        let (next, done, limiter) = (next.clone(), done.clone(), limiter.clone());
        tasks.push(tokio::spawn(async move {
            let mut recs: Vec<Recorder> = (0..kinds).map(|_| Recorder::new()).collect();
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= load.total {
                    break;
                }
                if let Some(l) = limiter.as_ref() {
                    l.acquire().await;
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                let st = Instant::now();
                let (kind, fut) = w(i);
                let r = tokio::time::timeout(load.request_timeout, fut).await;
                let end = Instant::now();
                let at = end - start;
                let rec = &mut recs[kind.min(kinds - 1)];
                match r {
                    Ok(Ok(())) => rec.record(end - st, at),
                    Ok(Err(e)) => rec.record_error(&e, at),
                    Err(_) => rec.record_error(
                        &format!("request timed out after {:?}", load.request_timeout),
                        at,
                    ),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            recs
        }));
    }
    let mut recorders: Vec<Recorder> = (0..kinds).map(|_| Recorder::new()).collect();
    for t in tasks {
        match t.await {
            Ok(recs) => {
                for (a, b) in recorders.iter_mut().zip(&recs) {
                    a.merge(b);
                }
            }
            Err(e) => {
                recorders[0].record_error(&format!("client task failed: {e}"), start.elapsed())
            }
        }
    }
    let wall = start.elapsed();
    bar.finish();
    Phase {
        recorders,
        wall,
        issued: done.load(Ordering::Relaxed),
    }
}

/// Progress bars on stderr, only when it is a terminal (and not `--no-progress`).
#[derive(Clone)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(disabled: bool) -> Progress {
        Progress {
            enabled: !disabled && std::io::stderr().is_terminal(),
        }
    }

    pub fn hidden() -> Progress {
        Progress { enabled: false }
    }

    /// Shows `counter` against `total` (or the elapsed time against `duration`) until
    /// the returned guard is finished or dropped.
    pub fn track(
        &self,
        label: &str,
        total: u64,
        duration: Option<Duration>,
        counter: Arc<AtomicU64>,
    ) -> BarGuard {
        if !self.enabled {
            return BarGuard {
                bar: None,
                stop: Arc::new(AtomicBool::new(true)),
            };
        }
        let by_count = total != u64::MAX;
        let bar = if by_count {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed}/{eta})",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b
        } else {
            let ms = duration.map(|d| d.as_millis() as u64).unwrap_or(0);
            let b = ProgressBar::with_draw_target(Some(ms), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {elapsed}/{duration}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            b
        };
        bar.set_message(label.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (bar, stop) = (bar.clone(), stop.clone());
            let start = Instant::now();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if by_count {
                        bar.set_position(counter.load(Ordering::Relaxed));
                    } else {
                        bar.set_position(start.elapsed().as_millis() as u64);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        BarGuard {
            bar: Some(bar),
            stop,
        }
    }
}

pub struct BarGuard {
    bar: Option<ProgressBar>,
    stop: Arc<AtomicBool>,
}

impl BarGuard {
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for BarGuard {
    fn drop(&mut self) {
        self.finish();
    }
}
