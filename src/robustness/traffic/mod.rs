//! Recorded client traffic: concurrent clients through the routers' etcd API, each
//! request stored with its invoke and return time and its outcome.

mod exec;
pub mod profile;
pub mod watch;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::history::*;
pub use exec::exec;
use profile::Profile;

/// Every client's timeout for one request: longer than the router's own
/// request deadline (5 s), so a timeout here means the router hung.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// What every task of a run shares: the clock, the recorded ops, and the
/// watchers' progress (so compaction never passes what a watcher still needs).
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// Set when clients must stop issuing requests.
    pub stop: AtomicBool,
    /// Per watcher: the highest revision it has seen (event or progress).
    pub watch_progress: Vec<AtomicI64>,
}

impl Recorder {
    pub fn new(watchers: usize) -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            watch_progress: (0..watchers).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The ops so far, ordered by invoke time, with ids = their index.
    pub fn take_ops(&self) -> Vec<Op> {
        let mut ops = std::mem::take(&mut *self.ops.lock().unwrap());
        ops.sort_by_key(|o| (o.invoke, o.client));
        for (i, o) in ops.iter_mut().enumerate() {
            o.id = i as u64;
        }
        ops
    }

    /// The lowest revision every watcher has reached (0 before they all started).
    pub fn min_watch_progress(&self) -> i64 {
        self.watch_progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// The TLS of every client of this process (`strata robustness --tls`).
static TLS: std::sync::OnceLock<etcd_client::TlsOptions> = std::sync::OnceLock::new();

/// Makes every client of this process use TLS with `tls` (first call wins).
pub fn use_tls(tls: etcd_client::TlsOptions) {
    let _ = TLS.set(tls);
}

/// The URL and options to reach the router at `endpoint` (`host:port`):
/// `https` and the TLS of [`use_tls`] when set.
pub fn dial(endpoint: &str, opts: ConnectOptions) -> (String, ConnectOptions) {
    match TLS.get() {
        Some(t) => (format!("https://{endpoint}"), opts.with_tls(t.clone())),
        None => (endpoint.to_string(), opts),
    }
}

pub async fn connect(endpoint: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    let (url, opts) = dial(endpoint, opts);
    Client::connect([url], Some(opts))
        .await
        .map_err(|e| e.to_string())
}

/// Sends one request and records it.
pub async fn record(
    rec: &Recorder,
    client: &mut Client,
    id: u32,
    endpoint: &str,
    req: Request,
) -> Result<Response, String> {
    let invoke = rec.now();
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, exec(client, &req)).await {
        Ok(r) => r,
        Err(_) => Err(format!("client timeout after {REQUEST_TIMEOUT:?}")),
    };
    rec.push(Op {
        id: 0,
        client: id,
        endpoint: endpoint.to_string(),
        invoke,
        ret: rec.now(),
        req,
        resp: resp.clone(),
    });
    resp
}

/// What one client remembers between requests (to build CAS transactions and
/// paged lists the way real clients do).
#[derive(Default)]
pub struct ClientState {
    pub id: u32,
    pub n: u64,
    /// Key → the mod_revision this client last saw (0: absent).
    pub known: HashMap<String, i64>,
    pub leases: Vec<i64>,
    pub last_revision: i64,
    /// A paged list in progress: (next key, end, revision of the first page).
    pub list: Option<(String, String, i64)>,
}

impl ClientState {
    /// A value never written before by anyone (the checker relies on it).
    pub fn value(&mut self) -> String {
        self.n += 1;
        format!("c{}-{}", self.id, self.n)
    }

    fn observe_kvs(&mut self, kvs: &[Kv]) {
        for kv in kvs {
            self.known.insert(kv.key.clone(), kv.mod_revision);
        }
    }

    /// Learns from an answer: mod revisions, leases, the list continuation.
    fn observe(&mut self, req: &Request, resp: &Result<Response, String>) {
        let Ok(resp) = resp else {
            // Unknown outcome: forget what the request may have changed.
            match req {
                Request::Put(p) => drop(self.known.remove(&p.key)),
                Request::Txn(t) => {
                    for op in t.success.iter().chain(&t.failure) {
                        if let TxnOp::Put(PutReq { key, .. })
                        | TxnOp::Delete(DeleteReq { key, .. }) = op
                        {
                            self.known.remove(key);
                        }
                    }
                }
                _ => {}
            }
            self.list = None;
            return;
        };
        self.last_revision = self.last_revision.max(resp.revision);
        match (req, &resp.body) {
            (Request::Range(r), ResponseBody::Range(rr)) => {
                self.observe_kvs(&rr.kvs);
                self.list = match (rr.more, rr.kvs.last()) {
                    (true, Some(last)) if r.limit > 0 => Some((
                        format!("{}\0", last.key),
                        r.end.clone(),
                        if r.revision > 0 {
                            r.revision
                        } else {
                            resp.revision
                        },
                    )),
                    _ => None,
                };
            }
            (Request::Put(p), _) => {
                self.known.insert(p.key.clone(), resp.revision);
            }
            (Request::Delete(d), _) if d.end.is_empty() => {
                self.known.insert(d.key.clone(), 0);
            }
            (
                Request::Txn(t),
                ResponseBody::Txn {
                    succeeded,
                    responses,
                },
            ) => {
                let ops = if *succeeded { &t.success } else { &t.failure };
                for (op, r) in ops.iter().zip(responses) {
                    match (op, r) {
                        (TxnOp::Put(p), _) => {
                            self.known.insert(p.key.clone(), resp.revision);
                        }
                        (TxnOp::Delete(d), _) => {
                            self.known.insert(d.key.clone(), 0);
                        }
                        (TxnOp::Range(_), TxnOpResp::Range(rr)) => {
                            let kvs = rr.kvs.clone();
                            self.observe_kvs(&kvs);
                        }
                        _ => {}
                    }
                }
            }
            (Request::LeaseGrant { .. }, ResponseBody::LeaseGrant { id }) => self.leases.push(*id),
            _ => {}
        }
    }
}

/// One client: requests of `profile` until `rec.stop` or `max_ops`, through
/// `endpoint`, reconnecting when the router is gone.
pub async fn client_loop(
    rec: Arc<Recorder>,
    id: u32,
    endpoint: String,
    profile: Profile,
    seed: u64,
    max_ops: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (u64::from(id) << 32 | 0x5eed));
    let mut st = ClientState {
        id,
        ..ClientState::default()
    };
    let mut client = None;
    let mut sent = 0;
    while !rec.stopped() && sent < max_ops {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match connect(&endpoint).await {
                Ok(c) => client.insert(c),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let req = profile.next(&mut rng, &mut st);
        let resp = record(&rec, c, id, &endpoint, req.clone()).await;
        sent += 1;
        st.observe(&req, &resp);
        if resp.is_err() {
            // Back off a little while the cluster recovers, as clients do.
            tokio::time::sleep(Duration::from_millis(rng.random_range(10..60))).await;
        }
    }
}

/// Compacts now and then, never past what every watcher has seen (Kubernetes
/// compacts to a revision it saw a while ago; this keeps the watchers able to
/// resume, so their guarantees stay checkable).
pub async fn compactor(rec: Arc<Recorder>, endpoint: String, every: Duration) {
    let mut last = 0;
    let mut client = None;
    while !rec.stopped() {
        tokio::time::sleep(every).await;
        let target = rec.min_watch_progress() - 20;
        if target <= last + 20 || rec.stopped() {
            continue;
        }
        if client.is_none() {
            client = connect(&endpoint).await.ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let req = Request::Compact { revision: target };
        if record(&rec, c, COMPACTOR_CLIENT, &endpoint, req)
            .await
            .is_ok()
        {
            last = target;
        }
    }
}

/// Client id of the compactor (the final read uses FINAL_CLIENT).
pub const COMPACTOR_CLIENT: u32 = 10_000;
pub const FINAL_CLIENT: u32 = 10_001;

/// After the faults healed: one linearizable read of the profile's whole prefix
/// (retried, bounded), the state every acknowledged write must be in.
pub async fn final_read(rec: &Recorder, endpoints: &[String], prefix: &str) -> Option<Op> {
    let req = Request::Range(RangeReq {
        key: prefix.to_string(),
        end: prefix_end(prefix),
        ..RangeReq::default()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    for ep in endpoints.iter().cycle() {
        if Instant::now() > deadline {
            return None;
        }
        let Ok(mut c) = connect(ep).await else {
            continue;
        };
        let invoke = rec.now();
        if let Ok(resp) = exec(&mut c, &req).await {
            return Some(Op {
                id: u64::MAX,
                client: FINAL_CLIENT,
                endpoint: ep.clone(),
                invoke,
                ret: rec.now(),
                req,
                resp: Ok(resp),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// The end of the interval of keys starting with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0x7f {
            b.push(last + 1);
            return String::from_utf8(b).expect("ascii prefix");
        }
    }
    "\0".into()
}
