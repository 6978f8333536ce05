//! A builder of correct sequential histories for the checker's tests: every call runs
//! one request on a reference state (one revision per write that changes something),
//! records it with its response, and `build` adds the watchers' streams from the
//! events. Tests then plant a bug by editing the built history.

use super::model::{apply, read, simulate, LogEvent, State};
use crate::robustness::history::{
    Compare, CompareResult, CompareTarget, DeleteReq, Event, EventKind, History, Op, PutReq,
    RangeReq, Request, Response, ResponseBody, TxnOp, TxnReq, WatchLog, WatchResp, WatchStream,
};

pub struct Hist {
    pub h: History,
    /// `states[r]`: the state at revision r.
    pub states: Vec<State>,
    pub log: Vec<(i64, Vec<LogEvent>)>,
    pub t: u64,
    pub watchers: Vec<WatchLog>,
    next_lease: i64,
    /// Keep only the current state (big histories; no reads at a past revision).
    pub lean: bool,
    rev: i64,
}

pub fn put_req(key: &str, value: &str) -> PutReq {
    PutReq {
        key: key.into(),
        value: value.into(),
        ..PutReq::default()
    }
}

pub fn del_req(key: &str, end: &str) -> DeleteReq {
    DeleteReq {
        key: key.into(),
        end: end.into(),
        prev_kv: true,
    }
}

pub fn range_req(key: &str, end: &str) -> RangeReq {
    RangeReq {
        key: key.into(),
        end: end.into(),
        ..RangeReq::default()
    }
}

pub fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        key: key.into(),
        target,
        result,
    }
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            h: History::default(),
            states: vec![State::new()],
            log: Vec::new(),
            t: 1_000_000,
            watchers: Vec::new(),
            next_lease: 7000,
            lean: false,
            rev: 0,
        }
    }

    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn state(&self) -> &State {
        self.states.last().expect("states")
    }

    fn push(&mut self, client: u32, req: Request, resp: Result<Response, String>) -> u64 {
        let id = self.h.ops.len() as u64;
        self.h.ops.push(Op {
            id,
            client,
            endpoint: "r0".into(),
            invoke: self.t,
            ret: self.t + 500,
            req,
            resp,
        });
        self.t += 1000;
        id
    }

    /// Appends a revision with these events.
    pub fn commit(&mut self, events: Vec<LogEvent>) {
        self.rev += 1;
        if self.lean {
            apply(self.states.last_mut().expect("states"), &events);
        } else {
            let mut s = self.state().clone();
            apply(&mut s, &events);
            self.states.push(s);
        }
        self.log.push((self.rev, events));
    }

    pub fn write(&mut self, client: u32, req: Request) -> u64 {
        let r = self.rev() + 1;
        let sim = simulate(self.state(), &req, r).expect("a write");
        let rev = if sim.events.is_empty() {
            self.rev()
        } else {
            self.commit(sim.events);
            r
        };
        self.push(
            client,
            req,
            Ok(Response {
                revision: rev,
                body: sim.body,
            }),
        )
    }

    /// A write that fails; `applied`: it took effect anyway (at the next revision).
    pub fn unknown(&mut self, client: u32, req: Request, applied: bool) -> u64 {
        if applied {
            let sim = simulate(self.state(), &req, self.rev() + 1).expect("a write");
            if !sim.events.is_empty() {
                self.commit(sim.events);
            }
        }
        self.push(client, req, Err("deadline exceeded".into()))
    }

    pub fn put(&mut self, client: u32, key: &str, value: &str) -> u64 {
        self.write(client, Request::Put(put_req(key, value)))
    }

    pub fn put_lease(&mut self, client: u32, key: &str, value: &str, lease: i64) -> u64 {
        let p = PutReq {
            lease,
            prev_kv: true,
            ..put_req(key, value)
        };
        self.write(client, Request::Put(p))
    }

    pub fn del(&mut self, client: u32, key: &str, end: &str) -> u64 {
        self.write(client, Request::Delete(del_req(key, end)))
    }

    pub fn txn(
        &mut self,
        client: u32,
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    ) -> u64 {
        self.write(
            client,
            Request::Txn(TxnReq {
                compares,
                success,
                failure,
            }),
        )
    }

    pub fn read(&mut self, client: u32, req: RangeReq) -> u64 {
        let at = if req.revision > 0 {
            req.revision
        } else {
            self.rev()
        };
        let body = if self.lean {
            assert_eq!(at, self.rev, "a lean builder reads the current state only");
            read(self.state(), &req)
        } else {
            read(&self.states[at as usize], &req)
        };
        let revision = self.rev();
        self.push(
            client,
            Request::Range(req),
            Ok(Response {
                revision,
                body: ResponseBody::Range(body),
            }),
        )
    }

    pub fn get(&mut self, client: u32, key: &str) -> u64 {
        self.read(client, range_req(key, ""))
    }

    pub fn grant(&mut self, client: u32) -> i64 {
        self.next_lease += 1;
        let id = self.next_lease;
        let revision = self.rev();
        self.push(
            client,
            Request::LeaseGrant { ttl: 10 },
            Ok(Response {
                revision,
                body: ResponseBody::LeaseGrant { id },
            }),
        );
        id
    }

    /// Revokes a lease the way Strata does: one revision per deleted key.
    pub fn revoke(&mut self, client: u32, id: i64) -> u64 {
        let keys: Vec<_> = self
            .state()
            .values()
            .filter(|kv| kv.lease == id)
            .cloned()
            .collect();
        for kv in keys {
            let r = self.rev() + 1;
            self.commit(vec![LogEvent {
                kind: EventKind::Delete,
                kv: super::model::delete_kv(&kv.key, r),
                prev: Some(kv),
            }]);
        }
        let revision = self.rev();
        self.push(
            client,
            Request::LeaseRevoke { id },
            Ok(Response {
                revision,
                body: ResponseBody::LeaseRevoke,
            }),
        )
    }

    pub fn final_read(&mut self) {
        let id = self.read(0, range_req("", "\0"));
        let mut op = self.h.ops.pop().expect("the read");
        assert_eq!(op.id, id);
        op.id = u64::MAX;
        self.h.final_read = Some(op);
    }

    /// A watcher from revision 1; set its options on the returned log.
    pub fn watch(&mut self, key: &str, end: &str) -> &mut WatchLog {
        self.watchers.push(WatchLog {
            watcher: self.watchers.len() as u32,
            key: key.into(),
            end: end.into(),
            ..WatchLog::default()
        });
        self.watchers.last_mut().expect("pushed")
    }

    /// The history, with one stream per watcher: a created response, one response per
    /// revision with events it wants, and a last progress notify at the final revision.
    pub fn build(&self) -> History {
        let mut h = self.h.clone();
        for w in &self.watchers {
            let mut st = WatchStream {
                endpoint: "r0".into(),
                opened: 0,
                start_revision: 1,
                responses: vec![WatchResp {
                    created: true,
                    ..WatchResp::default()
                }],
                ended: "end of run".into(),
            };
            for (r, evs) in &self.log {
                let events: Vec<Event> = evs
                    .iter()
                    .filter(|e| super::model::in_interval(&w.key, &w.end, &e.kv.key))
                    .filter(|e| !(e.kind == EventKind::Put && w.no_put))
                    .filter(|e| !(e.kind == EventKind::Delete && w.no_delete))
                    .map(|e| Event {
                        kind: e.kind,
                        kv: e.kv.clone(),
                        prev_kv: if w.prev_kv { e.prev.clone() } else { None },
                    })
                    .collect();
                if !events.is_empty() {
                    st.responses.push(WatchResp {
                        at: *r as u64,
                        revision: *r,
                        events,
                        ..WatchResp::default()
                    });
                }
            }
            st.responses.push(WatchResp {
                revision: self.rev(),
                progress: true,
                ..WatchResp::default()
            });
            let mut w = w.clone();
            w.streams.push(st);
            h.watches.push(w);
        }
        h
    }
}
