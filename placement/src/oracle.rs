//! The revision oracle: `alloc(count)` hands out `[start, start + count)`,
//! every later allocation larger; `alloc(0)` answers the next unallocated
//! revision without consuming it.
//!
//! Counts come from the network, so every step is checked: a count above
//! [`strata_proto::oracle::MAX_ALLOC_COUNT`] (2^20 per call) or one whose end
//! would pass `i64::MAX` is refused with InvalidArgument and changes nothing.
//! `next` only ever grows, so no revision is handed out twice and none goes
//! back.
//!
//! # Across leaders
//! Only a serving leader answers (`replica/lead.rs`: leader, holding its
//! lease, its term's first entry applied). Each leader hands out revisions
//! only below a high-water mark it committed through the raft log *before*
//! handing out any revision under it. A new leader, once it serves, has
//! applied every committed entry — every window any earlier leader handed
//! revisions out of — and starts at the committed high-water mark, above all
//! of them: no revision repeats. No earlier leader answers any more by then
//! (its lease ended before a new leader could be elected), and each answer
//! is checked against the lease after it is computed: so every revision a
//! new leader hands out comes after, in real time, every one an old leader
//! did — none goes back, `alloc(0)` included.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use strata_proto::strata::{AllocAnswer, AllocRequest};
use tonic::Status;

use crate::service::PlacementService;
use crate::state::{Command, ORACLE_WINDOW};

/// The first revision handed out: as in etcd, an empty store is at revision
/// 1 and its first write is revision 2. Clients count on it: clientv3's
/// election and lock recipes wait for keys created before `rev - 1`, and a
/// first write at revision 1 made a first Campaign wait on its own key.
pub const FIRST_REVISION: i64 = 2;

pub struct Oracle {
    /// The next revision to hand out. Revisions start at [`FIRST_REVISION`].
    pub next: i64,
    /// The leader term `next` was set up in (0: never).
    pub term: u64,
    /// The start of the last allocation of n > 0 (for the planted bug
    /// `plant_reuse_revision` only).
    pub last_start: Option<i64>,
}

impl Oracle {
    /// The end of an allocation of `count` revisions from `next` (exclusive),
    /// or InvalidArgument.
    pub fn end_of(&self, count: u64) -> Result<i64, Status> {
        strata_proto::oracle::check_count(count)?;
        // count <= 2^20, so the conversion is exact.
        self.next.checked_add(count as i64).ok_or_else(|| {
            Status::invalid_argument(format!(
                "strata: cannot allocate {count} revisions: the revision space ends \
                 at {} and the next revision is {}",
                i64::MAX,
                self.next
            ))
        })
    }
}

/// The high-water mark to persist before handing out revisions below `end`:
/// a window past it, or the end of the revision space.
pub fn window_after(end: i64) -> i64 {
    // Not a revision handed out, only a bound on them: saturating is exact.
    end.saturating_add(ORACLE_WINDOW)
}

impl PlacementService {
    /// The oracle, set up for this leader's term: a new term starts at the
    /// committed high-water mark.
    async fn oracle_in(&self, term: u64) -> tokio::sync::MutexGuard<'_, Oracle> {
        let mut o = self.oracle.lock().await;
        if o.term != term {
            let hw = self.rep.state().oracle_high_water;
            o.next = o.next.max(hw).max(FIRST_REVISION);
            o.term = term;
            o.last_start = None;
        }
        o
    }

    pub async fn alloc(&self, count: u64) -> Result<i64, Status> {
        let began = std::time::Instant::now();
        let term = self.serving()?;
        let mut o = self.oracle_in(term).await;
        let end = o.end_of(count)?;
        if count > 0 && crate::failpoint::on("plant_reuse_revision") {
            // Planted bug: the previous allocation's revisions again.
            if let Some(start) = o.last_start {
                crate::metrics::alloc(count as i64, o.next, began);
                return Ok(start);
            }
        }
        let hw = self.rep.state().oracle_high_water;
        if end > hw {
            // Persist the new window before handing out anything in it.
            let high_water = window_after(end);
            crate::metrics::WINDOWS.inc();
            self.rep
                .propose(Command::OracleWindow { high_water })
                .await?;
        }
        // Still the serving leader of the same term, now that the answer is
        // known: no newer leader can have handed out anything yet.
        if self.serving()? != term {
            return Err(strata_proto::errors::placement_not_leader(
                self.rep.id(),
                None,
            ));
        }
        let start = o.next;
        o.next = end;
        if count > 0 {
            o.last_start = Some(start);
        }
        crate::metrics::alloc(count as i64, o.next, began);
        Ok(start)
    }

    /// Refuses to compact at a revision not handed out yet (`ErrFutureRev`):
    /// a compaction record above every revision would refuse every read.
    pub async fn check_compact(&self, revision: i64) -> Result<(), Status> {
        let term = self.serving()?;
        if revision >= self.oracle_in(term).await.next {
            return Err(strata_proto::errors::future_rev());
        }
        Ok(())
    }
}

/// The answers of one `AllocStream`.
pub type AllocAnswers = Pin<Box<dyn Stream<Item = Result<AllocAnswer, Status>> + Send>>;

impl PlacementService {
    /// Serves one `AllocStream`: each request is run as a unary `Alloc` is
    /// (the serving check, the lease re-check after the answer), one at a
    /// time, in order; the first refusal ends the stream. Answered where the
    /// server polls the response, with no task of its own in between (a
    /// hand-off between tasks is a thread wake-up on every allocation).
    pub fn alloc_stream(self: Arc<Self>, reqs: tonic::Streaming<AllocRequest>) -> AllocAnswers {
        Box::pin(futures::stream::unfold(
            Some((self, reqs)),
            |open| async move {
                let (svc, mut reqs) = open?;
                let r = reqs.message().await.ok()??;
                let answer = strata_proto::answers::alloc_answer(svc.alloc(r.count).await);
                let next = (answer.code == 0).then_some((svc, reqs));
                Some((Ok(answer), next))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use strata_proto::strata::placement_server::Placement;
    use strata_proto::strata::{AllocIdsRequest, CompactRequest};
    use tonic::{Code, Request};

    use crate::service::tests::service;
    use crate::service::Svc;

    fn assert_invalid<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
        match r {
            Err(s) if s.code() == Code::InvalidArgument => {}
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }

    /// Over real gRPC: an `AllocStream` answers in order, each allocation
    /// above the last, `alloc(0)` without consuming; a refusal is answered
    /// and then ends the stream.
    #[tokio::test]
    async fn an_alloc_stream_answers_in_order_and_ends_at_a_refusal() {
        use strata_proto::strata::placement_client::PlacementClient;
        use strata_proto::strata::placement_server::PlacementServer;
        use strata_proto::strata::AllocRequest;

        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir, 0).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PlacementServer::new(Svc(svc)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = PlacementClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let mut answers = client
            .alloc_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut ask = async |count: u64| {
            tx.send(AllocRequest { count }).await.unwrap();
            let a = answers.message().await.unwrap().expect("an answer");
            (a.code, a.start)
        };
        let (code, a) = ask(5).await;
        assert_eq!(code, 0);
        let (_, next) = ask(0).await;
        assert!(next >= a + 5, "alloc(0) = {next} inside [{a}, {a} + 5)");
        let (_, again) = ask(0).await;
        assert_eq!(again, next, "alloc(0) consumed a revision");
        let (_, b) = ask(1).await;
        assert!(b >= next, "allocation went back: next {next}, then {b}");
        let (code, _) = ask((1 << 20) + 1).await;
        assert_eq!(code, Code::InvalidArgument as i32);
        let _ = tx.send(AllocRequest { count: 1 }).await;
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), answers.message())
            .await
            .expect("the stream ends after a refusal");
        assert!(matches!(end, Ok(None)), "answered after a refusal: {end:?}");
        server.abort();
    }

    #[tokio::test]
    async fn alloc_refuses_a_huge_count_and_stays_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir, 0).await;
        let a = svc.alloc(10).await.expect("alloc 10");
        assert!(a >= 1, "revisions start at 1, got {a}");
        // u64::MAX used to become -1 (`count as i64`): `next` moved back by one.
        assert_invalid(svc.alloc(u64::MAX).await, "alloc(u64::MAX)");
        // 2^63 used to become i64::MIN.
        assert_invalid(svc.alloc(1 << 63).await, "alloc(2^63)");
        // Above the per-call bound.
        assert_invalid(svc.alloc((1 << 20) + 1).await, "alloc(2^20 + 1)");
        let b = svc.alloc(1).await.expect("alloc 1");
        assert!(
            b >= a + 10,
            "allocation went back: [{a}, {}) then {b}",
            a + 10
        );
        let c = svc.alloc(1 << 20).await.expect("alloc at the bound");
        assert!(c > b, "allocation went back: {b} then {c}");
        let next = svc.alloc(0).await.expect("alloc 0");
        assert!(
            next >= c + (1 << 20),
            "alloc(0) = {next} inside [{c}, {c} + 2^20)"
        );
    }

    #[tokio::test]
    async fn alloc_refuses_an_overflowing_count() {
        let dir = tempfile::tempdir().unwrap();
        // The persisted window ends 5 below the largest revision.
        let svc = service(&dir, i64::MAX - 5).await;
        assert_invalid(svc.alloc(10).await, "alloc(10) at i64::MAX - 5");
        // What fits is still handed out, once, and nothing after it.
        let start = svc.alloc(5).await.expect("the last 5 revisions");
        assert_eq!(start, i64::MAX - 5);
        assert_invalid(svc.alloc(1).await, "alloc(1) at i64::MAX");
        assert_eq!(svc.alloc(0).await.expect("alloc 0"), i64::MAX);
    }

    #[tokio::test]
    async fn alloc_ids_refuses_huge_counts() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir, 0).await;
        let svc = Svc(svc);
        let ids = |ranges, peers| Request::new(AllocIdsRequest { ranges, peers });
        let first = svc
            .alloc_ids(ids(1, 3))
            .await
            .expect("alloc ids")
            .into_inner();
        assert_invalid(
            svc.alloc_ids(ids(u64::MAX, 1)).await,
            "alloc_ids(u64::MAX ranges)",
        );
        assert_invalid(
            svc.alloc_ids(ids(1, u64::MAX)).await,
            "alloc_ids(u64::MAX peers)",
        );
        let second = svc
            .alloc_ids(ids(1, 3))
            .await
            .expect("alloc ids")
            .into_inner();
        assert_eq!(
            (second.first_range_id, second.first_peer_id),
            (first.first_range_id + 1, first.first_peer_id + 3),
            "ids after a refused call continue where they were"
        );
    }

    #[tokio::test]
    async fn compact_refuses_a_revision_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir, 0).await;
        let start = svc.alloc(100).await.expect("alloc");
        let svc = Svc(svc);
        let compact = |revision| Request::new(CompactRequest { revision });
        match svc.compact(compact(i64::MAX)).await {
            Err(s) if s.code() == Code::OutOfRange => {
                assert_eq!(s.message(), strata_proto::errors::future_rev().message())
            }
            other => panic!("compact(i64::MAX): expected a future revision error, got {other:?}"),
        }
        let rev = start + 99;
        let got = svc
            .compact(compact(rev))
            .await
            .expect("compact")
            .into_inner();
        assert_eq!(got.compact_revision, rev);
    }
}
