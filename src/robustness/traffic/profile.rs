//! Traffic profiles: which requests a client sends, in what mix.
//!
//! *etcd*: Put (some with prev_kv or a lease), Get (linearizable and
//! serializable), Range with limit and at past revisions, CAS and multi-key Txns,
//! Delete, DeleteRange, LeaseGrant/Revoke. *kubernetes*: what the API server's
//! storage layer sends — create = `Txn(mod_revision(k) == 0) Then Put`, update =
//! `Txn(mod_revision(k) == r) Then Put Else Get`, delete by revision, Get, and
//! paged List (`limit` + continue key at the first page's revision). Both profiles
//! also compact (guarded, see `traffic::compactor`) and watch (`traffic::watch`).

use rand::rngs::SmallRng;
use rand::Rng;

use super::{prefix_end, ClientState};
use crate::robustness::history::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Etcd { keys: u32 },
    Kubernetes { keys: u32 },
}

impl Profile {
    pub fn parse(name: &str, keys: u32) -> anyhow::Result<Profile> {
        match name {
            "etcd" => Ok(Profile::Etcd { keys }),
            "kubernetes" | "k8s" => Ok(Profile::Kubernetes { keys }),
            _ => anyhow::bail!("unknown profile {name:?} (etcd, kubernetes)"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Profile::Etcd { .. } => "etcd",
            Profile::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Every key the profile writes starts with this.
    pub fn prefix(&self) -> &'static str {
        match self {
            Profile::Etcd { .. } => "e/",
            Profile::Kubernetes { .. } => "/registry/pods/",
        }
    }

    pub fn key(&self, i: u32) -> String {
        match self {
            Profile::Etcd { .. } => format!("e/k{i:03}"),
            Profile::Kubernetes { .. } => format!("/registry/pods/p{i:03}"),
        }
    }

    fn keys(&self) -> u32 {
        match *self {
            Profile::Etcd { keys } | Profile::Kubernetes { keys } => keys.max(10),
        }
    }

    fn random_key(&self, rng: &mut SmallRng) -> String {
        self.key(rng.random_range(0..self.keys()))
    }

    /// The next request of a client.
    pub fn next(&self, rng: &mut SmallRng, st: &mut ClientState) -> Request {
        match self {
            Profile::Etcd { .. } => self.etcd(rng, st),
            Profile::Kubernetes { .. } => self.kubernetes(rng, st),
        }
    }

    fn etcd(&self, rng: &mut SmallRng, st: &mut ClientState) -> Request {
        let key = self.random_key(rng);
        let range = |key: String| RangeReq {
            key,
            ..RangeReq::default()
        };
        let put = |st: &mut ClientState, key: String, lease: i64, prev_kv: bool| PutReq {
            key,
            value: st.value(),
            lease,
            prev_kv,
        };
        match rng.random_range(0..100) {
            0..=24 => Request::Put(put(st, key, 0, rng.random_bool(0.2))),
            25..=44 => Request::Range(range(key)),
            45..=49 => Request::Range(RangeReq {
                serializable: true,
                ..range(key)
            }),
            50..=56 => {
                // A slice of ~10 or ~100 keys, maybe with a limit.
                let width = if rng.random_bool(0.7) { 2 } else { 1 };
                let (start, end) = self.slice(rng, width);
                Request::Range(RangeReq {
                    key: start,
                    end,
                    limit: [0, 3, 20][rng.random_range(0..3)],
                    ..RangeReq::default()
                })
            }
            57..=61 => {
                let (start, end) = self.slice(rng, 2);
                Request::Range(RangeReq {
                    key: start,
                    end,
                    revision: (st.last_revision - rng.random_range(0..200)).max(1),
                    ..RangeReq::default()
                })
            }
            62..=71 => {
                let known = st.known.get(&key).copied().unwrap_or(0);
                let value = st.value();
                Request::Txn(TxnReq {
                    compares: vec![Compare {
                        key: key.clone(),
                        target: CompareTarget::ModRevision(known),
                        result: CompareResult::Equal,
                    }],
                    success: vec![TxnOp::Put(PutReq {
                        key: key.clone(),
                        value,
                        ..PutReq::default()
                    })],
                    failure: vec![TxnOp::Range(range(key))],
                })
            }
            72..=75 => {
                // Two keys next to each other (often one range, sometimes
                // two) or anywhere (several ranges once the keyspace split):
                // a cross-range txn.
                let step = match rng.random_bool(0.5) {
                    true => 1,
                    false => rng.random_range(1..self.keys().max(2)),
                };
                let other = self.key((self.index(&key) + step) % self.keys());
                Request::Txn(TxnReq {
                    compares: vec![Compare {
                        key: key.clone(),
                        target: CompareTarget::Version(0),
                        result: CompareResult::Greater,
                    }],
                    success: vec![
                        TxnOp::Put(put(st, key.clone(), 0, false)),
                        TxnOp::Put(put(st, other.clone(), 0, true)),
                    ],
                    failure: vec![TxnOp::Range(range(key)), TxnOp::Range(range(other))],
                })
            }
            76..=81 => Request::Delete(DeleteReq {
                key,
                prev_kv: rng.random_bool(0.5),
                ..DeleteReq::default()
            }),
            82..=83 => {
                // ~10 or ~100 keys: often over several ranges.
                let width = rng.random_range(1..=2);
                let (start, end) = self.slice(rng, width);
                Request::Delete(DeleteReq {
                    key: start,
                    end,
                    prev_kv: true,
                })
            }
            84..=86 if st.leases.len() < 4 => Request::LeaseGrant {
                ttl: rng.random_range(3..20),
            },
            87..=92 if !st.leases.is_empty() => {
                let lease = st.leases[rng.random_range(0..st.leases.len())];
                Request::Put(put(st, key, lease, false))
            }
            93..=94 if !st.leases.is_empty() => {
                let i = rng.random_range(0..st.leases.len());
                Request::LeaseRevoke {
                    id: st.leases.swap_remove(i),
                }
            }
            _ => Request::Range(range(key)),
        }
    }

    fn kubernetes(&self, rng: &mut SmallRng, st: &mut ClientState) -> Request {
        if let Some((next, end, revision)) = st.list.take() {
            return Request::Range(RangeReq {
                key: next,
                end,
                revision,
                limit: 20,
                ..RangeReq::default()
            });
        }
        let key = self.random_key(rng);
        let get = |key: &str| {
            TxnOp::Range(RangeReq {
                key: key.to_string(),
                ..RangeReq::default()
            })
        };
        let known = st.known.get(&key).copied();
        let guard = |rev: i64| Compare {
            key: key.clone(),
            target: CompareTarget::ModRevision(rev),
            result: CompareResult::Equal,
        };
        match rng.random_range(0..100) {
            0..=14 => Request::Txn(TxnReq {
                compares: vec![guard(0)],
                success: vec![TxnOp::Put(PutReq {
                    key: key.clone(),
                    value: st.value(),
                    ..PutReq::default()
                })],
                failure: vec![],
            }),
            15..=39 if known.is_some_and(|r| r > 0) => Request::Txn(TxnReq {
                compares: vec![guard(known.unwrap_or(0))],
                success: vec![TxnOp::Put(PutReq {
                    key: key.clone(),
                    value: st.value(),
                    ..PutReq::default()
                })],
                failure: vec![get(&key)],
            }),
            40..=47 if known.is_some_and(|r| r > 0) => Request::Txn(TxnReq {
                compares: vec![guard(known.unwrap_or(0))],
                success: vec![TxnOp::Delete(DeleteReq {
                    key: key.clone(),
                    ..DeleteReq::default()
                })],
                failure: vec![get(&key)],
            }),
            48..=74 => Request::Range(RangeReq {
                key,
                ..RangeReq::default()
            }),
            _ => Request::Range(RangeReq {
                key: self.prefix().to_string(),
                end: prefix_end(self.prefix()),
                limit: 20,
                ..RangeReq::default()
            }),
        }
    }

    fn index(&self, key: &str) -> u32 {
        key.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0)
    }

    /// A random slice of the keyspace: the keys sharing all but the last
    /// `width` digits of a random key (`width` 1: ~10 keys, 2: ~100).
    fn slice(&self, rng: &mut SmallRng, width: usize) -> (String, String) {
        let key = self.random_key(rng);
        let start = &key[..key.len() - width];
        (start.to_string(), prefix_end(start))
    }
}
