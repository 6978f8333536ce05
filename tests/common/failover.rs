//! An etcd client over several endpoints that stops sending to a dead one.
//!
//! `etcd_client::Client::connect(endpoints)` (etcd-client 0.21, tonic 0.14)
//! balances over a tonic balance channel: tower's p2c `Balance` over one lazy
//! `Connection` per endpoint. It never drops a dead endpoint: once a lazy
//! connection's reconnect fails, tonic's `Reconnect` reports the endpoint
//! *ready* (the error kept for the next call) instead of failed, so `Balance`
//! keeps choosing it and each request it sends there fails at once with
//! Unavailable "tcp connect error … Connection refused" — about a third of all
//! requests for as long as the endpoint is down (tests/routers.rs measures
//! it). etcd's Go client does not have this problem: gRPC's round_robin
//! balancer skips subchannels in TRANSIENT_FAILURE and reconnects them in the
//! background.
//!
//! [`connect`] gives etcd-client that behaviour through its public
//! `connect_with_balanced_channel`: a custom channel, round robin over the
//! endpoints believed up. A request that fails at the transport (the
//! connection broke or could not be made; never a gRPC status) marks its
//! endpoint down, and a background probe marks it up again once it accepts
//! TCP connections. Requests are never retried: the one that found the
//! endpoint dead fails, as do those in flight on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use etcd_client::{BalancedChannelBuilder, Channel, Client, ConnectOptions};
use http::Uri;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::channel::Change;
use tonic::transport::Endpoint;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

/// How often a down endpoint is probed.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// A client of `endpoints` that skips dead ones (see the module doc).
pub async fn connect(
    endpoints: &[String],
    opts: Option<ConnectOptions>,
) -> Result<Client, etcd_client::Error> {
    Client::connect_with_balanced_channel(endpoints, opts, Failover).await
}

struct Failover;

impl BalancedChannelBuilder for Failover {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (tx, changes) = mpsc::channel(buffer_size);
        let svc = FailoverChannel {
            state: Arc::new(Mutex::new(State {
                changes,
                endpoints: Vec::new(),
                next: 0,
            })),
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(svc)), tx))
    }
}

struct Ep {
    uri: Uri,
    channel: tonic::transport::Channel,
    up: Arc<AtomicBool>,
}

struct State {
    /// Endpoints the client adds and removes (`Client::add_endpoint`, ...).
    changes: mpsc::Receiver<Change<Uri, Endpoint>>,
    endpoints: Vec<Ep>,
    next: usize,
}

impl State {
    fn apply_changes(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            match change {
                Change::Insert(uri, endpoint) => {
                    self.endpoints.retain(|e| e.uri != uri);
                    self.endpoints.push(Ep {
                        uri,
                        channel: endpoint.connect_lazy(),
                        up: Arc::new(AtomicBool::new(true)),
                    });
                }
                Change::Remove(uri) => self.endpoints.retain(|e| e.uri != uri),
            }
        }
    }

    /// Round robin over the endpoints believed up (over all when none is).
    fn pick(&mut self) -> Option<(tonic::transport::Channel, Uri, Arc<AtomicBool>)> {
        let n = self.endpoints.len();
        let any_up = self.endpoints.iter().any(|e| e.up.load(Ordering::Acquire));
        for k in 0..n {
            let e = &self.endpoints[(self.next + k) % n];
            if !any_up || e.up.load(Ordering::Acquire) {
                self.next = (self.next + k + 1) % n;
                return Some((e.channel.clone(), e.uri.clone(), e.up.clone()));
            }
        }
        None
    }
}

#[derive(Clone)]
struct FailoverChannel {
    state: Arc<Mutex<State>>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

impl Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        let picked = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.apply_changes();
            st.pick()
        };
        Box::pin(async move {
            let (channel, uri, up) = picked.ok_or("no endpoint")?;
            let r = channel.oneshot(req).await;
            if r.is_err() && up.swap(false, Ordering::AcqRel) {
                tokio::spawn(probe(uri, up));
            }
            r.map_err(Into::into)
        })
    }
}

/// Marks `up` once `uri`'s host accepts a TCP connection again.
async fn probe(uri: Uri, up: Arc<AtomicBool>) {
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return;
    };
    // Bounded: 10 minutes (a test's cluster is gone long before).
    for _ in 0..6000 {
        tokio::time::sleep(PROBE_EVERY).await;
        let connect = tokio::net::TcpStream::connect(authority.as_str());
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            up.store(true, Ordering::Release);
            return;
        }
    }
}
