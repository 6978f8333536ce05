//! Runs every `strata-bench` subcommand briefly against a real local etcd
//! (`/usr/bin/etcd`, or `STRATA_TEST_ETCD_BIN`) and against `strata dev` (`$STRATA_BIN`,
//! else `<target dir>/debug/strata`, which `cargo test --workspace` builds), and checks
//! the `--json` output: request counts match the workload, no errors, percentiles
//! ordered. Servers run on loopback with free ports and temporary directories, in their
//! own process groups, killed on drop and (PR_SET_PDEATHSIG) when the test process dies.
//! Every wait is bounded.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod runs;

const BENCH: &str = env!("CARGO_BIN_EXE_strata-bench");
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

fn strata_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STRATA_BIN") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    // <target>/debug/deps/bench_cli-HASH → <target>/debug/strata
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("strata"))
        .expect("target dir");
    assert!(
        p.is_file(),
        "the strata binary is not at {} — build it first (`cargo build --bin strata`, which \
         `cargo test --workspace` does) or set STRATA_BIN",
        p.display()
    );
    p
}

fn etcd_bin() -> String {
    std::env::var("STRATA_TEST_ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into())
}

fn free_ports(n: u16) -> u16 {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut x = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ ((std::process::id() as u64) << 32)
        ^ SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = 10_000 + (x % (22_000 - n as u64)) as u16;
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} free ports");
}

fn spawn_group(mut cmd: Command) -> Child {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

struct Server {
    endpoint: String,
    child: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Server {
    fn etcd() -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("strata-bench-it-")
            .tempdir()
            .unwrap();
        let base = free_ports(2);
        let (c, p) = (
            format!("http://127.0.0.1:{base}"),
            format!("http://127.0.0.1:{}", base + 1),
        );
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("default={p}")])
            .stdin(Stdio::null())
            .stdout(File::create(tmp.path().join("stdout.log")).unwrap())
            .stderr(File::create(tmp.path().join("stderr.log")).unwrap());
        let child = spawn_group(cmd);
        let s = Server {
            endpoint: format!("127.0.0.1:{base}"),
            child: Some(child),
            tmp,
        };
        // Ready once a tiny range run succeeds.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let o = run_bounded(
                Command::new(BENCH).args([
                    "--endpoints",
                    &s.endpoint,
                    "--dial-timeout",
                    "2s",
                    "--request-timeout",
                    "2s",
                    "range",
                    "probe",
                    "--total",
                    "1",
                ]),
                Duration::from_secs(10),
            );
            if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Requests/sec") {
                break;
            }
            assert!(Instant::now() < deadline, "etcd not ready: {}", s.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn strata() -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("strata-bench-it-")
            .tempdir()
            .unwrap();
        let first = free_ports(23);
        let mut cmd = Command::new(strata_bin());
        cmd.arg("dev")
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--listen-client", &format!("127.0.0.1:{first}")])
            .args(["--base-port", &(first + 1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(tmp.path().join("stderr.log")).unwrap());
        let mut child = spawn_group(cmd);
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let s = Server {
            endpoint: format!("127.0.0.1:{first}"),
            child: Some(child),
            tmp,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(l) if l.contains("ready") => break,
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("strata dev exited before ready: {}", s.log())
                }
            }
            assert!(
                Instant::now() < deadline,
                "strata dev not ready: {}",
                s.log()
            );
        }
        s
    }

    fn log(&self) -> String {
        let data = std::fs::read(self.tmp.path().join("stderr.log")).unwrap_or_default();
        String::from_utf8_lossy(&data[data.len().saturating_sub(4000)..]).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as libc::pid_t;
            // SAFETY: signals to the process group of a child we spawned.
            unsafe {
                libc::kill(-pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs a command with a bound (killed past it).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_group(std::mem::replace(cmd, Command::new("true")));
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let ho = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let he = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            // SAFETY: the child's own process group.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let s = child.wait().unwrap();
            eprintln!("killed after {limit:?}");
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: ho.join().unwrap(),
        stderr: he.join().unwrap(),
    }
}

/// Runs `strata-bench --endpoints EP ARGS --json F` and returns the JSON.
fn bench(dir: &Path, endpoint: &str, args: &[&str]) -> Value {
    static N: AtomicU64 = AtomicU64::new(0);
    let json = dir.join(format!("run-{}.json", N.fetch_add(1, Ordering::Relaxed)));
    let o = run_bounded(
        Command::new(BENCH)
            .args(["--endpoints", endpoint])
            .args(args)
            .arg("--json")
            .arg(&json),
        RUN_TIMEOUT,
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "strata-bench {args:?} failed ({}):\n{out}\n{err}",
        o.status
    );
    assert!(
        out.contains("Summary:") && out.contains("Requests/sec:"),
        "no etcd-style summary:\n{out}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every result: no errors, all expected requests done, figures ordered. Returns the
/// results by name.
fn check(v: &Value, command: &str, main_expected: u64) -> Vec<(String, Value)> {
    assert_eq!(v["command"], command);
    assert_eq!(v["workload"]["command"], command);
    let results = v["results"].as_array().expect("results");
    assert!(!results.is_empty());
    assert_eq!(
        results[0]["expected_requests"].as_u64().unwrap(),
        main_expected,
        "{command}: main result's expected count"
    );
    let mut out = Vec::new();
    for r in results {
        let name = r["name"].as_str().unwrap().to_string();
        let ctx = format!("{command}/{name}");
        assert_eq!(
            r["errors"].as_u64().unwrap(),
            0,
            "{ctx}: errors {}",
            r["error_distribution"]
        );
        let n = r["requests"].as_u64().unwrap();
        assert_eq!(
            n,
            r["expected_requests"].as_u64().unwrap(),
            "{ctx}: request count"
        );
        if n == 0 {
            continue;
        }
        let (fast, slow, avg) = (
            f(&r["fastest_secs"]),
            f(&r["slowest_secs"]),
            f(&r["average_secs"]),
        );
        assert!(
            fast > 0.0 && fast <= avg && avg <= slow,
            "{ctx}: fastest {fast} average {avg} slowest {slow}"
        );
        assert!(
            f(&r["requests_per_sec"]) > 0.0 && f(&r["total_secs"]) > 0.0,
            "{ctx}"
        );
        let p: Vec<(f64, f64)> = r["percentiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (f(&x["percentile"]), f(&x["secs"])))
            .collect();
        assert_eq!(
            p.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9],
            "{ctx}"
        );
        assert!(
            p[0].1 >= fast && p[7].1 <= slow,
            "{ctx}: percentiles outside [fastest, slowest]: {p:?}"
        );
        assert!(
            p.windows(2).all(|w| w[0].1 <= w[1].1),
            "{ctx}: percentiles not ordered: {p:?}"
        );
        let h = r["histogram"].as_array().unwrap();
        assert_eq!(h.len(), 11, "{ctx}");
        assert_eq!(
            h.iter().map(|b| b["count"].as_u64().unwrap()).sum::<u64>(),
            n,
            "{ctx}: histogram total"
        );
        let per_sec: u64 = r["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(per_sec, n, "{ctx}: per-second series total");
        out.push((name, r.clone()));
    }
    out
}

fn all_subcommands(endpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pre = format!(
        "it-{}-{}/",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let common = ["--conns", "2", "--clients", "4"];
    let with = |rest: &[&str]| -> Vec<String> {
        common.iter().chain(rest).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>| {
        bench(
            d,
            endpoint,
            &args.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        )
    };

    let v = run(with(&[
        "put",
        "--total",
        "200",
        "--key-space-size",
        "1000",
        "--val-size",
        "16",
        "--prefix",
        &pre,
    ]));
    check(&v, "put", 200);
    assert_eq!(v["workload"]["args"]["load"]["total"], 200);
    assert_eq!(v["workload"]["args"]["keys"]["key_space_size"], 1000);
    assert_eq!(v["workload"]["global"]["clients"], 4);

    let v = run(with(&[
        "put",
        "--total",
        "100",
        "--sequential-keys",
        "--rate",
        "200",
        "--prefix",
        &pre,
    ]));
    let r = check(&v, "put", 100);
    // 100 requests at 200/s take at least ~0.5 s.
    assert!(
        f(&r[0].1["total_secs"]) >= 0.45,
        "rate not applied: {}",
        r[0].1["total_secs"]
    );

    let v = run(with(&[
        "range",
        "--prefix",
        &pre,
        "--total",
        "200",
        "--consistency",
        "s",
    ]));
    check(&v, "range", 200);
    let v = run(with(&["range", &format!("{pre}x"), "--total", "200"]));
    check(&v, "range", 200);

    let v = run(with(&[
        "txn-put",
        "--total",
        "200",
        "--txn-ops",
        "4",
        "--key-space-size",
        "100",
        "--prefix",
        &pre,
    ]));
    check(&v, "txn-put", 200);

    let v = run(with(&[
        "txn-mixed",
        "--total",
        "200",
        "--rw-ratio",
        "1",
        "--key-space-size",
        "100",
        "--prefix",
        &pre,
        "--limit",
        "10",
    ]));
    // Reads and writes are separate results; together they are --total.
    let rs = check(
        &v,
        "txn-mixed",
        v["results"][0]["expected_requests"].as_u64().unwrap(),
    );
    let total: u64 = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 200);
    assert_eq!(
        rs.len(),
        2,
        "with rw-ratio 1 and 200 requests both reads and writes happen"
    );

    let v = run(with(&["lease-keepalive", "--total", "200"]));
    check(&v, "lease-keepalive", 200);

    // 2 streams × 5 watchers on 2 keys; 40 puts → 40 × 5 events.
    let v = run(with(&[
        "watch",
        "--streams",
        "2",
        "--watch-per-stream",
        "5",
        "--watched-key-total",
        "2",
        "--key-space-size",
        "2",
        "--sequential-keys",
        "--put-total",
        "40",
        "--prefix",
        &pre,
    ]));
    let rs = check(&v, "watch", 10);
    let by = |n: &str| {
        rs.iter()
            .find(|r| r.0 == n)
            .unwrap_or_else(|| panic!("no {n}"))
            .1
            .clone()
    };
    assert_eq!(by("put")["requests"], 40);
    assert_eq!(by("watch-events")["requests"], 200);

    // 3 watchers (clients), 30 puts → 90 events.
    let v = run(vec![
        "--clients".into(),
        "3".into(),
        "watch-latency".into(),
        "--total".into(),
        "30".into(),
        "--put-rate".into(),
        "100".into(),
        "--prefix".into(),
        pre.clone(),
    ]);
    let rs = check(&v, "watch-latency", 90);
    assert_eq!(rs.iter().find(|r| r.0 == "put").unwrap().1["requests"], 30);
}
