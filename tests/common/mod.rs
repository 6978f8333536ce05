//! Harness for the etcd-compatibility integration tests.
//!
//! `STRATA_TEST_TARGET` selects the server under test:
//! - unset or `strata`: `strata dev` (the binary of this package), a whole local
//!   cluster (placement + 3 nodes + router) in one process tree;
//! - `etcd`: a real single-member etcd (`/usr/bin/etcd`, or `STRATA_TEST_ETCD_BIN`),
//!   used to check that every expectation in these tests is etcd's true behaviour.
//!
//! Every server runs on loopback with free ports and a temporary data directory, in
//! its own process group; it is stopped on drop (or, for the per-binary shared
//! cluster, at process exit), and as a last resort the kernel kills it when the test
//! process dies (`PR_SET_PDEATHSIG`). Every wait here is bounded.
//!
//! `STRATA_TEST_KEEP=1` keeps the temporary directories (logs, data) for debugging;
//! their paths are printed.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout of the clients handed to tests (unary calls).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound for one etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound for one receive on a watch stream.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress-notify interval configured on the server (both targets).
pub const PROGRESS_NOTIFY_INTERVAL_SECS: u64 = 1;
/// Environment variable that marks every process of one test server.
const MARKER_VAR: &str = "STRATA_TEST_SERVER_ID";
/// Ports `strata dev --base-port B` may use: B..=B+20.
const STRATA_PORT_SPAN: u16 = 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Strata,
    Etcd,
}

impl Target {
    pub fn from_env() -> Target {
        match std::env::var("STRATA_TEST_TARGET") {
            Err(_) => Target::Strata,
            Ok(v) if v.is_empty() || v == "strata" => Target::Strata,
            Ok(v) if v == "etcd" => Target::Etcd,
            Ok(v) => panic!("unknown STRATA_TEST_TARGET={v:?} (expected `strata` or `etcd`)"),
        }
    }
}

/// A running server under test.
pub struct Cluster {
    /// Client endpoint, `127.0.0.1:PORT`.
    pub endpoint: String,
    pub target: Target,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// Where the server's stdout/stderr are written.
    pub log_dir: PathBuf,
    child: Mutex<Option<Child>>,
    tmp: Mutex<Option<tempfile::TempDir>>,
    ports: (u16, u16),
    /// Value of `MARKER_VAR` in the environment of the server and everything it
    /// starts (children that leave the process group included): how leftovers are
    /// found on stop.
    marker: String,
    /// Extra `strata dev` flags, kept for `restart`.
    extra: Vec<String>,
}

/// Starts a fresh server (see the module doc). Blocking but bounded; callable from
/// inside a tokio runtime.
pub fn start() -> Cluster {
    Cluster::start()
}

/// Starts a fresh `strata dev` cluster with extra `strata dev` flags (for
/// example `--nodes 5 --range-split-keys 500`). Strata only.
pub fn start_strata_with(extra: &[&str]) -> Cluster {
    Cluster::start_strata_args(extra.iter().map(|s| s.to_string()).collect())
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
            Target::Etcd => Self::start_etcd(),
            Target::Strata => Self::start_strata(),
        }
    }

    fn start_etcd() -> Cluster {
        let tmp = tempdir();
        let data_dir = tmp.path().join("data");
        let log_dir = tmp.path().to_path_buf();
        let base = reserve_ports(2);
        let (client_port, peer_port) = (base, base + 1);
        let client_url = format!("http://127.0.0.1:{client_port}");
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
            marker,
            extra: Vec::new(),
        };
        // Ready once a Get succeeds.
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err: String;
        loop {
            if let Some(status) = cluster.exited() {
                cluster.fail_start(&format!("etcd exited early ({status})"));
            }
            match probe_get(&endpoint) {
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
        let tmp = tempdir();
        let data_dir = tmp.path().join("data");
        let log_dir = tmp.path().to_path_buf();
        let span = STRATA_PORT_SPAN + 1;
        let first = reserve_ports(span);
        let marker = new_marker();
        let (child, rx) = launch_strata(&data_dir, &log_dir, first, &marker, &extra);
        let cluster = Cluster {
            endpoint: format!("127.0.0.1:{first}"),
            target: Target::Strata,
            data_dir,
            log_dir,
            child: Mutex::new(Some(child)),
            tmp: Mutex::new(Some(tmp)),
            ports: (first, span),
            marker,
            extra,
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

    /// The placement service of a `strata dev` cluster.
    pub fn placement_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.0 + 1)
    }

    /// `kill -9` of every process of this server at once: no graceful shutdown.
    pub fn kill9(&self) {
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
        match tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect([self.endpoint.as_str()], Some(opts)),
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
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
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

// ---------------------------------------------------------------------------
// Helpers for tests.

/// Spawns `strata dev` with its client port at `first` and internal ports after it;
/// returns the child and a channel of its stdout lines.
fn launch_strata(
    data_dir: &Path,
    log_dir: &Path,
    first: u16,
    marker: &str,
    extra: &[String],
) -> (Child, mpsc::Receiver<String>) {
    let (client_port, base_port) = (first, first + 1);
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
    if !extra.iter().any(|a| a == "--nodes") {
        cmd.args(["--nodes", "3"]);
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

/// A key prefix unique to this test process and `name`.
pub fn prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}/{}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `(code, message)` of a gRPC error, e.g. `("OutOfRange", "etcdserver: ...")`.
pub fn grpc_error(e: &etcd_client::Error) -> (String, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Asserts that `r` failed with exactly this gRPC code (`tonic::Code` variant name)
/// and message.
#[track_caller]
pub fn assert_grpc_err<T: Debug>(r: Result<T, etcd_client::Error>, code: &str, message: &str) {
    match r {
        Ok(v) => panic!("expected error {code} {message:?}, got Ok({v:?})"),
        Err(e) => {
            let (c, m) = grpc_error(&e);
            assert_eq!(
                (c.as_str(), m.as_str()),
                (code, message),
                "unexpected error: {e:?}"
            );
        }
    }
}

/// Runs `f` with a bound; panics with `what` if it takes longer.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const TOO_LARGE: &str = "etcdserver: request is too large";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";

/// Decodes standard base64 (with or without padding), as in etcdctl's `-w json`.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:?}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A background process with captured output (e.g. `etcdctl watch`); killed on drop.
pub struct Background {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Background {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(mut cmd: Command) -> Background {
        cmd.stdin(Stdio::null());
        Background::spawn_raw(cmd)
    }

    /// Like `spawn` but leaves stdin as configured on `cmd`.
    fn spawn_raw(mut cmd: Command) -> Background {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = spawn_in_own_group(cmd);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stdout.take().unwrap(), stdout.clone());
        pump(child.stderr.take().unwrap(), stderr.clone());
        Background {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until `pred(stdout)` holds; returns whether it did.
    pub fn wait_stdout(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if pred(&self.stdout()) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process and returns what it printed.
    pub fn finish(mut self) -> (String, String) {
        self.kill();
        // Let the pumps drain what was already written.
        std::thread::sleep(Duration::from_millis(100));
        (self.stdout(), self.stderr())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Internals.

fn keep_tmp() -> bool {
    std::env::var("STRATA_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-it-")
        .tempdir()
        .expect("create temp dir")
}

fn etcdctl_bin() -> String {
    std::env::var("STRATA_TEST_ETCDCTL").unwrap_or_else(|_| "etcdctl".into())
}

fn log_file(dir: &Path, name: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open log file")
}

fn read_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Spawns `cmd` as the leader of a new process group, with SIGKILL on parent (thread)
/// death as a safety net against leaks.
fn spawn_in_own_group(mut cmd: Command) -> Child {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

fn new_marker() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// SIGKILLs every live process whose environment carries `MARKER_VAR=marker` (only
/// processes of this server can), until none is left (bounded).
fn kill_marked(marker: &str) {
    let needle = format!("{MARKER_VAR}={marker}");
    let me = std::process::id();
    for round in 0..20 {
        let mut found = 0;
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
                found += 1;
                if round == 0 {
                    eprintln!("[harness] killing leftover server process {pid}");
                }
                // SAFETY: plain syscall; the marker proves the process is ours.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if found == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pump(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
}

/// Runs a command to completion with a bound (killed past it), capturing its output.
pub fn run_bounded(cmd: Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    let mut cmd = cmd;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let desc = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let mut bg = Background::spawn_raw(cmd);
    if let Some(input) = stdin {
        let mut w = bg
            .child
            .as_mut()
            .unwrap()
            .stdin
            .take()
            .expect("piped stdin");
        let _ = w.write_all(input);
        drop(w);
    }
    let child = bg.child.as_mut().unwrap();
    let status = if wait_exit(child, limit) {
        child.wait().expect("wait")
    } else {
        let _ = child.kill();
        let status = child.wait().expect("wait");
        eprintln!("[harness] {desc} killed after {limit:?}");
        status
    };
    bg.child = None;
    // The pumps finish at EOF, right after exit; give them a bounded moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&bg.stdout) > 1 || Arc::strong_count(&bg.stderr) > 1 {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stdout = bg.stdout.lock().unwrap().clone();
    let stderr = bg.stderr.lock().unwrap().clone();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// One Get against `endpoint`, on a private runtime in a private thread (so it works
/// from inside a test's runtime), bounded to a few seconds.
fn probe_get(endpoint: &str) -> Result<(), String> {
    let endpoint = endpoint.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2));
            let fut = async {
                let mut c = Client::connect([endpoint.as_str()], Some(opts))
                    .await
                    .map_err(|e| e.to_string())?;
                c.get("strata-harness-probe", None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            };
            match tokio::time::timeout(Duration::from_secs(3), fut).await {
                Ok(r) => r,
                Err(_) => Err("probe timed out".into()),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| Err("probe thread panicked".into()))
}

static RESERVED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Finds `n` consecutive free loopback ports in 10000..32000 (below Linux's ephemeral
/// range), not handed out before by this process, and reserves them.
fn reserve_ports(n: u16) -> u16 {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut g = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    let reserved = g.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + (x % (22_000 - n as u64)) as u16;
        let ports = base..base + n;
        if ports.clone().any(|p| reserved.contains(&p)) {
            continue;
        }
        if ports
            .clone()
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            reserved.extend(ports);
            return base;
        }
    }
    panic!("no {n} consecutive free ports found");
}

fn release_ports((base, n): (u16, u16)) {
    let mut g = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = g.as_mut() {
        for p in base..base + n {
            set.remove(&p);
        }
    }
}
