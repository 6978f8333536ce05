//! The cluster under test: real `strata placement|node|router` processes started
//! from this executable, each with its own data directory, log file and failpoint
//! file (`STRATA_FAILPOINTS_FILE`, read by processes built with the `failpoints`
//! feature). The nemesis kills, restarts, pauses and partitions them.
//!
//! Ports from the run's base B (the first free block of [`Options::ports`]):
//! placement replica i at B+i−1, node i after them, then the routers, then the
//! nodes' metrics. Nodes and routers are given every placement replica.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{GetRangesRequest, GetRangesResponse, MembersRequest};

/// A client of the placement replica at `addr` (TLS when this process's
/// internal TLS is set).
async fn placement(addr: &str) -> anyhow::Result<PlacementClient<tonic::transport::Channel>> {
    let ep = strata_proto::tls::endpoint(addr)?;
    Ok(PlacementClient::new(strata_proto::tls::connect(&ep).await?))
}

/// What a component is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Placement,
    Node,
    Router,
}

/// One process of the cluster (running or not).
pub struct Member {
    pub role: Role,
    pub name: String,
    /// Its gRPC address (a router's: its client address).
    pub addr: String,
    args: Vec<String>,
    log: PathBuf,
    failpoints: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// How to start the cluster.
pub struct Options {
    /// Replicas of placement's raft group (1, 3 or 5).
    pub placements: usize,
    pub nodes: usize,
    pub routers: usize,
    pub base_port: u16,
    /// Split a range once it holds this many keys (tiny: splits during the run).
    pub split_keys: u64,
    pub raft_log_keep_entries: u64,
    pub node_down_after: String,
    pub progress_notify_interval: String,
    /// TLS on every port (`--tls`): the files every component is given.
    pub tls: Option<crate::certs::TlsFiles>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    exe: PathBuf,
}

impl Options {
    /// Consecutive ports a cluster takes: placement replicas, nodes, routers,
    /// the nodes' metrics.
    pub fn ports(&self) -> usize {
        self.placements + self.nodes + self.routers + self.nodes
    }
}

/// Finds `n` consecutive free ports from `base` (or the first free block after it).
pub fn free_ports(base: u16, n: u16) -> anyhow::Result<u16> {
    let mut start = base;
    while u32::from(start) + u32::from(n) < 65000 {
        match (start..start + n).find(|&p| TcpListener::bind(("127.0.0.1", p)).is_err()) {
            Some(taken) => start = taken + 1,
            None => return Ok(start),
        }
    }
    bail!("no {n} free consecutive ports from {base}")
}

impl Cluster {
    /// Lays out and starts every process; returns once a router answers.
    pub fn start(dir: &Path, opts: &Options) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe().context("find own executable")?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let base = free_ports(opts.base_port, opts.ports() as u16)?;
        let addr = |k: usize| format!("127.0.0.1:{}", base as usize + k);
        let (p, n) = (opts.placements, opts.nodes);
        let placements: Vec<String> = (0..p).map(addr).collect();
        let placement = placements.join(",");
        let peers = placements
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let path = |s: &str| dir.join(s).to_string_lossy().into_owned();
        for (i, listen) in placements.iter().enumerate() {
            let name = format!("placement-{}", i + 1);
            members.push((
                Role::Placement,
                name.clone(),
                listen.clone(),
                vec![
                    "placement".into(),
                    "--id".into(),
                    (i + 1).to_string(),
                    "--peers".into(),
                    peers.clone(),
                    "--data-dir".into(),
                    path(&name),
                    "--listen".into(),
                    listen.clone(),
                    "--replicas".into(),
                    n.min(3).to_string(),
                    "--node-down-after".into(),
                    opts.node_down_after.clone(),
                ],
            ));
        }
        for i in 1..=opts.nodes {
            let name = format!("node-{i}");
            members.push((
                Role::Node,
                name.clone(),
                addr(p + i - 1),
                vec![
                    "node".into(),
                    "--data-dir".into(),
                    path(&name),
                    "--listen".into(),
                    addr(p + i - 1),
                    "--placement".into(),
                    placement.clone(),
                    "--range-split-keys".into(),
                    opts.split_keys.to_string(),
                    "--range-split-write-rate".into(),
                    "0".into(),
                    "--raft-log-keep-entries".into(),
                    opts.raft_log_keep_entries.to_string(),
                    "--metrics-addr".into(),
                    addr(p + n + opts.routers + i - 1),
                ],
            ));
        }
        for r in 1..=opts.routers {
            members.push((
                Role::Router,
                format!("router-{r}"),
                addr(p + n + r - 1),
                vec![
                    "router".into(),
                    "--listen-client".into(),
                    addr(p + n + r - 1),
                    "--placement".into(),
                    placement.clone(),
                    "--request-timeout".into(),
                    "5s".into(),
                    "--watch-progress-notify-interval".into(),
                    opts.progress_notify_interval.clone(),
                ],
            ));
        }
        for (role, _, _, args) in &mut members {
            if let Some(t) = &opts.tls {
                args.extend(t.peer_args());
                if *role == Role::Router {
                    args.extend(t.client_port_args());
                }
            }
        }
        let mut cluster = Cluster {
            exe,
            members: members
                .into_iter()
                .map(|(role, name, addr, args)| Member {
                    log: dir.join("logs").join(format!("{name}.log")),
                    failpoints: dir.join(format!("failpoints-{name}")),
                    role,
                    name,
                    addr,
                    args,
                    child: None,
                    paused: false,
                })
                .collect(),
        };
        for i in 0..cluster.members.len() {
            cluster.set_failpoints(i, &[])?;
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.of(Role::Router)
            .map(|i| self.members[i].addr.clone())
            .collect()
    }

    /// Placement's raft id of placement member `i` (`--id`).
    fn placement_id(&self, i: usize) -> Option<u64> {
        let m = &self.members[i];
        let pos = m.args.iter().position(|a| a == "--id")?;
        m.args.get(pos + 1)?.parse().ok()
    }

    /// The member index of placement's current leader, as the first replica
    /// that answers `Members` (bounded) knows it; None when none answers, or
    /// none knows (also while `Members` is not implemented).
    pub async fn placement_leader(&self) -> Option<usize> {
        for i in self.of(Role::Placement) {
            let m = &self.members[i];
            if m.child.is_none() || m.paused {
                continue;
            }
            let fut = async {
                let mut c = placement(&m.addr).await?;
                anyhow::Ok(c.members(MembersRequest {}).await?.into_inner())
            };
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(1), fut).await else {
                continue;
            };
            if resp.leader_id == 0 {
                continue;
            }
            // By the address the leader has in the group, else by `--id`.
            let addr = resp
                .members
                .iter()
                .find(|x| x.id == resp.leader_id)
                .map(|x| x.addr.clone());
            let found = self.of(Role::Placement).find(|&j| {
                addr.as_ref() == Some(&self.members[j].addr)
                    || self.placement_id(j) == Some(resp.leader_id)
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Indexes of the members with `role`.
    pub fn of(&self, role: Role) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(move |&i| self.members[i].role == role)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &mut self.members[i];
        let log = open_log(&m.log)?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&m.args)
            .env("STRATA_FAILPOINTS_FILE", &m.failpoints)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        m.child = Some(cmd.spawn().with_context(|| format!("start {}", m.name))?);
        m.paused = false;
        Ok(())
    }

    /// `kill -9`, and reaps the process.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    /// Starts a member that is not running (after `kill`, or after it crashed).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.reap(i);
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Forgets a member that exited on its own (a crash failpoint); true if it had.
    pub fn reap(&mut self, i: usize) -> bool {
        let m = &mut self.members[i];
        if let Some(c) = m.child.as_mut() {
            if matches!(c.try_wait(), Ok(Some(_))) {
                m.child = None;
                return true;
            }
        }
        false
    }

    /// SIGSTOP (`pause = true`) or SIGCONT.
    pub fn signal_pause(&mut self, i: usize, pause: bool) {
        let m = &mut self.members[i];
        if let Some(c) = &m.child {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: plain syscall on our own child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
            m.paused = pause;
        }
    }

    /// Replaces the member's failpoint file (`name=actions` lines); the process
    /// picks the change up within ~100 ms.
    pub fn set_failpoints(&self, i: usize, points: &[(&str, &str)]) -> anyhow::Result<()> {
        let m = &self.members[i];
        let text: String = points.iter().map(|(n, a)| format!("{n}={a}\n")).collect();
        let tmp = m.failpoints.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &m.failpoints)?;
        Ok(())
    }

    /// Sets the same failpoints in every member of `role`.
    pub fn set_failpoints_all(&self, role: Role, points: &[(&str, &str)]) -> anyhow::Result<()> {
        for i in self.of(role) {
            self.set_failpoints(i, points)?;
        }
        Ok(())
    }

    /// Resumes, restarts and clears the failpoints of everything (end of the faults).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            self.set_failpoints(i, &[])?;
            if self.members[i].paused {
                self.signal_pause(i, false);
            }
            self.restart(i)?;
        }
        Ok(())
    }

    /// The tail of a member's log (for reports).
    pub fn log_tail(&self, i: usize, max: usize) -> String {
        let data = std::fs::read(&self.members[i].log).unwrap_or_default();
        let start = data.len().saturating_sub(max);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    /// The sum of a counter or gauge (every label set) on a node's /metrics,
    /// since that process started; None when it does not answer.
    pub fn node_metric(&self, i: usize, name: &str) -> Option<f64> {
        let m = &self.members[i];
        let pos = m.args.iter().position(|a| a == "--metrics-addr")?;
        let addr = m.args.get(pos + 1)?;
        let text = http_get(addr, "/metrics").ok()?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// Placement's view: ranges, leaders, nodes (from the first replica that
    /// answers: only the leader serves).
    pub async fn ranges(&self) -> anyhow::Result<GetRangesResponse> {
        let mut last = anyhow::anyhow!("no placement replica");
        for i in self.of(Role::Placement) {
            if self.members[i].paused {
                continue; // would only time out
            }
            let addr = &self.members[i].addr;
            let fut = async {
                let mut c = placement(addr).await?;
                anyhow::Ok(
                    c.get_ranges(GetRangesRequest::default())
                        .await?
                        .into_inner(),
                )
            };
            match tokio::time::timeout(Duration::from_secs(3), fut).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = e.context(self.members[i].name.clone()),
                Err(_) => last = anyhow::anyhow!("{} did not answer in 3s", self.members[i].name),
            }
        }
        Err(last)
    }

    /// Member index of the node process whose address placement lists for `node_id`.
    pub fn node_index(&self, resp: &GetRangesResponse, node_id: u64) -> Option<usize> {
        let addr = &resp.nodes.iter().find(|n| n.id == node_id)?.addr;
        self.of(Role::Node).find(|&i| &self.members[i].addr == addr)
    }

    /// Waits (bounded) until every router serves a linearizable read.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for ep in self.endpoints() {
            loop {
                let ok = async {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_timeout(Duration::from_secs(2))
                        .with_connect_timeout(Duration::from_secs(1));
                    let (url, opts) = crate::robustness::traffic::dial(&ep, opts);
                    let mut c = etcd_client::Client::connect([url], Some(opts)).await?;
                    c.get("ready-probe", None).await?;
                    anyhow::Ok(())
                }
                .await;
                match ok {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => {
                        bail!("router {ep} did not serve within {limit:?}: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.signal_pause(i, false);
            }
            self.kill(i);
        }
    }
}

/// A plain HTTP/1.0 GET on loopback (bounded by socket timeouts).
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other("bad address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.take(16 << 20).read_to_string(&mut body)?;
    Ok(body)
}

fn open_log(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}
