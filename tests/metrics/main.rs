//! Prometheus monitoring: every component of a `strata dev` cluster serves valid
//! metrics that move under load, the shipped alert rules and dashboard are valid,
//! and a real Prometheus server scrapes the cluster and reports its write rate.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on PATH; installed
//! by scripts/install-deps.sh). Without them these tests fail, saying so.

#[path = "../common/mod.rs"]
mod common;

mod endpoints;
mod prometheus;
mod quiesce;
mod rules;

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
