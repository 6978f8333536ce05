//! Write flow control (`node/src/pressure.rs`): while the nodes' storage
//! reports compaction falling behind (failpoint `engine_level0_files`, read
//! where RocksDB's level-0 file count is), new writes wait — the leader
//! refuses them as busy before proposing, the router backs off and resends
//! — and reads go on. A write held past its deadline gets etcd's "request
//! timed out" and never applies; one still within its deadline goes through
//! once the engine has caught up.

use std::time::Duration;

use prost::Message as _;
use strata_proto::etcd::PbPutRequest;

use crate::cluster::{Cluster, Opts};
use crate::{get_at, put, within};

/// Refusals counted by the nodes of this process.
fn refused_as_busy() -> u64 {
    strata_node::metrics::PROPOSALS_REJECTED
        .with_label_values(&["engine_busy"])
        .get()
}

fn storage_behind(c: &Cluster, behind: bool) {
    for n in &c.nodes {
        let point = format!("engine_level0_files.{}", n.node_id);
        if behind {
            fail::cfg(point, "return(30)").expect("failpoint");
        } else {
            fail::remove(point);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_wait_while_storage_is_behind_and_reads_go_on() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut kv = c.client().await;
    put(&mut kv, "busy/before", "v").await;
    let refused_before = refused_as_busy();

    storage_behind(&c, true);
    // Past its deadline: etcd's answer for a proposal that timed out.
    let put_a = PbPutRequest {
        key: b"busy/a".to_vec(),
        value: b"a".to_vec(),
        ..Default::default()
    };
    let e = crate::rawgrpc::unary(
        &c.router.to_string(),
        "/etcdserverpb.KV/Put",
        put_a.encode_to_vec(),
        &[("grpc-timeout", "1500m")],
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        (e.code, e.message.as_str()),
        (14, "etcdserver: request timed out")
    );
    assert!(
        refused_as_busy() > refused_before,
        "the put was not refused as engine_busy"
    );
    // Reads are not held.
    let (values, _) = get_at(&mut kv, "busy/before", 0).await;
    assert_eq!(values, ["v"]);
    // A put within its deadline (the router's own, 10 s) waits...
    let mut kv2 = c.client().await;
    let waiting = tokio::spawn(async move { kv2.put("busy/b", "b", None).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "a put went through while busy");

    // ...and applies once the engine catches up.
    storage_behind(&c, false);
    within(Duration::from_secs(15), "the waiting put", waiting)
        .await
        .expect("task")
        .expect("the put after the engine caught up");
    let (values, _) = get_at(&mut kv, "busy/b", 0).await;
    assert_eq!(values, ["b"]);
    let (values, _) = get_at(&mut kv, "busy/a", 0).await;
    assert!(values.is_empty(), "the timed-out put applied: {values:?}");
    put(&mut kv, "busy/after", "v").await;
}
