//! Servers that `compare` and `scale` start themselves, on loopback only: a `strata
//! dev` cluster, or an etcd cluster of N members from Debian's `etcd` binary. Each runs
//! in its own process group with a temporary data directory; it is stopped (SIGTERM,
//! then SIGKILL) when dropped, and the kernel kills it if this process dies
//! (`PR_SET_PDEATHSIG`). Every wait is bounded.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Target {
    /// Human description, e.g. "strata dev (3 nodes)".
    pub label: String,
    pub endpoints: Vec<String>,
    procs: Vec<Child>,
    tmp: Option<tempfile::TempDir>,
}

/// The `strata` binary: `--strata-bin`, else `$STRATA_BIN`, else next to this
/// executable, else `strata` on PATH.
pub fn strata_bin(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Ok(p) = std::env::var("STRATA_BIN") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("strata");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("strata")
}

/// `n` consecutive free loopback ports in 10000..32000 (below Linux's ephemeral range).
pub fn free_ports(n: u16) -> Result<u16> {
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((std::process::id() as u64) << 32);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + (x % (22_000 - n as u64)) as u16;
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports found")
}

fn spawn_group(mut cmd: Command) -> Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let prog = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().with_context(|| format!("spawn {prog}"))
}

fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&data[data.len().saturating_sub(max)..]).into_owned()
}

impl Target {
    pub fn external(endpoints: Vec<String>) -> Target {
        Target {
            label: format!("endpoints {}", endpoints.join(",")),
            endpoints,
            procs: Vec::new(),
            tmp: None,
        }
    }

    /// The temporary directory of a started target (`strata dev`'s data is in `data/`).
    pub fn data_dir(&self) -> Option<&Path> {
        self.tmp.as_ref().map(|t| t.path())
    }

    /// Starts `strata dev --nodes N` and waits for its `ready` line.
    pub fn start_strata(bin: &Path, nodes: usize, extra: &[String]) -> Result<Target> {
        let tmp = tempfile::Builder::new().prefix("strata-bench-").tempdir()?;
        let data = tmp.path().join("data");
        // client port, then B..=B+20 (more for ≥ 10 nodes: metrics at B+N+1+k).
        let span = 2 + 21 + 2 * nodes as u16;
        let first = free_ports(span)?;
        let (client, base) = (first, first + 1);
        let mut cmd = Command::new(bin);
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client", &format!("127.0.0.1:{client}")])
            .args(["--base-port", &base.to_string()])
            .args(["--nodes", &nodes.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(tmp.path().join("stderr.log"))?);
        let mut child = spawn_group(cmd).with_context(|| {
            format!(
                "start {} dev (set --strata-bin or STRATA_BIN)",
                bin.display()
            )
        })?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let log_path = tmp.path().join("stdout.log");
        std::thread::spawn(move || {
            let mut log = File::create(log_path).ok();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                let _ = tx.send(line);
            }
        });
        let mut t = Target {
            label: format!("strata dev ({nodes} nodes)"),
            endpoints: vec![format!("127.0.0.1:{client}")],
            procs: vec![child],
            tmp: Some(tmp),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains("ready") => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let err = tail(&t.tmp.as_ref().unwrap().path().join("stderr.log"), 4000);
                    t.stop();
                    bail!("strata dev exited before `ready`:\n{err}");
                }
            }
            if Instant::now() > deadline {
                let err = tail(&t.tmp.as_ref().unwrap().path().join("stderr.log"), 4000);
                t.stop();
                bail!("strata dev not ready within {READY_TIMEOUT:?}:\n{err}");
            }
        }
        Ok(t)
    }

    /// Starts an etcd cluster of `members` members on loopback and waits until every
    /// member answers a Get.
    pub async fn start_etcd(bin: &Path, members: usize) -> Result<Target> {
        if members == 0 {
            bail!("--members must be at least 1");
        }
        let tmp = tempfile::Builder::new()
            .prefix("strata-bench-etcd-")
            .tempdir()?;
        let base = free_ports(2 * members as u16)?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", base + 2 * i as u16 + 1);
        let client = |i: usize| format!("127.0.0.1:{}", base + 2 * i as u16);
        let initial: Vec<String> = (0..members).map(|i| format!("m{i}={}", peer(i))).collect();
        let mut t = Target {
            label: format!(
                "etcd {} ({members} member{})",
                etcd_version(bin),
                if members == 1 { "" } else { "s" }
            ),
            endpoints: (0..members).map(client).collect(),
            procs: Vec::new(),
            tmp: None,
        };
        for i in 0..members {
            let curl = format!("http://{}", client(i));
            let mut cmd = Command::new(bin);
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(tmp.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &curl,
                    "--advertise-client-urls",
                    &curl,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer(i),
                    "--initial-advertise-peer-urls",
                    &peer(i),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "strata-bench",
                ])
                .stdin(Stdio::null())
                .stdout(File::create(tmp.path().join(format!("m{i}.stdout.log")))?)
                .stderr(File::create(tmp.path().join(format!("m{i}.stderr.log")))?);
            match spawn_group(cmd) {
                Ok(c) => t.procs.push(c),
                Err(e) => {
                    t.stop();
                    return Err(e.context(format!("start {}", bin.display())));
                }
            }
        }
        let log0 = tmp.path().join("m0.stderr.log");
        t.tmp = Some(tmp);
        let deadline = Instant::now() + READY_TIMEOUT;
        for ep in t.endpoints.clone() {
            loop {
                if let Some(i) = t
                    .procs
                    .iter_mut()
                    .position(|c| c.try_wait().ok().flatten().is_some())
                {
                    let err = tail(&log0, 4000);
                    t.stop();
                    bail!("etcd member m{i} exited early; m0's log:\n{err}");
                }
                if probe(&ep).await.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    let err = tail(&log0, 4000);
                    t.stop();
                    bail!("etcd not ready within {READY_TIMEOUT:?}; m0's log:\n{err}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(t)
    }

    /// Stops every process (idempotent).
    pub fn stop(&mut self) {
        for c in &self.procs {
            // SAFETY: signals to the process group of a child we spawned and hold.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for c in &mut self.procs {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        for mut c in self.procs.drain(..) {
            // SAFETY: as above; also kills anything left in the group.
            unsafe {
                libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::env::var("STRATA_BENCH_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
            if let Some(t) = self.tmp.take() {
                eprintln!("strata-bench: kept {}", t.keep().display());
            }
        }
        self.tmp = None;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Get through `endpoint`, bounded.
pub async fn probe(endpoint: &str) -> Result<()> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2));
    tokio::time::timeout(Duration::from_secs(3), async {
        let mut c = etcd_client::Client::connect([endpoint], Some(opts)).await?;
        c.get("strata-bench-probe", None).await?;
        Ok::<(), etcd_client::Error>(())
    })
    .await
    .map_err(|_| anyhow!("probe timed out"))?
    .map_err(|e| anyhow!("{e}"))
}

/// "3.4.23" from `etcd --version` (or "?").
pub fn etcd_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("etcd Version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "?".into())
}
