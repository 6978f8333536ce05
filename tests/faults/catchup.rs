//! Snapshot catch-up past a split: a node that lagged behind the leader's
//! log truncation while its range split must end up hosting exactly what the
//! descriptors say — every range that lists it, initialized from a snapshot
//! of that range (never from its own stale copy of the parent's data) — and
//! nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::eraftpb::MessageType;
use strata_node::transport::memory::Rule;
use strata_proto::etcd::{PbRangeRequest, PbRangeResponse};
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{GetRangesRequest, KvKind, KvRequest, RangeDescriptor};

use crate::cluster::{eventually, Cluster, Opts};
use crate::put;

/// One key as a serializable read returns it:
/// (key, value, create revision, mod revision, version).
type Version = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// Every key of range `d` as node `node` serves it to a serializable read
/// (`read_revision` 0: the replica's applied state) through `Node.Kv`.
async fn serializable_read(
    c: &Cluster,
    node: u64,
    d: &RangeDescriptor,
) -> Result<Vec<Version>, String> {
    let mut client = c.node_client(node).await;
    // etcd keys are never empty: "\0" is the first key of the keyspace.
    let key = if d.start_key.is_empty() {
        vec![0]
    } else {
        d.start_key.clone()
    };
    let range_end = if d.end_key.is_empty() {
        vec![0]
    } else {
        d.end_key.clone()
    };
    let resp = client
        .kv(KvRequest {
            range_id: d.id,
            epoch: None,
            kind: KvKind::KvRange as i32,
            request: PbRangeRequest {
                key,
                range_end,
                ..Default::default()
            }
            .encode_to_vec(),
            read_revision: 0,
        })
        .await
        .map_err(|e| format!("node {node}: a read of range {}: {e}", d.id))?
        .into_inner();
    if let Some(e) = resp.error {
        return Err(format!(
            "node {node} answered a serializable read of range {} with error kind {} ({})",
            d.id, e.kind, e.message
        ));
    }
    let r = PbRangeResponse::decode(&resp.response[..]).map_err(|e| e.to_string())?;
    Ok(r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect())
}

/// Checks that every range in placement's directory is hosted by exactly the
/// nodes its leader's descriptor lists, and that `lagging` serves each of its
/// ranges with exactly its leader's data. Returns the number of ranges, or
/// the first difference found.
pub(crate) async fn caught_up(c: &Cluster, lagging: u64) -> Result<usize, String> {
    let mut pc = PlacementClient::connect(format!("http://{}", c.placement))
        .await
        .map_err(|e| e.to_string())?;
    let dir = pc
        .get_ranges(GetRangesRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut listed_on_lagging = Vec::new();
    for info in &dir.ranges {
        let id = info.desc.as_ref().map_or(0, |d| d.id);
        let leader = c
            .leader_of(id)
            .ok_or_else(|| format!("range {id} has no leader"))?;
        let desc = c
            .node(leader)
            .ranges
            .get(&id)
            .map(|r| r.desc.read().clone())
            .ok_or_else(|| format!("range {id}: its leader's replica is gone"))?;
        if info.desc.as_ref().and_then(|d| d.epoch) != desc.epoch {
            return Err(format!(
                "placement holds range {id} at {:?}, its leader at {:?}",
                info.desc.as_ref().and_then(|d| d.epoch),
                desc.epoch
            ));
        }
        for p in &desc.peers {
            let hosted = c.node(p.node_id).ranges.get(&id).map(|r| r.peer_id);
            if hosted != Some(p.id) {
                return Err(format!(
                    "node {} does not host range {id} [{:?}, {:?}), whose descriptor lists it \
                     as {} peer {} (it hosts peer {hosted:?})",
                    p.node_id,
                    String::from_utf8_lossy(&desc.start_key),
                    String::from_utf8_lossy(&desc.end_key),
                    if p.learner { "learner" } else { "voter" },
                    p.id,
                ));
            }
        }
        if desc.peers.iter().any(|p| p.node_id == lagging) {
            listed_on_lagging.push(id);
            let want = serializable_read(c, leader, &desc).await?;
            let got = serializable_read(c, lagging, &desc).await?;
            if got != want {
                return Err(format!(
                    "node {lagging} serves range {id} with {} keys that differ from its \
                     leader's {} (first difference: {:?} vs {:?})",
                    got.len(),
                    want.len(),
                    got.iter().zip(&want).find(|(g, w)| g != w).map(|x| x.0),
                    got.iter().zip(&want).find(|(g, w)| g != w).map(|x| x.1),
                ));
            }
        }
    }
    let hosted: Vec<u64> = c.node(lagging).ranges.iter().map(|r| *r.key()).collect();
    if let Some(extra) = hosted.iter().find(|id| !listed_on_lagging.contains(id)) {
        return Err(format!(
            "node {lagging} hosts range {extra}, which no descriptor places there"
        ));
    }
    Ok(dir.ranges.len())
}

/// Writes the keys `k/15`..`k/29` (which the split will move to the new
/// range) and waits until `node` applied them as `leader` did.
async fn write_old_keys(c: &Cluster, kv: &mut etcd_client::Client, leader: u64, node: u64) {
    for i in 15..30 {
        put(kv, &format!("k/{i:02}"), "old").await;
    }
    eventually(
        Duration::from_secs(10),
        "node C to apply the writes",
        || (c.applied_rev(node, 1) == c.applied_rev(leader, 1)).then_some(()),
    )
    .await;
}

/// Node C hears nothing while range 1 splits and its leader truncates its log
/// past everything C has; C's copy of the keys that move to the new range is
/// stale. Once healed, C must host every range that lists it, with exactly
/// its leader's data, and every voter of every range must host it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_catch_up_past_a_split_hosts_the_new_range() {
    let _fp = fail::FailScenario::setup();
    let keep = 20;
    let c = Cluster::start(Opts {
        range_split_keys: 20,
        raft_log_keep_entries: keep,
        ..Opts::default()
    })
    .await;
    let leader = c.wait_leader(1).await;
    let lagging = c.others(leader)[0];
    let mut kv = c.client().await;
    // C holds these keys when it is cut off; they move to the new range and
    // change meanwhile, so C's copy is stale.
    write_old_keys(&c, &mut kv, leader, lagging).await;

    let cut = c.net.add(Rule::new().touching(lagging).drop());
    for i in 0..30 {
        put(&mut kv, &format!("k/{i:02}"), &format!("new {i}")).await;
    }
    eventually(Duration::from_secs(30), "range 1 to split", || {
        (c.node(leader).ranges.len() >= 2).then_some(())
    })
    .await;
    // Rewrites of the first and the last key grow the logs of range 1 and of
    // the last range without more splits, until their leaders truncate them
    // far past anything C has.
    for round in 0..4 * keep {
        put(&mut kv, "k/00", &format!("first {round}")).await;
        put(&mut kv, "k/29", &format!("last {round}")).await;
    }
    let snapshots_to_lagging = c.count_snapshots(1, lagging, None);
    c.net.remove(cut);

    let healed = Instant::now();
    let limit = Duration::from_secs(60);
    let ranges = loop {
        let state = caught_up(&c, lagging).await;
        match state {
            Ok(n) => break n,
            Err(e) if healed.elapsed() > limit => {
                panic!("node {lagging} did not catch up {limit:?} after the partition healed: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(ranges >= 2, "range 1 split");
    assert!(
        snapshots_to_lagging.load(Ordering::SeqCst) > 0,
        "range 1 reached node {lagging} by a snapshot (else this test checks nothing)"
    );
}

/// Node C hears nothing of range 1 while it splits, for long enough that
/// placement tells C about the new range: C creates an uninitialized replica
/// of it, whose snapshot must wait (C's replica of range 1 still covers the
/// new range's keys). Once healed, C applies the split from range 1's log
/// (it was not truncated): the split's own replica of the new range must
/// take the uninitialized one's place, with exactly its leader's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_applied_late_replaces_an_uninitialized_replica() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        range_split_keys: 20,
        ..Opts::default()
    })
    .await;
    let leader = c.wait_leader(1).await;
    let slow = c.others(leader)[0];
    let mut kv = c.client().await;
    write_old_keys(&c, &mut kv, leader, slow).await;

    let hold = c.net.add(Rule::new().range(1).touching(slow).drop());
    let offered = Arc::new(AtomicBool::new(false));
    let seen = offered.clone();
    c.net.add(
        Rule::new()
            .to(slow)
            .msg_type(MessageType::MsgSnapshot)
            .when(move |s| {
                if s.env.range_id != 1 {
                    seen.store(true, Ordering::SeqCst);
                }
                false
            })
            .drop(),
    );
    for i in 0..30 {
        put(&mut kv, &format!("k/{i:02}"), &format!("new {i}")).await;
    }
    eventually(Duration::from_secs(30), "range 1 to split", || {
        (c.node(leader).ranges.len() >= 2).then_some(())
    })
    .await;
    // Only C's uninitialized replica answers the new range's leader so that
    // it sends a snapshot.
    eventually(
        Duration::from_secs(20),
        "a snapshot of the new range offered to node C",
        || offered.load(Ordering::SeqCst).then_some(()),
    )
    .await;
    assert!(
        c.node(slow).ranges.len() == 1,
        "node C serves nothing but range 1 before it applied the split"
    );
    c.net.remove(hold);

    let healed = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        match caught_up(&c, slow).await {
            Ok(n) => {
                assert!(n >= 2, "range 1 split");
                break;
            }
            Err(e) if healed.elapsed() > limit => {
                panic!("node {slow} did not catch up {limit:?} after the partition healed: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
