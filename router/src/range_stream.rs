//! `KV.RangeStream` (etcd 3.7): a Range's answer in chunks. Each chunk is a
//! `RangeStreamResponse` whose `range_response` carries the next keys in
//! order; the last one alone carries `header`, `count` and `more`, so merging
//! every chunk gives exactly the unary Range's answer.
//!
//! In key order (no sort, or ascending by key) the keys come from a
//! [`Scan`](crate::scan::Scan): a page read from a node is sent as one chunk
//! (about 1 MiB) before the next is read, and at most [`CHANNEL_CHUNKS`]
//! chunks wait for a slow client, so a request holds a bounded number of
//! bytes whatever the interval's size. Other sort orders need the whole
//! result to sort it: that is read as the unary Range does and then sent in
//! chunks. Errors (compacted revision, a request past the deadline) end
//! the stream with etcd's status.

use strata_proto::errors;
use strata_proto::etcd::{PbKeyValue, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse};
use strata_proto::etcdutil::KeyRange;
use tokio::sync::mpsc;
use tonic::Status;

use crate::kv::{Kv, RangeStream};
use crate::scan::{key_order, Scan, PAGE_TARGET_BYTES};

/// Chunks waiting for the client, at most.
pub const CHANNEL_CHUNKS: usize = 2;

type Tx = mpsc::Sender<Result<PbRangeStreamResponse, Status>>;

/// Starts answering `r` (already checked: size, permission).
pub fn serve(kv: Kv, r: PbRangeRequest) -> RangeStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(async move {
        if let Err(s) = run(&kv, r, &tx).await {
            let _ = tx.send(Err(s)).await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn chunk(resp: PbRangeResponse) -> PbRangeStreamResponse {
    PbRangeStreamResponse {
        range_response: Some(resp),
    }
}

async fn send(tx: &Tx, resp: PbRangeResponse) -> Result<(), Status> {
    // A client that went away ends the work.
    tx.send(Ok(chunk(resp)))
        .await
        .map_err(|_| Status::cancelled("strata: the client went away"))
}

async fn run(kv: &Kv, r: PbRangeRequest, tx: &Tx) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    let rr = kv.read_revision(r.serializable).await?;
    if rr > 0 && r.revision > rr {
        return Err(errors::future_rev());
    }
    if r.count_only || !key_order(&r) {
        return whole(kv, r, tx).await;
    }
    // Every page at one revision, also for a serializable request.
    let rr = if rr == 0 {
        kv.oracle.current().await?
    } else {
        rr
    };
    let kr = KeyRange::from_etcd(&r.key, &r.range_end);
    let mut scan = Scan::new(kv.router.clone(), &r, &kr, rr);
    // With a limit, one key past it is read only to know `more`.
    let want = match r.limit {
        0 => i64::MAX,
        n => n.saturating_add(1),
    };
    let mut sent: i64 = 0;
    let mut held: Option<PbKeyValue> = None;
    while sent < want && held.is_none() {
        let Some(mut page) = scan.next_page(want - sent).await? else {
            break;
        };
        if r.limit > 0 && sent + page.len() as i64 > r.limit {
            held = page.pop();
        }
        if page.is_empty() {
            continue;
        }
        sent += page.len() as i64;
        send(
            tx,
            PbRangeResponse {
                kvs: page,
                ..Default::default()
            },
        )
        .await?;
    }
    let count = scan.count_all(kv, &r).await?;
    send(
        tx,
        PbRangeResponse {
            header: kv.header(rr),
            kvs: Vec::new(),
            more: held.is_some(),
            count,
        },
    )
    .await
}

/// The unary Range's answer, sent in chunks of about a page.
async fn whole(kv: &Kv, r: PbRangeRequest, tx: &Tx) -> Result<(), Status> {
    let mut resp = kv.do_range(r).await?;
    let kvs = std::mem::take(&mut resp.kvs);
    let mut part = Vec::new();
    let mut bytes = 0usize;
    for v in kvs {
        bytes += v.key.len() + v.value.len();
        part.push(v);
        if bytes >= PAGE_TARGET_BYTES {
            bytes = 0;
            let kvs = std::mem::take(&mut part);
            send(
                tx,
                PbRangeResponse {
                    kvs,
                    ..Default::default()
                },
            )
            .await?;
        }
    }
    resp.kvs = part;
    send(tx, resp).await
}
