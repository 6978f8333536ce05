//! Several routers, one etcd cluster: every router announces itself to
//! placement each second (`RouterHeartbeat`), and `MemberList` lists the
//! routers placement heard from recently (`ListRouters`) as etcd members.
//!
//! A router's member id is derived from its first advertised client URL
//! (FNV-1a, never 0), so every router lists the same router with the same id,
//! and a router restarted on the same address keeps it. The router always
//! lists itself, also before its first announcement arrived and when
//! placement cannot be reached (then it lists itself alone).

use std::net::SocketAddr;
use std::time::Duration;

use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{ListRoutersRequest, RouterHeartbeatRequest, RouterMember};
use tonic::Status;

/// How often a router announces itself (placement forgets it after 3 s).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// Bound on one announcement or one `ListRouters` call.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// This router as an etcd member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    pub id: u64,
    pub name: String,
    pub client_urls: Vec<String>,
}

impl Me {
    /// The advertised URLs (`--advertise-client-urls`), or `http://` (`https://`
    /// with `tls`) + the address the router listens on.
    pub fn new(advertised: &[String], listen: SocketAddr, tls: bool) -> Me {
        let client_urls: Vec<String> = if advertised.is_empty() {
            let scheme = if tls { "https" } else { "http" };
            vec![format!("{scheme}://{listen}")]
        } else {
            advertised.to_vec()
        };
        let first = &client_urls[0];
        let authority = first
            .split_once("://")
            .map_or(first.as_str(), |(_, rest)| rest)
            .trim_end_matches('/');
        Me {
            id: member_id(first),
            name: format!("strata-router-{authority}"),
            client_urls,
        }
    }

    fn as_member(&self) -> RouterMember {
        RouterMember {
            id: self.id,
            name: self.name.clone(),
            client_urls: self.client_urls.clone(),
        }
    }
}

/// The etcd member id of the router advertising `client_url` first: FNV-1a
/// (stable across builds and processes, unlike std's hasher), never 0.
pub fn member_id(client_url: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// What this module needs from placement (the router's placement client
/// implements it; another client type only needs these two calls).
#[tonic::async_trait]
pub trait RouterRegistry: Clone + Send + Sync + 'static {
    async fn router_heartbeat(&self, req: RouterHeartbeatRequest) -> Result<(), Status>;
    async fn list_routers(&self) -> Result<Vec<RouterMember>, Status>;
}

#[tonic::async_trait]
impl RouterRegistry for strata_proto::oracle::PlacementConn {
    async fn router_heartbeat(&self, req: RouterHeartbeatRequest) -> Result<(), Status> {
        let mut req = tonic::Request::new(req);
        req.set_timeout(CALL_TIMEOUT);
        PlacementClient::router_heartbeat(&mut self.clone(), req)
            .await
            .map(|_| ())
    }

    async fn list_routers(&self) -> Result<Vec<RouterMember>, Status> {
        let mut req = tonic::Request::new(ListRoutersRequest {});
        req.set_timeout(CALL_TIMEOUT);
        let resp = PlacementClient::list_routers(&mut self.clone(), req).await?;
        Ok(resp.into_inner().routers)
    }
}

/// Announces `me` to placement every [`ANNOUNCE_EVERY`], forever (spawn it).
pub async fn run(placement: impl RouterRegistry, me: Me) {
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let req = RouterHeartbeatRequest {
            id: me.id,
            name: me.name.clone(),
            client_urls: me.client_urls.clone(),
        };
        let r = tokio::time::timeout(CALL_TIMEOUT, placement.router_heartbeat(req)).await;
        match r {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("router announcement to placement succeeds again");
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                tracing::warn!("router announcement to placement failed: {e}");
                failing = true;
            }
            Err(_) if !failing => {
                tracing::warn!("router announcement to placement timed out");
                failing = true;
            }
            _ => {}
        }
    }
}

/// The routers to list as etcd members: placement's live routers with `me`
/// among them (by id), or `me` alone when placement does not answer.
pub async fn members(placement: &impl RouterRegistry, me: &Me) -> Vec<RouterMember> {
    let listed = match tokio::time::timeout(CALL_TIMEOUT, placement.list_routers()).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::debug!("ListRouters failed: {e}; listing this router alone");
            Vec::new()
        }
        Err(_) => Vec::new(),
    };
    with_me(listed, me)
}

/// `listed` with `me` in it (its own view of itself wins), sorted by id.
fn with_me(listed: Vec<RouterMember>, me: &Me) -> Vec<RouterMember> {
    let mut v: Vec<RouterMember> = listed.into_iter().filter(|m| m.id != me.id).collect();
    v.push(me.as_member());
    v.sort_by_key(|m| m.id);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_nonzero() {
        let a = Me::new(&[], "127.0.0.1:2379".parse().unwrap(), false);
        let s = Me::new(&[], "127.0.0.1:2379".parse().unwrap(), true);
        assert_eq!(s.client_urls, ["https://127.0.0.1:2379"]);
        assert_eq!(a.client_urls, ["http://127.0.0.1:2379"]);
        assert_eq!(a.name, "strata-router-127.0.0.1:2379");
        assert_eq!(a.id, member_id("http://127.0.0.1:2379"));
        // FNV-1a of the URL: the same in every process and build.
        assert_eq!(member_id(""), 0xcbf2_9ce4_8422_2325);
        let b = Me::new(
            &["http://10.0.0.1:2379/".into(), "http://h:2379".into()],
            "0.0.0.0:2379".parse().unwrap(),
            true,
        );
        assert_eq!(b.name, "strata-router-10.0.0.1:2379");
        assert_eq!(b.client_urls.len(), 2);
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, 0);
    }

    #[test]
    fn members_always_include_me() {
        let me = Me::new(&[], "127.0.0.1:2379".parse().unwrap(), false);
        let other = RouterMember {
            id: 3,
            name: "other".into(),
            client_urls: vec!["http://127.0.0.1:2380".into()],
        };
        assert_eq!(with_me(Vec::new(), &me), [me.as_member()]);
        let stale_me = RouterMember {
            client_urls: vec!["http://old".into()],
            ..me.as_member()
        };
        let got = with_me(vec![stale_me, other.clone()], &me);
        assert_eq!(got.len(), 2);
        assert!(got.contains(&other) && got.contains(&me.as_member()));
        assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    }
}
