//! One component of a `strata dev` cluster at a time: the placement replicas'
//! and routers' addresses, `kill -9` and restart (same argv, data dir, ports
//! and log file) of a placement replica or a router.
//!
//! A component is found in `dev.json` (its pid, argv and log). `kill_*` sends
//! SIGKILL and waits until the process is gone; `restart_*` starts it again
//! from the harness (not from `strata dev`, which only reports the exit), with
//! the server's marker so that stopping the server stops it too, and waits
//! until it serves. Restarted processes are spawned from a thread that lives
//! as long as the test process (their parent-death signal follows the spawning
//! thread).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Cluster;
use super::process::*;
use super::*;

/// How long a restarted component may take to serve again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// The placement leader's replica number (ids are 1..=3 as in `strata dev`).
pub async fn placement_leader(addrs: &[String]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for a in addrs {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{a}"))
                .unwrap()
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(1));
            if let Ok(ch) = ep.connect().await {
                if let Ok(r) = strata_proto::strata::placement_client::PlacementClient::new(ch)
                    .members(strata_proto::strata::MembersRequest {})
                    .await
                {
                    let id = r.into_inner().leader_id;
                    if id != 0 {
                        return Some(id as usize);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A component as `dev.json` describes it.
struct DevComponent {
    pid: i32,
    addr: String,
    args: Vec<String>,
    log: String,
}

impl Cluster {
    /// Every placement replica's address, replica 1 first.
    pub fn placement_addrs(&self) -> Vec<String> {
        let base = self.layout.base_port(self.ports.0);
        (0..self.layout.placements)
            .map(|i| format!("127.0.0.1:{}", base + i))
            .collect()
    }

    /// Every router's client endpoint (`127.0.0.1:PORT`), router 1 first.
    pub fn router_endpoints(&self) -> Vec<String> {
        (0..self.layout.routers)
            .map(|j| format!("127.0.0.1:{}", self.ports.0 + j))
            .collect()
    }

    /// `kill -9` of placement replica `i` (1-based); returns once it is gone.
    pub fn kill_placement(&self, i: usize) {
        self.kill_component(&format!("placement-{i}"));
    }

    /// Starts placement replica `i` again (after `kill_placement`) and waits
    /// until it accepts connections.
    pub fn restart_placement(&self, i: usize) {
        let name = format!("placement-{i}");
        let addr = self.restart_component(&name);
        wait_until(&name, || {
            TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(1))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }

    /// `kill -9` of router `j` (1-based); returns once it is gone.
    pub fn kill_router(&self, j: usize) {
        self.kill_component(&format!("router-{j}"));
    }

    /// Starts router `j` again (after `kill_router`) and waits until it serves
    /// a read.
    pub fn restart_router(&self, j: usize) {
        let name = format!("router-{j}");
        let addr = self.restart_component(&name);
        wait_until(&name, || probe_get(&addr, self.tls.as_ref()));
    }

    fn dev_component(&self, name: &str) -> DevComponent {
        let path = self.data_dir.join("dev.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let v: Value = serde_json::from_str(&text).expect("dev.json is JSON");
        let c = v["components"]
            .as_array()
            .expect("dev.json: components")
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no component {name} in dev.json"));
        let s = |k: &str| {
            c[k].as_str()
                .unwrap_or_else(|| panic!("{name}: {k}"))
                .to_string()
        };
        DevComponent {
            pid: c["pid"].as_i64().expect("pid") as i32,
            addr: s("addr"),
            args: c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("arg").to_string())
                .collect(),
            log: s("log"),
        }
    }

    fn kill_component(&self, name: &str) {
        let mut restarted = self.restarted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = restarted.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        drop(restarted);
        let pid = self.dev_component(name).pid;
        // SAFETY: kill(2) on a pid read from dev.json, a child of our strata dev
        // (still unreaped by it if it is gone: then this is a no-op).
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGKILL) },
            0,
            "kill -9 {name} (pid {pid})"
        );
        // strata dev reaps it; until then kill(pid, 0) still finds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(
                Instant::now() < deadline,
                "{name} (pid {pid}) did not go away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `name` with its dev.json argv; returns its address.
    fn restart_component(&self, name: &str) -> String {
        let mut restarted = self.restarted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = restarted.get_mut(name) {
            assert!(
                child.try_wait().ok().flatten().is_some(),
                "{name} is running"
            );
        }
        let c = self.dev_component(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", c.log));
        let mut cmd = Command::new(&c.args[0]);
        cmd.args(&c.args[1..])
            .env(MARKER_VAR, &self.marker)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        restarted.insert(name.to_string(), spawn_persistent(cmd));
        c.addr
    }

    /// Kills and reaps what `restart_*` started (stop, `kill9`).
    pub(super) fn kill_restarted(&self) {
        let mut restarted = self.restarted.lock().unwrap_or_else(|e| e.into_inner());
        for (_, mut child) in restarted.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `f` until it succeeds (bounded by `RESTART_TIMEOUT`).
fn wait_until(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    loop {
        match f() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what} did not serve within {RESTART_TIMEOUT:?} of its restart: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `spawn_in_own_group` from one thread that lives as long as the process.
fn spawn_persistent(cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::thread::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (cmd, back) in rx {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        spawn_in_own_group(cmd)
                    }));
                    let _ = back.send(r);
                }
            })
            .expect("spawn the spawner thread");
        Mutex::new(tx)
    });
    let (back, answer) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, back))
        .expect("spawner thread");
    match answer.recv().expect("spawner thread") {
        Ok(child) => child,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
