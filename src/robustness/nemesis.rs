//! Nemeses: the faults injected while traffic runs, each chosen and timed by the
//! run's seed. Every fault is healed before the next one starts, and everything is
//! healed when the run ends.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{AdminKind, AdminRequest, GetRangesResponse, RangeInfo};

const SPLIT: i32 = AdminKind::Split as i32;
const TRANSFER_LEADER: i32 = AdminKind::TransferLeader as i32;

use super::cluster::{Cluster, Role};
use super::history::{Fault, Violation};
use super::traffic::Recorder;

/// Every nemesis name `--nemesis` takes.
pub const NAMES: &[&str] = &[
    "none",
    "kill",
    "pause",
    "partition",
    "leader-transfer",
    "split",
    "snapshot",
    "failpoint",
    "all",
];

/// Node failpoints that crash the process (node/src/failpoint.rs).
pub const CRASH_POINTS: &[&str] = &[
    "crash_before_log_fsync",
    "crash_after_log_fsync",
    "crash_mid_apply",
    "crash_mid_split",
    "crash_mid_snapshot_install",
];

pub fn parse(name: &str) -> anyhow::Result<&'static str> {
    NAMES
        .iter()
        .copied()
        .find(|n| *n == name)
        .ok_or_else(|| anyhow::anyhow!("unknown nemesis {name:?}; one of: {}", NAMES.join(", ")))
}

/// What the nemesis did, for the report.
pub struct Outcome {
    pub faults: Vec<Fault>,
    /// Processes that exited without being told to (a crash, a panic).
    pub violations: Vec<Violation>,
}

struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    rec: &'a Recorder,
    rng: SmallRng,
    out: Outcome,
}

/// Injects faults of kind `name` until `rec.stop`; heals everything before it
/// returns.
pub async fn run(cluster: &mut Cluster, rec: &Recorder, name: &str, seed: u64) -> Outcome {
    let mut n = Nemesis {
        cluster,
        rec,
        rng: SmallRng::seed_from_u64(seed ^ 0x6e656d65),
        out: Outcome {
            faults: Vec::new(),
            violations: Vec::new(),
        },
    };
    // Let traffic start and the first splits happen before the first fault.
    n.sleep_ms(2000, 3000).await;
    // Bounded: one fault per second at most, for as long as the run lasts.
    for _ in 0..100_000 {
        if rec.stopped() {
            break;
        }
        n.check_exits(None);
        let kind = if name == "all" {
            NAMES[1 + n.rng.random_range(0..NAMES.len() - 2)]
        } else {
            name
        };
        if let Err(e) = n.inject(kind).await {
            n.fault("error", "-", &format!("{kind}: {e:#}"));
        }
        n.sleep_ms(1000, 3000).await;
    }
    n.check_exits(None);
    if let Err(e) = n.cluster.heal() {
        n.fault("error", "-", &format!("heal: {e:#}"));
    }
    n.out
}

impl Nemesis<'_> {
    async fn sleep_ms(&mut self, lo: u64, hi: u64) {
        let ms = self.rng.random_range(lo..hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    fn fault(&mut self, kind: &str, target: &str, detail: &str) {
        self.out.faults.push(Fault {
            at: self.rec.now(),
            kind: kind.into(),
            target: target.into(),
            detail: detail.into(),
        });
    }

    /// Reports (and restarts) processes that exited on their own; `expected` is
    /// the one a crash failpoint was armed in.
    fn check_exits(&mut self, expected: Option<usize>) -> bool {
        let mut expected_exited = false;
        for i in 0..self.cluster.members.len() {
            if !self.cluster.reap(i) {
                continue;
            }
            let name = self.cluster.members[i].name.clone();
            if Some(i) == expected {
                expected_exited = true;
                continue;
            }
            self.out.violations.push(Violation {
                kind: "process.exited".into(),
                message: format!(
                    "{name} exited without a fault telling it to; its log ends with:\n{}",
                    self.cluster.log_tail(i, 1500)
                ),
                ops: vec![],
            });
            let _ = self.cluster.restart(i);
        }
        expected_exited
    }

    fn pick(&mut self, role: Role) -> usize {
        let all: Vec<usize> = self.cluster.of(role).collect();
        all[self.rng.random_range(0..all.len())]
    }

    /// A random range with a known leader, and the leader's member index.
    async fn leader_of_random_range(&mut self) -> Option<(GetRangesResponse, RangeInfo, usize)> {
        let resp = self.cluster.ranges().await.ok()?;
        let led: Vec<&RangeInfo> = resp.ranges.iter().filter(|r| r.leader_node != 0).collect();
        if led.is_empty() {
            return None;
        }
        let r = led[self.rng.random_range(0..led.len())].clone();
        let i = self.cluster.node_index(&resp, r.leader_node)?;
        Some((resp, r, i))
    }

    /// A placement replica: half the time the leader (when a replica says which
    /// it is), else any; and whether it is the leader, for the report.
    async fn pick_placement(&mut self) -> (usize, &'static str) {
        if self.rng.random_bool(0.5) {
            if let Some(i) = self.cluster.placement_leader().await {
                return (i, " (placement leader)");
            }
        }
        (self.pick(Role::Placement), "")
    }

    /// A node, router or placement replica for `kill` and `pause` (6:2:2).
    async fn pick_process(&mut self) -> (usize, &'static str) {
        match self.rng.random_range(0..10) {
            0..=5 => (self.pick_node().await, ""),
            6..=7 => (self.pick(Role::Router), ""),
            _ => self.pick_placement().await,
        }
    }

    /// A node: half the time the leader of a random range, else any node.
    async fn pick_node(&mut self) -> usize {
        if self.rng.random_bool(0.5) {
            if let Some((_, _, i)) = self.leader_of_random_range().await {
                return i;
            }
        }
        self.pick(Role::Node)
    }

    async fn inject(&mut self, kind: &str) -> anyhow::Result<()> {
        match kind {
            "none" => {}
            "kill" => {
                let (i, which) = self.pick_process().await;
                let name = self.cluster.members[i].name.clone();
                self.cluster.kill(i);
                self.fault("kill", &name, &format!("SIGKILL{which}"));
                self.sleep_ms(300, 2000).await;
                self.cluster.restart(i)?;
                self.fault("restart", &name, "");
            }
            "pause" => {
                let (i, which) = self.pick_process().await;
                let name = self.cluster.members[i].name.clone();
                self.cluster.signal_pause(i, true);
                self.fault("pause", &name, &format!("SIGSTOP{which}"));
                self.sleep_ms(1000, 4000).await;
                self.cluster.signal_pause(i, false);
                self.fault("resume", &name, "SIGCONT");
            }
            "partition" => {
                let placement = self.cluster.of(Role::Placement).count() > 1;
                if placement && self.rng.random_range(0..4) == 0 {
                    self.cut_placement_leader().await?;
                } else {
                    let i = self.pick_node().await;
                    self.partition(i, 2000, 5000).await?;
                }
            }
            "leader-transfer" => self.storm(TRANSFER_LEADER).await,
            "split" => self.storm(SPLIT).await,
            "snapshot" => {
                // A follower cut off while its ranges move on (and split), so it
                // has to catch up from a snapshot across the split.
                let i = self.pick(Role::Node);
                let name = self.cluster.members[i].name.clone();
                let before = self.snapshots(i);
                self.cluster.set_failpoints(i, &[("partition", "return")])?;
                self.fault("partition", &name, "for a snapshot catch-up");
                self.storm(SPLIT).await;
                self.sleep_ms(3000, 5000).await;
                self.cluster.set_failpoints(i, &[])?;
                self.fault("heal", &name, "");
                // Bounded wait for the catch-up, to report how it happened.
                let mut got = 0.0;
                for _ in 0..25 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    got = self.snapshots(i) - before;
                    if got > 0.0 {
                        break;
                    }
                }
                self.fault(
                    "snapshot",
                    &name,
                    &format!("{got} snapshot(s) applied after the heal"),
                );
            }
            "failpoint" => self.crash_at_failpoint().await?,
            other => anyhow::bail!("unknown nemesis {other}"),
        }
        Ok(())
    }

    /// Snapshots node `i` applied since it started (0 when it does not answer).
    fn snapshots(&self, i: usize) -> f64 {
        self.cluster
            .node_metric(i, "strata_node_snapshots_applied_total")
            .unwrap_or(0.0)
    }

    async fn partition(&mut self, i: usize, lo: u64, hi: u64) -> anyhow::Result<()> {
        let name = self.cluster.members[i].name.clone();
        self.cluster.set_failpoints(i, &[("partition", "return")])?;
        self.fault("partition", &name, "all its traffic dropped");
        self.sleep_ms(lo, hi).await;
        self.cluster.set_failpoints(i, &[])?;
        self.fault("heal", &name, "");
        Ok(())
    }

    /// The placement leader cut off its raft group for 2-5 s (its clients
    /// still reach it; the others elect a new leader).
    async fn cut_placement_leader(&mut self) -> anyhow::Result<()> {
        let (i, which) = self.pick_placement().await;
        let name = self.cluster.members[i].name.clone();
        self.cluster
            .set_failpoints(i, &[("placement_partition", "return")])?;
        self.fault("partition", &name, &format!("raft group cut off{which}"));
        self.sleep_ms(2000, 5000).await;
        self.cluster.set_failpoints(i, &[])?;
        self.fault("heal", &name, "");
        Ok(())
    }

    /// For ~3 s, leader transfers (or splits) of random ranges, back to back.
    async fn storm(&mut self, kind: i32) {
        let mut sent = 0;
        let mut answered = 0;
        for _ in 0..15 {
            if self.rec.stopped() {
                break;
            }
            if let Some((resp, r, _)) = self.leader_of_random_range().await {
                sent += 1;
                if self.admin(&resp, &r, kind).await.is_ok() {
                    answered += 1;
                }
            }
            self.sleep_ms(100, 300).await;
        }
        let what = if kind == SPLIT {
            "split"
        } else {
            "leader-transfer"
        };
        self.fault(
            what,
            "ranges",
            &format!("{sent} requests, {answered} accepted"),
        );
    }

    /// Sends an admin request for range `r` to its leader's node.
    async fn admin(
        &mut self,
        resp: &GetRangesResponse,
        r: &RangeInfo,
        kind: i32,
    ) -> anyhow::Result<()> {
        let desc = r.desc.clone().unwrap_or_default();
        let addr = &resp
            .nodes
            .iter()
            .find(|n| n.id == r.leader_node)
            .ok_or_else(|| anyhow::anyhow!("leader node unknown"))?
            .addr;
        let peer = if kind == TRANSFER_LEADER {
            let others: Vec<_> = desc
                .peers
                .iter()
                .filter(|p| p.node_id != r.leader_node && !p.learner)
                .cloned()
                .collect();
            if others.is_empty() {
                anyhow::bail!("no other voter");
            }
            Some(others[self.rng.random_range(0..others.len())])
        } else {
            None
        };
        let req = AdminRequest {
            range_id: desc.id,
            epoch: desc.epoch,
            kind,
            peer,
            ..AdminRequest::default()
        };
        let fut = async {
            let ep = strata_proto::tls::endpoint(addr)?;
            let mut c = NodeClient::new(strata_proto::tls::connect(&ep).await?);
            let a = c.admin(req).await?.into_inner();
            match a.error {
                Some(e) => anyhow::bail!("{e:?}"),
                None => Ok(()),
            }
        };
        tokio::time::timeout(Duration::from_secs(3), fut).await?
    }

    /// Arms a crash failpoint in one node, makes it likely to be hit, waits for
    /// the crash (bounded), then restarts the node without it.
    async fn crash_at_failpoint(&mut self) -> anyhow::Result<()> {
        let point = CRASH_POINTS[self.rng.random_range(0..CRASH_POINTS.len())];
        let i = self.pick_node().await;
        let name = self.cluster.members[i].name.clone();
        if point == "crash_mid_snapshot_install" {
            // Fall behind first (with splits), armed, so that the heal sends it a
            // snapshot that it crashes installing.
            self.cluster
                .set_failpoints(i, &[("partition", "return"), (point, "return")])?;
            self.fault("partition", &name, "to need a snapshot");
            self.storm(SPLIT).await;
            self.sleep_ms(2000, 3000).await;
            self.fault("heal", &name, "");
        }
        self.cluster.set_failpoints(i, &[(point, "return")])?;
        self.fault("arm", &name, point);
        if point == "crash_mid_split" {
            for _ in 0..5 {
                if let Some((resp, r, leader)) = self.leader_of_random_range().await {
                    if leader == i || self.rng.random_bool(0.3) {
                        let _ = self.admin(&resp, &r, SPLIT).await;
                    }
                }
            }
        }
        let mut crashed = false;
        for _ in 0..50 {
            if self.check_exits(Some(i)) {
                crashed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !crashed {
            self.cluster.kill(i);
        }
        self.cluster.set_failpoints(i, &[])?;
        let how = if crashed {
            format!("crashed at {point}")
        } else {
            format!("{point} not hit in 10 s: killed instead")
        };
        self.fault("crash", &name, &how);
        self.sleep_ms(200, 1000).await;
        self.cluster.restart(i)?;
        self.fault("restart", &name, "");
        Ok(())
    }
}
