//! etcdctl (v3 API, Debian's etcdctl 3.4) against the server: put/get/del, txn,
//! watch, compaction, leases and endpoint commands, including the revisions shown
//! by `-w json`.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test etcdctl`). Every etcdctl run is
//! bounded (see `common::ETCDCTL_TIMEOUT`); background watches are killed.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Asserts failure; returns stderr.
#[track_caller]
fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "etcdctl unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn json(out: &Output) -> Value {
    let s = ok(out);
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad json ({e}): {s}"))
}

fn header_rev(v: &Value) -> i64 {
    v["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header.revision in {v}"))
}

/// A kv from etcdctl's json (protobuf field names; zero values omitted; bytes base64).
#[derive(Debug, PartialEq, Eq)]
struct Kv {
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    lease: i64,
}

fn kv(v: &Value) -> Kv {
    let s = |f: &str| String::from_utf8(base64_decode(v[f].as_str().unwrap_or(""))).expect("utf-8");
    let n = |f: &str| v[f].as_i64().unwrap_or(0);
    Kv {
        key: s("key"),
        value: s("value"),
        create: n("create_revision"),
        modr: n("mod_revision"),
        version: n("version"),
        lease: n("lease"),
    }
}

fn kvs(v: &Value) -> Vec<Kv> {
    v["kvs"]
        .as_array()
        .map(|a| a.iter().map(kv).collect())
        .unwrap_or_default()
}

#[test]
fn etcdctl_put_get() {
    let c = shared();
    let p = prefix("ctl_put_get");
    let k = format!("{p}k");

    assert_eq!(ok(&c.etcdctl(&["put", &k, "v1"])), "OK\n");
    assert_eq!(ok(&c.etcdctl(&["get", &k])), format!("{k}\nv1\n"));

    let put1 = json(&c.etcdctl(&["put", &k, "v2", "-w", "json"]));
    let r2 = header_rev(&put1);
    let g = json(&c.etcdctl(&["get", &k, "-w", "json"]));
    assert!(header_rev(&g) >= r2);
    assert_eq!(g["count"].as_i64(), Some(1));
    let got = &kvs(&g)[0];
    assert_eq!((got.key.as_str(), got.value.as_str()), (k.as_str(), "v2"));
    assert_eq!((got.modr, got.version, got.lease), (r2, 2, 0));
    assert!(got.create < r2);
    let r1 = got.create;

    // --prev-kv on put.
    let put3 = json(&c.etcdctl(&["put", &k, "v3", "--prev-kv", "-w", "json"]));
    let r3 = header_rev(&put3);
    assert!(r3 > r2);
    let prev = kv(&put3["prev_kv"]);
    assert_eq!(
        (prev.value.as_str(), prev.create, prev.modr, prev.version),
        ("v2", r1, r2, 2)
    );
    // Simple output of --prev-kv: OK, then the previous key and value.
    assert_eq!(
        ok(&c.etcdctl(&["put", &k, "v4", "--prev-kv"])),
        format!("OK\n{k}\nv3\n")
    );

    // Value from stdin when not given on the command line.
    assert_eq!(ok(&c.etcdctl_stdin(&["put", &k], "from-stdin")), "OK\n");
    assert_eq!(
        ok(&c.etcdctl(&["get", &k, "--print-value-only"])),
        "from-stdin\n"
    );

    // A missing key: nothing printed, success.
    assert_eq!(ok(&c.etcdctl(&["get", &format!("{p}missing")])), "");
    let g = json(&c.etcdctl(&["get", &format!("{p}missing"), "-w", "json"]));
    assert!(kvs(&g).is_empty());
    assert_eq!(g["count"].as_i64().unwrap_or(0), 0);
}

#[test]
fn etcdctl_get_prefix_rev_and_options() {
    let c = shared();
    let p = prefix("ctl_get");
    let k = |s: &str| format!("{p}{s}");
    let mut revs = vec![];
    for (key, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        revs.push(header_rev(&json(&c.etcdctl(&[
            "put",
            &k(key),
            v,
            "-w",
            "json",
        ]))));
    }
    let r_upd = header_rev(&json(&c.etcdctl(&["put", &k("a"), "1b", "-w", "json"])));
    assert!(revs[0] < revs[1] && revs[1] < revs[2] && revs[2] < r_upd);

    assert_eq!(
        ok(&c.etcdctl(&["get", &p, "--prefix"])),
        format!("{}\n1b\n{}\n2\n{}\n3\n", k("a"), k("b"), k("c"))
    );
    // Explicit range [a, c).
    assert_eq!(
        ok(&c.etcdctl(&["get", &k("a"), &k("c")])),
        format!("{}\n1b\n{}\n2\n", k("a"), k("b"))
    );
    // Historical read.
    let rev = revs[1].to_string();
    assert_eq!(
        ok(&c.etcdctl(&["get", &p, "--prefix", "--rev", &rev])),
        format!("{}\n1\n{}\n2\n", k("a"), k("b"))
    );
    let g = json(&c.etcdctl(&["get", &p, "--prefix", "--rev", &rev, "-w", "json"]));
    let got = kvs(&g);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].modr, got[0].version), (revs[0], 1));
    assert_eq!((got[1].create, got[1].modr), (revs[1], revs[1]));
    // The header of a historical read is the current revision.
    assert!(header_rev(&g) >= r_upd);

    // Limit: `more` and the full count.
    let g = json(&c.etcdctl(&["get", &p, "--prefix", "--limit=2", "-w", "json"]));
    assert_eq!(kvs(&g).len(), 2);
    assert_eq!(g["more"].as_bool(), Some(true));
    assert_eq!(g["count"].as_i64(), Some(3));

    // Keys only, values only, sorting, serializable.
    assert_eq!(
        ok(&c.etcdctl(&["get", &p, "--prefix", "--keys-only"])),
        format!("{}\n\n{}\n\n{}\n\n", k("a"), k("b"), k("c"))
    );
    assert_eq!(
        ok(&c.etcdctl(&["get", &p, "--prefix", "--print-value-only"])),
        "1b\n2\n3\n"
    );
    assert_eq!(
        ok(&c.etcdctl(&[
            "get",
            &p,
            "--prefix",
            "--keys-only",
            "--sort-by=MODIFY",
            "--order=DESCEND"
        ])),
        format!("{}\n\n{}\n\n{}\n\n", k("a"), k("c"), k("b"))
    );
    assert_eq!(
        ok(&c.etcdctl(&[
            "get",
            &p,
            "--prefix",
            "--print-value-only",
            "--sort-by=VALUE"
        ])),
        "1b\n2\n3\n"
    );
    assert_eq!(
        ok(&c.etcdctl(&[
            "get",
            &p,
            "--prefix",
            "--print-value-only",
            "--sort-by=CREATE",
            "--order=DESCEND"
        ])),
        "3\n2\n1b\n"
    );
    // Serializable reads may lag on some replica; they catch up within a bound.
    let want = format!("{}\n1b\n{}\n2\n{}\n3\n", k("a"), k("b"), k("c"));
    let mut got = String::new();
    for _ in 0..50 {
        got = ok(&c.etcdctl(&["get", &p, "--prefix", "--consistency=s"]));
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, want);
}

#[test]
fn etcdctl_del() {
    let c = shared();
    let p = prefix("ctl_del");
    let k = |s: &str| format!("{p}{s}");
    for s in ["a", "b", "c", "d"] {
        ok(&c.etcdctl(&["put", &k(s), s]));
    }
    assert_eq!(ok(&c.etcdctl(&["del", &k("a")])), "1\n");
    assert_eq!(ok(&c.etcdctl(&["del", &k("a")])), "0\n");
    assert_eq!(ok(&c.etcdctl(&["del", &k("missing")])), "0\n");
    assert_eq!(
        ok(&c.etcdctl(&["del", &k("b"), "--prev-kv"])),
        format!("1\n{}\nb\n", k("b"))
    );
    let before = header_rev(&json(&c.etcdctl(&["get", &k("c"), "-w", "json"])));
    let d = json(&c.etcdctl(&["del", &p, "--prefix", "--prev-kv", "-w", "json"]));
    assert!(header_rev(&d) > before);
    assert_eq!(d["deleted"].as_i64(), Some(2));
    let prev: Vec<String> = d["prev_kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| kv(v).value)
        .collect();
    assert_eq!(prev, ["c", "d"]);
    assert_eq!(ok(&c.etcdctl(&["get", &p, "--prefix"])), "");
    // Nothing to delete: json has no `deleted` field (zero is omitted).
    let d = json(&c.etcdctl(&["del", &p, "--prefix", "-w", "json"]));
    assert_eq!(d["deleted"].as_i64().unwrap_or(0), 0);
}

#[test]
fn etcdctl_txn() {
    let c = shared();
    let p = prefix("ctl_txn");
    let k = |s: &str| format!("{p}{s}");
    let put = json(&c.etcdctl(&["put", &k("flag"), "on", "-w", "json"]));
    let r0 = header_rev(&put);

    // Interactive format: compares, blank line, success ops, blank line, failure ops.
    let script = |flag: &str| {
        format!(
            "value(\"{f}\") = \"{flag}\"\nmod(\"{f}\") = \"{r0}\"\n\nput {a} \"then\"\nget {f}\n\nput {b} \"else\"\n\n",
            f = k("flag"),
            a = k("a"),
            b = k("b"),
        )
    };
    let out = ok(&c.etcdctl_stdin(&["txn"], &script("on")));
    assert_eq!(out, format!("SUCCESS\n\nOK\n\n{}\non\n", k("flag")));
    assert_eq!(
        ok(&c.etcdctl(&["get", &k("a"), "--print-value-only"])),
        "then\n"
    );

    let v: Value = json(&c.etcdctl_stdin(&["txn", "-w", "json"], &script("off")));
    // `succeeded: false` is omitted from the json.
    assert!(!v["succeeded"].as_bool().unwrap_or(false), "{v}");
    let rt = header_rev(&v);
    let resp = &v["responses"][0]["Response"]["ResponsePut"];
    assert!(resp.is_object(), "{v}");
    let g = json(&c.etcdctl(&["get", &k("b"), "-w", "json"]));
    let got = &kvs(&g)[0];
    assert_eq!((got.value.as_str(), got.modr, got.create), ("else", rt, rt));

    // Other compare targets: version, create, and an interval.
    let script = format!(
        "ver(\"{f}\") = \"1\"\ncreate(\"{f}\") = \"{r0}\"\nver(\"{a}\") > \"0\"\n\ndel {b}\n\n\n",
        f = k("flag"),
        a = k("a"),
        b = k("b"),
    );
    let out = ok(&c.etcdctl_stdin(&["txn"], &script));
    assert_eq!(out, "SUCCESS\n\n1\n");
    assert_eq!(ok(&c.etcdctl(&["get", &k("b")])), "");

    // A txn that succeeds with json output.
    let script = format!(
        "mod(\"{}\") = \"0\"\n\nput {} \"x\"\n\n\n",
        k("new"),
        k("new")
    );
    let v = json(&c.etcdctl_stdin(&["txn", "-w", "json"], &script));
    assert_eq!(v["succeeded"].as_bool(), Some(true));
    let rn = header_rev(&v);
    assert!(rn > rt);
    let g = json(&c.etcdctl(&["get", &k("new"), "-w", "json"]));
    assert_eq!(kvs(&g)[0].modr, rn);
}

#[test]
fn etcdctl_watch() {
    let c = shared();
    let p = prefix("ctl_watch");
    let k = format!("{p}k");
    let r0 = header_rev(&json(&c.etcdctl(&["put", &k, "v0", "-w", "json"])));

    // From a revision, with prev_kv: history first.
    let rev = r0.to_string();
    let w = c.etcdctl_spawn(&["watch", "--prefix", &p, "--rev", &rev, "--prev-kv"]);
    assert!(
        w.wait_stdout(Duration::from_secs(10), |s| s.contains("v0")),
        "no history event; stderr: {}",
        w.stderr()
    );
    ok(&c.etcdctl(&["put", &k, "v1"]));
    ok(&c.etcdctl(&["del", &k]));
    let want = format!("PUT\n{k}\nv0\nPUT\n{k}\nv0\n{k}\nv1\nDELETE\n{k}\nv1\n{k}\n\n");
    let done = w.wait_stdout(Duration::from_secs(10), |s| s == want);
    let (out, err) = w.finish();
    assert!(done, "watch output {out:?} (stderr {err:?}), want {want:?}");

    // Live, json: keep writing until the (racy) watch creation has happened.
    let w = c.etcdctl_spawn(&["watch", &k, "-w", "json"]);
    let mut seen = false;
    let mut last_rev = 0;
    for i in 0..40 {
        last_rev = header_rev(&json(&c.etcdctl(&[
            "put",
            &k,
            &format!("live{i}"),
            "-w",
            "json",
        ])));
        if w.wait_stdout(Duration::from_millis(250), |s| s.contains("Events")) {
            seen = true;
            break;
        }
    }
    let _ = w.wait_stdout(Duration::from_secs(2), |s| s.ends_with('\n'));
    let (out, err) = w.finish();
    assert!(seen, "no live event; stdout {out:?} stderr {err:?}");
    // One json object per response; the last event is our last put.
    let last = out
        .lines()
        .rfind(|l| l.starts_with('{'))
        .expect("a json line");
    let v: Value = serde_json::from_str(last).unwrap();
    let ev = &v["Events"][0];
    let got = kv(&ev["kv"]);
    assert_eq!(got.key, k);
    assert_eq!(got.modr, last_rev);
    assert!(v["Header"]["revision"].as_i64().unwrap() >= last_rev);
    // PUT events have no "type" field (0 is omitted).
    assert!(
        ev["type"].is_null() || ev["type"].as_i64() == Some(0),
        "{v}"
    );
}

#[test]
fn etcdctl_compaction() {
    // Compaction is global: a private server.
    let c = start();
    let r1 = header_rev(&json(&c.etcdctl(&["put", "k", "v1", "-w", "json"])));
    let r2 = header_rev(&json(&c.etcdctl(&["put", "k", "v2", "-w", "json"])));
    let r3 = header_rev(&json(&c.etcdctl(&["put", "k", "v3", "-w", "json"])));
    assert!(r1 < r2 && r2 < r3);

    let r2s = r2.to_string();
    assert_eq!(
        ok(&c.etcdctl(&["compaction", &r2s])),
        format!("compacted revision {r2}\n")
    );
    let err = fails(&c.etcdctl(&["get", "k", "--rev", &r1.to_string()]));
    assert!(err.contains(&format!("Error: {COMPACTED}")), "{err}");
    assert_eq!(
        ok(&c.etcdctl(&["get", "k", "--rev", &r2s, "--print-value-only"])),
        "v2\n"
    );
    let err = fails(&c.etcdctl(&["compaction", &r2s]));
    assert!(err.contains(&format!("Error: {COMPACTED}")), "{err}");
    let err = fails(&c.etcdctl(&["compaction", &(r3 + 1_000_000).to_string()]));
    assert!(err.contains(&format!("Error: {FUTURE_REV}")), "{err}");
    assert_eq!(
        ok(&c.etcdctl(&["compaction", "--physical", &r3.to_string()])),
        format!("compacted revision {r3}\n")
    );
    assert_eq!(ok(&c.etcdctl(&["get", "k", "--print-value-only"])), "v3\n");
    // A watch from a compacted revision reports the compaction on stderr and exits.
    let out = c.etcdctl(&["watch", "k", "--rev", &r1.to_string()]);
    let err = fails(&out);
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        err.contains(&format!("watch was canceled ({COMPACTED})")),
        "{err}"
    );
    assert!(
        err.contains("Error: watch is canceled by the server"),
        "{err}"
    );
}

#[test]
fn etcdctl_lease() {
    let c = shared();
    let p = prefix("ctl_lease");
    let k = format!("{p}k");
    let out = ok(&c.etcdctl(&["lease", "grant", "600"]));
    // "lease 694d7b0c4a1f2a05 granted with TTL(600s)"
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], "lease");
    assert!(out.ends_with("granted with TTL(600s)\n"), "{out}");
    let hex = words[1].to_string();
    let id = i64::from_str_radix(&hex, 16).expect("hex lease id");

    ok(&c.etcdctl(&["put", &k, "v", "--lease", &hex]));
    let g = json(&c.etcdctl(&["get", &k, "-w", "json"]));
    assert_eq!(kvs(&g)[0].lease, id);

    let ttl = ok(&c.etcdctl(&["lease", "timetolive", &hex, "--keys"]));
    assert!(
        ttl.starts_with(&format!("lease {hex} granted with TTL(600s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.contains(&format!("attached keys([{k}])")), "{ttl}");
    let list = ok(&c.etcdctl(&["lease", "list"]));
    assert!(list.starts_with("found "), "{list}");
    assert!(list.lines().any(|l| l == hex), "{list}");
    assert_eq!(
        ok(&c.etcdctl(&["lease", "keep-alive", "--once", &hex])),
        format!("lease {hex} keepalived with TTL(600)\n")
    );

    assert_eq!(
        ok(&c.etcdctl(&["lease", "revoke", &hex])),
        format!("lease {hex} revoked\n")
    );
    assert_eq!(ok(&c.etcdctl(&["get", &k])), "");
    // TimeToLive of an unknown lease is not an error: etcd answers TTL = -1, which
    // etcdctl prints as "already expired".
    assert_eq!(
        ok(&c.etcdctl(&["lease", "timetolive", &hex])),
        format!("lease {hex} already expired\n")
    );
    let err = fails(&c.etcdctl(&["put", &k, "v", "--lease", &hex]));
    assert!(err.contains(&format!("Error: {LEASE_NOT_FOUND}")), "{err}");
}

#[test]
fn etcdctl_errors() {
    let c = shared();
    let p = prefix("ctl_errors");
    let r = header_rev(&json(&c.etcdctl(&[
        "put",
        &format!("{p}k"),
        "v",
        "-w",
        "json",
    ])));
    let err = fails(&c.etcdctl(&[
        "get",
        &format!("{p}k"),
        "--rev",
        &(r + 1_000_000).to_string(),
    ]));
    assert!(err.contains(&format!("Error: {FUTURE_REV}")), "{err}");
    let err = fails(&c.etcdctl(&["put", "", "v"]));
    assert!(err.contains(&format!("Error: {EMPTY_KEY}")), "{err}");
}

#[test]
fn etcdctl_endpoint_status_and_health() {
    let c = shared();
    let p = prefix("ctl_endpoint");
    let r = header_rev(&json(&c.etcdctl(&[
        "put",
        &format!("{p}k"),
        "v",
        "-w",
        "json",
    ])));

    // etcdctl 3.4 prints the simple health line on stderr.
    let out = c.etcdctl(&["endpoint", "health"]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "{} is healthy: successfully committed proposal",
            c.endpoint
        )),
        "{err}"
    );
    let v = json(&c.etcdctl(&["endpoint", "health", "-w", "json"]));
    assert_eq!(v[0]["endpoint"].as_str(), Some(c.endpoint.as_str()));
    assert_eq!(v[0]["health"].as_bool(), Some(true), "{v}");

    let v = json(&c.etcdctl(&["endpoint", "status", "-w", "json"]));
    let st = &v[0];
    assert_eq!(st["Endpoint"].as_str(), Some(c.endpoint.as_str()));
    let status = &st["Status"];
    let version = status["version"].as_str().expect("version");
    // "3.x.y", possibly with a pre-release/build suffix.
    let core = version.split(['-', '+']).next().unwrap();
    let parts: Vec<u32> = core
        .split('.')
        .map(|x| x.parse().expect("numeric version part"))
        .collect();
    assert_eq!(parts.len(), 3, "{version}");
    assert_eq!(parts[0], 3, "{version}");
    assert!(header_rev(status) >= r);
    // Simple output works too.
    let out = ok(&c.etcdctl(&["endpoint", "status"]));
    assert!(out.starts_with(&format!("{}, ", c.endpoint)), "{out}");
}
