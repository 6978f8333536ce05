//! `Cluster`: starting, restarting and stopping the server under test (strata
//! dev or etcd), the shared per-binary server, and clients and etcdctl against it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use super::process::*;
use super::*;

/// A running server under test.
pub struct Cluster {
    /// Client endpoint, `127.0.0.1:PORT` (router 1's; see `router_endpoints`).
    pub endpoint: String,
    pub target: Target,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// Where the server's stdout/stderr are written.
    pub log_dir: PathBuf,
    child: Mutex<Option<Child>>,
    tmp: Mutex<Option<tempfile::TempDir>>,
    /// The reserved block: client ports first, then `strata dev`'s internal ones.
    pub(super) ports: (u16, u16),
    /// How many placement replicas and routers `strata dev` runs.
    pub(super) layout: Layout,
    /// Components the test restarted itself (`restart_placement`, `restart_router`),
    /// by name; the others are `strata dev`'s children.
    pub(super) restarted: Mutex<HashMap<String, Child>>,
    /// Value of `MARKER_VAR` in the environment of the server and everything it
    /// starts (children that leave the process group included): how leftovers are
    /// found on stop.
    pub(super) marker: String,
    /// Extra `strata dev` flags, kept for `restart`.
    extra: Vec<String>,
    /// With TLS on the client port: the CA and client certificate clients use.
    pub tls: Option<TlsPaths>,
}

/// Starts a fresh server (see the module doc). Blocking but bounded; callable from
/// inside a tokio runtime.
pub fn start() -> Cluster {
    Cluster::start()
}

/// Starts a fresh `strata dev` cluster with extra `strata dev` flags (for
/// example `--nodes 5 --range-split-keys 500`, or `--routers 2
/// --placement-replicas 3`; the harness runs 1 placement replica and 1 router
/// unless told otherwise). Strata only.
pub fn start_strata_with(extra: &[&str]) -> Cluster {
    Cluster::start_strata_args(extra.iter().map(|s| s.to_string()).collect())
}

/// Starts a fresh `strata dev` cluster whose data directory `prepare` (for
/// example `strata ctl snapshot restore`) filled first. Strata only.
pub fn start_strata_prepared(extra: &[&str], prepare: impl FnOnce(&Path)) -> Cluster {
    Cluster::start_strata_prepared(extra.iter().map(|s| s.to_string()).collect(), prepare)
}

/// One server shared by all tests of a test binary (started on first use, stopped at
/// process exit). Tests that change global state (compaction) must use `start()`.
/// If it fails to start, every test that asks for it fails at once with the reason.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
    extern "C" fn stop_shared() {
        if let Some(Ok(c)) = SHARED.get() {
            c.stop();
        }
    }
    let r = SHARED.get_or_init(|| {
        // The server is spawned from a thread that lives as long as the process, so
        // that PR_SET_PDEATHSIG (which follows the spawning *thread*) only fires when
        // the whole test process goes away.
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("shared-cluster-keeper".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(Cluster::start);
                let _ = tx.send(r);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn keeper thread");
        match rx.recv_timeout(READY_TIMEOUT + Duration::from_secs(30)) {
            Ok(Ok(c)) => {
                // SAFETY: registers a plain extern "C" fn that captures nothing.
                unsafe {
                    libc::atexit(stop_shared);
                }
                Ok(c)
            }
            Ok(Err(panic)) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())),
            Err(e) => Err(format!("no result from the starting thread: {e}")),
        }
    });
    match r {
        Ok(c) => c,
        Err(e) => panic!("the shared test server failed to start: {e}"),
    }
}

impl Cluster {
    pub fn start() -> Cluster {
        match Target::from_env() {
            Target::Etcd => Self::start_etcd(false),
            Target::Strata => Self::start_strata(),
        }
    }

    /// A fresh server with flags both etcd and `strata dev` take under the
    /// same name (e.g. `--quota-backend-bytes`).
    pub fn start_with_common_flags(flags: &[&str]) -> Cluster {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        match Target::from_env() {
            Target::Etcd => Self::start_etcd_args(false, &flags),
            Target::Strata => Self::start_strata_args(flags),
        }
    }

    /// A server with TLS on its client port, client certificates required
    /// (`strata dev --tls`, or etcd with `--client-cert-auth` and certificates
    /// from `strata certs`).
    pub fn start_tls() -> Cluster {
        match Target::from_env() {
            Target::Etcd => Self::start_etcd(true),
            Target::Strata => {
                let mut c = Self::start_strata_args(vec!["--tls".into()]);
                c.tls = Some(TlsPaths::in_dir(&c.data_dir.join("tls")));
                c
            }
        }
    }

    fn start_etcd(tls: bool) -> Cluster {
        Self::start_etcd_args(tls, &[])
    }

    fn start_etcd_args(tls: bool, extra: &[String]) -> Cluster {
        let tmp = tempdir();
        // client-alice.pem as `strata dev --tls` writes it (tests/auth/).
        let tls = tls.then(|| make_certs(&tmp.path().join("tls"), &["alice"]));
        let data_dir = tmp.path().join("data");
        let log_dir = tmp.path().to_path_buf();
        let base = reserve_ports(2);
        let (client_port, peer_port) = (base, base + 1);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let bin = std::env::var("STRATA_TEST_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into());
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .arg(format!(
                "--experimental-watch-progress-notify-interval={PROGRESS_NOTIFY_INTERVAL_SECS}s"
            ))
            .args(tls.iter().flat_map(TlsPaths::etcd_server_args))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file(&log_dir, "stdout.log"))
            .stderr(log_file(&log_dir, "stderr.log"));
        let marker = new_marker();
        cmd.env(MARKER_VAR, &marker);
        let child = spawn_in_own_group(cmd);
        let endpoint = format!("127.0.0.1:{client_port}");
        let cluster = Cluster {
            endpoint: endpoint.clone(),
            target: Target::Etcd,
            data_dir,
            log_dir,
            child: Mutex::new(Some(child)),
            tmp: Mutex::new(Some(tmp)),
            ports: (base, 2),
            layout: Layout::default(),
            restarted: Mutex::new(HashMap::new()),
            marker,
            extra: Vec::new(),
            tls,
        };
        // Ready once a Get succeeds.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err: String;
        loop {
            if let Some(status) = cluster.exited() {
                cluster.fail_start(&format!("etcd exited early ({status})"));
            }
            match probe_get(&endpoint, cluster.tls.as_ref()) {
                Ok(()) => break,
                Err(e) => last_err = e,
            }
            if Instant::now() > deadline {
                cluster.fail_start(&format!(
                    "etcd not ready within {READY_TIMEOUT:?}: {last_err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.announce();
        cluster
    }

    fn start_strata() -> Cluster {
        Self::start_strata_args(Vec::new())
    }

    fn start_strata_args(extra: Vec<String>) -> Cluster {
        Self::start_strata_prepared(extra, |_| {})
    }

    fn start_strata_prepared(extra: Vec<String>, prepare: impl FnOnce(&Path)) -> Cluster {
        let tmp = tempdir();
        let data_dir = tmp.path().join("data");
        prepare(&data_dir);
        let log_dir = tmp.path().to_path_buf();
        let layout = Layout::of(&extra);
        let span = layout.port_span();
        let first = reserve_ports(span);
        let marker = new_marker();
        let (child, rx) = launch_strata(&data_dir, &log_dir, first, &layout, &marker, &extra);
        let cluster = Cluster {
            endpoint: format!("127.0.0.1:{first}"),
            target: Target::Strata,
            data_dir,
            log_dir,
            child: Mutex::new(Some(child)),
            tmp: Mutex::new(Some(tmp)),
            ports: (first, span),
            layout,
            restarted: Mutex::new(HashMap::new()),
            marker,
            extra,
            tls: None,
        };
        cluster.wait_ready(rx);
        cluster.announce();
        cluster
    }

    /// Waits for the `ready` line of `strata dev` (bounded).
    fn wait_ready(&self, rx: mpsc::Receiver<String>) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) if line.contains("ready") => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.exited() {
                        self.fail_start(&format!("strata dev exited early ({status})"));
                    }
                    if Instant::now() > deadline {
                        self.fail_start(&format!(
                            "strata dev printed no `ready` line within {READY_TIMEOUT:?}"
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is gone or going.
                    std::thread::sleep(Duration::from_millis(200));
                    let status = self
                        .exited()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "stdout closed".into());
                    self.fail_start(&format!(
                        "strata dev closed stdout before `ready` ({status})"
                    ));
                }
            }
        }
    }

    /// The placement service of a `strata dev` cluster (replica 1; all of them:
    /// `placement_addrs`).
    pub fn placement_addr(&self) -> String {
        format!("127.0.0.1:{}", self.layout.base_port(self.ports.0))
    }

    /// `kill -9` of every process of this server at once: no graceful shutdown.
    pub fn kill9(&self) {
        self.kill_restarted();
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = g.take() {
            // SAFETY: signals to the process group we created for the child.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_marked(&self.marker);
    }

    /// Starts `strata dev` again on the same data directory and ports (after
    /// `kill9`), and waits until it serves.
    pub fn restart(&self) {
        assert_eq!(self.target, Target::Strata, "restart is for strata dev");
        let (child, rx) = launch_strata(
            &self.data_dir,
            &self.log_dir,
            self.ports.0,
            &self.layout,
            &self.marker,
            &self.extra,
        );
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready(rx);
    }

    fn announce(&self) {
        if keep_tmp() {
            eprintln!(
                "[harness] {:?} server at {} (logs in {})",
                self.target,
                self.endpoint,
                self.log_dir.display()
            );
        }
    }

    /// Stops the server and panics with its stderr.
    fn fail_start(&self, why: &str) -> ! {
        self.stop_process();
        let stderr = read_tail(&self.log_dir.join("stderr.log"), 20_000);
        let stdout = read_tail(&self.log_dir.join("stdout.log"), 5_000);
        self.remove_tmp();
        panic!(
            "{why}\n--- server stdout (tail) ---\n{stdout}\n--- server stderr (tail) ---\n{stderr}"
        );
    }

    fn exited(&self) -> Option<ExitStatus> {
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// A client connected to this server (per-request timeout `REQUEST_TIMEOUT`).
    pub async fn client(&self) -> Client {
        self.client_with(ConnectOptions::new()).await
    }

    /// A client with extra options (connect and request timeouts are added).
    pub async fn client_with(&self, opts: ConnectOptions) -> Client {
        let opts = opts
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(REQUEST_TIMEOUT);
        let (url, opts) = client_url(&self.endpoint, self.tls.as_ref(), opts);
        match tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect([url.as_str()], Some(opts)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("connect to {}: {e}", self.endpoint),
            Err(_) => panic!("connect to {} timed out", self.endpoint),
        }
    }

    /// `etcdctl --endpoints=ENDPOINT ARGS` with `ETCDCTL_API=3` (not started).
    pub fn etcdctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(etcdctl_bin());
        let scheme = if self.tls.is_some() { "https://" } else { "" };
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={scheme}{}", self.endpoint))
            .args(self.tls.iter().flat_map(TlsPaths::etcdctl_args))
            .arg("--dial-timeout=5s")
            .arg("--command-timeout=10s")
            .args(args);
        cmd
    }

    /// Runs etcdctl (bounded by `ETCDCTL_TIMEOUT`; killed past it).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        run_bounded(self.etcdctl_command(args), None, ETCDCTL_TIMEOUT)
    }

    /// Runs etcdctl with `input` on its stdin.
    pub fn etcdctl_stdin(&self, args: &[&str], input: &str) -> Output {
        run_bounded(
            self.etcdctl_command(args),
            Some(input.as_bytes()),
            ETCDCTL_TIMEOUT,
        )
    }

    /// Starts etcdctl in the background (e.g. `watch`), stdout/stderr captured.
    pub fn etcdctl_spawn(&self, args: &[&str]) -> Background {
        Background::spawn(self.etcdctl_command(args))
    }

    /// Stops the server (idempotent). Called by Drop, and at exit for `shared()`.
    pub fn stop(&self) {
        self.stop_process();
        self.remove_tmp();
    }

    fn stop_process(&self) {
        self.kill_restarted();
        let mut g = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut child) = g.take() else { return };
        let pid = child.id() as libc::pid_t;
        if child.try_wait().ok().flatten().is_none() {
            match self.target {
                Target::Strata => {
                    // Graceful: SIGTERM to the child, then SIGKILL to its group.
                    // SAFETY: plain syscall on a pid we spawned and have not reaped.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                    if !wait_exit(&mut child, STOP_TIMEOUT) {
                        eprintln!(
                            "[harness] strata dev ignored SIGTERM for {STOP_TIMEOUT:?}; SIGKILL"
                        );
                        // SAFETY: as above; the group id is the child's pid.
                        unsafe {
                            libc::kill(-pid, libc::SIGKILL);
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                Target::Etcd => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // Anything the server left behind in its process group...
        // SAFETY: signal to the process group we created for the child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        // ... or elsewhere (e.g. children that started their own session).
        kill_marked(&self.marker);
    }

    fn remove_tmp(&self) {
        let mut g = self.tmp.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tmp) = g.take() {
            if keep_tmp() {
                let path = tmp.keep();
                eprintln!("[harness] kept {}", path.display());
            } else {
                let _ = std::fs::remove_dir_all(tmp.path());
            }
        }
        release_ports(self.ports);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shape of a `strata dev` cluster, read from its flags (harness defaults:
/// 3 nodes, 1 placement replica, 1 router).
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    pub nodes: u16,
    pub placements: u16,
    pub routers: u16,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            nodes: 3,
            placements: 1,
            routers: 1,
        }
    }
}

impl Layout {
    fn of(extra: &[String]) -> Layout {
        let get = |name: &str, default: u16| {
            extra
                .iter()
                .position(|a| a == name)
                .and_then(|i| extra.get(i + 1))
                .map_or(default, |v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("harness: {name} {v} is not a number"))
                })
        };
        let d = Layout::default();
        Layout {
            nodes: get("--nodes", d.nodes),
            placements: get("--placement-replicas", d.placements),
            routers: get("--routers", d.routers),
        }
    }

    /// `--base-port` for a block starting at `first`: the routers' client ports
    /// (router j at `first + j - 1`) come first.
    pub(super) fn base_port(&self, first: u16) -> u16 {
        first + self.routers
    }

    /// Ports to reserve: the client ports, then `strata dev`'s internal plan
    /// (src/dev/plan.rs: placement, nodes, metrics from BASE+max(10, P+N), one
    /// for Prometheus); at least `STRATA_PORT_SPAN + 1`, as before routers.
    fn port_span(&self) -> u16 {
        let (p, n, r) = (self.placements, self.nodes, self.routers);
        let internal = 10.max(p + n) + p + n + r + 1;
        (r + internal).max(STRATA_PORT_SPAN + 1)
    }
}

/// Spawns `strata dev` with its client ports from `first` and internal ports after
/// them; returns the child and a channel of its stdout lines.
fn launch_strata(
    data_dir: &Path,
    log_dir: &Path,
    first: u16,
    layout: &Layout,
    marker: &str,
    extra: &[String],
) -> (Child, mpsc::Receiver<String>) {
    let (client_port, base_port) = (first, layout.base_port(first));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client", &format!("127.0.0.1:{client_port}")])
        .args(["--base-port", &base_port.to_string()])
        .args([
            "--watch-progress-notify-interval",
            &format!("{PROGRESS_NOTIFY_INTERVAL_SECS}s"),
        ])
        .args(extra);
    for (flag, value) in [
        ("--nodes", layout.nodes),
        ("--placement-replicas", layout.placements),
        ("--routers", layout.routers),
    ] {
        if !extra.iter().any(|a| a == flag) {
            cmd.args([flag, &value.to_string()]);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file(log_dir, "stderr.log"));
    cmd.env(MARKER_VAR, marker);
    let mut child = spawn_in_own_group(cmd);
    // Forward stdout lines (also to stdout.log) until EOF; the first line that
    // contains `ready` means clients can use the cluster.
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let mut out_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("stdout.log"))
        .expect("open stdout.log");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out_log, "{line}");
            let _ = tx.send(line);
        }
    });
    (child, rx)
}
