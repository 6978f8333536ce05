//! etcd v3 Watch compatibility: one bidirectional stream carrying many watches,
//! history catch-up, prev_kv, filters, progress notifications, cancellation and
//! compaction.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test watch`). Every receive is bounded.

#[path = "../common/mod.rs"]
mod common;

mod compact;
mod events;
mod progress;
mod streams;

use std::time::Duration;

use common::*;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

async fn client() -> Client {
    shared().client().await
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    rev_of(c.put(key, value, None).await.expect("put").header())
}

async fn del(c: &mut Client, key: &str) -> i64 {
    rev_of(c.delete(key, None).await.expect("delete").header())
}

/// The next response on the stream (bounded).
async fn recv(s: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(RECV_TIMEOUT, s.message()).await {
        Err(_) => panic!("no watch response within {RECV_TIMEOUT:?}"),
        Ok(Err(e)) => panic!("watch stream error: {e}"),
        Ok(Ok(None)) => panic!("watch stream closed by the server"),
        Ok(Ok(Some(r))) => r,
    }
}

/// Asserts that nothing arrives on the stream for `d`.
async fn assert_quiet(s: &mut WatchStream, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, s.message()).await {
        panic!("expected no watch response, got {r:?}");
    }
}

fn assert_created(r: &WatchResponse) {
    assert!(r.created(), "expected a created response, got {r:?}");
    assert!(!r.canceled(), "{r:?}");
    assert!(r.events().is_empty(), "{r:?}");
    assert_eq!(r.compact_revision(), 0);
}

/// Opens a stream with one watch; returns it and the watch id.
async fn open(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> (WatchStream, i64) {
    let mut s = within(RECV_TIMEOUT, "open watch stream", c.watch(key, opts))
        .await
        .expect("watch");
    let r = recv(&mut s).await;
    assert_created(&r);
    (s, r.watch_id())
}

/// Adds a watch to an existing (idle) stream; returns its id.
async fn add(s: &mut WatchStream, key: &str, opts: Option<WatchOptions>) -> i64 {
    s.watch(key, opts).await.expect("send watch create");
    let r = recv(s).await;
    assert_created(&r);
    r.watch_id()
}

/// A flattened event, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    watch_id: i64,
    typ: EventType,
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    /// (value, mod revision) of prev_kv when present.
    prev: Option<(String, i64)>,
}

fn flatten(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            Ev {
                watch_id: r.watch_id(),
                typ: e.event_type(),
                key: kv.key_str().unwrap().to_string(),
                value: kv.value_str().unwrap().to_string(),
                create: kv.create_revision(),
                modr: kv.mod_revision(),
                version: kv.version(),
                prev: e
                    .prev_kv()
                    .map(|p| (p.value_str().unwrap().to_string(), p.mod_revision())),
            }
        })
        .collect()
}

/// Reads responses until `n` events have arrived (bounded); every response must be
/// an event response with a header revision at or after its events.
async fn events(s: &mut WatchStream, n: usize) -> Vec<Ev> {
    collect_events(s, n, false).await
}

/// Like `events`, but skips progress notifications (empty responses), which may
/// interleave on watches created with `progress_notify`.
async fn events_skip_progress(s: &mut WatchStream, n: usize) -> Vec<Ev> {
    collect_events(s, n, true).await
}

async fn collect_events(s: &mut WatchStream, n: usize, skip_progress: bool) -> Vec<Ev> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) * 4 + if skip_progress { 20 } else { 0 } {
        if out.len() >= n {
            break;
        }
        let r = recv(s).await;
        assert!(!r.created() && !r.canceled(), "unexpected {r:?}");
        if skip_progress && r.events().is_empty() {
            continue;
        }
        assert!(!r.events().is_empty(), "unexpected empty response {r:?}");
        let evs = flatten(&r);
        let last = evs.last().unwrap().modr;
        assert!(rev_of(r.header()) >= last, "header below its events: {r:?}");
        out.extend(evs);
    }
    assert_eq!(out.len(), n, "got {out:#?}");
    out
}

fn short(evs: &[Ev]) -> Vec<(EventType, &str, &str)> {
    evs.iter()
        .map(|e| (e.typ, e.key.as_str(), e.value.as_str()))
        .collect()
}

const PUT: EventType = EventType::Put;
const DELETE: EventType = EventType::Delete;
