//! Crash tests with real processes: `kill -9` of a range leader's node under a
//! write load, and of the whole cluster; with the `failpoints` feature, a node
//! aborting at a crash failpoint (`points`). Strata only (they kill Strata's own
//! components); every loop is bounded in count and time.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start, Target};
use etcd_client::{GetOptions, PutOptions};
use serde_json::Value;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::GetRangesRequest;

/// (pid, addr, args) of every node in dev.json.
fn dev_nodes(c: &common::Cluster) -> Vec<(i32, String, Vec<String>)> {
    let text = std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json");
    let v: Value = serde_json::from_str(&text).expect("dev.json is JSON");
    v["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter(|c| c["role"] == "node")
        .map(|c| {
            (
                c["pid"].as_i64().expect("pid") as i32,
                c["addr"].as_str().expect("addr").to_string(),
                c["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .map(|a| a.as_str().expect("arg").to_string())
                    .collect(),
            )
        })
        .collect()
}

/// Address of the node leading the (first) range, per placement.
async fn leader_addr(c: &common::Cluster) -> String {
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("connect placement");
    for _ in 0..100 {
        let r = p
            .get_ranges(GetRangesRequest::default())
            .await
            .expect("get ranges")
            .into_inner();
        let leader = r.ranges.first().map_or(0, |r| r.leader_node);
        if let Some(n) = r.nodes.iter().find(|n| n.id == leader && leader != 0) {
            return n.addr.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("placement never reported a leader");
}

#[derive(Default)]
struct Acked {
    /// key → (value, revision) of every acknowledged put.
    puts: BTreeMap<String, (String, i64)>,
    errors: usize,
    /// When each successful put completed.
    times: Vec<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_leader_node_under_write_load() {
    if common::Target::from_env() != Target::Strata {
        return; // kills Strata's own processes; nothing to do against etcd
    }
    let c = start();
    let leader = leader_addr(&c).await;
    let nodes = dev_nodes(&c);
    let (pid, _, args) = nodes
        .iter()
        .find(|(_, addr, _)| *addr == leader)
        .cloned()
        .expect("leader is one of dev.json's nodes");

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop_at = Instant::now() + Duration::from_secs(12);
    let mut writers = Vec::new();
    for w in 0..4 {
        let acked = acked.clone();
        let mut client = c.client().await;
        writers.push(tokio::spawn(async move {
            // Bounded: at most 5000 puts per writer and until `stop_at`.
            for i in 0..5000 {
                if Instant::now() >= stop_at {
                    break;
                }
                let (k, v) = (format!("crash/w{w}/{i:05}"), format!("v{w}-{i}"));
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    client.put(k.clone(), v.clone(), None),
                )
                .await
                {
                    Ok(Ok(r)) => {
                        let rev = r.header().expect("header").revision();
                        let mut a = acked.lock().unwrap();
                        a.puts.insert(k, (v, rev));
                        a.times.push(Instant::now());
                    }
                    _ => {
                        acked.lock().unwrap().errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = acked.lock().unwrap().puts.len();
    assert!(before > 0, "no write succeeded before the crash");
    // SAFETY: kill(2) on a pid read from dev.json, our own child process.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill -9 leader node"
    );
    let killed_at = Instant::now();
    for w in writers {
        w.await.expect("writer task");
    }
    let a = std::mem::take(&mut *acked.lock().unwrap());
    let resumed = a.times.iter().filter(|t| **t > killed_at).min().copied();
    let resumed = resumed.expect("writes never resumed after the leader's node was killed");
    let gap = resumed - killed_at;
    eprintln!(
        "acked {} puts ({} before the crash), {} errors; first write after kill -9 in {:?}",
        a.puts.len(),
        before,
        a.errors,
        gap
    );
    assert!(
        gap < Duration::from_secs(8),
        "writes resumed only after {gap:?}"
    );
    assert!(
        a.puts.len() > before,
        "no write acknowledged after the crash"
    );

    // Every acknowledged write is there, at the revision it was acknowledged with.
    let mut client = c.client().await;
    let got = client
        .get("crash/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read back");
    let stored: BTreeMap<String, (String, i64)> = got
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect();
    for (k, (v, rev)) in &a.puts {
        assert_eq!(
            stored.get(k),
            Some(&(v.clone(), *rev)),
            "acknowledged write {k} lost or changed"
        );
    }

    // The killed node comes back with its data and catches up.
    let mut cmd = std::process::Command::new(&args[0]);
    cmd.args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut restarted = cmd.spawn().expect("restart node");
    let r = client
        .put("crash/after-restart", "x", Some(PutOptions::new()))
        .await
        .expect("put after restart");
    assert!(r.header().unwrap().revision() > a.puts.values().map(|v| v.1).max().unwrap());
    let _ = restarted.kill();
    let _ = restarted.wait();
}

/// Key, value, create revision, mod revision, version.
type Observed = (Vec<u8>, Vec<u8>, i64, i64, i64);

/// Everything a client can observe about a key.
fn snapshot(kvs: &[etcd_client::KeyValue]) -> Vec<Observed> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
            )
        })
        .collect()
}

#[tokio::test]
async fn kill_whole_cluster_and_restart() {
    if common::Target::from_env() != Target::Strata {
        return;
    }
    let c = start();
    let mut client = c.client().await;
    let mut last_rev = 0;
    for i in 0..200 {
        let r = client
            .put(format!("all/{i:03}"), format!("v{i}"), None)
            .await
            .expect("put");
        last_rev = r.header().unwrap().revision();
    }
    for i in (0..200).step_by(3) {
        client
            .put(format!("all/{i:03}"), format!("w{i}"), None)
            .await
            .expect("update");
    }
    for i in (0..200).step_by(7) {
        let r = client
            .delete(format!("all/{i:03}"), None)
            .await
            .expect("delete");
        last_rev = r.header().unwrap().revision();
    }
    let mid_rev = last_rev - 50;
    let opts = || Some(GetOptions::new().with_prefix());
    let before = client.get("all/", opts()).await.expect("get");
    let before_mid = client
        .get(
            "all/",
            Some(GetOptions::new().with_prefix().with_revision(mid_rev)),
        )
        .await
        .expect("get at rev");
    let before_rev = before.header().unwrap().revision();
    assert_eq!(before.kvs().len(), 200 - 200usize.div_ceil(7));

    c.kill9();
    c.restart();

    let mut client = c.client().await;
    let after = client.get("all/", opts()).await.expect("get after restart");
    assert_eq!(
        snapshot(after.kvs()),
        snapshot(before.kvs()),
        "data changed across kill -9"
    );
    assert!(
        after.header().unwrap().revision() >= before_rev,
        "revision went back"
    );
    let after_mid = client
        .get(
            "all/",
            Some(GetOptions::new().with_prefix().with_revision(mid_rev)),
        )
        .await
        .expect("get at rev");
    assert_eq!(
        snapshot(after_mid.kvs()),
        snapshot(before_mid.kvs()),
        "history changed across kill -9"
    );
    let r = client
        .put("all/new", "x", None)
        .await
        .expect("put after restart");
    assert!(
        r.header().unwrap().revision() > before_rev,
        "new write must get a newer revision"
    );
}

/// The node's crash failpoints (built with the root feature `failpoints`;
/// without it there is nothing to test): a node watching a failpoints file
/// (`STRATA_FAILPOINTS_FILE`) aborts at the point once it is set, and after a
/// restart without it every acknowledged write is there.
#[cfg(feature = "failpoints")]
mod points {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use crate::common::{start, Background, Target};
    use etcd_client::{Client, GetOptions};
    use strata_proto::strata::node_client::NodeClient;
    use strata_proto::strata::NodeStatusRequest;

    /// Stops a node `strata dev` started (SIGTERM) and waits until it is gone.
    fn stop_dev_node(pid: i32) {
        // SAFETY: kill(2) on a pid read from dev.json, a child of our strata dev.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "SIGTERM node");
        let start = Instant::now();
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "node {pid} did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One put through the router, bounded; its revision if acknowledged.
    async fn try_put(client: &mut Client, key: &str, value: &str) -> Option<i64> {
        match tokio::time::timeout(Duration::from_secs(5), client.put(key, value, None)).await {
            Ok(Ok(r)) => Some(r.header().expect("header").revision()),
            _ => None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn crash_after_log_fsync_aborts_node_and_restart_keeps_acked_writes() {
        if Target::from_env() != Target::Strata {
            return;
        }
        let c = start();
        let nodes = super::dev_nodes(&c);
        let (pid, addr, args) = nodes.get(1).cloned().expect("a second node");
        // Node 2 is restarted by this test, watching a failpoints file.
        stop_dev_node(pid);
        let fp_file = c.data_dir.join("node2.failpoints");
        std::fs::write(&fp_file, "# nothing yet\n").expect("write failpoints file");
        let node2 = |with_points: bool| {
            let mut cmd = Command::new(&args[0]);
            cmd.args(&args[1..]);
            if with_points {
                cmd.env("STRATA_FAILPOINTS_FILE", &fp_file);
            }
            Background::spawn(cmd)
        };
        let mut proc2 = node2(true);

        let mut client = c.client().await;
        let mut acked: Vec<(String, String, i64)> = Vec::new();
        for i in 0..200 {
            if acked.len() >= 20 {
                break;
            }
            let (k, v) = (format!("fp/before/{i:03}"), format!("v{i}"));
            if let Some(rev) = try_put(&mut client, &k, &v).await {
                acked.push((k, v, rev));
            }
        }
        assert_eq!(acked.len(), 20, "writes before the crash point");
        assert!(proc2.try_wait().is_none(), "node 2 exited early");

        std::fs::write(&fp_file, "crash_after_log_fsync=return\n").expect("set the point");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = proc2.try_wait() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node 2 did not crash at crash_after_log_fsync"
            );
            let n = acked.len();
            let (k, v) = (format!("fp/during/{n:04}"), format!("v{n}"));
            if let Some(rev) = try_put(&mut client, &k, &v).await {
                acked.push((k, v, rev));
            }
        };
        let crashed_after = start.elapsed();
        let (_, stderr) = proc2.finish();
        assert!(!status.success(), "node 2 exited normally: {status:?}");
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
        assert!(
            stderr.contains("failpoint crash_after_log_fsync: crashing"),
            "no crash line in node 2's stderr"
        );
        eprintln!("node 2 aborted {crashed_after:?} after the point was set: {status:?}");

        // Restarted without the point: it serves again and misses nothing.
        let _proc2 = node2(false);
        for i in 0..5 {
            let (k, v) = (format!("fp/after/{i}"), format!("v{i}"));
            let rev = try_put(&mut client, &k, &v)
                .await
                .expect("put after restart");
            acked.push((k, v, rev));
        }
        let got = client
            .get("fp/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back");
        for (k, v, rev) in &acked {
            let kv = got.kvs().iter().find(|kv| kv.key() == k.as_bytes());
            assert_eq!(
                kv.map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                Some((v.clone().into_bytes(), *rev)),
                "acknowledged write {k} lost or changed"
            );
        }
        let last = acked.iter().map(|a| a.2).max().unwrap_or(0);
        let start = Instant::now();
        loop {
            let applied = match NodeClient::connect(format!("http://{addr}")).await {
                Ok(mut n) => match n.status(NodeStatusRequest::default()).await {
                    Ok(s) => s
                        .into_inner()
                        .ranges
                        .iter()
                        .map(|r| r.applied_revision)
                        .max(),
                    Err(_) => None,
                },
                Err(_) => None,
            };
            if applied.is_some_and(|a| a >= last) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node 2 did not catch up to revision {last} after its restart ({applied:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!(
            "{} acknowledged writes readable; node 2 caught up to revision {last}",
            acked.len()
        );
    }
}
