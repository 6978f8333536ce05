//! Write flow control: a node refuses new writes with a retryable
//! `ServerBusy` while its storage engine is close to stalling writes, as
//! TiKV answers `ServerIsBusy` before RocksDB's own write stall.
//!
//! RocksDB delays writes, then stops them, when compaction falls behind
//! (too many level-0 files, too many bytes pending compaction). On a node
//! that stall lands on the raft thread, which writes the log and applies for
//! every range it hosts: a stalled write there holds every range's
//! heartbeats and votes, followers start elections, leaders change and
//! requests fail with "leader changed" — the cluster loses availability
//! exactly when it is busiest. Refusing new proposals first keeps the raft
//! threads moving (the entries already in flight still commit and apply),
//! gives compaction the disk, and turns overload into latency: the router
//! backs off and resends a refused request until the client's deadline,
//! which then answers etcd's "request timed out".
//!
//! The check is the leader's, for its own engine; followers' engines are
//! not consulted (they take the same writes, so their compaction debt grows
//! alike). Reads, deletes of whole ranges by compaction, and requests
//! already proposed are never refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::NodeError;
use crate::storage::{Cf, Engine, Property, L0_SLOWDOWN_FILES, PENDING_COMPACTION_SOFT_BYTES};

/// Writes are refused from this many level-0 files in a column family: a
/// margin below the engine's own slowdown ([`L0_SLOWDOWN_FILES`]).
pub const BUSY_LEVEL0_FILES: u64 = L0_SLOWDOWN_FILES * 3 / 4;
/// Writes are refused from this many bytes of pending compaction in a column
/// family ([`PENDING_COMPACTION_SOFT_BYTES`] with the same margin).
pub const BUSY_PENDING_COMPACTION_BYTES: u64 = PENDING_COMPACTION_SOFT_BYTES / 4 * 3;
// Refusals start before the engine's own stall, or they would come too late.
const _: () = assert!(
    BUSY_LEVEL0_FILES < L0_SLOWDOWN_FILES
        && BUSY_PENDING_COMPACTION_BYTES < PENDING_COMPACTION_SOFT_BYTES
);
/// How old the engine's figures a write is checked against may be (reading
/// them takes locks in the engine: not for every write).
const REFRESH: Duration = Duration::from_millis(100);
/// The column families the raft thread writes on every round.
const WATCHED: [Cf; 2] = [Cf::Data, Cf::Raft];

/// The engine's compaction debt: the largest over the watched column families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Debt {
    pub level0_files: u64,
    pub pending_compaction_bytes: u64,
}

impl Debt {
    /// Why writes must wait, if they must.
    pub fn busy(&self) -> Option<&'static str> {
        if self.level0_files >= BUSY_LEVEL0_FILES {
            Some("storage busy: too many level-0 files, compaction behind")
        } else if self.pending_compaction_bytes >= BUSY_PENDING_COMPACTION_BYTES {
            Some("storage busy: too many bytes pending compaction")
        } else {
            None
        }
    }

    fn of(db: &dyn Engine) -> Debt {
        let max = |p| {
            WATCHED
                .iter()
                .filter_map(|&cf| db.property(cf, p))
                .max()
                .unwrap_or(0)
        };
        Debt {
            level0_files: max(Property::Level0Files),
            pending_compaction_bytes: max(Property::PendingCompactionBytes),
        }
    }
}

type Measure = Box<dyn Fn() -> Debt + Send + Sync>;

pub struct WritePressure {
    node_id: u64,
    measure: Measure,
    /// The last figures, and when they were read.
    last: parking_lot::Mutex<Option<(Instant, Debt)>>,
}

impl WritePressure {
    pub fn new(node_id: u64, db: Arc<dyn Engine>) -> Arc<Self> {
        Self::measured_by(node_id, Box::new(move || Debt::of(&*db)))
    }

    fn measured_by(node_id: u64, measure: Measure) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            measure,
            last: parking_lot::Mutex::new(None),
        })
    }

    /// The engine's debt, at most [`REFRESH`] old.
    pub fn debt(&self) -> Debt {
        let mut last = self.last.lock();
        let mut debt = match *last {
            Some((at, d)) if at.elapsed() < REFRESH => d,
            _ => {
                let d = (self.measure)();
                *last = Some((Instant::now(), d));
                d
            }
        };
        // Test hook: the engine reports this many level-0 files.
        if let Some(n) = crate::failpoint::number(self.node_id, "engine_level0_files") {
            debt.level0_files = n;
        }
        debt
    }

    /// May a new write be proposed now? `ServerBusy` (the router retries
    /// it after a back-off) when the engine is close to stalling writes.
    pub fn check(&self) -> Result<(), NodeError> {
        match self.debt().busy() {
            None => Ok(()),
            Some(why) => {
                crate::metrics::proposal_rejected("engine_busy");
                Err(NodeError::Busy(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn writes_wait_below_the_engines_own_stall() {
        let ok = Debt {
            level0_files: BUSY_LEVEL0_FILES - 1,
            pending_compaction_bytes: BUSY_PENDING_COMPACTION_BYTES - 1,
        };
        assert_eq!(ok.busy(), None);
        let l0 = Debt {
            level0_files: BUSY_LEVEL0_FILES,
            ..ok
        };
        assert!(l0.busy().unwrap().contains("level-0"));
        let pending = Debt {
            pending_compaction_bytes: BUSY_PENDING_COMPACTION_BYTES,
            ..ok
        };
        assert!(pending.busy().unwrap().contains("pending compaction"));
    }

    #[test]
    fn refusals_are_retryable_and_follow_the_engine() {
        let files = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let (f, r) = (files.clone(), reads.clone());
        let p = WritePressure::measured_by(
            1,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
                Debt {
                    level0_files: f.load(Ordering::SeqCst),
                    pending_compaction_bytes: 0,
                }
            }),
        );
        assert!(p.check().is_ok());
        // Within REFRESH the figures are reused, not read again.
        for _ in 0..100 {
            assert!(p.check().is_ok());
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        files.store(BUSY_LEVEL0_FILES, Ordering::SeqCst);
        std::thread::sleep(REFRESH);
        let err = p.check().unwrap_err();
        assert!(err.is_route(), "the router must be allowed to resend it");
        assert!(matches!(err, NodeError::Busy(m) if m.contains("level-0")));
        files.store(2, Ordering::SeqCst);
        std::thread::sleep(REFRESH);
        assert!(p.check().is_ok(), "writes go on once compaction caught up");
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_rocksdb_engine_reports_its_debt() {
        let dir = tempfile::tempdir().unwrap();
        let db: Arc<dyn Engine> =
            Arc::new(crate::storage::rocks::RocksEngine::open(dir.path()).unwrap());
        let mut wb = crate::storage::WriteBatch::new();
        wb.put(Cf::Data, b"k", b"v");
        db.write(&wb, true).unwrap();
        assert_eq!(db.property(Cf::Data, Property::Level0Files), Some(0));
        // A flush (compaction flushes first) leaves no level-0 file behind
        // a full compaction; what matters is that both figures are read.
        db.compact_all(Cf::Data).unwrap();
        assert!(db
            .property(Cf::Data, Property::PendingCompactionBytes)
            .is_some());
        let p = WritePressure::new(1, db);
        assert_eq!(p.debt().busy(), None);
    }
}
