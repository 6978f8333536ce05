//! Placement's replicated state machine: a pure fold over committed commands.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strata_proto::auth::{AuthCommand, AuthError, AuthState};
use strata_proto::strata::{Epoch, Peer, RangeDescriptor};

/// Revisions are handed out from windows of this size; only window ends are
/// persisted, so a restart skips at most one window (gaps are allowed).
pub const ORACLE_WINDOW: i64 = 10_000;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Command {
    RegisterNode {
        id: u64,
        addr: String,
    },
    Bootstrap {
        replicas: usize,
    },
    OracleWindow {
        high_water: i64,
    },
    Compact {
        revision: i64,
    },
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    AllocIds {
        ranges: u64,
        peers: u64,
    },
    /// A descriptor reported by a replica; kept only if newer than ours.
    UpdateRange {
        range: StoredRange,
    },
    /// Addresses of placement replicas the state lacks (the initial members,
    /// known from `--peers`); members added later carry theirs.
    MemberAddrs {
        addrs: Vec<(u64, String)>,
    },
    /// A change of etcd's auth state by `caller` (the user the router
    /// authenticated), checked and applied by `strata_proto::auth`.
    Auth {
        cmd: AuthCommand,
        caller: Option<String>,
    },
    /// A cross-range txn's decision (`txn.rs`); the first one recorded wins.
    TxnDecide {
        record: crate::txn::TxnRecord,
    },
    /// Participants that resolved a txn; the record goes once all did.
    TxnForget {
        txn_id: u64,
        range_ids: Vec<u64>,
    },
    /// etcd's alarm ACTIVATE (`activate`) or DEACTIVATE of `alarm` (etcd's
    /// AlarmType) for `member_id` (`alarm.rs`).
    Alarm {
        activate: bool,
        member_id: u64,
        alarm: i32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StoredRange {
    pub id: u64,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub conf_ver: u64,
    pub version: u64,
    /// (peer id, node id)
    pub peers: Vec<(u64, u64)>,
    /// Peers (ids) that are learners: being added, not yet voting.
    #[serde(default)]
    pub learners: Vec<u64>,
}

impl StoredRange {
    pub fn descriptor(&self) -> RangeDescriptor {
        RangeDescriptor {
            id: self.id,
            start_key: self.start.clone(),
            end_key: self.end.clone(),
            epoch: Some(Epoch {
                conf_ver: self.conf_ver,
                version: self.version,
            }),
            peers: self
                .peers
                .iter()
                .map(|&(id, node_id)| Peer {
                    id,
                    node_id,
                    learner: self.learners.contains(&id),
                })
                .collect(),
        }
    }
}

/// Checkpointed as JSON (`replica/raft_loop.rs`) and sent to followers as a
/// raft snapshot; fields added later need `#[serde(default)]`.
#[derive(Default, Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<u64, String>,
    pub ranges: BTreeMap<u64, StoredRange>,
    pub next_peer_id: u64,
    /// The last range id handed out.
    pub last_range_id: u64,
    /// Every revision below this may have been handed out.
    pub oracle_high_water: i64,
    pub compacted: i64,
    /// Lease id → granted TTL in seconds.
    pub leases: BTreeMap<i64, i64>,
    /// Counts applied commands that may change what routers cache (nodes,
    /// ranges, the compaction revision); lets `GetRanges` answer "unchanged".
    /// Derived, not part of the replicated state's meaning.
    pub routing_version: u64,
    /// Placement replicas (raft ids) → their addresses.
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
    /// The largest placement replica id ever used (ids are never reused).
    #[serde(default)]
    pub last_member_id: u64,
    /// etcd's users, roles and permissions.
    #[serde(default)]
    pub auth: AuthState,
    /// Cross-range txn decisions not yet resolved in every participant.
    #[serde(default)]
    pub txns: BTreeMap<u64, crate::txn::TxnRecord>,
    /// etcd's active alarms: (member id, alarm type).
    #[serde(default)]
    pub alarms: BTreeSet<(u64, i32)>,
}

/// What applying a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    NodeId(u64),
    Compacted {
        already: i64,
    },
    LeaseExists,
    LeaseNotFound,
    NotEnoughNodes,
    Ids {
        first_range_id: u64,
        first_peer_id: u64,
    },
    /// AllocIds would pass `u64::MAX`: nothing was allocated.
    IdsExhausted,
    Stale,
    /// An auth change refused (etcd's error).
    AuthRefused(AuthError),
    /// The decision recorded for a txn (perhaps an earlier one than asked).
    Txn(crate::txn::TxnRecord),
    /// Whether an alarm change changed anything (etcd answers the alarm
    /// only then).
    Alarm(bool),
}

impl StoredRange {
    pub fn from_descriptor(d: &RangeDescriptor) -> Self {
        let e = d.epoch.unwrap_or_default();
        StoredRange {
            id: d.id,
            start: d.start_key.clone(),
            end: d.end_key.clone(),
            conf_ver: e.conf_ver,
            version: e.version,
            peers: d.peers.iter().map(|p| (p.id, p.node_id)).collect(),
            learners: d.peers.iter().filter(|p| p.learner).map(|p| p.id).collect(),
        }
    }

    /// Is `self`'s epoch newer than `other`'s? Splits bump `version`,
    /// membership changes bump `conf_ver`; neither ever goes back.
    pub fn newer_than(&self, other: &StoredRange) -> bool {
        self.conf_ver >= other.conf_ver
            && self.version >= other.version
            && (self.conf_ver, self.version) != (other.conf_ver, other.version)
    }
}

impl State {
    /// A membership change added replica `id` (at `addr`, when known).
    pub fn member_added(&mut self, id: u64, addr: Option<String>) {
        if let Some(a) = addr {
            self.members.insert(id, a);
        }
        self.last_member_id = self.last_member_id.max(id);
    }

    pub fn member_removed(&mut self, id: u64) {
        self.members.remove(&id);
    }

    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        if matches!(
            cmd,
            Command::RegisterNode { .. }
                | Command::Bootstrap { .. }
                | Command::Compact { .. }
                | Command::UpdateRange { .. }
        ) {
            self.routing_version += 1;
        }
        match cmd {
            Command::RegisterNode { id, addr } => {
                // An id from the network: a new one is checked, never wrapped
                // (a panic here would stop placement at every log replay).
                let id = if *id == 0 {
                    match self
                        .nodes
                        .keys()
                        .next_back()
                        .copied()
                        .unwrap_or(0)
                        .checked_add(1)
                    {
                        Some(id) => id,
                        None => return Outcome::IdsExhausted,
                    }
                } else {
                    *id
                };
                self.nodes.insert(id, addr.clone());
                Outcome::NodeId(id)
            }
            Command::Bootstrap { replicas } => {
                if !self.ranges.is_empty() {
                    return Outcome::Ok;
                }
                if self.nodes.len() < *replicas || *replicas == 0 {
                    return Outcome::NotEnoughNodes;
                }
                let peers = self
                    .nodes
                    .keys()
                    .take(*replicas)
                    .map(|&n| {
                        self.next_peer_id += 1;
                        (self.next_peer_id, n)
                    })
                    .collect();
                self.last_range_id = self.last_range_id.max(1);
                self.ranges.insert(
                    1,
                    StoredRange {
                        id: 1,
                        start: Vec::new(),
                        end: Vec::new(),
                        conf_ver: 1,
                        version: 1,
                        peers,
                        learners: Vec::new(),
                    },
                );
                Outcome::Ok
            }
            Command::OracleWindow { high_water } => {
                // Invariant: the high-water mark never goes back.
                self.oracle_high_water = self.oracle_high_water.max(*high_water);
                Outcome::Ok
            }
            Command::Compact { revision } => {
                if *revision <= self.compacted {
                    return Outcome::Compacted {
                        already: self.compacted,
                    };
                }
                self.compacted = *revision;
                Outcome::Ok
            }
            Command::LeaseGrant { id, ttl } => {
                if self.leases.contains_key(id) {
                    return Outcome::LeaseExists;
                }
                self.leases.insert(*id, *ttl);
                Outcome::Ok
            }
            Command::LeaseRevoke { id } => match self.leases.remove(id) {
                Some(_) => Outcome::Ok,
                None => Outcome::LeaseNotFound,
            },
            Command::AllocIds { ranges, peers } => {
                // Counts come from the network: checked, never wrapped (and
                // a panic here would stop placement at every log replay).
                let (Some(first_range_id), Some(first_peer_id), Some(last_range), Some(last_peer)) = (
                    self.last_range_id.checked_add(1),
                    self.next_peer_id.checked_add(1),
                    self.last_range_id.checked_add(*ranges),
                    self.next_peer_id.checked_add(*peers),
                ) else {
                    return Outcome::IdsExhausted;
                };
                let out = Outcome::Ids {
                    first_range_id,
                    first_peer_id,
                };
                self.last_range_id = last_range;
                self.next_peer_id = last_peer;
                out
            }
            Command::MemberAddrs { addrs } => {
                for (id, addr) in addrs {
                    self.members.entry(*id).or_insert_with(|| addr.clone());
                    self.last_member_id = self.last_member_id.max(*id);
                }
                Outcome::Ok
            }
            Command::Auth { cmd, caller } => match self.auth.apply(cmd, caller.as_deref()) {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::AuthRefused(e),
            },
            Command::TxnDecide { record } => crate::txn::decide(&mut self.txns, record),
            Command::TxnForget { txn_id, range_ids } => {
                crate::txn::forget(&mut self.txns, *txn_id, range_ids)
            }
            Command::Alarm {
                activate,
                member_id,
                alarm,
            } => {
                let key = (*member_id, *alarm);
                Outcome::Alarm(match activate {
                    // Bounded (ids come from clients): past the bound an
                    // activation changes nothing.
                    true => self.alarms.len() < crate::alarm::MAX_ALARMS && self.alarms.insert(key),
                    false => self.alarms.remove(&key),
                })
            }
            Command::UpdateRange { range } => {
                let newer = match self.ranges.get(&range.id) {
                    None => true,
                    Some(old) => range.newer_than(old),
                };
                if !newer {
                    return Outcome::Stale;
                }
                self.last_range_id = self.last_range_id.max(range.id);
                for (p, _) in &range.peers {
                    self.next_peer_id = self.next_peer_id.max(*p);
                }
                self.ranges.insert(range.id, range.clone());
                Outcome::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_never_wrap() {
        let mut st = State::default();
        let reg = |id| Command::RegisterNode {
            id,
            addr: "127.0.0.1:1".into(),
        };
        assert!(matches!(
            st.apply(&reg(u64::MAX)),
            Outcome::NodeId(u64::MAX)
        ));
        assert!(matches!(st.apply(&reg(0)), Outcome::IdsExhausted));
        assert_eq!(st.nodes.len(), 1);
    }

    #[test]
    fn bootstrap_needs_enough_nodes_and_happens_once() {
        let mut s = State::default();
        assert_eq!(
            s.apply(&Command::RegisterNode {
                id: 0,
                addr: "a".into()
            }),
            Outcome::NodeId(1)
        );
        assert_eq!(
            s.apply(&Command::RegisterNode {
                id: 0,
                addr: "b".into()
            }),
            Outcome::NodeId(2)
        );
        assert_eq!(
            s.apply(&Command::Bootstrap { replicas: 3 }),
            Outcome::NotEnoughNodes
        );
        assert_eq!(
            s.apply(&Command::RegisterNode {
                id: 2,
                addr: "b2".into()
            }),
            Outcome::NodeId(2)
        );
        assert_eq!(
            s.apply(&Command::RegisterNode {
                id: 0,
                addr: "c".into()
            }),
            Outcome::NodeId(3)
        );
        assert_eq!(s.apply(&Command::Bootstrap { replicas: 3 }), Outcome::Ok);
        let r = &s.ranges[&1];
        assert_eq!(r.peers, vec![(1, 1), (2, 2), (3, 3)]);
        assert_eq!(s.nodes[&2], "b2");
        s.apply(&Command::Bootstrap { replicas: 3 });
        assert_eq!(s.ranges.len(), 1);
    }

    #[test]
    fn compaction_and_oracle_only_move_forward() {
        let mut s = State::default();
        s.apply(&Command::OracleWindow { high_water: 100 });
        s.apply(&Command::OracleWindow { high_water: 50 });
        assert_eq!(s.oracle_high_water, 100);
        assert_eq!(s.apply(&Command::Compact { revision: 10 }), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::Compact { revision: 10 }),
            Outcome::Compacted { already: 10 }
        );
        assert_eq!(
            s.apply(&Command::Compact { revision: 5 }),
            Outcome::Compacted { already: 10 }
        );
    }

    #[test]
    fn ids_and_range_updates() {
        let mut s = State::default();
        for a in ["a", "b", "c"] {
            s.apply(&Command::RegisterNode {
                id: 0,
                addr: a.into(),
            });
        }
        s.apply(&Command::Bootstrap { replicas: 3 });
        assert_eq!(
            s.apply(&Command::AllocIds {
                ranges: 1,
                peers: 3
            }),
            Outcome::Ids {
                first_range_id: 2,
                first_peer_id: 4
            }
        );
        let mut left = s.ranges[&1].clone();
        left.end = b"m".to_vec();
        left.version = 2;
        let right = StoredRange {
            id: 2,
            start: b"m".to_vec(),
            end: vec![],
            conf_ver: 1,
            version: 2,
            peers: vec![(4, 1), (5, 2), (6, 3)],
            learners: vec![],
        };
        assert_eq!(
            s.apply(&Command::UpdateRange {
                range: left.clone()
            }),
            Outcome::Ok
        );
        assert_eq!(s.apply(&Command::UpdateRange { range: right }), Outcome::Ok);
        // An older report of range 1 does not undo the split.
        let mut old = left.clone();
        old.end = vec![];
        old.version = 1;
        assert_eq!(
            s.apply(&Command::UpdateRange { range: old }),
            Outcome::Stale
        );
        assert_eq!(s.ranges[&1].end, b"m");
        assert_eq!(
            s.apply(&Command::AllocIds {
                ranges: 1,
                peers: 1
            }),
            Outcome::Ids {
                first_range_id: 3,
                first_peer_id: 7
            }
        );
    }

    #[test]
    fn leases() {
        let mut s = State::default();
        assert_eq!(s.apply(&Command::LeaseGrant { id: 7, ttl: 5 }), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::LeaseGrant { id: 7, ttl: 5 }),
            Outcome::LeaseExists
        );
        assert_eq!(s.apply(&Command::LeaseRevoke { id: 7 }), Outcome::Ok);
        assert_eq!(
            s.apply(&Command::LeaseRevoke { id: 7 }),
            Outcome::LeaseNotFound
        );
    }

    #[test]
    fn alarms_change_once_and_are_bounded() {
        let mut s = State::default();
        let alarm = |activate, member_id| Command::Alarm {
            activate,
            member_id,
            alarm: 1,
        };
        assert_eq!(s.apply(&alarm(true, 7)), Outcome::Alarm(true));
        assert_eq!(s.apply(&alarm(true, 7)), Outcome::Alarm(false));
        assert_eq!(s.alarms.len(), 1);
        assert_eq!(s.apply(&alarm(false, 7)), Outcome::Alarm(true));
        assert_eq!(s.apply(&alarm(false, 7)), Outcome::Alarm(false));
        assert!(s.alarms.is_empty());
        for id in 0..crate::alarm::MAX_ALARMS as u64 + 10 {
            s.apply(&alarm(true, id));
        }
        assert_eq!(s.alarms.len(), crate::alarm::MAX_ALARMS);
    }

    #[test]
    fn alloc_ids_that_would_overflow_are_refused() {
        let mut s = State::default();
        assert_eq!(
            s.apply(&Command::AllocIds {
                ranges: 1,
                peers: 3
            }),
            Outcome::Ids {
                first_range_id: 1,
                first_peer_id: 1
            }
        );
        for (ranges, peers) in [(u64::MAX, 0), (0, u64::MAX), (u64::MAX, u64::MAX)] {
            let out = s.apply(&Command::AllocIds { ranges, peers });
            assert!(
                !matches!(out, Outcome::Ids { .. }),
                "AllocIds({ranges}, {peers}) must be refused, got {out:?}"
            );
        }
        // A refused call changed nothing: ids continue where they were.
        assert_eq!(
            s.apply(&Command::AllocIds {
                ranges: 1,
                peers: 1
            }),
            Outcome::Ids {
                first_range_id: 2,
                first_peer_id: 4
            }
        );
    }
}
