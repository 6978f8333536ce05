//! Several routers: `MemberList` lists them all, and a client of both keeps
//! working when one is killed (only the requests in flight on it fail).
//! Strata only (real processes).
//!
//! etcd-client's own multi-endpoint client does not stop using a dead endpoint
//! (see tests/common/failover.rs for why): the kill test measures and prints
//! what it sees, and shows the in-flight-only bound with a client channel that
//! skips dead endpoints as etcd's Go client does.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{failover, start_strata_with, Cluster, Target};
use etcd_client::{Client, ConnectOptions};

fn opts() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
}

async fn connect(endpoints: &[String]) -> Client {
    common::within(
        Duration::from_secs(10),
        "connect",
        Client::connect(endpoints, Some(opts())),
    )
    .await
    .expect("connect")
}

/// client URL → member id, as `MemberList` through `client` lists them, and
/// the responder's own member id (the header's).
async fn members(client: &mut Client) -> (BTreeMap<String, u64>, u64) {
    let r = common::within(Duration::from_secs(5), "member list", client.member_list())
        .await
        .expect("member list");
    let mut by_url = BTreeMap::new();
    for m in r.members() {
        assert_ne!(m.id(), 0, "member id 0: {m:?}");
        assert_eq!(m.client_urls().len(), 1, "{m:?}");
        by_url.insert(m.client_urls()[0].clone(), m.id());
    }
    (by_url, r.header().expect("header").member_id())
}

/// Polls `MemberList` through `client` (every 200 ms, up to `limit`) until it
/// lists exactly `urls`.
async fn wait_members(
    client: &mut Client,
    urls: &[String],
    limit: Duration,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + limit;
    loop {
        let (got, _) = members(client).await;
        if got.keys().eq(urls.iter()) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "MemberList did not list {urls:?} within {limit:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_lists_every_router() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--routers", "2"]);
    let eps = c.router_endpoints();
    assert_eq!(eps.len(), 2);
    let urls: Vec<String> = eps.iter().map(|e| format!("http://{e}")).collect();
    let mut seen = Vec::new();
    for ep in &eps {
        let mut client = connect(std::slice::from_ref(ep)).await;
        // Announcements are every second: poll a few seconds.
        let got = wait_members(&mut client, &urls, Duration::from_secs(5)).await;
        let (_, me) = members(&mut client).await;
        assert_eq!(
            got[&format!("http://{ep}")],
            me,
            "the responder lists itself with its header's member id"
        );
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "both routers list the same ids");
    let ids: Vec<u64> = seen[0].values().copied().collect();
    assert_ne!(ids[0], ids[1]);
    eprintln!("members: {:?}", seen[0]);

    // A killed router is no longer listed (placement forgets it 3 s after its
    // last announcement); restarted, it is listed again with the same id.
    let mut client1 = connect(&eps[..1]).await;
    c.kill_router(2);
    wait_members(&mut client1, &urls[..1], Duration::from_secs(8)).await;
    c.restart_router(2);
    let again = wait_members(&mut client1, &urls, Duration::from_secs(5)).await;
    assert_eq!(again, seen[0], "same ids after the restart");

    // Placement unreachable: a router lists itself alone; back, both again.
    assert_eq!(c.placement_addrs(), [c.placement_addr()]);
    c.kill_placement(1);
    let (alone, _) = members(&mut client1).await;
    assert_eq!(alone.keys().collect::<Vec<_>>(), [&urls[0]], "{alone:?}");
    c.restart_placement(1);
    let back = wait_members(&mut client1, &urls, Duration::from_secs(5)).await;
    assert_eq!(back, seen[0]);
}

/// What a sequential put+get load saw.
#[derive(Debug, Default)]
struct Load {
    ops: usize,
    ok: usize,
    failed: usize,
    /// Requests that completed after the victim was gone.
    ok_after_kill: usize,
    failed_after_kill: usize,
    /// Index of the last failed request.
    last_failure: Option<usize>,
    /// Error text → count.
    errors: BTreeMap<String, usize>,
    slowest_failure: Duration,
}

/// One client, one request at a time — put `k`, then get `k` and check the
/// value — for at most `max_ops` requests or `limit`, while another thread
/// kills router `victim` once `kill_after` requests completed (so the kill
/// lands while a request is in flight, or between two).
async fn sequential_load(
    c: &Arc<Cluster>,
    client: &mut Client,
    victim: usize,
    kill_after: usize,
    max_ops: usize,
    limit: Duration,
) -> Load {
    let killed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (c, killed, done) = (c.clone(), killed.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + limit;
            while done.load(Ordering::SeqCst) < kill_after && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            c.kill_router(victim);
            killed.store(true, Ordering::SeqCst);
        })
    };
    let mut load = Load::default();
    let start = Instant::now();
    let prefix = common::prefix("routers-kill");
    for i in 0..max_ops {
        if start.elapsed() > limit {
            break;
        }
        let after_kill = killed.load(Ordering::SeqCst);
        let key = format!("{prefix}{}", i / 2);
        let t = Instant::now();
        let r = if i % 2 == 0 {
            client.put(key.as_str(), "v", None).await.map(|_| ())
        } else {
            client.get(key.as_str(), None).await.map(|g| {
                // Its put may have failed (then nothing is there, or it is).
                assert!(g.kvs().iter().all(|kv| kv.value() == b"v"), "{g:?}");
            })
        };
        load.ops += 1;
        done.fetch_add(1, Ordering::SeqCst);
        match r {
            Ok(()) => {
                load.ok += 1;
                load.ok_after_kill += usize::from(after_kill);
            }
            Err(e) => {
                load.failed += 1;
                load.failed_after_kill += usize::from(after_kill);
                load.last_failure = Some(i);
                *load.errors.entry(e.to_string()).or_default() += 1;
                load.slowest_failure = load.slowest_failure.max(t.elapsed());
            }
        }
    }
    killer.await.expect("killer");
    assert!(
        killed.load(Ordering::SeqCst),
        "the load ended before the kill"
    );
    load
}

/// kill -9 of one of two routers under a steady put+get load of one client of
/// both: only what was in flight on it fails, and requests go on succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_one_of_two_routers_under_load() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = Arc::new(start_strata_with(&["--routers", "2"]));
    let eps = c.router_endpoints();
    let (max_ops, limit, kill_after) = (3000, Duration::from_secs(20), 500);

    // A client that stops sending to a dead endpoint (tests/common/failover.rs).
    let mut client = failover::connect(&eps, Some(opts()))
        .await
        .expect("connect");
    let load = sequential_load(&c, &mut client, 2, kill_after, max_ops, limit).await;
    eprintln!(
        "failover client over both routers, router 2 killed after {kill_after} requests: {load:#?}"
    );
    // One request at a time: at most the one in flight on router 2 fails, or
    // (killed between requests) the next one sent there, which finds it dead.
    assert!(
        load.failed <= 2,
        "more than the in-flight requests failed: {load:#?}"
    );
    assert!(
        load.ok_after_kill >= 200,
        "requests did not keep succeeding after the kill: {load:#?}"
    );
    assert_eq!(load.ok, load.ops - load.failed);
    assert!(
        load.last_failure.is_none_or(|i| i >= kill_after - 1),
        "a request failed before the kill: {load:#?}"
    );
    let since_last_failure = load.ops - load.last_failure.map_or(0, |i| i + 1);
    assert!(since_last_failure >= 200, "{load:#?}");

    // etcd-client's own balancing (`Client::connect` of both): what a plain
    // client sees. It keeps choosing the dead endpoint (tonic's reconnect
    // reports it ready), so many requests after the kill fail — the one in
    // flight with "transport error", the later ones at once with Unavailable
    // "tcp connect error" (nothing hangs) — while the others succeed through
    // router 1. Measured and printed, not bounded: that is the crate's
    // behaviour, not the routers'.
    c.restart_router(2);
    let mut plain = connect(&eps).await;
    let load = sequential_load(&c, &mut plain, 2, kill_after, max_ops, limit).await;
    eprintln!(
        "plain etcd_client::Client::connect of both routers, router 2 killed after {kill_after} requests: \
         {} of {} requests after the kill failed; {load:#?}",
        load.failed_after_kill,
        load.ok_after_kill + load.failed_after_kill,
    );
    assert!(load.ok_after_kill >= 200, "{load:#?}");
    for e in load.errors.keys() {
        assert!(
            e.contains("transport"),
            "a plain client's failure other than a broken or refused connection: {e}"
        );
    }
    assert!(load.slowest_failure < Duration::from_secs(2), "{load:#?}");
}
