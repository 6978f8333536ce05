//! Child processes: `Background` (captured output), bounded runs, process groups
//! and leftover killing, temp dirs, logs and port reservation.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};

use super::*;

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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The process's exit status, once it exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
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

pub(super) fn keep_tmp() -> bool {
    std::env::var("STRATA_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

pub(super) fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-it-")
        .tempdir()
        .expect("create temp dir")
}

pub(super) fn etcdctl_bin() -> String {
    std::env::var("STRATA_TEST_ETCDCTL").unwrap_or_else(|_| "etcdctl".into())
}

pub(super) fn log_file(dir: &Path, name: &str) -> File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open log file")
}

pub(super) fn read_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Spawns `cmd` as the leader of a new process group, with SIGKILL on parent (thread)
/// death as a safety net against leaks.
pub(super) fn spawn_in_own_group(mut cmd: Command) -> Child {
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

pub(super) fn new_marker() -> String {
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
pub(super) fn kill_marked(marker: &str) {
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

pub(super) fn wait_exit(child: &mut Child, limit: Duration) -> bool {
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

pub(super) fn pump(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) {
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
pub(super) fn probe_get(endpoint: &str, tls: Option<&TlsPaths>) -> Result<(), String> {
    let endpoint = endpoint.to_string();
    let tls = tls.cloned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2));
            let (url, opts) = client_url(&endpoint, tls.as_ref(), opts);
            let fut = async {
                let mut c = Client::connect([url.as_str()], Some(opts))
                    .await
                    .map_err(|e| e.to_string())?;
                match c.get("strata-harness-probe", None).await {
                    // Auth enabled: the router answered (as etcd's health check).
                    Err(etcd_client::Error::GRpcStatus(s))
                        if s.message() == "etcdserver: user name is empty" =>
                    {
                        Ok(())
                    }
                    r => r.map(|_| ()).map_err(|e| e.to_string()),
                }
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
pub(super) fn reserve_ports(n: u16) -> u16 {
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

pub(super) fn release_ports((base, n): (u16, u16)) {
    let mut g = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = g.as_mut() {
        for p in base..base + n {
            set.remove(&p);
        }
    }
}
