//! Write-load: a small hot range splits by rate; hot leaders spread over nodes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_hot_range_splits_by_write_rate() {
    if Target::from_env() != Target::Strata {
        return;
    }
    // 50 keys are far below the key and byte thresholds: only the write rate
    // can split this range.
    let c = start_strata_with(&["--range-split-write-rate", "50"]);
    let client = c.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    loop {
        let (acked, _errors) = load_tolerant(&client, "hot/", 50, 10).await;
        assert!(!acked.is_empty());
        rounds += 1;
        let (n, _) = range_count(&c).await;
        if n >= 2 {
            eprintln!("split by load after {rounds} rounds of 50 puts: {n} ranges");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no load-based split after {rounds} rounds"
        );
    }
    // Both halves still serve every key.
    let mut cl = client.clone();
    let all = cl
        .get("hot/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read");
    assert_eq!(all.count(), 50);
}

/// Placement's current list of ranges (with leaders and stats).
async fn range_infos(c: &common::Cluster) -> Vec<strata_proto::strata::RangeInfo> {
    PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("placement")
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner()
        .ranges
}

/// Write-load balance: two hot ranges led by the same node end up led by
/// different nodes, while leader counts stay even.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_leaders_spread_over_nodes() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--range-split-keys", "16"]);
    let client = c.client().await;
    let keys: Vec<String> = load(&client, "hot/", 120, 4).await.into_keys().collect();
    let live = [1, 2, 3];
    wait_layout(
        &c,
        "6+ ranges, healthy, leaders even",
        Duration::from_secs(90),
        |l| l.ranges.len() >= 6 && healthy(l, &live) && leaders_even(l, &live),
    )
    .await;
    // Two ranges led by one node, with a loaded key in each.
    let ranges = range_infos(&c).await;
    let key_in = |d: &strata_proto::strata::RangeDescriptor| {
        keys.iter()
            .find(|k| {
                k.as_bytes() >= d.start_key.as_slice()
                    && (d.end_key.is_empty() || k.as_bytes() < d.end_key.as_slice())
            })
            .cloned()
    };
    let mut by_leader: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for r in &ranges {
        let d = r.desc.as_ref().unwrap();
        if let Some(k) = key_in(d) {
            by_leader.entry(r.leader_node).or_default().push((d.id, k));
        }
    }
    let (_, pair) = by_leader
        .iter()
        .find(|(n, v)| **n != 0 && v.len() >= 2)
        .unwrap_or_else(|| panic!("no node leads two loaded ranges: {by_leader:?}"));
    let hot: Vec<(u64, String)> = pair[..2].to_vec();
    let hot_ids: Vec<u64> = hot.iter().map(|h| h.0).collect();

    // Hammer both (bounded: 90 s at most), until their leaders differ for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut cl = client.clone();
        let key = hot[w % 2].1.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    cl.put(key.as_str(), format!("{i}"), None),
                )
                .await;
                assert!(matches!(r, Ok(Ok(_))), "put {key}: {r:?}");
                i += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(80);
    let mut apart_since: Option<Instant> = None;
    let final_layout = loop {
        let l = layout(&c).await;
        let rs = range_infos(&c).await;
        let leaders: Vec<u64> = hot_ids
            .iter()
            .map(|id| {
                rs.iter()
                    .find(|r| r.desc.as_ref().is_some_and(|d| d.id == *id))
                    .map_or(0, |r| r.leader_node)
            })
            .collect();
        if leaders[0] != 0 && leaders[1] != 0 && leaders[0] != leaders[1] {
            let since = *apart_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                break l;
            }
        } else {
            apart_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "hot ranges {hot_ids:?} still share a leader: {leaders:?}; nodes {:?}",
            l.nodes
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        leaders_even(&final_layout, &live),
        "leader counts uneven: {:?}",
        final_layout.nodes
    );
}
