//! `Maintenance.Snapshot`: the whole keyspace at one revision, streamed as a
//! Strata snapshot file (`format.rs`), and what a restore needs of it.
//!
//! **Consistency.** The snapshot's revision `R` is a linearizable read
//! revision (`alloc(0) − 1`): every write that completed before the call is
//! in it. Every range is read at `R` with a [`Scan`](crate::scan::Scan) —
//! page by page, across ranges, exact across splits (a page asked of a range
//! that split is asked again of the new ranges, at the same `R`). Writes go
//! on meanwhile; the file holds each live key as it was at `R` (key, value,
//! create and mod revisions, version, lease). The stream fails (and
//! `etcdctl snapshot save` with it) if `R` is compacted before the last page
//! is read.
//!
//! **Leases** are listed with their granted TTLs after `R` is fixed: those
//! alive then. A key at `R` may name a lease revoked since; the restore
//! grants such a lease with etcd's minimum TTL, so its keys go soon, as they
//! did in the source.
//!
//! **Memory.** One page (about 1 MiB) is read, encoded into the file buffer,
//! and sent in messages of at most [`CHUNK_BYTES`]; at most
//! [`CHANNEL_CHUNKS`] messages wait for a slow client. Nothing holds the
//! keyspace.
//!
//! **Restore** (`strata ctl snapshot restore FILE --data-dir DIR`, then
//! `strata dev --data-dir DIR`, `src/dev/restore.rs`): the checked file is
//! kept in `DIR/restore/`; the new cluster's first start raises its oracle
//! past `R`, writes every version as it is into the ranges (node
//! `KV_INGEST`, `node/src/store/ingest.rs`), grants the leases, compacts at
//! `R` (the file holds no history below it) and only then reports ready.

pub mod format;

use std::time::{SystemTime, UNIX_EPOCH};

use strata_proto::etcd::{PbRangeRequest, PbResponseHeader, PbSnapshotResponse};
use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::{LeaseIdRequest, LeaseListRequest, SnapshotHeader, SnapshotLease};
use tokio::sync::mpsc;
use tonic::Status;

use crate::misc::Common;
use crate::scan::Scan;

/// The largest blob of one `SnapshotResponse`.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Messages waiting for the client, at most.
pub const CHANNEL_CHUNKS: usize = 2;
/// The most leases a snapshot lists (placement keeps at most that many).
pub const MAX_LEASES: usize = 1 << 20;

pub type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

type Tx = mpsc::Sender<Result<PbSnapshotResponse, Status>>;

/// Starts streaming a snapshot (the caller checked it may).
pub async fn serve(common: &Common) -> Result<SnapshotStream, Status> {
    // Fixed before the stream starts, so a failure to get it is the call's.
    let revision = common.oracle.current().await?;
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let common = common.clone();
    tokio::spawn(async move {
        if let Err(s) = run(&common, revision, &tx).await {
            tracing::warn!(revision, "snapshot failed: {}", s.message());
            let _ = tx.send(Err(s)).await;
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

struct Out<'a> {
    tx: &'a Tx,
    header: Option<PbResponseHeader>,
    sent: u64,
}

impl Out<'_> {
    /// Sends `blob` in messages of at most [`CHUNK_BYTES`]. `remaining_bytes`
    /// is exact only in the last message (0); before it is a lower bound
    /// (the checksum trailer), the size being unknown until the end.
    async fn send(&mut self, blob: Vec<u8>, last: bool) -> Result<(), Status> {
        let n = blob.len().div_ceil(CHUNK_BYTES).max(1);
        for (i, part) in blob.chunks(CHUNK_BYTES.max(1)).enumerate() {
            self.message(part.to_vec(), last && i + 1 == n).await?;
        }
        if blob.is_empty() && last {
            self.message(Vec::new(), true).await?;
        }
        Ok(())
    }

    async fn message(&mut self, blob: Vec<u8>, last: bool) -> Result<(), Status> {
        self.sent = self.sent.saturating_add(blob.len() as u64);
        let msg = PbSnapshotResponse {
            header: self.header,
            remaining_bytes: if last { 0 } else { 32 },
            blob,
            ..Default::default()
        };
        self.tx
            .send(Ok(msg))
            .await
            .map_err(|_| Status::cancelled("strata: the client went away"))
    }
}

async fn run(common: &Common, revision: i64, tx: &Tx) -> Result<(), Status> {
    let compacted = common
        .router
        .compacted
        .load(std::sync::atomic::Ordering::Acquire)
        .min(revision);
    let created_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut w = format::Writer::new(&SnapshotHeader {
        format_version: format::FORMAT_VERSION,
        revision,
        compact_revision: compacted,
        cluster_id: common.cluster_id,
        created_unix_ms,
    });
    let mut out = Out {
        tx,
        header: Some(PbResponseHeader {
            cluster_id: common.cluster_id,
            member_id: common.member_id,
            revision,
            raft_term: 1,
        }),
        sent: 0,
    };
    for l in leases(common).await? {
        w.lease(&l);
        if w.pending() >= CHUNK_BYTES {
            out.send(w.take(), false).await?;
        }
    }
    let everything = KeyRange::from_etcd(&[0], &[0]);
    let template = PbRangeRequest {
        revision,
        ..Default::default()
    };
    let mut scan = Scan::new(common.router.clone(), &template, &everything, revision);
    let mut keys = 0u64;
    while let Some(page) = scan.next_page(i64::MAX).await? {
        for kv in &page {
            w.kv(kv);
        }
        keys += page.len() as u64;
        if w.pending() >= CHUNK_BYTES {
            out.send(w.take(), false).await?;
        }
    }
    out.send(w.finish(), true).await?;
    tracing::info!(revision, keys, bytes = out.sent, "snapshot sent");
    Ok(())
}

/// The leases alive now, with their granted TTLs.
async fn leases(common: &Common) -> Result<Vec<SnapshotLease>, Status> {
    let mut p = common.router.placement.clone();
    let ids = p.lease_list(LeaseListRequest {}).await?.into_inner().ids;
    let mut out = Vec::with_capacity(ids.len().min(MAX_LEASES));
    for id in ids.into_iter().take(MAX_LEASES) {
        let info = p
            .lease_time_to_live(LeaseIdRequest { id })
            .await?
            .into_inner();
        if info.found {
            out.push(SnapshotLease {
                id,
                ttl: info.granted_ttl,
            });
        }
    }
    Ok(out)
}
