//! `strata ctl ranges|nodes` against a real `strata dev` cluster that has split into
//! several ranges.

mod common;

use std::collections::HashSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{run_bounded, start_strata_with, Target};
use serde_json::Value;

/// Bound of one `strata ctl` run.
const CTL_TIMEOUT: Duration = Duration::from_secs(30);

fn ctl(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("ctl").args(args);
    run_bounded(cmd, None, CTL_TIMEOUT)
}

/// Runs `strata ctl ARGS`, which must succeed; returns its stdout.
fn ctl_ok(args: &[&str]) -> String {
    let out = ctl(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "strata ctl {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Runs `strata ctl ARGS`, which must fail; returns its stderr.
fn ctl_err(args: &[&str]) -> String {
    let out = ctl(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "strata ctl {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn str_field<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} is not a string in {v}"))
}

fn u64_field(v: &Value, name: &str) -> u64 {
    v[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not a number in {v}"))
}

fn range_ids(ranges: &[Value]) -> Vec<u64> {
    ranges.iter().map(|r| u64_field(r, "range_id")).collect()
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// Checks what `strata ctl ranges --json` printed: the ranges tile the keyspace and
/// each has 3 replicas on distinct nodes.
fn check_ranges(ranges: &[Value]) {
    assert!(!ranges.is_empty(), "no ranges");
    assert_eq!(
        str_field(&ranges[0], "start_key"),
        "",
        "first range starts at \"\""
    );
    assert_eq!(str_field(&ranges[0], "start_key_hex"), "");
    let last = ranges.last().unwrap();
    assert_eq!(str_field(last, "end_key"), "", "last range ends at \"\"");
    assert_eq!(str_field(last, "end_key_hex"), "");
    for w in ranges.windows(2) {
        assert_eq!(
            str_field(&w[0], "end_key"),
            str_field(&w[1], "start_key"),
            "ranges are contiguous: {} then {}",
            w[0],
            w[1]
        );
        assert_eq!(
            str_field(&w[0], "end_key_hex"),
            str_field(&w[1], "start_key_hex")
        );
        assert!(
            hex_decode(str_field(&w[0], "start_key_hex"))
                < hex_decode(str_field(&w[1], "start_key_hex")),
            "ranges are in key order"
        );
    }
    let mut ids = HashSet::new();
    for r in ranges {
        assert!(ids.insert(u64_field(r, "range_id")), "duplicate range {r}");
        // Printable keys are shown as themselves.
        for (text, hex) in [("start_key", "start_key_hex"), ("end_key", "end_key_hex")] {
            let bytes = hex_decode(str_field(r, hex));
            if let Ok(s) = std::str::from_utf8(&bytes) {
                if !s.chars().any(char::is_control) {
                    assert_eq!(str_field(r, text), s, "{r}");
                }
            }
        }
        let replicas: Vec<u64> = r["replicas"]
            .as_array()
            .unwrap_or_else(|| panic!("no replicas in {r}"))
            .iter()
            .map(|n| n.as_u64().expect("node id"))
            .collect();
        assert_eq!(replicas.len(), 3, "3 replicas: {r}");
        assert_eq!(
            replicas.iter().collect::<HashSet<_>>().len(),
            3,
            "replicas on 3 distinct nodes: {r}"
        );
        if let Some(leader) = r["leader_node"].as_u64() {
            assert!(replicas.contains(&leader), "leader is a replica: {r}");
        } else {
            assert!(r["leader_node"].is_null(), "{r}");
        }
        assert!(r["epoch"]["conf_ver"].is_u64() && r["epoch"]["version"].is_u64());
        for stat in ["approx_bytes", "approx_keys"] {
            assert!(r[stat].is_u64() || r[stat].is_null(), "{stat} in {r}");
        }
        assert!(
            r["writes_per_sec"].is_number() || r["writes_per_sec"].is_null(),
            "{r}"
        );
    }
    assert!(
        ranges.iter().any(|r| r["leader_node"].is_u64()),
        "at least one range has a known leader: {ranges:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_shows_ranges_and_nodes() {
    if Target::from_env() != Target::Strata {
        return; // ranges and placement are Strata's
    }
    let c = start_strata_with(&["--range-split-keys", "50"]);
    let data_dir = c.data_dir.to_str().expect("utf-8 data dir").to_string();
    let dd = data_dir.as_str();
    let mut client = c.client().await;

    // A few hundred keys: the cluster splits into several ranges. Some keys are not
    // UTF-8, so a range boundary may need escaping.
    for i in 0..400 {
        let key = format!("ctl/{i:04}");
        common::within(Duration::from_secs(20), "put", client.put(key, "v", None))
            .await
            .expect("put");
    }
    for i in 0..60u8 {
        let key = vec![0xff, b'b', i];
        common::within(Duration::from_secs(20), "put", client.put(key, "v", None))
            .await
            .expect("put binary key");
    }

    // Wait until splitting is over: several ranges, the same ones two polls apart.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last: Vec<u64> = Vec::new();
    loop {
        let ranges = json_lines(&ctl_ok(&["ranges", "--data-dir", dd, "--json"]));
        let ids = range_ids(&ranges);
        if ids.len() >= 4 && ids == last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ranges did not settle into >= 4 within 90 s: {ranges:?}"
        );
        last = ids;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // `ranges` and `nodes` are two calls: retry if a late split lands in between.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (ranges, nodes) = loop {
        let before = json_lines(&ctl_ok(&["ranges", "--data-dir", dd, "--json"]));
        let nodes = json_lines(&ctl_ok(&["nodes", "--data-dir", dd, "--json"]));
        let after = json_lines(&ctl_ok(&["ranges", "--data-dir", dd, "--json"]));
        let leaders_known = after.iter().any(|r| r["leader_node"].is_u64());
        let all_up = nodes.iter().all(|n| n["state"] == "up");
        if range_ids(&before) == range_ids(&after) && leaders_known && all_up {
            break (after, nodes);
        }
        assert!(
            Instant::now() < deadline,
            "no stable view within 60 s:\n{after:?}\n{nodes:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    check_ranges(&ranges);

    assert_eq!(nodes.len(), 3, "3 nodes: {nodes:?}");
    let node_ids: HashSet<u64> = nodes.iter().map(|n| u64_field(n, "node_id")).collect();
    assert_eq!(node_ids.len(), 3, "{nodes:?}");
    for n in &nodes {
        assert_eq!(str_field(n, "state"), "up", "{n}");
        let addr = str_field(n, "addr");
        assert!(addr.starts_with("127.0.0.1:"), "{n}");
    }
    for r in &ranges {
        for rep in r["replicas"].as_array().unwrap() {
            assert!(node_ids.contains(&rep.as_u64().unwrap()), "{r}");
        }
    }
    let replicas: u64 = nodes.iter().map(|n| u64_field(n, "range_count")).sum();
    assert_eq!(replicas, 3 * ranges.len() as u64, "{nodes:?}");
    let led: u64 = nodes.iter().map(|n| u64_field(n, "leader_count")).sum();
    assert!(
        led >= 1 && led <= ranges.len() as u64,
        "{led} leaders: {nodes:?}"
    );

    // The tables: a header, then one aligned line per range / node.
    let table = ctl_ok(&["ranges", "--data-dir", dd]);
    eprintln!("strata ctl ranges:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    for col in [
        "RANGE", "START", "END", "EPOCH", "REPLICAS", "LEADER", "SIZE", "KEYS", "WRITES/S",
    ] {
        assert!(lines[0].contains(col), "header has {col}: {table}");
    }
    assert_eq!(
        lines.len(),
        ranges.len() + 1,
        "a line per range (+ header): {table}"
    );
    assert!(lines[1].contains("(start)"), "{table}");
    assert!(lines.last().unwrap().contains("(end)"), "{table}");
    let end_col = lines[0].find("END").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.chars().nth(end_col - 1) == Some(' ')),
        "aligned columns: {table}"
    );

    // Global flags also go before the subcommand.
    let table = ctl_ok(&["--data-dir", dd, "nodes"]);
    eprintln!("strata ctl nodes:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "header + 3 nodes: {table}");
    for col in ["NODE", "ADDRESS", "STATE", "RANGES", "LEADERS"] {
        assert!(lines[0].contains(col), "header has {col}: {table}");
    }
    assert!(lines[1..].iter().all(|l| l.contains(" up ")), "{table}");

    // --placement instead of --data-dir: the placement address from dev.json.
    let dev: Value = serde_json::from_str(
        &std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json"),
    )
    .expect("dev.json is JSON");
    let placement = dev["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["role"] == "placement")
        .expect("placement in dev.json")["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let by_addr = json_lines(&ctl_ok(&["nodes", "--placement", &placement, "--json"]));
    assert_eq!(by_addr.len(), 3);
}

#[test]
fn ctl_errors_are_readable() {
    // Placement unreachable: the address is named.
    let err = ctl_err(&["ranges", "--placement", "127.0.0.1:1"]);
    assert!(
        err.contains("cannot reach placement at 127.0.0.1:1"),
        "stderr: {err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // No dev.json: says how to point at a cluster.
    let dir = tempfile::tempdir().expect("tempdir");
    let dd = dir.path().to_str().unwrap();
    let err = ctl_err(&["nodes", "--data-dir", dd]);
    assert!(err.contains(&format!("{dd}/dev.json")), "stderr: {err}");
    assert!(
        err.contains("--placement") && err.contains("--data-dir"),
        "stderr: {err}"
    );

    // A subcommand is required; --help describes both.
    let err = ctl_err(&[]);
    assert!(err.contains("ranges") && err.contains("nodes"), "{err}");
    let help = ctl_ok(&["--help"]);
    for s in ["ranges", "nodes", "--placement", "--data-dir", "--json"] {
        assert!(help.contains(s), "--help mentions {s}: {help}");
    }
}

/// `dev.json` names each node by the id placement gave it: the ids in
/// `strata ctl ranges` replica lists and `strata ctl nodes` (matched by
/// address), not `strata dev`'s own numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_json_node_ids_are_placements() {
    if Target::from_env() != Target::Strata {
        return; // dev.json is Strata's
    }
    let c = start_strata_with(&["--nodes", "5"]);
    let dd = c.data_dir.to_str().expect("utf-8 data dir").to_string();
    let dev: Value = serde_json::from_str(
        &std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json"),
    )
    .expect("dev.json is JSON");
    let dev_nodes: Vec<(u64, String)> = dev["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "node")
        .map(|c| (u64_field(c, "id"), str_field(c, "addr").to_string()))
        .collect();
    assert_eq!(dev_nodes.len(), 5, "{dev}");
    let nodes = json_lines(&ctl_ok(&["nodes", "--data-dir", &dd, "--json"]));
    assert_eq!(nodes.len(), 5, "{nodes:?}");
    for n in &nodes {
        let (id, addr) = (u64_field(n, "node_id"), str_field(n, "addr"));
        assert!(
            dev_nodes.contains(&(id, addr.to_string())),
            "node {id} at {addr} is not so in dev.json: {dev_nodes:?}"
        );
    }
    let ids: HashSet<u64> = dev_nodes.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 5, "distinct ids: {dev_nodes:?}");
    let ranges = json_lines(&ctl_ok(&["ranges", "--data-dir", &dd, "--json"]));
    assert!(!ranges.is_empty());
    for r in &ranges {
        for rep in r["replicas"].as_array().expect("replicas") {
            let id = rep.as_u64().expect("replica id");
            assert!(ids.contains(&id), "replica {id} of {r} not in dev.json");
        }
    }
}
