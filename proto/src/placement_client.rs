//! Placement clients that follow placement's raft leader.
//!
//! Placement is a raft group of a few replicas and only its leader serves; a
//! replica that does not lead refuses every request, unexecuted, with
//! Unavailable and a `strata-placement-leader` hint (see
//! [`crate::errors::placement_not_leader`]). [`FailoverChannel`] is the tower
//! service under [`PlacementConn`] (= `PlacementClient<FailoverChannel>`): it
//! sends each request to the replica it believes leads (one belief shared by
//! every clone) and resends it elsewhere only when it certainly did not run:
//!
//! - a trailers-only `grpc-status: 14` answer carrying the leader hint: to the
//!   hinted replica (added to the list when new: a replica added later may
//!   lead), or, when the hint is empty or names the replica just asked, to the
//!   next one after a short sleep;
//! - a connection that could not be established ([`is_connect_error`]): to
//!   the next replica (sleeping once every replica was tried).
//!
//! Everything else (a response, any other error, an error after the request
//! may have left) is returned as is: a `LeaseGrant` that may have run is
//! never sent twice from here. Retries stay within the request's deadline
//! (its `grpc-timeout`, else [`DEFAULT_DEADLINE`]) and [`MAX_ATTEMPTS`];
//! then the last answer is returned. Request bodies (unary, small) are
//! buffered to be resent; a streaming method or a body above
//! [`MAX_BUFFERED`] is sent once, unretried.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt as _, Full};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic::Status;
use tower_service::Service;

use crate::errors::PLACEMENT_LEADER_HINT;
use crate::strata::placement_client::PlacementClient;

/// A placement client over [`FailoverChannel`].
pub type PlacementConn = PlacementClient<FailoverChannel>;

/// The most placement addresses one client knows (given and learned).
pub const MAX_ADDRS: usize = 16;
/// How long a request without `grpc-timeout` is retried.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// The most times one request is sent.
pub const MAX_ATTEMPTS: u32 = 64;
/// The largest request body buffered for resending.
pub const MAX_BUFFERED: usize = 4 << 20;
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Placement's streaming methods: their bodies are never buffered.
const STREAMING: &[&str] = &["/strata.Placement/Raft", "/strata.Placement/AllocStream"];

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// Connects lazily to placement at `addrs`, a comma-separated list of
/// `host:port` (a single address is a list of one).
pub fn placement_client(addrs: &str) -> Result<PlacementConn, Status> {
    Ok(PlacementClient::new(FailoverChannel::new(addrs)?))
}

/// A channel to placement's replicas that follows the leader (see the module
/// documentation). Cheap to clone; clones share the channels and the belief.
#[derive(Clone)]
pub struct FailoverChannel {
    shared: Arc<Mutex<Replicas>>,
}

struct Replicas {
    list: Vec<Replica>,
    /// The address believed to lead (always one of `list`).
    leader: String,
}

struct Replica {
    addr: String,
    channel: Channel,
    /// Given at construction (kept over learned ones when the list is full).
    given: bool,
}

/// Checks `addr` is `host:port`.
fn check_addr(addr: &str) -> Result<(), Status> {
    let bad =
        |why: &str| Status::invalid_argument(format!("bad placement address {addr:?}: {why}"));
    let auth: http::uri::Authority = addr.parse().map_err(|_| bad("expected HOST:PORT"))?;
    if auth.as_str() != addr || addr.contains('@') || auth.host().is_empty() {
        return Err(bad("expected HOST:PORT"));
    }
    match auth.port_u16() {
        Some(p) if p != 0 => Ok(()),
        _ => Err(bad("expected HOST:PORT with a port")),
    }
}

/// The addresses of the comma-separated list `addrs` (`HOST:PORT[,HOST:PORT...]`),
/// each checked, without repeats, at most [`MAX_ADDRS`].
pub fn parse_addrs(addrs: &str) -> Result<Vec<String>, Status> {
    let mut list: Vec<String> = Vec::new();
    for addr in addrs.split(',').map(str::trim) {
        if addr.is_empty() {
            return Err(Status::invalid_argument(format!(
                "bad placement address list {addrs:?}: expected HOST:PORT[,HOST:PORT...]"
            )));
        }
        check_addr(addr)?;
        if !list.iter().any(|a| a == addr) {
            list.push(addr.to_string());
        }
    }
    if list.len() > MAX_ADDRS {
        return Err(Status::invalid_argument(format!(
            "too many placement addresses (at most {MAX_ADDRS})"
        )));
    }
    Ok(list)
}

/// A lazily connected channel to `addr` (checked).
fn connect(addr: &str) -> Result<Channel, Status> {
    check_addr(addr)?;
    let ep = crate::tls::endpoint(addr)
        .map_err(|e| Status::invalid_argument(format!("bad placement address {addr:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // A replica whose host is cut off (not just its process gone) breaks
        // the connection within 3 s, failing what waits on it, instead of
        // leaving calls hanging there.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    Ok(crate::tls::connect_lazy(&ep))
}

impl FailoverChannel {
    /// Channels to every address of the comma-separated list `addrs` (at
    /// most [`MAX_ADDRS`]); the first is believed to lead. Connects lazily,
    /// but needs a tokio runtime.
    pub fn new(addrs: &str) -> Result<Self, Status> {
        let mut list = Vec::new();
        for addr in parse_addrs(addrs)? {
            list.push(Replica {
                channel: connect(&addr)?,
                addr,
                given: true,
            });
        }
        let leader = list[0].addr.clone();
        Ok(Self {
            shared: Arc::new(Mutex::new(Replicas { list, leader })),
        })
    }

    /// Every address known, given and learned.
    pub fn addrs(&self) -> Vec<String> {
        let s = self.shared.lock().unwrap();
        s.list.iter().map(|r| r.addr.clone()).collect()
    }

    /// The address believed to lead.
    pub fn leader(&self) -> String {
        self.shared.lock().unwrap().leader.clone()
    }

    /// The channel to `addr`, or (`addr` was evicted meanwhile) to the leader.
    fn channel(&self, addr: &str) -> Channel {
        let s = self.shared.lock().unwrap();
        let r = s.list.iter().find(|r| r.addr == addr);
        let r = r.or_else(|| s.list.iter().find(|r| r.addr == s.leader));
        r.expect("the leader is listed").channel.clone()
    }

    fn len(&self) -> usize {
        self.shared.lock().unwrap().list.len()
    }

    /// `addr` answered (not "not the leader"): it leads.
    fn answered(&self, addr: &str) {
        let mut s = self.shared.lock().unwrap();
        if s.list.iter().any(|r| r.addr == addr) {
            s.leader = addr.to_string();
        }
    }

    /// `tried` could not serve and named no other leader: the address after
    /// it, which becomes the belief unless another request moved it already.
    fn next_after(&self, tried: &str) -> String {
        let mut s = self.shared.lock().unwrap();
        let next = match s.list.iter().position(|r| r.addr == tried) {
            Some(i) => s.list[(i + 1) % s.list.len()].addr.clone(),
            None => s.leader.clone(),
        };
        if s.leader == tried {
            s.leader = next.clone();
        }
        next
    }

    /// A replica named `hint` the leader: believe it, learning the address
    /// when new (a learned one, else the last, makes room in a full list).
    /// None when `hint` is no address.
    fn hinted(&self, hint: &str) -> Option<String> {
        let mut s = self.shared.lock().unwrap();
        if !s.list.iter().any(|r| r.addr == hint) {
            let channel = connect(hint).ok()?;
            if s.list.len() >= MAX_ADDRS {
                let i = s
                    .list
                    .iter()
                    .position(|r| !r.given)
                    .unwrap_or(MAX_ADDRS - 1);
                s.list.remove(i);
            }
            s.list.push(Replica {
                addr: hint.to_string(),
                channel,
                given: false,
            });
        }
        s.leader = hint.to_string();
        Some(hint.to_string())
    }

    /// Sends `req` once to `addr`.
    async fn attempt(
        &self,
        addr: &str,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut ch = self.channel(addr);
        std::future::poll_fn(|cx| ch.poll_ready(cx)).await?;
        Ok(ch.call(req).await?)
    }

    async fn send(self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let timeout = parts
            .headers
            .get("grpc-timeout")
            .and_then(parse_grpc_timeout);
        let deadline = started + timeout.unwrap_or(DEFAULT_DEADLINE);
        let mut addr = self.leader();
        let body = if STREAMING.contains(&parts.uri.path()) {
            Err(body)
        } else {
            buffer(body).await?
        };
        let bytes = match body {
            Ok(bytes) => bytes,
            Err(body) => return self.attempt(&addr, rebuild(&parts, body)).await,
        };
        let mut backoff = BACKOFF_FIRST;
        // Replicas asked since the last sleep: once every one was, sleep.
        let mut hops = 0;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = rebuild(&parts, Body::new(Full::new(bytes.clone())));
            if timeout.is_some() && attempt > 1 {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_millis().clamp(1, 99_999_999);
                req.headers_mut()
                    .insert("grpc-timeout", format!("{ms}m").parse().expect("digits"));
            }
            let out = self.attempt(&addr, req).await;
            let hint = match &out {
                Ok(resp) => match not_leader_hint(resp) {
                    Some(hint) => Some(hint),
                    None => {
                        self.answered(&addr);
                        return out;
                    }
                },
                Err(e) if is_connect_error(e.as_ref()) => None,
                Err(_) => return out,
            };
            if attempt >= MAX_ATTEMPTS || Instant::now() >= deadline {
                return out;
            }
            hops += 1;
            let (next, must_sleep) = match hint {
                Some(h) if !h.is_empty() && h != addr => match self.hinted(&h) {
                    Some(next) => (next, false),
                    None => (self.next_after(&addr), true),
                },
                // "Not the leader, leader unknown" (or itself): an election.
                Some(_) => (self.next_after(&addr), true),
                // Not reachable: try the next one at once.
                None => (self.next_after(&addr), false),
            };
            if must_sleep || hops >= self.len() {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 3 / 2).min(BACKOFF_MAX);
                hops = 0;
                if Instant::now() >= deadline {
                    return out;
                }
            }
            tracing::debug!("placement at {addr} cannot serve; trying {next}");
            addr = next;
        }
    }
}

impl Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call readies the channel it picks.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        Box::pin(self.clone().send(req))
    }
}

/// The leader hint of a placement replica's "not the leader" answer: a
/// trailers-only Unavailable (`grpc-status: 14` in the headers) carrying
/// `strata-placement-leader`. None for any other response.
fn not_leader_hint(resp: &http::Response<Body>) -> Option<String> {
    let h = resp.headers();
    if h.get("grpc-status")?.as_bytes() != b"14" {
        return None;
    }
    let hint = h.get(PLACEMENT_LEADER_HINT)?;
    Some(hint.to_str().unwrap_or("").trim().to_string())
}

/// Did `err` happen before the request left, because no connection could be
/// established (refused, timed out, unresolvable)? Then resending it is safe.
pub fn is_connect_error(err: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// gRPC's `grpc-timeout` header: at most 8 digits and a unit.
fn parse_grpc_timeout(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request with `parts`' head and `body`.
fn rebuild(parts: &http::request::Parts, body: Body) -> http::Request<Body> {
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req
}

/// Reads all of `body` when it is data of at most [`MAX_BUFFERED`] bytes;
/// otherwise an equivalent body (what was read, then the rest) to send once.
async fn buffer(mut body: Body) -> Result<Result<Bytes, Body>, BoxError> {
    let mut data = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if frame.is_data() && data.len() + frame.data_ref().map_or(0, Bytes::len) <= MAX_BUFFERED {
            data.extend_from_slice(frame.data_ref().expect("data"));
            continue;
        }
        let mut front = vec![frame];
        if !data.is_empty() {
            front.push(Frame::data(Bytes::from(data)));
        }
        return Ok(Err(Body::new(Prefixed { front, rest: body })));
    }
    Ok(Ok(Bytes::from(data)))
}

/// Frames already read (`front`, in reverse order), then the rest of a body.
struct Prefixed {
    front: Vec<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.front.pop() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.front.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
