use std::time::Duration;

use super::fake::{dead_addr, serve};
use super::*;
use crate::errors::placement_not_leader;
use crate::strata::{AllocRequest, AllocResponse};

fn ok(start: i64) -> impl Fn(usize) -> Result<AllocResponse, Status> {
    move |_| Ok(AllocResponse { start })
}

async fn alloc(c: &PlacementConn, timeout: Option<Duration>) -> Result<i64, Status> {
    let mut req = tonic::Request::new(AllocRequest { count: 1 });
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    Ok(c.clone().alloc(req).await?.into_inner().start)
}

#[tokio::test]
async fn a_follower_hint_leads_to_the_leader_and_is_remembered() {
    let leader = serve(ok(7)).await;
    let hint = leader.addr.clone();
    let follower = serve(move |_| Err(placement_not_leader(2, Some(&hint)))).await;
    let c = placement_client(&format!("{},{}", follower.addr, leader.addr)).unwrap();
    assert_eq!(alloc(&c, None).await.unwrap(), 7);
    assert_eq!(alloc(&c, None).await.unwrap(), 7);
    // The second call went straight to the leader.
    assert_eq!((follower.calls(), leader.calls()), (1, 2));
    // Clones share the belief.
    let c2 = c.clone();
    assert_eq!(alloc(&c2, None).await.unwrap(), 7);
    assert_eq!((follower.calls(), leader.calls()), (1, 3));
}

#[tokio::test]
async fn a_dead_address_is_skipped() {
    let live = serve(ok(3)).await;
    let c = placement_client(&format!("{},{}", dead_addr(), live.addr)).unwrap();
    assert_eq!(alloc(&c, None).await.unwrap(), 3);
    assert_eq!(alloc(&c, None).await.unwrap(), 3);
    assert_eq!(live.calls(), 2);
}

#[tokio::test]
async fn a_hinted_address_not_in_the_list_is_learned() {
    let leader = serve(ok(9)).await;
    let hint = leader.addr.clone();
    let follower = serve(move |_| Err(placement_not_leader(1, Some(&hint)))).await;
    let ch = FailoverChannel::new(&follower.addr).unwrap();
    let c = PlacementClient::new(ch.clone());
    assert_eq!(alloc(&c, None).await.unwrap(), 9);
    assert_eq!(ch.addrs(), vec![follower.addr.clone(), leader.addr.clone()]);
    assert_eq!(ch.leader(), leader.addr);
    assert_eq!((follower.calls(), leader.calls()), (1, 1));
}

#[tokio::test]
async fn no_leader_anywhere_fails_within_the_deadline() {
    let a = serve(|_| Err(placement_not_leader(1, None))).await;
    let b = serve(|_| Err(placement_not_leader(2, None))).await;
    let c = placement_client(&format!("{},{}", a.addr, b.addr)).unwrap();
    let t0 = std::time::Instant::now();
    let err = alloc(&c, Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("not the leader"), "{err:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    // It kept trying both, with pauses (50, 75, 112 ms ...).
    assert!(
        a.calls() >= 2 && b.calls() >= 1,
        "{} {}",
        a.calls(),
        b.calls()
    );
    assert!(a.calls() + b.calls() <= 8, "{} {}", a.calls(), b.calls());
}

#[tokio::test]
async fn other_errors_are_returned_after_one_call() {
    let a = serve(|_| Err(Status::already_exists("lease exists"))).await;
    let b = serve(ok(1)).await;
    let c = placement_client(&format!("{},{}", a.addr, b.addr)).unwrap();
    let err = alloc(&c, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!((a.calls(), b.calls()), (1, 0));
    // A plain Unavailable (no hint) may have run: not retried either.
    let u = serve(|_| Err(Status::unavailable("busy"))).await;
    let c = placement_client(&format!("{},{}", u.addr, b.addr)).unwrap();
    assert_eq!(
        alloc(&c, None).await.unwrap_err().code(),
        tonic::Code::Unavailable
    );
    assert_eq!((u.calls(), b.calls()), (1, 0));
}

#[tokio::test]
async fn connect_errors_are_recognised() {
    let mut ch = connect(&dead_addr()).unwrap();
    std::future::poll_fn(|cx| ch.poll_ready(cx)).await.unwrap();
    let err = ch
        .call(http::Request::new(Body::empty()))
        .await
        .unwrap_err();
    assert!(is_connect_error(&err), "{err:?}");
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(is_connect_error(&refused));
    let wrapped = Status::from_error(Box::new(refused));
    assert!(is_connect_error(&wrapped));
    assert!(!is_connect_error(&std::io::Error::from(
        std::io::ErrorKind::BrokenPipe
    )));
    assert!(!is_connect_error(&Status::unavailable("x")));
}

#[tokio::test]
async fn address_lists_are_checked() {
    assert!(placement_client("127.0.0.1:7100").is_ok());
    assert_eq!(
        FailoverChannel::new(" a:1, b:2 ,a:1").unwrap().addrs(),
        vec!["a:1", "b:2"]
    );
    let many = (1..=MAX_ADDRS + 1)
        .map(|p| format!("h:{p}"))
        .collect::<Vec<_>>();
    assert!(placement_client(&many[..MAX_ADDRS].join(",")).is_ok());
    for bad in [
        "",
        "a:1,,b:2",
        "a:1,",
        "hostonly",
        "h:0",
        "h:99999",
        "http://h:1",
        "u@h:1",
        "h:1/x",
        ":1",
        &many.join(","),
    ] {
        let err = placement_client(bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
}

#[test]
fn grpc_timeouts_parse() {
    let p = |s: &'static str| parse_grpc_timeout(&http::HeaderValue::from_static(s));
    assert_eq!(p("300m"), Some(Duration::from_millis(300)));
    assert_eq!(p("2S"), Some(Duration::from_secs(2)));
    assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(p("5u"), Some(Duration::from_micros(5)));
    for bad in ["", "m", "12", "1x", "123456789m", "-1m"] {
        assert_eq!(p(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn large_bodies_are_sent_once_whole() {
    let parts = http::Request::new(()).into_parts().0;
    let big = vec![7u8; MAX_BUFFERED + 10];
    let body = Body::new(Full::new(Bytes::from(big.clone())));
    let rest = buffer(body).await.unwrap().unwrap_err();
    let got = rebuild(&parts, rest).into_body().collect().await.unwrap();
    assert_eq!(got.to_bytes(), Bytes::from(big));
    let small = buffer(Body::new(Full::new(Bytes::from_static(b"abc"))));
    assert_eq!(small.await.unwrap().unwrap(), Bytes::from_static(b"abc"));
}
