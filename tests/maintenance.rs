//! etcd's Maintenance service through etcdctl 3.4 (and etcd-client for exact
//! error codes): `endpoint status`, `endpoint hashkv`, `alarm list|disarm`,
//! `defrag`, `move-leader`, the space quota (`--quota-backend-bytes`), and a
//! replica corrupted in place found by HashKV and `strata ctl check`.
//!
//! Expectations that etcd 3.4 shares were checked against a real etcd
//! (`STRATA_TEST_TARGET=etcd cargo test --features strata/failpoints --test
//! maintenance`); where Strata differs by design (MoveLeader to a member,
//! the corruption hook) the test says so.

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{Client, DeleteOptions};
use serde_json::Value;

#[track_caller]
fn json(out: &Output) -> Value {
    let s = ok(out);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad json ({e}): {s}"))
}

#[track_caller]
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "etcdctl unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `etcdctl endpoint status -w json`'s one status.
fn status(c: &Cluster) -> Value {
    let v = json(&c.etcdctl(&["endpoint", "status", "-w", "json"]));
    v[0]["Status"].clone()
}

fn num(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or(0)
}

/// `etcdctl endpoint hashkv --rev REV -w json`: (hash, header revision).
fn hashkv(c: &Cluster, rev: i64) -> Result<u64, String> {
    let out = c.etcdctl(&[
        "endpoint",
        "hashkv",
        "--rev",
        &rev.to_string(),
        "-w",
        "json",
    ]);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v = json(&out);
    Ok(v[0]["HashKV"]["hash"].as_u64().unwrap_or(0))
}

fn version_at_least(v: &str, want: (u64, u64, u64)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let got = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    got >= want
}

async fn put_values(client: &mut Client, prefix: &str, n: usize, size: usize) {
    for i in 0..n {
        client
            .put(format!("{prefix}{i:05}"), vec![b'v'; size], None)
            .await
            .expect("put");
    }
}

#[tokio::test]
async fn endpoint_status_reports_version_size_and_raft() {
    let c = Cluster::start();
    let mut client = c.client().await;
    put_values(&mut client, &prefix("status"), 10, 100).await;
    let s0 = status(&c);
    let version = s0["version"].as_str().unwrap_or_default();
    match c.target {
        // Kubernetes enables watch progress requests from 3.5.13 on.
        Target::Strata => assert!(version_at_least(version, (3, 5, 13)), "{s0}"),
        Target::Etcd => assert!(version_at_least(version, (3, 4, 0)), "{s0}"),
    }
    assert!(num(&s0, "dbSize") > 0, "{s0}");
    assert!(num(&s0, "dbSizeInUse") > 0, "{s0}");
    assert!(num(&s0, "dbSizeInUse") <= num(&s0, "dbSize"), "{s0}");
    assert!(num(&s0, "raftTerm") >= 1, "{s0}");
    assert!(num(&s0, "raftIndex") >= 1, "{s0}");
    assert!(num(&s0, "raftAppliedIndex") >= 1, "{s0}");
    // The member answering leads (etcdctl move-leader looks for this).
    assert_ne!(s0["leader"].as_u64().unwrap_or(0), 0, "{s0}");
    assert_eq!(s0["leader"], s0["header"]["member_id"], "{s0}");
    assert!(s0["errors"].as_array().is_none_or(|e| e.is_empty()), "{s0}");
    assert_ne!(s0["isLearner"], Value::Bool(true), "{s0}");

    // About 2 MB more data: the database grows.
    put_values(&mut client, &prefix("status-grow"), 100, 20_000).await;
    let s1 = status(&c);
    assert!(
        num(&s1, "dbSize") > num(&s0, "dbSize"),
        "db size did not grow:\nbefore {s0}\nafter {s1}"
    );
}

#[tokio::test]
async fn endpoint_hashkv_is_stable_at_a_revision_and_respects_compaction() {
    let c = Cluster::start();
    let mut client = c.client().await;
    let p = prefix("hashkv");
    put_values(&mut client, &p, 20, 10).await;
    let r1 = client
        .put(format!("{p}last"), "x", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let h1 = hashkv(&c, r1).expect("hashkv");
    assert_eq!(hashkv(&c, r1), Ok(h1), "the same revision hashes the same");
    client
        .put(format!("{p}later"), "y", None)
        .await
        .expect("put");
    let now = hashkv(&c, 0).expect("hashkv now");
    assert_ne!(now, h1, "a new key changes the current hash");
    assert_eq!(hashkv(&c, r1), Ok(h1), "history at r1 is unchanged");

    let err = hashkv(&c, r1 + 1000).expect_err("future revision");
    assert!(err.contains(FUTURE_REV), "{err}");
    client.compact(r1, None).await.expect("compact");
    let err = hashkv(&c, r1 - 1).expect_err("compacted revision");
    assert!(err.contains(COMPACTED), "{err}");
    // etcd-client: the same errors, exact codes.
    assert_grpc_err(client.hash_kv(r1 - 1).await, "OutOfRange", COMPACTED);
    assert_grpc_err(client.hash_kv(r1 + 1000).await, "OutOfRange", FUTURE_REV);
}

#[tokio::test]
async fn move_leader_and_hash() {
    let c = Cluster::start();
    let s = status(&c);
    let me = s["header"]["member_id"].as_u64().expect("member id");
    // Not a member: etcd's error.
    let out = c.etcdctl(&["move-leader", &format!("{:x}", me ^ 0x5a5a)]);
    let err = fails(&out);
    assert!(err.contains("etcdserver: bad leader transferee"), "{err}");
    let mut client = c.client().await;
    assert_grpc_err(
        client.move_leader(me ^ 0x5a5a).await,
        "FailedPrecondition",
        "etcdserver: bad leader transferee",
    );
    let out = c.etcdctl(&["move-leader", &format!("{me:x}")]);
    match c.target {
        // A single etcd member "transfers" to itself.
        Target::Etcd => {
            ok(&out);
        }
        // Strata's routers hold no raft leadership: a clear refusal.
        Target::Strata => {
            let err = fails(&out);
            assert!(err.contains("routers hold no raft leadership"), "{err}");
            let e = client.move_leader(me).await.expect_err("refused");
            assert_eq!(grpc_error(&e).0, "FailedPrecondition");
            // Hash has no counterpart: a clear error pointing at HashKV.
            let e = client.hash().await.expect_err("Hash is not served");
            let (code, msg) = grpc_error(&e);
            assert_eq!(code, "Unimplemented");
            assert!(msg.contains("HashKV"), "{msg}");
        }
    }
}

const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const QUOTA_BYTES: i64 = 4 * 1024 * 1024;

/// Polls `etcdctl alarm list` until it shows a NOSPACE alarm (Strata's
/// node records it in placement in the background).
fn wait_for_nospace_alarm(c: &Cluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = ok(&c.etcdctl(&["alarm", "list"]));
        if list.contains("alarm:NOSPACE") {
            return list;
        }
        assert!(Instant::now() < deadline, "no NOSPACE alarm: {list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn space_quota_alarm_defrag_and_disarm() {
    let c = Cluster::start_with_common_flags(&["--quota-backend-bytes", &QUOTA_BYTES.to_string()]);
    let mut client = c.client().await;
    assert_eq!(ok(&c.etcdctl(&["alarm", "list"])).trim(), "");
    // Disarming nothing succeeds and prints nothing.
    assert_eq!(ok(&c.etcdctl(&["alarm", "disarm"])).trim(), "");

    // Fill the quota: 64 KiB values until a write is refused.
    let p = prefix("quota");
    let mut refused = None;
    for i in 0..400 {
        match client
            .put(format!("{p}{i:05}"), vec![b'q'; 64 * 1024], None)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, grpc_error(&e)));
                break;
            }
        }
    }
    let (written, err) = refused.expect("the quota never refused a write");
    assert!(written > 10, "refused too early, after {written} writes");
    assert_eq!(err, ("ResourceExhausted".to_string(), NO_SPACE.to_string()));

    let list = wait_for_nospace_alarm(&c);
    assert!(list.trim().starts_with("memberID:"), "{list:?}");
    let s = status(&c);
    let errors: Vec<&str> = s["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(errors.len(), 1, "{s}");
    // etcd's exact words: `memberID:<decimal id> alarm:NOSPACE ` (sic).
    let id = errors[0]
        .strip_prefix("memberID:")
        .and_then(|e| e.strip_suffix(" alarm:NOSPACE "))
        .unwrap_or_else(|| panic!("{:?}", errors[0]));
    assert!(id.parse::<u64>().is_ok(), "{:?}", errors[0]);
    let db_full = num(&s, "dbSize");

    // Disarmed while still over the quota: the next write is refused and
    // raises the alarm again (as etcd does).
    let disarmed = ok(&c.etcdctl(&["alarm", "disarm"]));
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_grpc_err(
            client.put(format!("{p}re"), "x", None).await,
            "ResourceExhausted",
            NO_SPACE,
        );
        if ok(&c.etcdctl(&["alarm", "list"])).contains("alarm:NOSPACE") {
            break;
        }
        assert!(Instant::now() < deadline, "the alarm was not raised again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Capped: any write adding data is refused, a lease grant too; reads,
    // deletes and compaction go on.
    assert_grpc_err(
        client.put(format!("{p}small"), "x", None).await,
        "ResourceExhausted",
        NO_SPACE,
    );
    assert_grpc_err(
        client.lease_grant(60, None).await,
        "ResourceExhausted",
        NO_SPACE,
    );
    let out = c.etcdctl(&["put", &format!("{p}ctl"), "x"]);
    assert!(fails(&out).contains(NO_SPACE));
    let got = client.get(format!("{p}00000"), None).await.expect("get");
    assert_eq!(got.kvs().len(), 1);
    let del = client
        .delete(p.clone(), Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete under the alarm");
    assert_eq!(del.deleted(), written as i64);
    let rev = del.header().expect("header").revision();
    ok(&c.etcdctl(&["compact", &rev.to_string(), "--physical"]));

    // Defragment gives the space back (replicas apply the compaction a moment
    // after the leader: defragment again until it shows, bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let db_after = loop {
        let out = ok(&c.etcdctl(&["defrag"]));
        assert!(out.contains("Finished defragmenting"), "{out}");
        let size = num(&status(&c), "dbSize");
        if size < db_full / 2 || Instant::now() > deadline {
            break size;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "quota {QUOTA_BYTES}: refused after {written} writes; db size {db_full} -> {db_after}"
    );
    assert!(
        db_after < db_full / 2,
        "defrag did not shrink the database: {db_full} -> {db_after}"
    );

    // Still capped until disarmed.
    assert_grpc_err(
        client.put(format!("{p}x"), "x", None).await,
        "ResourceExhausted",
        NO_SPACE,
    );
    let disarmed = ok(&c.etcdctl(&["alarm", "disarm"]));
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed:?}");
    assert_eq!(ok(&c.etcdctl(&["alarm", "list"])).trim(), "");
    // Writes work again (Strata's nodes learn the disarm with their next
    // heartbeat, within 300 ms).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match client.put(format!("{p}again"), "ok", None).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(grpc_error(&e).1, NO_SPACE);
                assert!(
                    Instant::now() < deadline,
                    "writes still refused after disarm"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    client
        .lease_grant(60, None)
        .await
        .expect("lease grant after disarm");
    let s = status(&c);
    assert!(s["errors"].as_array().is_none_or(|e| e.is_empty()), "{s}");
}

/// `strata ctl ARGS` against the cluster's placement.
fn ctl(c: &Cluster, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("ctl")
        .args(args)
        .args(["--placement", &c.placement_addr()]);
    run_bounded(cmd, None, Duration::from_secs(60))
}

fn check_rows(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

#[tokio::test]
async fn hashkv_and_ctl_check_name_a_corrupt_replica() {
    use strata_proto::strata::node_client::NodeClient;
    use strata_proto::strata::placement_client::PlacementClient;
    use strata_proto::strata::{CorruptRequest, GetRangesRequest};

    // etcd has no replica to corrupt through an API: Strata only.
    if Target::from_env() == Target::Etcd {
        return;
    }
    let c = Cluster::start();
    let mut client = c.client().await;
    let p = prefix("corrupt");
    put_values(&mut client, &p, 50, 100).await;

    // Healthy: every range OK on all three replicas; HashKV answers.
    let out = ctl(&c, &["check", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = check_rows(&out);
    assert!(!rows.is_empty());
    for r in &rows {
        assert_eq!(r["result"], "OK", "{r}");
        assert_eq!(r["replicas"].as_array().map(Vec::len), Some(3), "{r}");
    }
    client
        .hash_kv(0)
        .await
        .expect("hashkv of a healthy cluster");

    // Corrupt one replica (not the leader placement knows) of the key's range.
    let key = format!("{p}00007");
    let mut pl = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("placement");
    let ranges = pl
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner();
    let info = ranges
        .ranges
        .iter()
        .find(|r| {
            let d = r.desc.as_ref().expect("desc");
            d.start_key.as_slice() <= key.as_bytes()
                && (d.end_key.is_empty() || key.as_bytes() < d.end_key.as_slice())
        })
        .expect("the key's range");
    let desc = info.desc.clone().expect("desc");
    let victim = desc
        .peers
        .iter()
        .map(|p| p.node_id)
        .find(|&n| n != info.leader_node)
        .expect("a follower");
    let addr = &ranges
        .nodes
        .iter()
        .find(|n| n.id == victim)
        .expect("victim node")
        .addr;
    let mut node = NodeClient::connect(format!("http://{addr}"))
        .await
        .expect("node");
    node.corrupt(CorruptRequest {
        range_id: desc.id,
        key: key.clone().into_bytes(),
    })
    .await
    .expect("corrupt");

    // HashKV fails, naming the range and the node.
    let e = client.hash_kv(0).await.expect_err("mismatch");
    let (code, msg) = grpc_error(&e);
    assert_eq!(code, "DataLoss", "{msg}");
    assert!(msg.contains(&format!("range {}", desc.id)), "{msg}");
    assert!(msg.contains(&format!("on node {victim}")), "{msg}");
    let err = fails(&c.etcdctl(&["endpoint", "hashkv"]));
    assert!(err.contains(&format!("on node {victim}")), "{err}");

    // `strata ctl check`: that range MISMATCH, the victim's hash differs.
    let out = ctl(&c, &["check", "--json"]);
    assert!(!out.status.success(), "ctl check must fail on a mismatch");
    let rows = check_rows(&out);
    let bad: Vec<&Value> = rows.iter().filter(|r| r["result"] == "MISMATCH").collect();
    assert_eq!(bad.len(), 1, "{rows:?}");
    assert_eq!(bad[0]["range_id"].as_u64(), Some(desc.id));
    let hashes: Vec<(u64, String)> = bad[0]["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|x| {
            (
                x["node_id"].as_u64().unwrap_or(0),
                x["hash"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let theirs = &hashes.iter().find(|h| h.0 == victim).expect("victim row").1;
    let others: Vec<&String> = hashes
        .iter()
        .filter(|h| h.0 != victim)
        .map(|h| &h.1)
        .collect();
    assert_eq!(others.len(), 2);
    assert!(
        others.iter().all(|h| *h == others[0] && *h != theirs),
        "{hashes:?}"
    );
    // The table names them too.
    let out = ctl(&c, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("MISMATCH"), "{text}");
    assert!(text.contains(&format!("on node {victim}")), "{text}");
}

/// Range ids `strata ctl ranges --json` lists.
fn range_count(c: &Cluster) -> usize {
    let out = ctl(c, &["ranges", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_rows(&out).len()
}

#[tokio::test]
async fn hashkv_over_many_ranges_does_not_depend_on_splits() {
    if Target::from_env() == Target::Etcd {
        return; // ranges are Strata's
    }
    let c = start_strata_with(&["--range-split-keys", "20"]);
    let mut client = c.client().await;
    put_values(&mut client, "hsplit/a/", 60, 10).await;
    let r = client
        .put("hsplit/a/last", "x", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    let before = client.hash_kv(r).await.expect("hashkv").hash();
    // More keys: more splits; the state at r is the same, so is its hash.
    put_values(&mut client, "hsplit/b/", 120, 10).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while range_count(&c) < 4 {
        assert!(Instant::now() < deadline, "fewer than 4 ranges after 60 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = client.hash_kv(r).await.expect("hashkv after splits");
    assert_eq!(after.hash(), before, "the hash at {r} changed with splits");
    // `strata ctl check` at r: every range, all replicas agreeing, and the
    // ranges' hashes add up to HashKV's.
    let out = ctl(&c, &["check", "--json", "--revision", &r.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = check_rows(&out);
    assert!(rows.len() >= 4, "{rows:?}");
    let mut sum = 0u32;
    for row in &rows {
        assert_eq!(row["result"], "OK", "{row}");
        assert_eq!(row["revision"].as_i64(), Some(r), "{row}");
        let h = row["replicas"][0]["hash"].as_str().expect("hash");
        sum = sum.wrapping_add(u32::from_str_radix(h, 16).expect("hex hash"));
    }
    assert_eq!(sum, before, "the ranges' hashes add up to HashKV's");
}
