//! Maintenance RPCs of the node (etcd's Maintenance service, through the
//! router): `Defragment` (RocksDB compaction of everything), `RangeHash`
//! (one replica's hash of its range at a revision, for HashKV and `strata
//! ctl check`), and the test-only `Corrupt`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::errors;
use strata_proto::strata::{
    CorruptRequest, DefragmentResponse, RangeHashRequest, RangeHashResponse, RouteErrorKind,
};
use tonic::Status;

use super::{route_err, route_error, NodeService};
use crate::error::NodeError;
use crate::range::{desc_range, RangeShared};
use crate::storage::{Cf, WriteBatch};

/// How long a follower waits to have applied what the leader had when it
/// hashed, and a leader for its barrier.
const HASH_WAIT: Duration = Duration::from_secs(5);

/// One defragmentation at a time per node (each rewrites every table).
static DEFRAGMENTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("strata: {what}: {e}"))
}

impl NodeService {
    /// Compacts every column family down to its last level (RocksDB drops
    /// deleted and overwritten data there): the space a deletion and an MVCC
    /// compaction freed is given back.
    pub(super) async fn defragment_all(&self) -> Result<DefragmentResponse, Status> {
        let _one = DEFRAGMENTING.lock().await;
        let (db, space) = (self.db.clone(), self.space.clone());
        let before = space.db_size();
        tokio::task::spawn_blocking(move || {
            for cf in [Cf::Data, Cf::Meta, Cf::Raft] {
                db.compact_all(cf)?;
            }
            Ok::<_, crate::storage::EngineError>(())
        })
        .await
        .map_err(|e| internal("defragment task failed", e))?
        .map_err(|e| internal("defragment", e))?;
        let after = space.db_size();
        tracing::info!(
            node_id = self.node_id,
            before_bytes = before,
            after_bytes = after,
            "defragmented"
        );
        Ok(DefragmentResponse {
            db_size_before_bytes: before,
            db_size_after_bytes: after,
        })
    }

    /// This replica's hash of its range at `revision` (see `RangeHashRequest`).
    pub(super) async fn hash_range(
        &self,
        req: RangeHashRequest,
    ) -> Result<RangeHashResponse, Status> {
        let rev = req.revision;
        if rev <= 0 {
            return Err(Status::invalid_argument(
                "strata: a range hash is taken at a positive revision",
            ));
        }
        let refused =
            |r: Option<&RangeShared>, e: NodeError| -> Result<RangeHashResponse, Status> {
                Ok(RangeHashResponse {
                    error: Some(route_error(r, e)?),
                    ..Default::default()
                })
            };
        let r = match self.replica(req.range_id, None) {
            Ok(r) => r,
            Err(e) => return refused(None, e),
        };
        if req.barrier {
            if !r.is_leader() {
                return refused(Some(&r), NodeError::NotLeader);
            }
            let seq = self.sequencers.get(req.range_id);
            match tokio::time::timeout(HASH_WAIT, seq.barrier(rev)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return refused(Some(&r), e),
                Err(_) => return Err(errors::timeout()),
            }
        } else {
            let deadline = tokio::time::Instant::now() + HASH_WAIT;
            while r.applied_index.load(Ordering::Acquire) < req.min_applied_index {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Status::unavailable(format!(
                        "strata: the replica of range {} on node {} is behind its leader \
                         (applied index {} < {})",
                        req.range_id,
                        self.node_id,
                        r.applied_index.load(Ordering::Acquire),
                        req.min_applied_index
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Applied state is published after its batch is written, so the
        // view taken now holds at least `applied_index`.
        let applied_index = r.applied_index.load(Ordering::Acquire);
        let Some(gen) = r.data_stable() else {
            return refused(Some(&r), NodeError::NotLeader);
        };
        let desc = r.desc.read().clone();
        let view = self.mvcc.snapshot();
        // The floor is raised before history goes: checked after the view
        // was taken, a floor at or below `rev` means the view has it all.
        let compacted = r.compacted.load(Ordering::Acquire);
        if rev < compacted {
            return Err(errors::compacted());
        }
        let span = desc_range(&desc);
        let (hash, keys) = tokio::task::spawn_blocking(move || view.hash_at(&span, rev))
            .await
            .map_err(|e| internal("hash task failed", e))?
            .map_err(|e| internal("hash", e))?;
        if r.data_stable() != Some(gen) {
            // A snapshot replaced the data meanwhile: ask again.
            return Ok(RangeHashResponse {
                error: Some(route_err(
                    RouteErrorKind::NotLeader,
                    r.leader_node(),
                    "data replaced by a snapshot",
                )),
                ..Default::default()
            });
        }
        Ok(RangeHashResponse {
            hash,
            keys,
            applied_index,
            compact_revision: compacted,
            desc: Some(desc),
            error: None,
        })
    }

    /// Test-only: changes the value of `key`'s latest version in this
    /// replica, in place, without raft (nodes built without the `failpoints`
    /// feature refuse).
    pub(super) async fn corrupt_value(&self, req: CorruptRequest) -> Result<(), Status> {
        if !cfg!(feature = "failpoints") {
            return Err(Status::failed_precondition(
                "strata: Corrupt is a test hook; this node was built without `failpoints`",
            ));
        }
        let r: Arc<RangeShared> = self
            .replica(req.range_id, None)
            .map_err(|_| Status::not_found("strata: no replica of that range here"))?;
        if !desc_range(&r.desc.read()).contains(&req.key) {
            return Err(Status::invalid_argument("strata: key outside the range"));
        }
        let (mvcc, db) = (self.mvcc.clone(), self.db.clone());
        tokio::task::spawn_blocking(move || {
            let v = mvcc
                .get_at(&req.key, i64::MAX)
                .map_err(|e| internal("corrupt", e))?
                .ok_or_else(|| Status::not_found("strata: no live version of that key"))?;
            let mut value = v.value.clone();
            value.value.extend_from_slice(b"\xffcorrupted");
            let mut wb = WriteBatch::new();
            mvcc.stage_version(&mut wb, &req.key, v.mod_revision, &value);
            db.write(&wb, true).map_err(|e| internal("corrupt", e))?;
            tracing::warn!(
                key = ?String::from_utf8_lossy(&req.key),
                revision = v.mod_revision,
                "test hook: value corrupted in place"
            );
            Ok(())
        })
        .await
        .map_err(|e| internal("corrupt task failed", e))?
    }
}
