//! Raft messages between placement replicas: one client-streaming `Raft` call
//! per peer, re-opened when it breaks. Messages queued for a peer that cannot
//! be reached are dropped (raft resends what matters).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::eraftpb::Message;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::PlacementRaftMessage;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Raft messages queued per peer before newer ones are dropped.
const PEER_QUEUE: usize = 4096;
/// The largest raft message (a snapshot of placement's state).
pub const MAX_MESSAGE: usize = 256 << 20;
/// The longest placement address accepted.
pub const MAX_ADDR: usize = 256;

/// Where each replica of the group listens (`host:port`).
#[derive(Default)]
pub struct AddressBook {
    addrs: RwLock<HashMap<u64, String>>,
}

impl AddressBook {
    pub fn get(&self, id: u64) -> Option<String> {
        self.addrs.read().get(&id).cloned()
    }

    pub fn set(&self, id: u64, addr: &str) {
        if id != 0 && !addr.is_empty() && addr.len() <= MAX_ADDR {
            self.addrs.write().insert(id, addr.to_string());
        }
    }

    /// Learns an address only for a replica it knows none of (a replica just
    /// added hears first from the leader).
    pub fn learn(&self, id: u64, addr: &str) {
        if self.get(id).is_none() {
            self.set(id, addr);
        }
    }

    pub fn all(&self) -> HashMap<u64, String> {
        self.addrs.read().clone()
    }
}

pub struct Transport {
    me: u64,
    my_addr: String,
    book: Arc<AddressBook>,
    rt: Handle,
    peers: HashMap<u64, mpsc::Sender<Vec<u8>>>,
}

impl Transport {
    pub fn new(me: u64, my_addr: String, book: Arc<AddressBook>, rt: Handle) -> Self {
        Self {
            me,
            my_addr,
            book,
            rt,
            peers: HashMap::new(),
        }
    }

    /// Queues `msg` for its peer (never blocks the raft thread).
    pub fn send(&mut self, msg: &Message) {
        if msg.to == self.me || msg.to == 0 || crate::failpoint::on("placement_partition") {
            return;
        }
        let bytes = match msg.write_to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("cannot encode a placement raft message: {e}");
                return;
            }
        };
        let tx = self.peers.entry(msg.to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let (to, me, my_addr, book) =
                (msg.to, self.me, self.my_addr.clone(), self.book.clone());
            self.rt.spawn(peer_loop(to, me, my_addr, book, rx));
            tx
        });
        // Full: the peer is slow or gone; raft will resend.
        let _ = tx.try_send(bytes);
    }

    /// Stops sending to a replica removed from the group.
    pub fn forget(&mut self, id: u64) {
        self.peers.remove(&id);
    }
}

async fn peer_loop(
    to: u64,
    me: u64,
    my_addr: String,
    book: Arc<AddressBook>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(first) = rx.recv().await else { return };
        let Some(addr) = book.get(to) else {
            continue;
        };
        let client = match connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = to, %addr, "placement peer unreachable: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let env = |message: Vec<u8>| PlacementRaftMessage {
            from: me,
            from_addr: my_addr.clone(),
            message,
        };
        let (tx, srx) = mpsc::channel(PEER_QUEUE);
        let _ = tx.try_send(env(first));
        let mut client = client;
        let mut call = tokio::spawn(async move {
            client
                .raft(tokio_stream::wrappers::ReceiverStream::new(srx))
                .await
        });
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        if tx.try_send(env(m)).is_err() && tx.is_closed() {
                            break;
                        }
                    }
                    None => {
                        call.abort();
                        return;
                    }
                },
                r = &mut call => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(peer = to, "placement raft stream ended: {}", e.message());
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(addr: &str) -> anyhow::Result<PlacementClient<tonic::transport::Channel>> {
    let ep = strata_proto::tls::endpoint(addr)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    let ch = strata_proto::tls::connect(&ep).await?;
    Ok(PlacementClient::new(ch)
        .max_encoding_message_size(MAX_MESSAGE)
        .max_decoding_message_size(MAX_MESSAGE))
}

/// Decodes a received raft message; `None` for garbage or one not for `me`.
pub fn decode(env: &PlacementRaftMessage, me: u64) -> Option<Message> {
    if crate::failpoint::on("placement_partition") {
        return None;
    }
    let m = Message::parse_from_bytes(&env.message).ok()?;
    (m.to == me && m.from == env.from && m.from != 0).then_some(m)
}
