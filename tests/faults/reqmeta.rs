//! etcd's request metadata on a range that lost its leader (every raft
//! message of range 1 dropped, so its leader steps down and no one is
//! elected): `hasleader: true` answers etcd's "etcdserver: no leader" at
//! once, and a client deadline (`grpc-timeout`) bounds the router's retries,
//! answered as etcd does ("context deadline exceeded").

use std::time::{Duration, Instant};

use etcd_client::ConnectOptions;
use prost::Message as _;
use strata_node::transport::memory::Rule;
use strata_proto::etcd::{PbPutRequest, PbPutResponse, PbRangeRequest};

use crate::cluster::{eventually, Cluster, Opts};
use crate::{put, within};

/// A Put sent by hand with `grpc-timeout` (and `hasleader` when asked).
async fn put_raw(
    c: &Cluster,
    key: &str,
    timeout: Option<Duration>,
    has_leader: bool,
) -> Result<PbPutResponse, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.router))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(PbPutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    if has_leader {
        req.metadata_mut()
            .insert("hasleader", "true".parse().expect("ascii"));
    }
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<_, PbPutResponse>::default();
    grpc.unary(req, path, codec).await.map(|r| r.into_inner())
}

/// Cuts range 1 off (all its raft traffic) until no replica has a leader.
async fn leaderless(c: &Cluster) -> strata_node::transport::memory::FilterId {
    let cut = c.net.add(Rule::new().range(1).drop());
    eventually(Duration::from_secs(20), "range 1 without a leader", || {
        c.nodes
            .iter()
            .all(|n| n.ranges.get(&1).is_some_and(|r| r.leader_node() == 0))
            .then_some(())
    })
    .await;
    cut
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hasleader_fails_fast_and_deadlines_bound_retries() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut kv = c.client().await;
    put(&mut kv, "meta/before", "v").await;
    // Healthy: both kinds of metadata change nothing.
    put_raw(&c, "meta/a", Some(Duration::from_secs(5)), true)
        .await
        .expect("a put with metadata");

    let cut = leaderless(&c).await;

    // hasleader: etcd's no-leader error at once (the router's own
    // request timeout is 10 s).
    let started = Instant::now();
    let e = within(
        Duration::from_secs(15),
        "hasleader put",
        put_raw(&c, "meta/b", None, true),
    )
    .await
    .expect_err("no leader");
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unavailable, "etcdserver: no leader")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Through etcd-client's own option too (a read this time).
    let mut leader_kv = etcd_client::Client::connect(
        [c.router.to_string()],
        Some(ConnectOptions::new().with_require_leader(true)),
    )
    .await
    .expect("connect");
    let started = Instant::now();
    let e = within(
        Duration::from_secs(15),
        "hasleader get",
        leader_kv.get("meta/a", None),
    )
    .await
    .expect_err("no leader");
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(
                (s.code(), s.message()),
                (tonic::Code::Unavailable, "etcdserver: no leader")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A deadline: the router gives up at the client's deadline, with etcd's
    // errors (a Put, a proposal: "request timed out"; a read: "context
    // deadline exceeded"), not after its own 10 s. Plain HTTP/2: tonic's
    // client would answer the deadline itself.
    let put = PbPutRequest {
        key: b"meta/c".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let get = PbRangeRequest {
        key: b"meta/a".to_vec(),
        ..Default::default()
    };
    for (path, body, want) in [
        (
            "/etcdserverpb.KV/Put",
            put.encode_to_vec(),
            (14, "etcdserver: request timed out"),
        ),
        (
            "/etcdserverpb.KV/Range",
            get.encode_to_vec(),
            (4, "context deadline exceeded"),
        ),
    ] {
        let started = Instant::now();
        let e = crate::rawgrpc::unary(
            &c.router.to_string(),
            path,
            body,
            &[("grpc-timeout", "700m")],
            Duration::from_secs(15),
        )
        .await;
        let took = started.elapsed();
        assert_eq!((e.code, e.message.as_str()), want, "{path}");
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{path}: {took:?}"
        );
        // A deadline already passed: DeadlineExceeded at once.
        let body = if path.ends_with("Put") {
            put.encode_to_vec()
        } else {
            get.encode_to_vec()
        };
        let e = crate::rawgrpc::unary(
            &c.router.to_string(),
            path,
            body,
            &[("grpc-timeout", "1n")],
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(
            (e.code, e.message.as_str()),
            (4, "context deadline exceeded")
        );
    }
    // Through tonic: its own timer or the router's answer, in time.
    let started = Instant::now();
    let e = within(
        Duration::from_secs(15),
        "put with a deadline",
        put_raw(&c, "meta/c", Some(Duration::from_millis(700)), false),
    )
    .await
    .expect_err("past the deadline");
    assert!(
        matches!(
            (e.code(), e.message()),
            (tonic::Code::Unavailable, "etcdserver: request timed out")
                | (tonic::Code::Cancelled, "Timeout expired")
        ),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Healed: the same requests succeed.
    c.net.remove(cut);
    c.wait_leader(1).await;
    within(
        Duration::from_secs(20),
        "put after heal",
        put_raw(&c, "meta/d", Some(Duration::from_secs(10)), true),
    )
    .await
    .expect("put after heal");
}

/// The next watch response that carries events (bounded).
async fn next_events(s: &mut etcd_client::WatchStream) -> Result<usize, etcd_client::Error> {
    loop {
        let r = within(Duration::from_secs(15), "watch response", s.message()).await?;
        let r = r.expect("the stream goes on");
        if !r.events().is_empty() {
            return Ok(r.events().len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hasleader_watch_ends_when_its_range_has_no_leader() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut kv = c.client().await;
    put(&mut kv, "w/before", "v").await;
    let opts = || Some(etcd_client::WatchOptions::new().with_prefix());
    let mut leader_client = etcd_client::Client::connect(
        [c.router.to_string()],
        Some(ConnectOptions::new().with_require_leader(true)),
    )
    .await
    .expect("connect");
    let mut with = within(
        Duration::from_secs(15),
        "watch",
        leader_client.watch("w/", opts()),
    )
    .await
    .expect("watch with hasleader");
    let mut plain = c.client().await;
    let mut without = within(Duration::from_secs(15), "watch", plain.watch("w/", opts()))
        .await
        .expect("watch");
    put(&mut kv, "w/a", "1").await;
    assert_eq!(next_events(&mut with).await.expect("event"), 1);
    assert_eq!(next_events(&mut without).await.expect("event"), 1);

    let cut = leaderless(&c).await;
    let started = Instant::now();
    match next_events(&mut with).await {
        Err(etcd_client::Error::GRpcStatus(s)) => assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unavailable, "etcdserver: no leader")
        ),
        other => panic!("expected the no-leader end, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Without hasleader the watch waits for the range to elect again.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), without.message())
            .await
            .is_err(),
        "a watch without hasleader goes on"
    );
    c.net.remove(cut);
    c.wait_leader(1).await;
    put(&mut kv, "w/b", "2").await;
    assert_eq!(
        next_events(&mut without).await.expect("event after heal"),
        1
    );
}
