//! Every component's `/health`, `/ready` and `/metrics`, valid and moving under load.

use super::*;

/// Every component serves `/health`, `/ready` and `/metrics`; the metrics pass
/// `promtool check metrics`, name everything the dashboard and alerts use, and move
/// under load: the router's Put counter rises by exactly the puts sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_serves_valid_metrics_that_move_under_load() {
    tool("promtool");
    let cluster = start_strata_with(&[]);
    let dev = dev_json(&cluster);
    let comps = components(&dev);
    let roles: BTreeSet<&str> = comps.iter().map(|c| c.role.as_str()).collect();
    assert_eq!(
        roles,
        BTreeSet::from(["node", "placement", "router"]),
        "{comps:?}"
    );
    assert_eq!(comps.len(), 5, "placement, 3 nodes, router: {comps:?}");

    let mut all_families = BTreeSet::new();
    for c in &comps {
        let (code, body) = http_get(&format!("{}/health", c.base())).expect("GET /health");
        assert_eq!(code, 200, "{} /health: {body}", c.name);
        wait_for(
            Duration::from_secs(15),
            &format!("{} /ready", c.name),
            || match http_get(&format!("{}/ready", c.base()))? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("HTTP {code}: {body}")),
            },
        );
        let text = get_ok(&c.metrics_url);
        let (ok, out) = promtool(&["check", "metrics"], Some(text.as_bytes()));
        assert!(
            ok && out.trim().is_empty(),
            "promtool check metrics on {} ({}) failed:\n{out}",
            c.name,
            c.metrics_url
        );
        let fams = families(&text);
        for m in expected(&c.role).iter().chain(expected("any")) {
            assert!(fams.contains(*m), "{} does not expose {m}", c.name);
        }
        let info = parse(&text);
        assert_eq!(
            sum(&info, "strata_build_info", &[("role", &c.role)]),
            1.0,
            "{}: strata_build_info{{role={:?}}}",
            c.name,
            c.role
        );
        all_families.extend(fams);
    }

    // Everything the alert rules and the dashboard refer to exists.
    let mut used = referenced_metrics(
        &std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap(),
    );
    used.extend(referenced_metrics(&dashboard_exprs().join("\n")));
    let missing: Vec<&String> = used.iter().filter(|m| !all_families.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "alerts or dashboard use metrics no component exposes: {missing:?}"
    );

    let router = comps.iter().find(|c| c.role == "router").unwrap().clone();
    let placement = comps
        .iter()
        .find(|c| c.role == "placement")
        .unwrap()
        .clone();
    let nodes: Vec<Component> = comps.iter().filter(|c| c.role == "node").cloned().collect();
    let put_ok = [
        ("service", "etcdserverpb.KV"),
        ("method", "Put"),
        ("code", "OK"),
    ];
    let scrape_nodes =
        |name: &str| -> f64 { nodes.iter().map(|n| sum(&n.scrape(), name, &[])).sum() };

    // Load: N puts.
    const N: usize = 100;
    let r0 = router.scrape();
    let p0 = placement.scrape();
    let proposals0 = scrape_nodes("strata_node_proposals_total");
    let fsyncs0 = scrape_nodes("strata_node_wal_fsync_duration_seconds_count");
    let applied0 = scrape_nodes("strata_node_applied_entries_total");
    let mut client = cluster.client().await;
    let prefix = common::prefix("metrics");
    for i in 0..N {
        client
            .put(format!("{prefix}{i}"), "v", None)
            .await
            .expect("put");
    }
    // One request that fails: an empty key is InvalidArgument.
    assert!(client.put("", "v", None).await.is_err());

    let r1 = router.scrape();
    let put_name = "strata_router_grpc_requests_total";
    assert_eq!(
        sum(&r1, put_name, &put_ok) - sum(&r0, put_name, &put_ok),
        N as f64,
        "the router's Put counter must rise by the number of puts sent"
    );
    let lat = "strata_router_grpc_request_duration_seconds_count";
    let put_lat = [("service", "etcdserverpb.KV"), ("method", "Put")];
    assert_eq!(
        sum(&r1, lat, &put_lat) - sum(&r0, lat, &put_lat),
        N as f64 + 1.0,
        "every Put (the failed one too) is timed"
    );
    let invalid = [("method", "Put"), ("code", "InvalidArgument")];
    assert_eq!(
        sum(&r1, put_name, &invalid) - sum(&r0, put_name, &invalid),
        1.0,
        "the failed put is counted with its code"
    );
    let proposals = scrape_nodes("strata_node_proposals_total") - proposals0;
    assert!(
        proposals >= N as f64,
        "leaders proposed {proposals} commands for {N} puts"
    );
    let fsyncs = scrape_nodes("strata_node_wal_fsync_duration_seconds_count") - fsyncs0;
    assert!(fsyncs > 0.0, "no WAL fsync was timed during {N} puts");
    // Every replica (3) applies every put; followers may lag a little.
    wait_for_async(Duration::from_secs(10), "followers to apply", || {
        let applied = scrape_nodes("strata_node_applied_entries_total") - applied0;
        if applied >= (3 * N) as f64 {
            Ok(())
        } else {
            Err(format!("{applied} entries applied over 3 replicas"))
        }
    })
    .await;
    let p1 = placement.scrape();
    let revs = "strata_placement_oracle_revisions_total";
    assert!(
        sum(&p1, revs, &[]) - sum(&p0, revs, &[]) >= N as f64,
        "the oracle handed out fewer revisions than puts"
    );
    assert_eq!(sum(&p1, "strata_placement_nodes", &[("state", "up")]), 3.0);
    assert!(sum(&p1, "strata_placement_ranges", &[]) >= 1.0);
    let leaders: f64 = nodes
        .iter()
        .map(|n| sum(&n.scrape(), "strata_node_range_leaders", &[]))
        .sum();
    assert!(
        leaders >= 1.0,
        "no node reports leading a range ({leaders})"
    );

    // Watches: one stream with one watcher; its events are counted.
    let mut ws = within(
        RECV_TIMEOUT,
        "open a watch",
        client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix())),
    )
    .await
    .expect("watch");
    let created = within(RECV_TIMEOUT, "watch created", ws.message())
        .await
        .expect("watch response")
        .expect("stream open");
    assert!(created.created());
    let events0 = sum(
        &router.scrape(),
        "strata_router_watch_events_sent_total",
        &[],
    );
    let r = router.scrape();
    assert_eq!(sum(&r, "strata_router_watch_streams", &[]), 1.0);
    assert_eq!(sum(&r, "strata_router_watchers", &[]), 1.0);
    for i in 0..5 {
        client
            .put(format!("{prefix}w{i}"), "v", None)
            .await
            .expect("put");
    }
    let mut seen = 0;
    while seen < 5 {
        let m = within(RECV_TIMEOUT, "watch events", ws.message())
            .await
            .expect("watch response")
            .expect("stream open");
        seen += m.events().len();
    }
    let events = sum(
        &router.scrape(),
        "strata_router_watch_events_sent_total",
        &[],
    ) - events0;
    assert_eq!(events, 5.0, "watch events sent");
    // The range feed behind the watch publishes closed revisions (checkpoints).
    wait_for_async(
        Duration::from_secs(10),
        "a closed-revision lag sample",
        || {
            let n = scrape_nodes("strata_node_closed_revision_lag_seconds_count");
            if n > 0.0 {
                Ok(())
            } else {
                Err("no checkpoint timed yet".into())
            }
        },
    )
    .await;
    drop(ws);
    wait_for_async(Duration::from_secs(10), "the watch stream to close", || {
        let r = router.scrape();
        let open = sum(&r, "strata_router_watch_streams", &[]);
        let watchers = sum(&r, "strata_router_watchers", &[]);
        if open == 0.0 && watchers == 0.0 {
            Ok(())
        } else {
            Err(format!("{open} streams, {watchers} watchers"))
        }
    })
    .await;
}
