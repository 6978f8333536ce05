//! The coordinator of cross-range transactions (the protocol and its
//! argument: docs/cross-range-txns.md).
//!
//! A write txn whose keys lie in several ranges: prepare every participant
//! (each freezes and answers its compares and failing ops), compute the
//! path, take the commit revision R from the oracle, record the decision in
//! placement, then commit every participant at R and merge their shares.
//! The first attempt prepares every participant at once (unless this router
//! saw a conflict within the last second); a participant held by another txn
//! makes it abort, and the next attempts prepare in key order, each prepare
//! queueing in its range for the txn ahead (see `attempt`), inside the
//! request deadline:
//! a client sees an error only where etcd would give one (or on timeout). A read-only
//! txn over several ranges needs no protocol: every part is read at one
//! linearizable revision.

mod merge;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use futures::future::join_all;
use prost::Message;
use strata_proto::errors;
use strata_proto::etcd::{PbTxnOpRequest, PbTxnRequest, PbTxnResponse};
use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::{
    CompareEval, KvKind, TxnDecideRequest, TxnDecision, TxnForgetRequest, TxnPart, TxnPartResult,
    TxnPrepare, TxnPrepared,
};
use strata_proto::xtxn;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::kv::Kv;
use crate::routing::{is_busy, is_stale, CachedRange, Retry};

/// How often a coordinator waiting for a range touches those it holds (the
/// ranges resolve a txn untouched for 2 s: `node/src/txn`).
const TOUCH_EVERY: Duration = Duration::from_millis(500);
/// What a waiting prepare leaves of the deadline, to abort in.
const PREPARE_WAIT_MARGIN: Duration = Duration::from_millis(500);

/// For how long after a conflict this router's txns start in key order
/// (a parallel first attempt would likely hit a held range, freeze the
/// ranges it got for nothing, and start over).
const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// When this router's last txn conflict happened, in ms since `epoch()`
/// (0: never).
static LAST_CONFLICT_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

fn conflicted() {
    let now = epoch().elapsed().as_millis() as u64;
    LAST_CONFLICT_MS.store(now.max(1), Ordering::Relaxed);
}

fn contended() -> bool {
    match LAST_CONFLICT_MS.load(Ordering::Relaxed) {
        0 => false,
        at => epoch().elapsed().as_millis() as u64 <= at + CONTENDED_FOR.as_millis() as u64,
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn decode<M: Message + Default>(b: &[u8]) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::internal(format!("strata: bad node response: {e}")))
}

/// Why one attempt did not commit.
enum Retryable {
    /// Some range is held by another txn, or changed shape: try again.
    Again,
    /// The client's error (etcd's), nothing applied.
    Fail(Status),
}

impl Kv {
    /// The ranges holding `keys`, in key order, or `None` while the cache
    /// has a gap (a split in progress).
    pub fn participants(&self, keys: &[KeyRange]) -> Option<Vec<CachedRange>> {
        let mut out: Vec<CachedRange> = Vec::new();
        for kr in keys.iter().filter(|k| !k.is_empty()) {
            let rs = self.router.ranges_for(kr);
            if !self.router.covers(kr, &rs) {
                return None;
            }
            for r in rs {
                if !out.iter().any(|o| o.desc.id == r.desc.id) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.desc.start_key.cmp(&b.desc.start_key));
        Some(out)
    }

    /// A write txn over `keys`, in several ranges (or one, by the time it
    /// runs: then as any txn).
    pub async fn txn_cross(
        &self,
        t: &PbTxnRequest,
        keys: &[KeyRange],
    ) -> Result<PbTxnResponse, Status> {
        let deadline = crate::reqmeta::deadline(self.router.request_timeout);
        // The txn's age, kept over its attempts: its first txn id.
        let mut priority = 0u64;
        for attempt in 0u32.. {
            if Instant::now() >= deadline {
                break;
            }
            let Some(parts) = self.participants(keys) else {
                let _ = self.router.refresh().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let ordered = attempt > 0 || contended();
            match self
                .attempt(t, &parts, ordered, deadline, &mut priority)
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(Retryable::Fail(s)) => return Err(s),
                Err(Retryable::Again) => {
                    conflicted();
                    crate::metrics::retry("txn_conflict");
                    // A short random pause; the next attempts prepare in
                    // key order, waiting rather than aborting on conflicts.
                    let ms = 1 + rand::random::<u64>() % 4;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
        Err(errors::timeout())
    }

    /// One try: prepares in parallel, or (`ordered`, after a conflict)
    /// one range after another in key order.
    async fn attempt(
        &self,
        t: &PbTxnRequest,
        parts: &[CachedRange],
        ordered: bool,
        deadline: Instant,
        priority: &mut u64,
    ) -> Result<PbTxnResponse, Retryable> {
        let fail = Retryable::Fail;
        let txn_id = self.oracle.alloc(1).await.map_err(fail)? as u64;
        if *priority == 0 {
            *priority = txn_id;
        }
        let priority = *priority;
        let ids: Vec<u64> = parts.iter().map(|p| p.desc.id).collect();
        let body = t.encode_to_vec();
        let prepare = |p: &CachedRange| {
            let left = deadline.saturating_duration_since(Instant::now());
            let req = TxnPrepare {
                txn_id,
                participants: ids.clone(),
                txn: body.clone(),
                version: p.desc.epoch.unwrap_or_default().version,
                lease_revoke: 0,
                // Ordered attempts wait in the range's queue (oldest txn
                // first) for what is left of the deadline, less a
                // margin to abort in; the first attempt never waits.
                wait_ms: match ordered {
                    true => millis(left.saturating_sub(PREPARE_WAIT_MARGIN)),
                    false => 0,
                },
                // Ranges that free up go to the oldest waiting txn first.
                priority,
            }
            .encode_to_vec();
            let p = p.clone();
            async move {
                self.router
                    .call(&p, KvKind::KvTxnPrepare, req, 0, Retry::Prepare)
                    .await
            }
        };
        let answers = if ordered {
            // One range at a time in key order, waiting while a range is
            // held by another txn: a txn that waits holds only ranges below
            // the one it waits for, so waiting txns never wait in a cycle
            // (and txns in the first, parallel, attempt never wait).
            // Prepares wait in each range's queue; meanwhile the ranges
            // already held are touched, so their resolvers leave this live
            // coordinator's txn alone however long the queue.
            let mut out = Vec::with_capacity(parts.len());
            let mut touch = tokio::time::interval(TOUCH_EVERY);
            touch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            touch.tick().await;
            for (k, p) in parts.iter().enumerate() {
                let a = loop {
                    let call = prepare(p);
                    tokio::pin!(call);
                    let answer = loop {
                        tokio::select! {
                            a = &mut call => break a,
                            _ = touch.tick(), if k > 0 => self.touch(txn_id, &parts[..k]),
                        }
                    };
                    match answer {
                        Err(s) if is_busy(&s) && Instant::now() < deadline => {
                            let ms = 1 + rand::random::<u64>() % 3;
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        other => break other,
                    }
                };
                let failed = a.is_err();
                out.push(a);
                if failed {
                    break;
                }
            }
            out
        } else {
            join_all(parts.iter().map(prepare)).await
        };
        let mut prepared: Vec<TxnPrepared> = Vec::with_capacity(parts.len());
        let mut failed: Option<Status> = None;
        for a in answers {
            match a.and_then(|b| decode::<TxnPrepared>(&b)) {
                Ok(p) => prepared.push(p),
                Err(s) => {
                    // The most telling failure: a client error over a
                    // conflict over a shape change.
                    let rank = |s: &Status| match s {
                        s if is_busy(s) => 1,
                        s if is_stale(s) => 0,
                        _ => 2,
                    };
                    if failed.as_ref().is_none_or(|f| rank(&s) > rank(f)) {
                        failed = Some(s);
                    }
                }
            }
        }
        if let Some(s) = failed {
            self.abort(txn_id, parts).await;
            if is_stale(&s) {
                let _ = self.router.refresh().await;
            }
            return Err(match is_busy(&s) || is_stale(&s) {
                true => Retryable::Again,
                false => fail(s),
            });
        }
        // The path, from every range's view of every compare.
        let path = match path_of(t, prepared.iter().map(|p| p.compares.as_slice())) {
            Ok(path) => path,
            Err(s) => {
                self.abort(txn_id, parts).await;
                return Err(fail(s));
            }
        };
        let on = xtxn::ops_on_path(t, &path);
        let op_error = prepared
            .iter()
            .flat_map(|p| p.errors.iter())
            .filter(|e| on.get(e.op as usize).copied().unwrap_or(false))
            .min_by_key(|e| e.op);
        if let Some(e) = op_error {
            self.abort(txn_id, parts).await;
            return Err(fail(Status::new(Code::from(e.code), e.message.clone())));
        }
        if crate::failpoint::on("txn_stall_after_prepare") {
            tracing::warn!(
                txn = txn_id,
                "failpoint: stalled between prepare and commit"
            );
            std::future::pending::<()>().await;
        }
        let rev = self.oracle.alloc(1).await.map_err(fail)?;
        if future_read(t, &on, rev) {
            self.abort(txn_id, parts).await;
            return Err(fail(errors::future_rev()));
        }
        let decision = TxnDecision {
            txn_id,
            commit: true,
            revision: rev,
            path,
        };
        let recorded = self
            .router
            .placement
            .clone()
            .txn_decide(TxnDecideRequest {
                decision: Some(decision.clone()),
                participants: ids.clone(),
            })
            .await
            .map_err(|s| {
                // Perhaps recorded: participants learn it from placement.
                tracing::warn!(txn = txn_id, "txn decision unknown: {s}");
                fail(errors::timeout())
            })?
            .into_inner()
            .decision
            .unwrap_or_default();
        if !recorded.commit {
            // Participants found it abandoned and aborted it first.
            self.abort(txn_id, parts).await;
            return Err(Retryable::Again);
        }
        if crate::failpoint::on("txn_stall_after_decide") {
            tracing::warn!(txn = txn_id, "failpoint: stalled after the commit decision");
            std::future::pending::<()>().await;
        }
        let body = decision.encode_to_vec();
        let commits = parts
            .iter()
            .map(|p| self.decide_one(p, KvKind::KvTxnCommit, body.clone()));
        let shares = join_all(commits).await;
        // Only the participants that applied the decision: one that did not
        // still holds the intent, and its resolver needs the record (without
        // it, it would record an abort — after other ranges committed).
        let resolved: Vec<u64> = parts
            .iter()
            .zip(&shares)
            .filter(|(_, s)| s.is_ok())
            .map(|(p, _)| p.desc.id)
            .collect();
        self.forget(txn_id, resolved);
        let mut out = Vec::with_capacity(shares.len());
        for s in shares {
            // Committed (the decision is recorded): a lost share is an
            // outcome the client cannot see, reported as etcd reports a
            // request whose outcome is unknown.
            out.push(
                decode::<PbTxnResponse>(&s.map_err(|_| fail(errors::timeout()))?).map_err(fail)?,
            );
        }
        let owner = |key: &[u8]| parts.iter().position(|p| p.key_range().contains(key));
        let mut resp = merge::merge(t, &out, &owner).map_err(fail)?;
        resp.header = self.header(rev);
        Ok(resp)
    }

    /// Sends a decision to one participant until it applied it (the range
    /// may change leader or epoch meanwhile; decisions are idempotent).
    async fn decide_one(
        &self,
        p: &CachedRange,
        kind: KvKind,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        let deadline = crate::reqmeta::deadline(self.router.request_timeout);
        let mut range = p.clone();
        loop {
            match self
                .router
                .call(&range, kind, body.clone(), 0, Retry::Read)
                .await
            {
                Err(s) if is_stale(&s) && Instant::now() < deadline => {
                    let _ = self.router.refresh().await;
                    range = self.router.cached(p.desc.id).unwrap_or(range);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// Aborts the attempt in every participant (a range it never reached
    /// ignores it; one it cannot reach resolves it itself).
    async fn abort(&self, txn_id: u64, parts: &[CachedRange]) {
        let body = TxnDecision {
            txn_id,
            commit: false,
            ..Default::default()
        }
        .encode_to_vec();
        let aborts = parts
            .iter()
            .map(|p| self.decide_one(p, KvKind::KvTxnAbort, body.clone()));
        for r in join_all(aborts).await {
            if let Err(e) = r {
                tracing::debug!(txn = txn_id, "txn abort not delivered: {e}");
            }
        }
    }

    /// Tells `held`'s leaders that this txn's coordinator is alive (in the
    /// background, at most [`TOUCH_EVERY`] each; an answer does not matter).
    fn touch(&self, txn_id: u64, held: &[CachedRange]) {
        let body = TxnDecision {
            txn_id,
            ..Default::default()
        }
        .encode_to_vec();
        for p in held {
            let (router, p, body) = (self.router.clone(), p.clone(), body.clone());
            tokio::spawn(async move {
                let call = router.call(&p, KvKind::KvTxnTouch, body, 0, Retry::Read);
                let _ = tokio::time::timeout(TOUCH_EVERY, call).await;
            });
        }
    }

    fn forget(&self, txn_id: u64, range_ids: Vec<u64>) {
        let mut placement = self.router.placement.clone();
        tokio::spawn(async move {
            let req = TxnForgetRequest { txn_id, range_ids };
            if let Err(e) = placement.txn_forget(req).await {
                tracing::debug!(txn = txn_id, "txn record not forgotten: {e}");
            }
        });
    }

    /// A read-only txn over several ranges: every part read at revision
    /// `rr` (compares first when there are any, then the ops on the path).
    pub async fn txn_read_cross(
        &self,
        t: &PbTxnRequest,
        keys: &[KeyRange],
        rr: i64,
    ) -> Result<PbTxnResponse, Status> {
        let deadline = crate::reqmeta::deadline(self.router.request_timeout);
        loop {
            if Instant::now() >= deadline {
                return Err(errors::timeout());
            }
            let Some(parts) = self.participants(keys) else {
                let _ = self.router.refresh().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match self.read_parts(t, &parts, rr).await {
                Err(s) if is_stale(&s) => {
                    let _ = self.router.refresh().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) => return Err(s),
                Ok(mut resp) => {
                    resp.header = self.header(rr);
                    return Ok(resp);
                }
            }
        }
    }

    async fn read_parts(
        &self,
        t: &PbTxnRequest,
        parts: &[CachedRange],
        rr: i64,
    ) -> Result<PbTxnResponse, Status> {
        let path = if xtxn::compares(t).is_empty() {
            vec![true; xtxn::nodes(t)]
        } else {
            let evals = self.read_round(t, parts, rr, Vec::new()).await?;
            path_of(t, evals.iter().map(|p| p.compares.as_slice()))?
        };
        let shares = self.read_round(t, parts, rr, path).await?;
        let shares = shares
            .iter()
            .map(|s| decode::<PbTxnResponse>(&s.response))
            .collect::<Result<Vec<_>, _>>()?;
        let owner = |key: &[u8]| parts.iter().position(|p| p.key_range().contains(key));
        merge::merge(t, &shares, &owner)
    }

    async fn read_round(
        &self,
        t: &PbTxnRequest,
        parts: &[CachedRange],
        rr: i64,
        path: Vec<bool>,
    ) -> Result<Vec<TxnPartResult>, Status> {
        let body = t.encode_to_vec();
        let reads = parts.iter().map(|p| {
            let req = TxnPart {
                txn: body.clone(),
                path: path.clone(),
                version: p.desc.epoch.unwrap_or_default().version,
            };
            self.router
                .call(p, KvKind::KvTxnRead, req.encode_to_vec(), rr, Retry::Read)
        });
        join_all(reads)
            .await
            .into_iter()
            .map(|r| r.and_then(|b| decode::<TxnPartResult>(&b)))
            .collect()
    }
}

/// The path the txn takes, from every range's evaluation of every compare
/// (one slice per range, one entry per compare of the tree in pre-order).
fn path_of<'a>(
    t: &PbTxnRequest,
    evals: impl Iterator<Item = &'a [CompareEval]> + Clone,
) -> Result<Vec<bool>, Status> {
    let compares = xtxn::compares(t);
    if evals.clone().any(|e| e.len() != compares.len()) {
        return Err(Status::internal(
            "strata: a txn participant answered the wrong compares",
        ));
    }
    let results: Vec<bool> = compares
        .iter()
        .enumerate()
        .map(|(i, c)| xtxn::combine(c, evals.clone().map(|e| &e[i])))
        .collect();
    Ok(xtxn::path(t, &results).expect("one result per compare"))
}

/// Does an op on the path read at a revision after the txn's view (`rev - 1`)?
fn future_read(t: &PbTxnRequest, on: &[bool], rev: i64) -> bool {
    xtxn::ops(t).iter().zip(on).any(|(op, &runs)| {
        runs && matches!(&op.request, Some(PbTxnOpRequest::RequestRange(r)) if r.revision > rev - 1)
    })
}
