//! The robustness suite proves its own checkers: a short run with each planted
//! bug (a stale read, a dropped watch event, a reused revision) must report the
//! violation class it plants, and the same run without a plant must pass (also
//! with `--tls`: every link over TLS).
//! Each run is a real cluster started by `strata robustness`; every run is
//! bounded in time and its processes die with it.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `strata robustness ARGS` (bounded); returns (success, stdout).
fn robustness(args: &[&str]) -> (bool, String) {
    let dir = tempfile::Builder::new()
        .prefix("strata-rb-")
        .tempdir()
        .expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("robustness")
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd.spawn().expect("start strata robustness");
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            // SAFETY: plain syscall on the group of our own child.
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    eprintln!("{out}");
    let status = status.unwrap_or_else(|| panic!("strata robustness ran past 240 s:\n{out}"));
    (status.success(), out)
}

fn planted(plant: &str, expected_kind: &str) {
    let (ok, out) = robustness(&[
        "--plant",
        plant,
        "--nemesis",
        "none",
        "--duration",
        "10s",
        "--seed",
        "21",
    ]);
    assert!(!ok, "the planted bug {plant} went unnoticed:\n{out}");
    assert!(
        out.contains(expected_kind),
        "the planted bug {plant} was not reported as {expected_kind}:\n{out}"
    );
}

#[test]
fn a_planted_stale_read_is_caught() {
    planted("stale-read", "linearizable.");
}

#[test]
fn a_planted_dropped_watch_event_is_caught() {
    planted("drop-watch-event", "watch.reliable");
}

#[test]
fn a_planted_reused_revision_is_caught() {
    planted("reuse-revision", "revision.reused");
}

#[test]
fn the_same_run_without_a_plant_passes() {
    let (ok, out) = robustness(&["--nemesis", "none", "--duration", "10s", "--seed", "21"]);
    assert!(ok, "a run without faults or plants failed:\n{out}");
    assert!(out.contains("violations: 0"), "{out}");
}

#[test]
fn a_run_with_tls_everywhere_passes() {
    // Every client, router, node and placement link over TLS, under kill
    // faults (processes restarted, connections made again). Its own ports,
    // away from the other tests' block (all of them start from 21000 and
    // can race for the same free ports).
    let args = [
        "--base-port",
        "26000",
        "--tls",
        "--nemesis",
        "kill",
        "--duration",
        "10s",
        "--seed",
        "22",
    ];
    let (ok, out) = robustness(&args);
    assert!(ok, "a TLS run failed:\n{out}");
    assert!(
        out.contains("violations: 0") && out.contains("faults: "),
        "{out}"
    );
}
