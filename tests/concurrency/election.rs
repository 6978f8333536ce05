//! Campaign, Proclaim, Leader, Observe and Resign through a client generated
//! from `proto/etcd/v3election.proto`.

use std::time::Duration;

use strata_proto::etcd_auth::v3electionpb::election_client::ElectionClient;
use strata_proto::etcd_election::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};

use crate::common::*;
use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_resign() {
    let c = shared();
    let name = prefix("elect").trim_end_matches('/').to_string();
    let mut el = ElectionClient::new(channel(c).await);
    let (l1, l2) = (grant(c, 60).await, grant(c, 60).await);

    let e = within(
        REQUEST_TIMEOUT,
        "leader of nothing",
        el.leader(LeaderRequest {
            name: name.clone().into(),
        }),
    )
    .await
    .expect_err("no leader yet");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: no leader"));

    // An observer from before any leader (etcd sends the stream's headers
    // with its first message: the call returns once there is a leader).
    let mut el_obs = el.clone();
    let n_obs = name.clone();
    let observing =
        tokio::spawn(async move { el_obs.observe(LeaderRequest { name: n_obs.into() }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let won = within(
        REQUEST_TIMEOUT,
        "campaign 1",
        el.campaign(CampaignRequest {
            name: name.clone().into(),
            lease: l1,
            value: b"one".to_vec(),
        }),
    )
    .await
    .expect("campaign 1")
    .into_inner();
    let leader1 = won.leader.expect("leader key");
    assert_eq!(leader1.name, name.as_bytes());
    assert_eq!(leader1.key, format!("{name}/{l1:x}").into_bytes());
    assert_eq!(leader1.lease, l1);
    assert_eq!(leader1.rev, won.header.expect("header").revision);

    let mut observe = within(REQUEST_TIMEOUT, "observe", observing)
        .await
        .expect("join")
        .expect("observe")
        .into_inner();
    let seen = next_leader(&mut observe).await;
    let kv = seen.kv.expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (leader1.key.as_slice(), &b"one"[..])
    );

    // Proclaim: the leader's value changes; observers see it.
    within(
        REQUEST_TIMEOUT,
        "proclaim",
        el.proclaim(ProclaimRequest {
            leader: Some(leader1.clone()),
            value: b"uno".to_vec(),
        }),
    )
    .await
    .expect("proclaim");
    let seen = next_leader(&mut observe).await;
    assert_eq!(seen.kv.expect("kv").value, b"uno");
    let now = within(
        REQUEST_TIMEOUT,
        "leader",
        el.leader(LeaderRequest {
            name: name.clone().into(),
        }),
    )
    .await
    .expect("leader")
    .into_inner();
    let kv = now.kv.expect("kv");
    assert_eq!(
        (kv.key, kv.value, kv.lease),
        (leader1.key.clone(), b"uno".to_vec(), l1)
    );

    // A second candidate waits while the first leads.
    let mut el2 = el.clone();
    let n2 = name.clone();
    let second = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: n2.into(),
            lease: l2,
            value: b"two".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!second.is_finished(), "the second candidate waits");

    // Resign: the second wins; the observer sees it.
    within(
        REQUEST_TIMEOUT,
        "resign",
        el.resign(ResignRequest {
            leader: Some(leader1.clone()),
        }),
    )
    .await
    .expect("resign");
    let leader2 = within(REQUEST_TIMEOUT, "campaign 2", second)
        .await
        .expect("join")
        .expect("campaign 2")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(leader2.key, format!("{name}/{l2:x}").into_bytes());
    assert!(leader2.rev > leader1.rev);
    let seen = next_leader(&mut observe).await;
    let kv = seen.kv.expect("kv");
    assert_eq!((kv.key, kv.value), (leader2.key.clone(), b"two".to_vec()));

    // The old leader key can no longer proclaim; resigning it again is a no-op.
    let e = within(
        REQUEST_TIMEOUT,
        "stale proclaim",
        el.proclaim(ProclaimRequest {
            leader: Some(leader1.clone()),
            value: b"stale".to_vec(),
        }),
    )
    .await
    .expect_err("not the leader");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: not leader"));
    within(
        REQUEST_TIMEOUT,
        "resign again",
        el.resign(ResignRequest {
            leader: Some(leader1),
        }),
    )
    .await
    .expect("resign of a gone key");
    for e in [
        within(
            REQUEST_TIMEOUT,
            "proclaim without leader",
            el.proclaim(ProclaimRequest {
                leader: None,
                value: b"x".to_vec(),
            }),
        )
        .await
        .expect_err("no leader field"),
        within(
            REQUEST_TIMEOUT,
            "resign without leader",
            el.resign(ResignRequest { leader: None }),
        )
        .await
        .expect_err("no leader field"),
    ] {
        assert_eq!(
            code_msg(&e),
            (tonic::Code::Unknown, "\"leader\" field must be provided")
        );
    }
    // A stale LeaderKey with the right key but another revision.
    let e = within(
        REQUEST_TIMEOUT,
        "proclaim at a wrong rev",
        el.proclaim(ProclaimRequest {
            leader: Some(LeaderKey {
                rev: leader2.rev + 1000,
                ..leader2.clone()
            }),
            value: b"x".to_vec(),
        }),
    )
    .await
    .expect_err("wrong rev");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: not leader"));
    within(
        REQUEST_TIMEOUT,
        "resign 2",
        el.resign(ResignRequest {
            leader: Some(leader2),
        }),
    )
    .await
    .expect("resign 2");
    assert!(keys_under(c, &format!("{name}/")).await.is_empty());
}

/// A candidate whose client goes away while it waits resigns: its key is
/// deleted, the leader keeps leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_campaign_leaves_no_key() {
    let c = shared();
    let name = prefix("elcancel").trim_end_matches('/').to_string();
    let mut el = ElectionClient::new(channel(c).await);
    let (l1, l2) = (grant(c, 60).await, grant(c, 60).await);
    let leader = within(
        REQUEST_TIMEOUT,
        "campaign 1",
        el.campaign(CampaignRequest {
            name: name.clone().into(),
            lease: l1,
            value: b"one".to_vec(),
        }),
    )
    .await
    .expect("campaign 1")
    .into_inner()
    .leader
    .expect("leader");
    let mut el2 = el.clone();
    let n2 = name.clone();
    let waiting = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: n2.into(),
            lease: l2,
            value: b"two".to_vec(),
        })
        .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keys_under(c, &format!("{name}/")).await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "second candidate never queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiting.abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let keys = keys_under(c, &format!("{name}/")).await;
        if keys == vec![format!("{name}/{l1:x}")] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cancelled candidate's key left: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    within(
        REQUEST_TIMEOUT,
        "resign",
        el.resign(ResignRequest {
            leader: Some(leader),
        }),
    )
    .await
    .expect("resign");
}
