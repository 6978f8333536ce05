//! Batching client of placement's revision oracle.
//!
//! One RPC is in flight at a time; every request that arrives meanwhile is
//! served by the next RPC, which allocates the sum of their counts. A request
//! for 0 revisions ("what is the next unallocated revision?") is answered with
//! the first revision after that RPC's allocation, which is at or after every
//! revision allocated before the request was made.
//!
//! Counts are bounded: one call asks for at most [`MAX_ALLOC_COUNT`]
//! revisions (placement refuses more with InvalidArgument), and one RPC never
//! asks for more than that either — waiters that would push a batch past it
//! wait for the next RPC. Every sum of revisions here is checked: an answer
//! whose range would pass `i64::MAX` fails its waiters instead of wrapping.
//!
//! An RPC that failed for want of placement (Unavailable, a deadline, a
//! transport error) is retried with the same count for up to [`RETRY_FOR`]:
//! an allocation that ran but whose answer was lost only leaves a gap, which
//! revisions may have. So a placement leader failover delays writes instead
//! of failing them. Any other error (InvalidArgument, ...) fails the batch.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::{Code, Status};

pub use crate::placement_client::{placement_client, PlacementConn};
use crate::strata::{AllocAnswer, AllocRequest};

const QUEUE_CAP: usize = 65_536;
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one batch's RPC is retried (a placement leader failover takes 1–3 s).
pub const RETRY_FOR: Duration = Duration::from_secs(4);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(400);

/// The most revisions one `alloc` call (and one oracle RPC) may ask for.
/// Placement refuses a larger count with InvalidArgument; a range's write
/// batch asks for at most a few thousand.
pub const MAX_ALLOC_COUNT: u64 = 1 << 20;

type Waiter = (u64, oneshot::Sender<Result<i64, Status>>);

#[derive(Clone)]
pub struct Oracle {
    tx: mpsc::Sender<Waiter>,
}

impl Oracle {
    pub fn new(placement: PlacementConn) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAP);
        tokio::spawn(run(placement, rx));
        Self { tx }
    }

    /// Allocates `count` revisions and returns the first; `count == 0` returns
    /// the next unallocated revision without consuming it.
    pub async fn alloc(&self, count: u64) -> Result<i64, Status> {
        check_count(count)?;
        let _wait = crate::telemetry::ORACLE_WAIT.start_timer();
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send((count, tx))
            .map_err(|_| crate::errors::too_many_requests())?;
        rx.await
            .map_err(|_| Status::unavailable("strata: oracle client stopped"))?
    }

    /// The current revision: every write completed before this call has a
    /// revision at or below it.
    pub async fn current(&self) -> Result<i64, Status> {
        Ok(self.alloc(0).await? - 1)
    }
}

async fn run(mut client: PlacementConn, mut rx: mpsc::Receiver<Waiter>) {
    // A waiter that did not fit into the previous RPC's batch.
    let mut carried: Option<Waiter> = None;
    let mut stream = FastPath::default();
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        let (waiters, total, carry) = gather(first, &mut rx);
        carried = carry;
        crate::telemetry::ORACLE_BATCH.observe(waiters.len() as f64);
        let answer = match stream.alloc(&mut client, total).await {
            Some(answer) => answer,
            None => alloc_rpc(&mut client, total).await,
        };
        match answer {
            Ok(start) => {
                let counts: Vec<u64> = waiters.iter().map(|w| w.0).collect();
                match hand_out(start, &counts) {
                    Ok(starts) => {
                        for ((_, tx), s) in waiters.into_iter().zip(starts) {
                            let _ = tx.send(Ok(s));
                        }
                    }
                    Err(st) => {
                        tracing::error!("{}", st.message());
                        for (_, tx) in waiters {
                            let _ = tx.send(Err(st.clone()));
                        }
                    }
                }
            }
            Err(e) => {
                let st = Status::unavailable(format!(
                    "strata: revision oracle unavailable: {}",
                    e.message()
                ));
                for (_, tx) in waiters {
                    let _ = tx.send(Err(st.clone()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// How long an answer on the stream may take before the stream is dropped
/// and the batch goes to the unary path (an allocation takes well under a
/// millisecond; one that commits a new window, a raft round).
const STREAM_ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// After the stream failed, the unary path alone for this long.
const STREAM_RETRY_AFTER: Duration = Duration::from_millis(200);

/// The fast path: allocations one after another on one `AllocStream` to the
/// replica the placement client believes leads (no call set-up per
/// allocation). Any refusal, break or slow answer drops the stream, and that
/// batch goes to [`alloc_rpc`], which follows the leader and retries; an
/// allocation that ran on the stream but whose answer was lost only leaves
/// a gap (see the module doc).
#[derive(Default)]
struct FastPath {
    open: Option<(mpsc::Sender<AllocRequest>, tonic::Streaming<AllocAnswer>)>,
    retry_at: Option<Instant>,
}

impl FastPath {
    /// The stream's answer, or `None`: use the unary path. A refusal other
    /// than "not the serving leader" is the answer (the unary call would be
    /// refused the same way).
    async fn alloc(
        &mut self,
        client: &mut PlacementConn,
        total: u64,
    ) -> Option<Result<i64, Status>> {
        if self.open.is_none() && self.retry_at.is_none_or(|t| Instant::now() >= t) {
            let (tx, rx) = mpsc::channel(4);
            let opened = tokio::time::timeout(
                STREAM_ANSWER_WITHIN,
                client.alloc_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
            match opened {
                Ok(Ok(resp)) => self.open = Some((tx, resp.into_inner())),
                _ => self.retry_at = Some(Instant::now() + STREAM_RETRY_AFTER),
            }
        }
        let (tx, answers) = self.open.as_mut()?;
        let asked = async {
            tx.send(AllocRequest { count: total }).await.ok()?;
            answers.message().await.ok().flatten()
        };
        let answer = tokio::time::timeout(STREAM_ANSWER_WITHIN, asked)
            .await
            .ok()
            .flatten();
        match answer.map(crate::answers::alloc_result) {
            Some(Ok(start)) => {
                crate::telemetry::oracle_rpc_done(true);
                Some(Ok(start))
            }
            refused => {
                self.open = None;
                self.retry_at = Some(Instant::now() + STREAM_RETRY_AFTER);
                crate::telemetry::oracle_rpc_done(false);
                refused
                    .and_then(Result::err)
                    .filter(|s| !retryable(s))
                    .map(Err)
            }
        }
    }
}

/// One batch's RPC for `total` revisions, retried while placement is
/// unavailable, for up to [`RETRY_FOR`]. Returns the allocation's start.
async fn alloc_rpc(client: &mut PlacementConn, total: u64) -> Result<i64, Status> {
    let give_up = Instant::now() + RETRY_FOR;
    let mut backoff = RETRY_FIRST;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        let mut req = tonic::Request::new(AllocRequest { count: total });
        req.set_timeout(RPC_TIMEOUT.min(left.max(Duration::from_millis(200))));
        let err = match client.alloc(req).await {
            Ok(resp) => {
                crate::telemetry::oracle_rpc_done(true);
                return Ok(resp.into_inner().start);
            }
            Err(e) => e,
        };
        crate::telemetry::oracle_rpc_done(false);
        if !retryable(&err) || Instant::now() + backoff >= give_up {
            return Err(err);
        }
        tracing::debug!("revision oracle: {}; retrying", err.message());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Did an oracle RPC fail for want of placement (rather than being refused)?
/// A status with a source was made here from a transport error.
fn retryable(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    ) || std::error::Error::source(st).is_some()
}

/// Refuses a count above [`MAX_ALLOC_COUNT`] (as placement does).
pub fn check_count(count: u64) -> Result<(), Status> {
    if count > MAX_ALLOC_COUNT {
        return Err(Status::invalid_argument(format!(
            "strata: cannot allocate {count} revisions in one call (at most {MAX_ALLOC_COUNT})"
        )));
    }
    Ok(())
}

/// Takes `first` and every waiter queued now, as long as their counts sum to
/// at most [`MAX_ALLOC_COUNT`]; returns them, that sum, and the first waiter
/// that did not fit (it leads the next batch).
fn gather(first: Waiter, rx: &mut mpsc::Receiver<Waiter>) -> (Vec<Waiter>, u64, Option<Waiter>) {
    // Each count is at most MAX_ALLOC_COUNT (checked in `alloc`), so neither
    // sum below can overflow.
    let mut total = first.0;
    let mut waiters = vec![first];
    while let Ok(w) = rx.try_recv() {
        if total + w.0 > MAX_ALLOC_COUNT {
            return (waiters, total, Some(w));
        }
        total += w.0;
        waiters.push(w);
    }
    (waiters, total, None)
}

/// What each waiter of one RPC gets, given the RPC's `start` and the waiters'
/// counts in order: consecutive sub-ranges of `[start, start + sum)`, and
/// `start + sum` for a count of 0. Fails (instead of wrapping) when `start`
/// is not a revision or the range would pass `i64::MAX`.
fn hand_out(start: i64, counts: &[u64]) -> Result<Vec<i64>, Status> {
    let bad = || {
        Status::internal(format!(
            "strata: the revision oracle answered start {start} for {} revisions, \
             which is not a valid revision range",
            counts.iter().sum::<u64>()
        ))
    };
    let total = counts.iter().try_fold(0i64, |acc, &c| {
        i64::try_from(c).ok().and_then(|c| acc.checked_add(c))
    });
    let after = match total {
        Some(t) if start >= 1 => start.checked_add(t).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let mut next = start;
    Ok(counts
        .iter()
        .map(|&c| {
            if c == 0 {
                after
            } else {
                let s = next;
                // Stays at or below `after`, which did not overflow.
                next += c as i64;
                s
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_out_splits_one_answer_among_waiters() {
        assert_eq!(hand_out(10, &[3, 0, 2]).unwrap(), vec![10, 15, 13]);
        assert_eq!(hand_out(1, &[0]).unwrap(), vec![1]);
        // The last revisions there are.
        assert_eq!(
            hand_out(i64::MAX - 3, &[1, 2, 0]).unwrap(),
            vec![i64::MAX - 3, i64::MAX - 2, i64::MAX]
        );
    }

    #[test]
    fn hand_out_refuses_ranges_that_would_wrap() {
        for (start, counts) in [
            (i64::MAX - 1, vec![1, 1]),
            (i64::MAX, vec![1]),
            (1, vec![u64::MAX]),
            (1, vec![1 << 63]),
            (0, vec![1]),
            (-5, vec![1]),
        ] {
            assert!(
                hand_out(start, &counts).is_err(),
                "start {start} with counts {counts:?} must be refused"
            );
        }
    }

    #[tokio::test]
    async fn unavailable_placement_is_retried_and_refusals_are_not() {
        use crate::placement_client::fake::serve;
        use crate::strata::AllocResponse;
        let flaky = serve(|n| match n {
            0 | 1 => Err(Status::unavailable("electing")),
            _ => Ok(AllocResponse { start: 100 }),
        })
        .await;
        let oracle = Oracle::new(placement_client(&flaky.addr).unwrap());
        assert_eq!(oracle.alloc(5).await.unwrap(), 100);
        assert_eq!(flaky.calls(), 3);

        let refusing = serve(|_| Err(Status::invalid_argument("no"))).await;
        let oracle = Oracle::new(placement_client(&refusing.addr).unwrap());
        assert!(oracle.alloc(5).await.is_err());
        assert_eq!(refusing.calls(), 1);
    }

    #[tokio::test]
    async fn allocations_share_one_stream_and_a_refusal_goes_back_to_unary() {
        use crate::placement_client::fake::serve;
        use crate::strata::AllocResponse;
        // Answers 10, 20, ...; the 4th allocation is refused as "not the
        // leader" (the stream ends), and the unary retry gets the next.
        let fake = serve(|n| match n {
            3 => Err(Status::unavailable("strata: not the placement leader")),
            n => Ok(AllocResponse {
                start: 10 * (n as i64 + 1),
            }),
        })
        .await;
        let oracle = Oracle::new(placement_client(&fake.addr).unwrap());
        for want in [10, 20, 30] {
            assert_eq!(oracle.alloc(1).await.unwrap(), want);
        }
        assert_eq!(fake.streams(), 1, "three allocations, one stream");
        assert_eq!(
            oracle.alloc(1).await.unwrap(),
            50,
            "refused on the stream, then unary"
        );
        assert_eq!(fake.calls(), 5);
        // Later allocations open a stream again (after a short pause).
        tokio::time::sleep(STREAM_RETRY_AFTER * 2).await;
        assert_eq!(oracle.alloc(1).await.unwrap(), 60);
        assert_eq!(fake.streams(), 2);
    }

    #[tokio::test]
    async fn a_batch_never_asks_for_more_than_the_bound() {
        let (tx, mut rx) = mpsc::channel(16);
        let waiter = |n| (n, oneshot::channel().0);
        for n in [MAX_ALLOC_COUNT / 2, MAX_ALLOC_COUNT / 2, 1, 0] {
            tx.try_send(waiter(n)).unwrap();
        }
        let first = rx.try_recv().unwrap();
        let (batch, total, carry) = gather(first, &mut rx);
        assert_eq!((batch.len(), total), (2, MAX_ALLOC_COUNT));
        let carry = carry.expect("the waiter that did not fit");
        assert_eq!(carry.0, 1);
        let (batch, total, carry) = gather(carry, &mut rx);
        assert_eq!((batch.len(), total, carry.is_none()), (2, 1, true));
        assert!(check_count(MAX_ALLOC_COUNT).is_ok());
        assert_eq!(
            check_count(MAX_ALLOC_COUNT + 1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
