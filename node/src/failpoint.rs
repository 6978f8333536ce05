//! Test-only fault points of the node, through the `fail` crate (feature
//! `failpoints`; without it every point compiles to nothing).
//!
//! A point is evaluated under two names: the plain `name` (a process running
//! one node, configured at runtime through `STRATA_FAILPOINTS_FILE`, see
//! `src/component.rs`) and `name.<node id>` (a test running a whole cluster
//! in one process, e.g. `fail::cfg("partition.2", "return")`). Pauses are
//! only evaluated under `name.<node id>`.
//!
//! Pauses (action `return(MS)`: hold that many milliseconds):
//! - `sequencer_stamped`: a write batch stamped, before it is proposed;
//! - `read_before_mvcc`: a read, after its barrier, before it reads MVCC;
//! - `apply_before_write`: applying a stamped write, before its batch is written;
//! - `feed_before_subscribe`: a range feed, after its request was checked,
//!   before it subscribes to the range's events.
//!
//! Crashes (action `return`: log `failpoint NAME: crashing`, then abort, as
//! `kill -9` at that instant):
//! - `crash_before_log_fsync`: the Ready round, before the synced batch of
//!   raft log entries and hard state is written (`store/ready.rs`);
//! - `crash_after_log_fsync`: right after that write, before persisted
//!   messages are sent and the Ready is advanced;
//! - `crash_mid_apply`: an entry's apply batch written, before its effects
//!   are published (`store/exec.rs`);
//! - `crash_mid_split`: a split's batch written, before the new range is
//!   started (`store/exec.rs`);
//! - `crash_mid_snapshot_install`: a received snapshot staged and its raft
//!   state written, before its data is installed (`store/snapshot.rs`).
//!
//! Values (action `return(N)`):
//! - `engine_level0_files`: the storage engine reports N level-0 files to
//!   write flow control (`pressure.rs`), so writes are refused as busy.
//!
//! Faults (action `return`, evaluated on every use):
//! - `partition`: the node drops all raft traffic in and out (messages and
//!   snapshots), holds incoming `Kv`, `Admin`, `Status` and new `Feed`
//!   requests while it lasts (then Unavailable after 30 s), stalls open
//!   feeds, and cannot reach placement (heartbeats, oracle, id allocation).
//!
//! Planted bugs (to prove checkers catch them; never on unless configured):
//! - `plant_stale_read`: a linearizable read reads MVCC 20 revisions behind
//!   the one it reports (`service/mod.rs`).

use std::time::Duration;

use tonic::Status;

/// How often a held request looks at the partition again.
const HOLD_POLL: Duration = Duration::from_millis(50);
/// A held request gives up after this long.
const HOLD_MAX: Duration = Duration::from_secs(30);

#[cfg(feature = "failpoints")]
fn pause_ms(node_id: u64, name: &str) -> Option<u64> {
    number(node_id, name)
}

/// The number `name.<node_id>` is configured with (action `return(N)`), if
/// it is; always `None` without the `failpoints` feature.
#[inline]
pub fn number(node_id: u64, name: &str) -> Option<u64> {
    #[cfg(feature = "failpoints")]
    return fail::eval(&format!("{name}.{node_id}"), |arg| {
        arg.and_then(|a| a.trim().parse::<u64>().ok())
    })
    .flatten();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (node_id, name);
        None
    }
}

/// Pauses the calling task when the point is configured.
#[inline]
pub async fn pause(node_id: u64, name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = pause_ms(node_id, name) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let _ = (node_id, name);
}

/// Pauses the calling thread (the raft thread, a blocking read) when the
/// point is configured.
#[inline]
pub fn pause_blocking(node_id: u64, name: &str) {
    #[cfg(feature = "failpoints")]
    if let Some(ms) = pause_ms(node_id, name) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let _ = (node_id, name);
}

/// Is `name` or `name.<node_id>` on (configured, and its action `return`
/// this time)? Always false without the `failpoints` feature.
#[inline]
pub fn on(node_id: u64, name: &str) -> bool {
    use strata_proto::failpoint::on as on_named;
    on_named(name) || (cfg!(feature = "failpoints") && on_named(&format!("{name}.{node_id}")))
}

/// Aborts the process (as `kill -9` would end it) when the point is on.
#[inline]
pub fn crash(node_id: u64, name: &str) {
    if on(node_id, name) {
        eprintln!("failpoint {name}: crashing");
        std::process::abort();
    }
}

/// Is the node cut off from the network (`partition`)?
#[inline]
pub fn partitioned(node_id: u64) -> bool {
    on(node_id, "partition")
}

/// Holds an incoming request while the node is partitioned, like packets
/// retransmitted until the network heals; Unavailable after 30 s.
pub async fn hold_while_partitioned(node_id: u64) -> Result<(), Status> {
    if !partitioned(node_id) {
        return Ok(());
    }
    let start = tokio::time::Instant::now();
    while partitioned(node_id) {
        if start.elapsed() >= HOLD_MAX {
            return Err(Status::unavailable("strata: node unreachable (partition)"));
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
    Ok(())
}

/// A call to placement while partitioned: hangs a little, then fails as an
/// unreachable peer does. `Ok` when not partitioned.
pub async fn placement_reachable(node_id: u64) -> Result<(), Status> {
    if !partitioned(node_id) {
        return Ok(());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Err(Status::unavailable(
        "strata: placement unreachable (partition)",
    ))
}

/// An incoming snapshot stream while partitioned: nothing arrives, so the
/// sender learns nothing until the partition ends (at most 30 s), then it is
/// refused (Unavailable). `Ok` when not partitioned.
pub async fn refuse_while_partitioned(node_id: u64) -> Result<(), Status> {
    if !partitioned(node_id) {
        return Ok(());
    }
    let _ = hold_while_partitioned(node_id).await;
    Err(Status::unavailable("strata: node unreachable (partition)"))
}
