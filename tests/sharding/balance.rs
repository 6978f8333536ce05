//! Five nodes: balance, repair after a node loss, and a node joining.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_balance_repair_and_join() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&[
        "--nodes",
        "5",
        "--range-split-keys",
        "300",
        "--node-down-after",
        "4s",
    ]);
    let client = c.client().await;
    let (acked, errors) = load_tolerant(&client, "bal/", 6000, 16).await;
    eprintln!("loaded {} keys ({errors} errors)", acked.len());
    let live: Vec<u64> = (1..=5).collect();
    let l = wait_layout(&c, "balanced over 5 nodes", Duration::from_secs(120), |l| {
        l.ranges.len() >= 12 && healthy(l, &live) && leaders_even(l, &live)
    })
    .await;
    eprintln!("balanced: {} ranges, nodes {:?}", l.ranges.len(), l.nodes);

    // kill -9 one node under a write load: nothing acknowledged is lost, writes
    // go on, and every range is back to 3 live replicas after the down timeout.
    let victim_id = 5u64;
    let victim_addr = l.nodes[&victim_id].0.clone();
    let text = std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json");
    let dev: serde_json::Value = serde_json::from_str(&text).expect("json");
    let pid = dev["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["addr"] == victim_addr.as_str())
        .and_then(|x| x["pid"].as_i64())
        .expect("victim pid") as i32;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { load_tolerant(&client, "kill/", 1500, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: kill(2) on a pid of our own cluster, read from dev.json.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (acked2, errors2) = writer.await.expect("writer");
    eprintln!("during the crash: {} acked, {errors2} errors", acked2.len());
    assert!(
        acked2.len() > 1000,
        "writes did not continue: {} acked",
        acked2.len()
    );
    let live: Vec<u64> = (1..=4).collect();
    let l = wait_layout(
        &c,
        "repaired after kill -9",
        Duration::from_secs(120),
        |l| healthy(l, &live),
    )
    .await;
    eprintln!("repaired: nodes {:?}", l.nodes);
    let mut cl = client.clone();
    for (prefix, acked) in [("bal/", &acked), ("kill/", &acked2)] {
        let got = cl
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back");
        let got: BTreeMap<String, i64> = got
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        for (k, rev) in acked {
            assert_eq!(got.get(k), Some(rev), "acknowledged write {k} lost");
        }
    }

    // A new node joins and receives a fair share of replicas and leaders.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node6 = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["node", "--data-dir"])
        .arg(c.data_dir.join("node-6"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--placement",
            &c.placement_addr(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start node 6");
    let joined = wait_layout(
        &c,
        "new node got its share",
        Duration::from_secs(150),
        |l| {
            let Some((id, _)) = l
                .nodes
                .iter()
                .find(|(_, n)| n.0 == format!("127.0.0.1:{port}"))
            else {
                return false;
            };
            let mut live: Vec<u64> = (1..=4).collect();
            live.push(*id);
            let replicas = l.nodes[id].2;
            let fair = (l.ranges.len() * 3) as f64 / 5.0;
            healthy(l, &live) && replicas as f64 >= fair - 1.0 && leaders_even(l, &live)
        },
    )
    .await;
    eprintln!("joined: nodes {:?}", joined.nodes);
    let _ = node6.kill();
    let _ = node6.wait();
}
