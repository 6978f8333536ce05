//! A real Prometheus scraping a `strata dev` cluster, with the alert rules and
//! dashboard queries.

use super::*;

/// `strata dev --prometheus` starts a Prometheus that scrapes every component; a
/// second Prometheus with a 1 s scrape interval, the shipped alert rules and the
/// dashboard's queries reports a non-zero write rate under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_reports_the_write_rate() {
    let prometheus = tool("prometheus");
    tool("promtool");
    let cluster = start_strata_with(&["--prometheus"]);
    let dev = dev_json(&cluster);
    let comps = components(&dev);

    // The Prometheus that `strata dev --prometheus` started sees every component up.
    let dev_prom = dev["prometheus"]["url"]
        .as_str()
        .expect("dev.json: prometheus.url (strata dev --prometheus)")
        .to_string();
    let query = |base: &str, q: &str| -> Result<Vec<Value>, String> {
        let (code, body) = http_get(&format!("{base}/api/v1/query?query={}", url_encode(q)))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 || v["status"] != "success" {
            return Err(format!("query {q:?}: HTTP {code}: {body}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    };
    let value = |r: &Value| -> f64 {
        r["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN)
    };
    wait_for_async(
        PROMETHEUS_TIMEOUT,
        "strata dev's Prometheus to scrape every component",
        || {
            let up = query(&dev_prom, "up")?;
            let n = up.iter().filter(|r| value(r) == 1.0).count();
            if n == comps.len() {
                Ok(())
            } else {
                Err(format!("{n} of {} targets up: {up:?}", comps.len()))
            }
        },
    )
    .await;

    // ... and has loaded the alert rules.
    let rules = |base: &str| -> Result<Vec<Value>, String> {
        let (code, body) = http_get(&format!("{base}/api/v1/rules"))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code != 200 {
            return Err(format!("HTTP {code}: {body}"));
        }
        Ok(v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    };
    let n = rules(&dev_prom)
        .expect("strata dev's Prometheus rules")
        .len();
    let shipped = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml"))
        .expect("alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        n, shipped,
        "alert rules loaded by strata dev's Prometheus (deploy/prometheus/alerts.yml has {shipped})"
    );

    // Our own Prometheus: 1 s scrapes, the alert rules loaded.
    let dir = tempfile::Builder::new()
        .prefix("strata-prom-")
        .tempdir()
        .expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\n\
         scrape_configs:\n",
        repo_file("deploy/prometheus/alerts.yml").display()
    );
    for role in ["placement", "node", "router"] {
        config.push_str(&format!(
            "  - job_name: strata-{role}\n    static_configs:\n      - targets:\n"
        ));
        for c in comps.iter().filter(|c| c.role == role) {
            let target = c.base().trim_start_matches("http://");
            config.push_str(&format!("          - '{target}'\n"));
        }
    }
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, &config).expect("write prometheus.yml");
    let (ok, out) = promtool(&["check", "config", config_path.to_str().unwrap()], None);
    assert!(ok, "promtool check config:\n{out}\n{config}");
    let mut cmd = Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Background::spawn(cmd);
    let base = format!("http://127.0.0.1:{port}");
    let prom_log = |prom: &Background| {
        let err = prom.stderr();
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let ready = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(&format!("{base}/-/ready")) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert!(
        ready,
        "prometheus did not become ready:\n{}",
        prom_log(&prom)
    );

    // Load in the background while we ask Prometheus for the write rate.
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let mut client = cluster.client().await;
    let load = {
        let (stop, puts) = (stop.clone(), puts.clone());
        let prefix = common::prefix("prom");
        tokio::spawn(async move {
            let deadline = Instant::now() + PROMETHEUS_TIMEOUT + Duration::from_secs(30);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if client
                    .put(format!("{prefix}{}", i % 100), "v", None)
                    .await
                    .is_ok()
                {
                    puts.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let write_rate = wait_for_async(PROMETHEUS_TIMEOUT, "a non-zero write rate", || {
        let q = r#"sum(rate(strata_router_grpc_requests_total{job="strata-router",service="etcdserverpb.KV",method="Put",code="OK"}[5s]))"#;
        let r = query(&base, q)?;
        match r.first().map(value) {
            Some(v) if v > 0.0 => Ok(v),
            other => Err(format!("{q} = {other:?} ({} puts sent)", puts.load(Ordering::Relaxed))),
        }
    })
    .await;
    let revision_rate = wait_for_async(Duration::from_secs(30), "a non-zero revision rate", || {
        let q = r#"sum(rate(strata_placement_oracle_revisions_total{job="strata-placement"}[5s]))"#;
        match query(&base, q)?.first().map(value) {
            Some(v) if v > 0.0 => Ok(v),
            other => Err(format!("{q} = {other:?}")),
        }
    })
    .await;
    eprintln!(
        "prometheus reports {write_rate:.1} puts/s and {revision_rate:.1} revisions/s \
         ({} puts sent)",
        puts.load(Ordering::Relaxed)
    );

    // Every dashboard query is valid PromQL over these metrics, and the key ones
    // have data.
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "only {} dashboard queries", exprs.len());
    // Queries over a 10 s window need a few scrapes of every target: asked
    // again (bounded) until the key ones have data.
    wait_for_async(
        Duration::from_secs(20),
        "data for the key dashboard queries",
        || {
            let mut empty = Vec::new();
            for e in &exprs {
                let q = instantiate(e);
                let r = tokio::task::block_in_place(|| query(&base, &q))
                    .unwrap_or_else(|err| panic!("dashboard query {e:?} failed: {err}"));
                if r.is_empty() {
                    empty.push(q);
                }
            }
            for must in [
                "strata_router_grpc_requests_total",
                "strata_node_wal_fsync_duration_seconds_bucket",
                "strata_node_range_leaders",
                "strata_placement_oracle_revisions_total",
            ] {
                let ok = exprs.iter().any(|e| e.contains(must))
                    && !empty
                        .iter()
                        .any(|q| q.contains(must) && !q.contains("code!="));
                if !ok {
                    return Err(format!(
                        "dashboard queries over {must} returned no data: {empty:#?}"
                    ));
                }
            }
            Ok(())
        },
    )
    .await;

    // The alert rules evaluate without errors against the live metrics.
    wait_for_async(
        Duration::from_secs(30),
        "every alert rule to evaluate",
        || {
            let rules = rules(&base)?;
            if rules.len() < 8 {
                return Err(format!("{} rules loaded: {rules:?}", rules.len()));
            }
            let bad: Vec<String> = rules
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            if bad.is_empty() {
                Ok(())
            } else {
                Err(format!("rules not healthy: {bad:?}"))
            }
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(20), load).await;
    drop(prom);
}
