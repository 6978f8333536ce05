//! Prometheus monitoring: every component of a `strata dev` cluster serves valid
//! metrics that move under load, the shipped alert rules and dashboard are valid,
//! and a real Prometheus server scrapes the cluster and reports its write rate.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH; installed
//! by scripts/install-deps.sh). Without them these tests fail, saying so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run_bounded, start_strata_with, within, Background, Cluster, RECV_TIMEOUT};
use etcd_client::WatchOptions;
use serde_json::Value;

/// Bound for one HTTP request to a component or to Prometheus.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for one promtool run.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Prometheus may take to start, scrape and report.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Helpers

/// Absolute path of `name` on PATH, or a failure that says how to install it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not on PATH: these tests need Debian's prometheus package \
         (run scripts/install-deps.sh, or apt-get install prometheus)"
    );
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `GET url` over HTTP/1.0 (loopback only); returns the status and body.
fn http_get(url: &str) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = host
        .parse::<std::net::SocketAddr>()
        .map_err(|e| format!("{host}: {e}"))?;
    assert!(
        addr.ip().is_loopback(),
        "tests only talk to loopback: {url}"
    );
    let mut s =
        TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).ok();
    s.set_write_timeout(Some(HTTP_TIMEOUT)).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").map_err(|e| format!("{url}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: malformed response {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{url}: bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

fn get_ok(url: &str) -> String {
    match http_get(url) {
        Ok((200, body)) => body,
        Ok((code, body)) => panic!("GET {url}: HTTP {code}: {body}"),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the samples of a Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if rest.starts_with('{') {
            let b = rest.as_bytes();
            let mut i = 1;
            loop {
                while i < b.len() && (b[i] == b',' || b[i] == b' ') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    break;
                }
                let eq = i + rest[i..].find('=').expect("label =");
                let key = rest[i..eq].to_string();
                let mut j = eq + 2; // skip `="`
                let mut val = String::new();
                while b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                        val.push(match b[j] {
                            b'n' => '\n',
                            c => c as char,
                        });
                    } else {
                        val.push(b[j] as char);
                    }
                    j += 1;
                }
                labels.insert(key, val);
                i = j + 1;
            }
            rest = &rest[i + 1..];
        }
        let value = match rest.split_whitespace().next().unwrap_or("") {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples named `name` whose labels include `want` (0 when none).
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Metric family names announced by `# TYPE` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone)]
struct Component {
    role: String,
    name: String,
    metrics_url: String,
}

impl Component {
    fn base(&self) -> &str {
        self.metrics_url.trim_end_matches("/metrics")
    }
    fn scrape(&self) -> Vec<Sample> {
        parse(&get_ok(&self.metrics_url))
    }
}

fn dev_json(c: &Cluster) -> Value {
    let path = c.data_dir.join("dev.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn components(dev: &Value) -> Vec<Component> {
    dev["components"]
        .as_array()
        .expect("dev.json: components")
        .iter()
        .map(|c| Component {
            role: c["role"].as_str().expect("role").to_string(),
            name: c["name"].as_str().expect("name").to_string(),
            metrics_url: c["metrics_url"].as_str().expect("metrics_url").to_string(),
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns `Some` or `limit` passes.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Async version of [`wait_for`] (for use while tasks of the test run).
async fn wait_for_async<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::task::block_in_place(&mut f) {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {limit:?} waiting for {what}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// `promtool ARGS` (bounded), with `stdin`; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(args);
    let out = run_bounded(cmd, stdin, PROMTOOL_TIMEOUT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Metric names (`strata_*`, `process_*`) used in a text (alert rules, dashboard).
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["strata_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let boundary = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if boundary {
                let name = &tail[..end];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                out.insert(base.to_string());
            }
            rest = &tail[end.max(1)..];
        }
    }
    out
}

/// The PromQL expressions of every panel of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let path = repo_file("deploy/grafana/strata.json");
    let text = std::fs::read_to_string(&path).expect("read the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("target expr").to_string());
        }
    }
    exprs
}

/// A dashboard expression with Grafana's variables replaced for a direct query.
fn instantiate(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$router_job", "strata-router")
        .replace("$node_job", "strata-node")
        .replace("$placement_job", "strata-placement")
}

/// The metrics each role must expose.
fn expected(role: &str) -> &'static [&'static str] {
    const COMMON: &[&str] = &[
        "strata_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ];
    match role {
        "placement" => &[
            "strata_placement_nodes",
            "strata_placement_ranges",
            "strata_placement_ranges_under_replicated",
            "strata_placement_ranges_unavailable",
            "strata_placement_ranges_without_leader",
            "strata_placement_replicas_missing",
            "strata_placement_oracle_allocations_total",
            "strata_placement_oracle_revisions_total",
            "strata_placement_oracle_batch_size",
            "strata_placement_grpc_requests_total",
            "strata_placement_operators_total",
        ],
        "node" => &[
            "strata_node_proposals_total",
            "strata_node_proposals_pending",
            "strata_node_raft_ready_entries",
            "strata_node_raft_ready_bytes",
            "strata_node_wal_fsync_duration_seconds",
            "strata_node_apply_duration_seconds",
            "strata_node_raft_messages_sent_total",
            "strata_node_raft_messages_received_total",
            "strata_node_raft_sent_bytes_total",
            "strata_node_raft_received_bytes_total",
            "strata_node_leader_changes_total",
            "strata_node_snapshots_sent_total",
            "strata_node_snapshots_applied_total",
            "strata_node_ranges",
            "strata_node_range_leaders",
            "strata_node_closed_revision_lag_seconds",
            "strata_node_rocksdb_sst_bytes",
            "strata_node_splits_total",
            "strata_oracle_client_wait_seconds",
        ],
        "router" => &[
            "strata_router_grpc_requests_total",
            "strata_router_grpc_request_duration_seconds",
            "strata_router_watch_streams",
            "strata_router_watchers",
            "strata_router_watch_events_sent_total",
            "strata_router_retries_total",
            "strata_oracle_client_wait_seconds",
        ],
        _ => COMMON,
    }
}

// ---------------------------------------------------------------------------
// Tests

/// The shipped alert rules pass `promtool check rules` and their unit tests.
#[test]
fn alert_rules_pass_promtool() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok, "promtool check rules {}:\n{out}", rules.display());
    let tests = repo_file("deploy/prometheus/alerts_test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok, "promtool test rules {}:\n{out}", tests.display());
}

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
    assert_eq!(n, 8, "alert rules loaded by strata dev's Prometheus");

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
        assert!(
            exprs.iter().any(|e| e.contains(must))
                && !empty
                    .iter()
                    .any(|q| q.contains(must) && !q.contains("code!=")),
            "dashboard queries over {must} returned no data: {empty:#?}"
        );
    }

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
