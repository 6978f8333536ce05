//! The routers that announce themselves: soft state on the leader (each
//! router heartbeats every second; one not heard from for [`ROUTER_TTL`] is
//! no longer listed). A new placement leader knows the routers again within a
//! heartbeat interval; until then `MemberList` lists fewer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strata_proto::strata::{RouterHeartbeatRequest, RouterMember};
use tonic::Status;

/// How long a router stays listed after its last heartbeat.
pub const ROUTER_TTL: Duration = Duration::from_secs(3);
/// The most routers listed (a bound on what callers can make placement hold).
const MAX_ROUTERS: usize = 1024;
/// Bounds on one announcement's fields.
const MAX_URLS: usize = 16;
const MAX_FIELD: usize = 256;

#[derive(Default)]
pub struct Routers {
    seen: HashMap<u64, (RouterMember, Instant)>,
}

impl Routers {
    /// Records a router's heartbeat (checked: bounded fields and count).
    pub fn heartbeat(&mut self, r: RouterHeartbeatRequest, now: Instant) -> Result<(), Status> {
        if r.id == 0 {
            return Err(Status::invalid_argument("strata: router id is required"));
        }
        if r.client_urls.len() > MAX_URLS
            || r.name.len() > MAX_FIELD
            || r.client_urls.iter().any(|u| u.len() > MAX_FIELD)
        {
            return Err(Status::invalid_argument(
                "strata: router announcement too large",
            ));
        }
        self.seen
            .retain(|_, (_, t)| now.duration_since(*t) < ROUTER_TTL);
        if !self.seen.contains_key(&r.id) && self.seen.len() >= MAX_ROUTERS {
            return Err(Status::resource_exhausted("strata: too many routers"));
        }
        let m = RouterMember {
            id: r.id,
            name: r.name,
            client_urls: r.client_urls,
        };
        self.seen.insert(m.id, (m, now));
        Ok(())
    }

    /// The routers heard from within [`ROUTER_TTL`], by id.
    pub fn live(&self, now: Instant) -> Vec<RouterMember> {
        let mut v: Vec<RouterMember> = self
            .seen
            .values()
            .filter(|(_, t)| now.duration_since(*t) < ROUTER_TTL)
            .map(|(m, _)| m.clone())
            .collect();
        v.sort_by_key(|m| m.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: u64, url: &str) -> RouterHeartbeatRequest {
        RouterHeartbeatRequest {
            id,
            name: format!("router-{id}"),
            client_urls: vec![url.into()],
        }
    }

    #[test]
    fn routers_are_listed_until_they_stop_announcing() {
        let mut r = Routers::default();
        let t0 = Instant::now();
        r.heartbeat(hb(2, "http://127.0.0.1:2"), t0).unwrap();
        r.heartbeat(hb(1, "http://127.0.0.1:1"), t0).unwrap();
        let ids: Vec<u64> = r.live(t0).iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2]);
        let later = t0 + ROUTER_TTL / 2;
        r.heartbeat(hb(1, "http://127.0.0.1:1"), later).unwrap();
        let ids: Vec<u64> = r.live(t0 + ROUTER_TTL).iter().map(|m| m.id).collect();
        assert_eq!(ids, [1], "router 2 stopped announcing");
    }

    #[test]
    fn bad_announcements_are_refused() {
        let mut r = Routers::default();
        let now = Instant::now();
        assert!(r.heartbeat(hb(0, "x"), now).is_err());
        let mut big = hb(1, "x");
        big.client_urls = vec!["u".into(); MAX_URLS + 1];
        assert!(r.heartbeat(big, now).is_err());
        assert!(r.live(now).is_empty());
    }
}
