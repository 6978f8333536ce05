//! Runs the scheduler once a second and carries out its operators by asking
//! range leaders (`Node.Admin`) to change membership or hand over leadership.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{AdminKind, AdminRequest, Peer};
use tonic::Request;

use crate::scheduler::{schedule, Config, NodeView, Op, RangeView, SwapDamping};
use crate::service::PlacementService;
use crate::state::{Command, Outcome};

const TICK: Duration = Duration::from_secs(1);
/// A range with an operator in flight is left alone this long.
const OP_COOLDOWN: Duration = Duration::from_secs(3);
/// A node without a heartbeat this long is shown as down (not yet replaced).
const NODE_UP_WINDOW: Duration = Duration::from_secs(3);
/// A voter its live node has not hosted for this long is replaced (the node
/// was told after `hosting::MISSING_AFTER`; catching up takes a snapshot of
/// the range, which may wait for the node's replica of the parent range).
const MISSING_GRACE: Duration = Duration::from_secs(60);
/// A write-load swap (the scheduler's step 5) waits this long after the last
/// one: nodes report range write rates every 3 s, and the rates must show the
/// last swap's effect, measured after its transfers, before the next is chosen.
const LOAD_SETTLE: Duration = Duration::from_secs(10);
/// A range swapped for write load is not swapped again for this long.
const SWAP_PIN: Duration = Duration::from_secs(60);

pub async fn run(svc: Arc<PlacementService>, node_down_after: Duration, max_ops: usize) {
    let mut iv = tokio::time::interval(TICK);
    let mut recent: HashMap<u64, Instant> = HashMap::new();
    let mut damping = SwapDamping::new(LOAD_SETTLE, SWAP_PIN);
    let started = Instant::now();
    // The scheduler is a pure function of its inputs: while they stay as they
    // were when it last had nothing to do, it is not run again (with
    // thousands of ranges, building its input is most of an idle
    // placement's work).
    let mut settled: Option<((u64, u64), Vec<NodeView>)> = None;
    loop {
        iv.tick().await;
        // Only the serving leader schedules, and it gives nodes a chance to
        // heartbeat after a restart or a failover first.
        if started.elapsed() < NODE_UP_WINDOW
            || svc.serving_for().is_none_or(|d| d < NODE_UP_WINDOW)
        {
            continue;
        }
        recent.retain(|_, t| t.elapsed() < OP_COOLDOWN);
        let nodes = node_views(&svc, node_down_after);
        let version = svc.scheduler_version();
        // Unhosted voters age without any version changing.
        let aging = svc.hosting.lock().any_unhosted();
        if recent.is_empty() && !aging && settled.as_ref() == Some(&(version, nodes.clone())) {
            continue;
        }
        let ranges = range_views(&svc);
        let busy: HashSet<u64> = recent.keys().copied().collect();
        let now = Instant::now();
        let (load_swap, swap_pinned) = damping.at(now);
        let scheduled = schedule(
            &nodes,
            &ranges,
            &busy,
            &Config {
                replicas: svc.replicas,
                max_ops,
                missing_grace: MISSING_GRACE,
                load_swap,
                swap_pinned,
            },
        );
        damping.record(&scheduled, now);
        let ops = scheduled.ops;
        // Nothing to do, and nothing held back (a swap waiting for
        // LOAD_SETTLE or SWAP_PIN may be due with the same inputs).
        let idle = ops.is_empty() && busy.is_empty() && damping.idle(now);
        settled = idle.then_some((version, nodes));
        // One operator per range, so they are independent: run at once (a
        // burst of split children gets its leaders spread in one round,
        // not one transfer after another).
        let svc_ref = &svc;
        let runs = ops.into_iter().map(|op| {
            recent.insert(op.range(), Instant::now());
            tracing::info!(?op, "scheduling");
            async move {
                if let Err(e) = crate::metrics::operator(&op, execute(svc_ref, &op)).await {
                    tracing::warn!(?op, "operator failed: {e:#}");
                }
            }
        });
        futures::future::join_all(runs).await;
    }
}

fn node_views(svc: &PlacementService, node_down_after: Duration) -> Vec<NodeView> {
    let st = svc.rep.state();
    let seen = svc.last_seen.lock();
    st.nodes
        .keys()
        .map(|id| {
            let age = seen.get(id).map(|t| t.elapsed());
            NodeView {
                id: *id,
                up: age.is_some_and(|a| a < NODE_UP_WINDOW),
                dead: age.is_none_or(|a| a >= node_down_after),
            }
        })
        .collect()
}

fn range_views(svc: &PlacementService) -> Vec<RangeView> {
    let st = svc.rep.state();
    let leaders = svc.leaders.lock();
    let stats = svc.stats.lock();
    let hosting = svc.hosting.lock();
    let now = Instant::now();
    st.ranges
        .values()
        .map(|r| RangeView {
            range: r.clone(),
            leader_node: leaders.get(&r.id).map_or(0, |h| h.node),
            writes_per_sec: stats.get(&r.id).map_or(0.0, |s| s.writes_per_sec),
            unhosted: r
                .peers
                .iter()
                .filter_map(|(_, n)| Some((*n, hosting.unhosted_for(r.id, *n, now)?)))
                .collect(),
        })
        .collect()
}

async fn execute(svc: &PlacementService, op: &Op) -> anyhow::Result<()> {
    let (range_id, kind, peer) = match *op {
        Op::AddLearner { range, node } => {
            let Outcome::Ids { first_peer_id, .. } = svc
                .rep
                .propose(Command::AllocIds {
                    ranges: 0,
                    peers: 1,
                })
                .await?
            else {
                anyhow::bail!("no peer id");
            };
            (
                range,
                AdminKind::AddLearner,
                Peer {
                    id: first_peer_id,
                    node_id: node,
                    learner: true,
                },
            )
        }
        Op::RemovePeer { range, peer, node } => (
            range,
            AdminKind::RemovePeer,
            Peer {
                id: peer,
                node_id: node,
                learner: false,
            },
        ),
        Op::TransferLeader { range, peer, node } => (
            range,
            AdminKind::TransferLeader,
            Peer {
                id: peer,
                node_id: node,
                learner: false,
            },
        ),
    };
    let (desc, addr) = {
        let st = svc.rep.state();
        let r = st
            .ranges
            .get(&range_id)
            .ok_or_else(|| anyhow::anyhow!("range gone"))?;
        let leader = svc.leaders.lock().get(&range_id).map_or(0, |h| h.node);
        let addr = st
            .nodes
            .get(&leader)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("leader unknown"))?;
        (r.descriptor(), addr)
    };
    let ep = strata_proto::tls::endpoint(&addr)?.connect_timeout(Duration::from_millis(500));
    let ch = strata_proto::tls::connect(&ep).await?;
    let mut req = Request::new(AdminRequest {
        range_id,
        epoch: desc.epoch,
        kind: kind as i32,
        peer: Some(peer),
        split_key: Vec::new(),
    });
    req.set_timeout(Duration::from_secs(5));
    let resp = NodeClient::new(ch).admin(req).await?.into_inner();
    if let Some(e) = resp.error {
        anyhow::bail!("leader refused: {}", e.message);
    }
    Ok(())
}
