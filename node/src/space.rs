//! The space quota (etcd's `--quota-backend-bytes`) and the NOSPACE alarm on
//! a node, as etcd does them on a member:
//!
//! - a write that adds data (a Put, a Txn or cross-range txn prepare with a
//!   Put) is refused with etcd's `database space exceeded` when this node's
//!   MVCC storage plus the request's bytes would pass the quota, and the node
//!   raises a NOSPACE alarm in placement (member id = this node's id);
//! - while any NOSPACE alarm is active in the cluster (placement's list,
//!   learned from every heartbeat), every such write is refused on every
//!   node; deletes, reads and compaction go on;
//! - `etcdctl alarm disarm` removes the alarm; the next write over the quota
//!   raises it again (etcd does the same).
//!
//! The size is the `data` and `meta` column families (sorted tables and
//! write buffers). The raft log is left out, as etcd's quota leaves out its
//! WAL; the space a deletion frees comes back with `Defragment` (RocksDB
//! compaction), as etcd's comes back with its defragment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::errors;
use strata_proto::oracle::PlacementConn;
use strata_proto::strata::{Alarm, AlarmChange};

use crate::error::NodeError;
use crate::storage::{Cf, Engine, Property};

/// etcd's default quota (2 GiB), also what `--quota-backend-bytes 0` means.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// etcd's `AlarmType` NOSPACE.
pub const ALARM_NOSPACE: i32 = 1;
/// etcd's `AlarmRequest` ACTIVATE.
const ACTIVATE: i32 = 1;
/// The column families that hold MVCC state (what the quota counts).
const COUNTED: [Cf; 2] = [Cf::Data, Cf::Meta];
/// How old the size a write is checked against may be (reading RocksDB's
/// sizes walks its file lists: not for every write); writes accepted since
/// are added to it.
const SIZE_REFRESH: Duration = Duration::from_millis(100);

/// The size writes are checked against: measured at `at`, plus `added`,
/// the bytes of the writes accepted since.
struct Measured {
    at: Instant,
    bytes: u64,
    added: u64,
}

pub struct Space {
    node_id: u64,
    db: Arc<dyn Engine>,
    quota_bytes: u64,
    /// A NOSPACE alarm is active somewhere in the cluster (placement's list
    /// at the last heartbeat; set at once when this node raises one).
    nospace: AtomicBool,
    /// A raise is on its way to placement (at most one at a time).
    raising: Arc<AtomicBool>,
    placement: PlacementConn,
    measured: parking_lot::Mutex<Option<Measured>>,
    /// [`SIZE_REFRESH`] (tests keep the first measure).
    size_refresh: Duration,
}

impl Space {
    pub fn new(
        node_id: u64,
        db: Arc<dyn Engine>,
        quota_bytes: u64,
        placement: PlacementConn,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            db,
            quota_bytes: match quota_bytes {
                0 => DEFAULT_QUOTA_BYTES,
                q => q,
            },
            nospace: AtomicBool::new(false),
            raising: Arc::new(AtomicBool::new(false)),
            placement,
            measured: parking_lot::Mutex::new(None),
            size_refresh: SIZE_REFRESH,
        })
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    fn sum(&self, props: &[Property]) -> u64 {
        COUNTED
            .iter()
            .flat_map(|&cf| props.iter().map(move |&p| (cf, p)))
            .map(|(cf, p)| self.db.property(cf, p).unwrap_or(0))
            .fold(0u64, u64::saturating_add)
    }

    /// The node's MVCC storage in bytes (etcd's `dbSize`).
    pub fn db_size(&self) -> u64 {
        self.sum(&[Property::SstBytes, Property::MemtableBytes])
    }

    /// Of that, the live data (etcd's `dbSizeInUse`): RocksDB's estimate of
    /// what is not yet dropped garbage, never above [`Space::db_size`].
    pub fn db_size_in_use(&self) -> u64 {
        self.sum(&[Property::LiveDataBytes, Property::MemtableBytes])
            .min(self.db_size())
    }

    /// May a write adding `cost` bytes go ahead? (0: it adds nothing, always.)
    pub fn check(&self, cost: u64) -> Result<(), NodeError> {
        if cost == 0 {
            return Ok(());
        }
        if self.nospace.load(Ordering::Acquire) {
            return Err(errors::no_space().into());
        }
        let mut m = self.measured.lock();
        let m = match &mut *m {
            Some(m) if m.at.elapsed() < self.size_refresh => m,
            stale => stale.insert(Measured {
                at: Instant::now(),
                bytes: self.db_size(),
                added: 0,
            }),
        };
        let after = m.bytes.saturating_add(m.added).saturating_add(cost);
        if after > self.quota_bytes {
            self.raise();
            return Err(errors::no_space().into());
        }
        m.added = m.added.saturating_add(cost);
        Ok(())
    }

    /// Placement's list of active alarms, from a heartbeat.
    pub fn learn(&self, alarms: &[Alarm]) {
        let active = alarms.iter().any(|a| a.alarm == ALARM_NOSPACE);
        self.nospace.store(active, Ordering::Release);
    }

    /// Raises NOSPACE for this node: refused here at once, recorded in
    /// placement in the background (retried for a while: placement may be
    /// failing over), from where every node learns it.
    fn raise(&self) {
        self.nospace.store(true, Ordering::Release);
        if self.raising.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            node_id = self.node_id,
            quota_bytes = self.quota_bytes,
            "space quota exceeded: raising a NOSPACE alarm"
        );
        let (mut placement, node_id) = (self.placement.clone(), self.node_id);
        let change = AlarmChange {
            action: ACTIVATE,
            alarm: Some(Alarm {
                member_id: node_id,
                alarm: ALARM_NOSPACE,
            }),
        };
        let raising = self.raising.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                match placement.alarm(change).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::info!("raising the NOSPACE alarm: {}", e.message());
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            raising.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryEngine;

    /// The in-memory engine keeps no sizes: writes are counted from 0.
    #[tokio::test]
    async fn writes_past_the_quota_or_under_an_alarm_are_refused() {
        let placement = strata_proto::oracle::placement_client("127.0.0.1:1").expect("client");
        let mut space = Space::new(7, Arc::new(MemoryEngine::new()), 100, placement);
        // Accepted writes add up (no re-measuring, which would start over
        // from the engine's 0).
        Arc::get_mut(&mut space).expect("one owner").size_refresh = Duration::from_secs(3600);
        assert!(space.check(60).is_ok());
        // 60 + 60 would pass 100: refused, and capped at once.
        assert!(space.check(60).is_err());
        assert!(
            space.check(1).is_err(),
            "capped until placement says otherwise"
        );
        assert!(space.check(0).is_ok(), "deletes and reads always go");
        // Disarmed (placement lists no alarm): what fits goes again.
        space.learn(&[]);
        assert!(space.check(40).is_ok());
        assert!(space.check(1).is_err(), "60 + 40 + 1 > 100");
        // Another node's NOSPACE caps this one too.
        space.learn(&[]);
        let other = Alarm {
            member_id: 9,
            alarm: ALARM_NOSPACE,
        };
        space.learn(&[other]);
        let e = space.check(0).and_then(|()| space.check(1)).unwrap_err();
        let NodeError::Etcd(s) = e else {
            panic!("not an etcd error: {e:?}");
        };
        assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        // 0 means etcd's default.
        let placement = strata_proto::oracle::placement_client("127.0.0.1:1").expect("client");
        let dflt = Space::new(7, Arc::new(MemoryEngine::new()), 0, placement);
        assert_eq!(dflt.quota_bytes(), DEFAULT_QUOTA_BYTES);
    }
}
