//! etcd's HTTP/JSON gateway on the client port, driven with real `curl`.
//!
//! Every expectation here holds for a real etcd 3.4 too
//! (`STRATA_TEST_TARGET=etcd cargo test --features strata/failpoints --test
//! gateway`), except the health endpoints of etcd 3.6 (`health.rs`), the
//! gateway over TLS (`tls.rs`) and the body bound (`errors.rs`), which are
//! Strata only. Absolute revisions are never asserted, only their shape and
//! order.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod concurrency;
mod errors;
mod health;
mod kv;
mod lease;
mod streams;
mod tls;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One bound for every curl run.
const CURL_TIMEOUT: Duration = Duration::from_secs(30);

/// What curl got: HTTP status, `Content-Type`, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
}

impl Reply {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    #[track_caller]
    fn ok_json(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?}");
        assert_eq!(self.content_type, "application/json", "{self:?}");
        self.json()
    }
}

fn url(path: &str) -> String {
    format!("http://{}{path}", shared().endpoint)
}

/// Runs curl with `args` then the URL of `path`, `stdin` as the body.
fn curl(method: &str, path: &str, body: Option<&str>, extra: &[&str]) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        method,
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
    ]);
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    cmd.args(extra).arg(url(path));
    let out = run_bounded(cmd, body.map(str::as_bytes), CURL_TIMEOUT);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "curl {path} failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reply(&text)
}

/// curl's output with `-w "\n%{http_code} %{content_type}"` as a `Reply`.
fn reply(text: &str) -> Reply {
    let (body, tail) = text.rsplit_once('\n').expect("curl's -w line");
    let (status, content_type) = tail.split_once(' ').unwrap_or((tail, ""));
    Reply {
        status: status.parse().expect("HTTP status"),
        content_type: content_type.to_string(),
        body: body.to_string(),
    }
}

fn post(path: &str, body: &str) -> Reply {
    curl("POST", path, Some(body), &[])
}

/// A streaming call left running: curl with `-N` (no buffering).
fn post_stream(path: &str, body: &str) -> Background {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "-X", "POST", "-d", body, &url(path)]);
    Background::spawn(cmd)
}

/// The JSON lines a stream printed so far.
fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line ({e}): {l:?}")))
        .collect()
}

/// Standard base64, as etcd's JSON writes bytes.
fn b64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An int64/uint64 field, which etcd's JSON writes as a string.
#[track_caller]
fn int(v: &Value) -> i64 {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a 64-bit integer as a string, got {v}"))
        .parse()
        .expect("integer")
}

/// A uint64 field (ids), also written as a string.
#[track_caller]
fn uint(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a 64-bit integer as a string, got {v}"))
        .parse()
        .expect("unsigned integer")
}

/// Checks etcd's response header: exactly its four fields, 64-bit integers as
/// strings; returns the revision.
#[track_caller]
fn header_rev(v: &Value) -> i64 {
    let h = v["header"]
        .as_object()
        .unwrap_or_else(|| panic!("no header in {v}"));
    let mut names: Vec<&str> = h.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        ["cluster_id", "member_id", "raft_term", "revision"],
        "{v}"
    );
    uint(&h["cluster_id"]);
    uint(&h["member_id"]);
    int(&h["revision"])
}

/// The field names of a JSON object (sorted).
fn fields(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn base64_encoder() {
    assert_eq!(b64("foo"), "Zm9v");
    assert_eq!(b64("ab"), "YWI=");
    assert_eq!(b64("a"), "YQ==");
    assert_eq!(base64_decode(&b64("any/key-1")), b"any/key-1");
}
