//! Splits under load with a watch across them; prefix reads over many ranges.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_load_with_a_watch_across_them() {
    if Target::from_env() != Target::Strata {
        return; // ranges are Strata's; etcd has one keyspace
    }
    let c = start_strata_with(&["--range-split-keys", "500"]);
    let client = c.client().await;

    // A prefix watch opened before the load sees every put exactly once, in
    // revision order, across every split.
    let mut wc = client.clone();
    let mut stream = wc
        .watch("load/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("created in time")
        .expect("watch stream")
        .expect("created response");
    assert!(created.created());
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(String, i64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        while seen.len() < KEYS && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    for e in resp.events() {
                        assert_eq!(e.event_type(), EventType::Put);
                        let kv = e.kv().unwrap();
                        seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
                    }
                }
                other => panic!("watch ended early after {} events: {other:?}", seen.len()),
            }
        }
        seen
    });

    let started = Instant::now();
    let acked = load(&client, "load/", KEYS, 32).await;
    eprintln!("loaded {KEYS} keys in {:?}", started.elapsed());
    let seen = watcher.await.expect("watcher");
    assert_eq!(seen.len(), KEYS, "every put seen exactly once");
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "events in revision order"
    );
    let seen_map: BTreeMap<String, i64> = seen.into_iter().collect();
    assert_eq!(seen_map, acked, "watch events match acknowledged puts");

    // Dozens of ranges, three replicas each on distinct nodes.
    let (n, peers) = range_count(&c).await;
    eprintln!("{n} ranges after the load");
    assert!(n >= 20, "expected dozens of ranges, got {n}");
    for p in &peers {
        let mut d = p.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3, "replicas on distinct nodes: {p:?}");
    }

    // A prefix read across all of them returns everything, with limit/count.
    let mut c2 = client.clone();
    let all = c2
        .get("load/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(all.count() as usize, KEYS);
    assert_eq!(all.kvs().len(), KEYS);
    let got: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    assert_eq!(got, acked);
    let page = c2
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_limit(10)),
        )
        .await
        .expect("page");
    assert!(page.more() && page.kvs().len() == 10 && page.count() as usize == KEYS);
    assert_eq!(page.kvs()[0].key_str().unwrap(), "load/000000");
    let desc = c2
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_limit(3).with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )),
        )
        .await
        .expect("desc");
    assert_eq!(
        desc.kvs()[0].key_str().unwrap(),
        format!("load/{:06}", KEYS - 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_read_over_many_ranges_is_a_snapshot() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--range-split-keys", "100"]);
    let client = c.client().await;
    // 16 counters spread over the keyspace, with filler keys between them so
    // that they end up in different ranges.
    const COUNTERS: usize = 16;
    for i in 0..COUNTERS {
        let mut cl = client.clone();
        cl.put(format!("snap/{i:02}/counter"), "0", None)
            .await
            .expect("init");
    }
    load(&client, "snap/", 3000, 16).await; // keys snap/000000.. sort before snap/00/..? no: interleave below
    for i in 0..COUNTERS {
        load(&client, &format!("snap/{i:02}/fill"), 120, 8).await;
    }
    // Wait (bounded) for splits to spread the counters over >= 10 ranges.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, _) = range_count(&c).await;
        if n >= 12 || Instant::now() > deadline {
            assert!(n >= 12, "only {n} ranges");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A writer bumps every counter to the same value round by round, in
    // order 0..16: any consistent snapshot sees a non-increasing sequence
    // whose first and last values differ by at most one.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut cl = client.clone();
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && round < 200 {
                round += 1;
                for i in 0..COUNTERS {
                    cl.put(format!("snap/{i:02}/counter"), round.to_string(), None)
                        .await
                        .expect("bump");
                }
            }
            round
        })
    };
    let mut cl = client.clone();
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while checked < 30 && Instant::now() < deadline {
        let r = cl
            .get("snap/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read");
        let vals: Vec<u64> = r
            .kvs()
            .iter()
            .filter(|kv| kv.key_str().unwrap().ends_with("/counter"))
            .map(|kv| kv.value_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(vals.len(), COUNTERS);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "torn read: {vals:?}");
        assert!(vals[0] - vals[COUNTERS - 1] <= 1, "torn read: {vals:?}");
        checked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    assert!(
        checked >= 10 && rounds > 1,
        "checked {checked} snapshots over {rounds} rounds"
    );
}
