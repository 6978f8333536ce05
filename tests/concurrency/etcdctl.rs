//! `etcdctl lock` and `etcdctl elect` (clientv3's recipes run client-side).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::*;

fn sigint(b: &Background) {
    if let Some(pid) = b.pid() {
        // SAFETY: a signal to a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_second_contender_runs_after_the_first() {
    let c = shared();
    let name = prefix("ctllock").trim_end_matches('/').to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let a_end = dir.path().join("a_end");
    let b_start = dir.path().join("b_start");
    // A holds the lock for 2 s, recording when it let go; B records when it
    // got it. (`date +%s%N`: nanoseconds.)
    let a = c.etcdctl_spawn(&[
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        &format!("echo A-in; sleep 2; date +%s%N > {}", a_end.display()),
    ]);
    assert!(
        a.wait_stdout(Duration::from_secs(20), |s| s.contains("A-in")),
        "A never got the lock: {}",
        a.stderr()
    );
    let mut b = c.etcdctl_spawn(&[
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        &format!("date +%s%N > {}; echo B-in", b_start.display()),
    ]);
    assert!(
        b.wait_stdout(Duration::from_secs(20), |s| s.contains("B-in")),
        "B never got the lock: {}",
        b.stderr()
    );
    let read = |p: &std::path::Path| -> u128 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("a time")
    };
    assert!(
        read(&b_start) >= read(&a_end),
        "B held the lock before A let go"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.try_wait().is_none() {
        assert!(Instant::now() < deadline, "etcdctl lock did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a);
    // Both sessions ended: their lock keys are gone (leases revoked).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !keys_under(c, &format!("{name}/")).await.is_empty() {
        assert!(Instant::now() < deadline, "lock keys left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_listen_see_the_leader_change() {
    let c = shared();
    let name = prefix("ctlelect").trim_end_matches('/').to_string();
    // Not the cluster's first write: Strata gives that revision 1 where etcd
    // gives 2, and clientv3's Campaign then waits for keys created at or
    // below revision 0 — no bound at all, so for its own key, forever.
    let mut kv = c.client().await;
    within(
        REQUEST_TIMEOUT,
        "put",
        kv.put(format!("{name}-warmup"), "", None),
    )
    .await
    .expect("put");
    let listen = c.etcdctl_spawn(&["elect", "--listen", &name]);
    let p1 = c.etcdctl_spawn(&["elect", &name, "first"]);
    assert!(
        p1.wait_stdout(Duration::from_secs(20), |s| s.contains("first")),
        "first candidate not elected: {}",
        p1.stderr()
    );
    assert!(
        listen.wait_stdout(Duration::from_secs(20), |s| s.contains("first")),
        "listener did not see the first leader: {}",
        listen.stderr()
    );
    let p2 = c.etcdctl_spawn(&["elect", &name, "second"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!p2.stdout().contains("second"), "two leaders at once");

    // The first leader stops (SIGINT: it resigns); the second takes over.
    sigint(&p1);
    assert!(
        p2.wait_stdout(Duration::from_secs(20), |s| s.contains("second")),
        "second candidate not elected: {}",
        p2.stderr()
    );
    assert!(
        listen.wait_stdout(Duration::from_secs(20), |s| s.contains("second")),
        "listener did not see the second leader: {}",
        listen.stdout()
    );
    // The listener prints `KEY\nVALUE` per leader: first's then second's.
    let out = listen.stdout();
    let first_at = out.find("first").expect("first");
    let second_at = out.find("second").expect("second");
    assert!(first_at < second_at, "{out}");
    assert!(out.contains(&format!("{name}/")), "{out}");
    sigint(&p2);
    let (_o, _e) = p1.finish();
    let _ = p2.finish();
    let _ = listen.finish();
}
