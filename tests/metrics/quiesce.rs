//! Quiescence of idle ranges, seen through the metrics.

use super::*;

/// Quiescence, seen through the metrics: once a cluster with ten or more ranges
/// goes idle, its nodes stop sending raft messages, and no range elects a new
/// leader while idle. (A follower woken alone — e.g. by a heartbeat that arrived
/// after its leader quiesced — ticks without hearing from the leader and, with its
/// peers, elects a new one; short ticks make that show within seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ranges_quiesce_without_elections() {
    let cluster = start_strata_with(&["--raft-tick-ms", "20", "--range-split-keys", "8"]);
    let dev = dev_json(&cluster);
    let comps = components(&dev);
    let placement = comps
        .iter()
        .find(|c| c.role == "placement")
        .expect("placement");
    let nodes: Vec<&Component> = comps.iter().filter(|c| c.role == "node").collect();
    let mut client = cluster.client().await;
    for i in 0..120 {
        within(
            RECV_TIMEOUT,
            "put",
            client.put(format!("quiet/{i:04}"), "v", None),
        )
        .await
        .expect("put");
    }
    wait_for_async(Duration::from_secs(120), "at least 10 ranges", || {
        let n = sum(&placement.scrape(), "strata_placement_ranges", &[]);
        if n >= 10.0 {
            Ok(())
        } else {
            Err(format!("{n} ranges"))
        }
    })
    .await;
    // (messages sent, leader changes) summed over the nodes.
    let totals = || {
        nodes.iter().fold((0.0, 0.0), |acc, n| {
            let s = n.scrape();
            (
                acc.0 + sum(&s, "strata_node_raft_messages_sent_total", &[]),
                acc.1 + sum(&s, "strata_node_leader_changes_total", &[]),
            )
        })
    };
    // Settled: no raft message for 4 s in a row (splits, leader balancing done).
    let mut last = totals();
    let mut quiet_since = Instant::now();
    wait_for_async(Duration::from_secs(90), "raft traffic to stop", || {
        let now = totals();
        if now.0 != last.0 {
            last = now;
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() >= Duration::from_secs(4) {
            Ok(())
        } else {
            Err(format!("{} messages sent so far", now.0))
        }
    })
    .await;
    let before = totals();
    // 6 s idle = 300 ticks of 20 ms = 30 election timeouts.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = totals();
    assert_eq!(
        after.1, before.1,
        "leader changes while idle: {} → {}",
        before.1, after.1
    );
    assert_eq!(
        after.0, before.0,
        "raft messages sent while idle: {} → {}",
        before.0, after.0
    );
    // And the ranges still answer.
    let got = within(RECV_TIMEOUT, "get", client.get("quiet/0042", None))
        .await
        .expect("get");
    assert_eq!(got.kvs().len(), 1);
}
