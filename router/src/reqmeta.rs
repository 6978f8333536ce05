//! etcd's request metadata, honoured end to end: the client's gRPC deadline
//! (`grpc-timeout`) and etcd's `hasleader: true` (answer "etcdserver: no
//! leader" at once rather than wait for a leaderless range to elect one).
//!
//! A tower layer reads both from every request and runs the call inside a
//! task-local [`Meta`]; routing reads it ([`deadline`], [`require_leader`]),
//! so the router's retries and the node call stop at the client's deadline.
//! Past the deadline the layer answers etcd's DeadlineExceeded "context
//! deadline exceeded" itself (and drops the call, which cancels whatever it
//! waited for); it does so a little before tonic's own timeout would answer
//! Cancelled "Timeout expired", so the client sees etcd's error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

/// What a request asked for beyond its message.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Meta {
    /// The client's deadline (`grpc-timeout`), if it gave one.
    pub deadline: Option<Instant>,
    /// etcd's `hasleader: true`: fail at once when a range has no leader.
    pub require_leader: bool,
}

tokio::task_local! {
    static META: Meta;
}

/// etcd's metadata key and value asking for a leader (`rpctypes`).
pub const HAS_LEADER_KEY: &str = "hasleader";
pub const HAS_LEADER_VALUE: &str = "true";

/// How long before the client's deadline the router answers: tonic's own
/// timer (started just before ours) must not answer first.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The metadata of the request this task serves (none outside a request).
pub fn current() -> Meta {
    META.try_with(|m| *m).unwrap_or_default()
}

/// How long past the client's deadline a step of the request may still run.
/// The layer ([`MetaService`]) answers at the deadline, with etcd's error for
/// the method; a step giving up at that same instant could, on a busy
/// machine where the task is polled late, be polled first and answer with
/// its own last error (a Put past its deadline answered "no leader").
const STEP_BACKSTOP: Duration = Duration::from_secs(1);

/// The deadline of a step that by itself would take at most `limit`: the
/// earlier of `now + limit` and the client's deadline (plus
/// [`STEP_BACKSTOP`]: the client's deadline is answered by the layer).
pub fn deadline(limit: Duration) -> Instant {
    let own = Instant::now() + limit;
    current()
        .deadline
        .map_or(own, |d| (d + STEP_BACKSTOP).min(own))
}

/// Did the request ask to fail when a range has no leader?
pub fn require_leader() -> bool {
    current().require_leader
}

/// `f` run with this task's request metadata (for tasks a request spawns).
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    META.scope(current(), f)
}

/// etcd's answer to a call to `path` past its deadline. A deadline already
/// passed when the call arrived is DeadlineExceeded for every method;
/// otherwise, as etcd's handlers answer it: a Put or DeleteRange (a raft
/// proposal) "etcdserver: request timed out", the Lock and Election
/// services (clientv3 inside) Unknown, everything else DeadlineExceeded.
/// (A Txn is answered as a read: the layer does not look inside it.)
pub fn deadline_answer(path: &str, passed_on_arrival: bool) -> Status {
    use strata_proto::errors;
    if passed_on_arrival {
        return errors::deadline_exceeded();
    }
    match path {
        "/etcdserverpb.KV/Put" | "/etcdserverpb.KV/DeleteRange" => errors::timeout(),
        p if p.starts_with("/v3lockpb.") || p.starts_with("/v3electionpb.") => {
            errors::recipe_deadline_exceeded()
        }
        _ => errors::deadline_exceeded(),
    }
}

/// Parses gRPC's `grpc-timeout` header value: at most 8 ASCII digits and a
/// unit (`H`, `M`, `S`, `m`, `u`, `n`). Anything else is no timeout.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n.checked_mul(3600)?),
        b'M' => Duration::from_secs(n.checked_mul(60)?),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's [`Meta`] from its HTTP/2 headers, at `now`.
pub fn from_headers(h: &http::HeaderMap, now: Instant) -> Meta {
    let deadline = h
        .get("grpc-timeout")
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        // A timeout too far to represent is no deadline.
        .and_then(|t| now.checked_add(t));
    let require_leader = h
        .get(HAS_LEADER_KEY)
        .is_some_and(|v| v.as_bytes() == HAS_LEADER_VALUE.as_bytes());
    Meta {
        deadline,
        require_leader,
    }
}

/// The layer; add with `Server::builder().layer(reqmeta::layer())`.
#[derive(Clone, Copy, Default)]
pub struct MetaLayer;

pub fn layer() -> MetaLayer {
    MetaLayer
}

impl<S> tower_layer::Layer<S> for MetaLayer {
    type Service = MetaService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetaService { inner }
    }
}

#[derive(Clone)]
pub struct MetaService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for MetaService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let now = Instant::now();
        let meta = from_headers(req.headers(), now);
        let path = req.uri().path().to_string();
        let fut = self.inner.call(req);
        Box::pin(META.scope(meta, async move {
            let Some(deadline) = meta.deadline else {
                return fut.await;
            };
            let answer_at = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
            if answer_at <= now {
                return Ok(deadline_answer(&path, true).into_http());
            }
            match tokio::time::timeout_at(answer_at, fut).await {
                Ok(r) => r,
                // For a streaming call this bounds only its start (as
                // tonic's own timeout does): a watch may outlive it.
                Err(_) => Ok(deadline_answer(&path, false).into_http()),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout(b"250m"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout(b"9n"), Some(Duration::from_nanos(9)));
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"5x",
            b"-5S",
            b"5 S",
            b"\xff",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_to_meta() {
        let now = Instant::now();
        let mut h = http::HeaderMap::new();
        assert_eq!(from_headers(&h, now), Meta::default());
        h.insert("grpc-timeout", "100m".parse().unwrap());
        h.insert("hasleader", "true".parse().unwrap());
        let m = from_headers(&h, now);
        assert_eq!(m.deadline, Some(now + Duration::from_millis(100)));
        assert!(m.require_leader);
        h.insert("hasleader", "false".parse().unwrap());
        h.insert("grpc-timeout", "soon".parse().unwrap());
        assert_eq!(from_headers(&h, now), Meta::default());
    }

    #[test]
    fn deadline_answers_as_etcd() {
        let code = |p: &str, late: bool| {
            let s = deadline_answer(p, late);
            (s.code(), s.message().to_string())
        };
        let dl = (
            tonic::Code::DeadlineExceeded,
            "context deadline exceeded".to_string(),
        );
        assert_eq!(code("/etcdserverpb.KV/Put", true), dl);
        assert_eq!(code("/etcdserverpb.KV/Range", false), dl);
        assert_eq!(code("/etcdserverpb.KV/Txn", false), dl);
        assert_eq!(
            code("/etcdserverpb.KV/Put", false),
            (
                tonic::Code::Unavailable,
                "etcdserver: request timed out".into()
            )
        );
        assert_eq!(
            code("/v3lockpb.Lock/Lock", false),
            (tonic::Code::Unknown, "context deadline exceeded".into())
        );
    }

    #[tokio::test]
    async fn meta_is_task_local_and_inherited() {
        assert_eq!(current(), Meta::default());
        let m = Meta {
            deadline: Some(Instant::now() + Duration::from_millis(50)),
            require_leader: true,
        };
        META.scope(m, async {
            assert_eq!(current(), m);
            assert!(require_leader());
            // The layer answers at the client's deadline, before any step
            // gives up; a step's own shorter limit still holds.
            let d = m.deadline.unwrap();
            let step = deadline(Duration::from_secs(10));
            assert!(step > d && step <= d + STEP_BACKSTOP, "{step:?} vs {d:?}");
            assert!(deadline(Duration::from_millis(1)) < d);
            let spawned = tokio::spawn(inherit(async { current() }));
            assert_eq!(spawned.await.unwrap(), m);
            // A task spawned without `inherit` has none.
            assert_eq!(
                tokio::spawn(async { current() }).await.unwrap(),
                Meta::default()
            );
        })
        .await;
    }
}
