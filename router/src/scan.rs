//! Reading a key interval at one revision in bounded pages, across ranges,
//! in key order: what a limited multi-range `Range`, `RangeStream` and
//! `Maintenance.Snapshot` are built on.
//!
//! A page is one node request: the range holding the cursor, from the cursor
//! to the range's end (clipped to the interval), with a `limit`. Every page
//! is read at the same revision, so pages taken before and after a split see
//! the same keys: a split only makes a request fail as stale, and the page
//! is asked again from the same cursor of the new ranges. Every key of the
//! interval at that revision comes exactly once, in key order.
//!
//! **Bounded memory.** A page holds at most `limit` keys; the page size
//! adapts to the sizes seen so far so that a page is about
//! [`PAGE_TARGET_BYTES`], starting small ([`FIRST_PAGE_KEYS`]) since a value
//! may be up to etcd's request limit. A node reads no further than the page
//! asks: the first page in a range is a `KV_RANGE` (its `count` is etcd's
//! count of the range's part), later ones `KV_RANGE_PAGE`s (no count, so
//! the node stops at the page's end).

use std::sync::Arc;

use prost::Message;
use strata_proto::etcd::{PbKeyValue, PbRangeRequest, PbRangeResponse};
use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::KvKind;
use tokio::time::{Duration, Instant};
use tonic::Status;

use crate::routing::{is_stale, Retry, Router};

/// About this many bytes of keys and values per page.
pub const PAGE_TARGET_BYTES: usize = 1024 * 1024;
/// The first page's keys (values may be 1.5 MiB each).
pub const FIRST_PAGE_KEYS: i64 = 16;
/// The most keys of one page.
pub const MAX_PAGE_KEYS: i64 = 8192;

pub struct Scan {
    router: Arc<Router>,
    /// The request each page copies (`keys_only` and the revision filters).
    template: PbRangeRequest,
    /// Where the next page starts; `None` once the interval is read.
    cursor: Option<Vec<u8>>,
    end: Option<Vec<u8>>,
    /// The revision every page is read at (the node's barrier revision).
    read_revision: i64,
    page_keys: i64,
    /// Keys of the interval (etcd's `count`: before the revision filters)
    /// in `[start, counted_to)`, from each range's first page.
    count: i64,
    counted_to: Option<Vec<u8>>,
}

impl Scan {
    /// A scan of `kr` at `read_revision` (> 0); `r` gives `keys_only`, the
    /// revision filters and `revision` (when set, the revision read).
    pub fn new(router: Arc<Router>, r: &PbRangeRequest, kr: &KeyRange, read_revision: i64) -> Scan {
        let mut template = r.clone();
        template.limit = 0;
        template.sort_order = 0;
        template.sort_target = 0;
        template.count_only = false;
        Scan {
            router,
            template,
            cursor: (!kr.is_empty()).then(|| kr.start.clone()),
            end: kr.end.clone(),
            read_revision,
            page_keys: FIRST_PAGE_KEYS,
            count: 0,
            counted_to: Some(kr.start.clone()),
        }
    }

    /// Keys counted so far, and from where the rest of the interval is not
    /// counted yet (`None`: all of it is).
    pub fn counted(&self) -> (i64, Option<&[u8]>) {
        (self.count, self.counted_to.as_deref())
    }

    /// The next page, at most `max_keys` (> 0) keys; `None` once the
    /// interval is read. A page may be empty (an empty range).
    pub async fn next_page(&mut self, max_keys: i64) -> Result<Option<Vec<PbKeyValue>>, Status> {
        let Some(cursor) = self.cursor.clone() else {
            return Ok(None);
        };
        let deadline = Instant::now() + self.router.request_timeout;
        loop {
            let at = KeyRange::from_etcd(&cursor, &[]);
            let range = self.router.single_range(&at, "a scan").await?;
            let part = KeyRange {
                start: cursor.clone(),
                end: self.end.clone(),
            }
            .clamp(&range.desc.start_key, &range.desc.end_key);
            let mut q = self.template.clone();
            q.key = part.start.clone();
            q.range_end = part.end.clone().unwrap_or_else(|| vec![0]);
            q.limit = self.page_keys.min(max_keys).max(1);
            // The first page in a range counts its part; later ones need no
            // count, and a node stops reading at the page's end.
            let first = self.counted_to.as_ref().is_some_and(|c| part.start >= *c);
            let kind = match first {
                true => KvKind::KvRange,
                false => KvKind::KvRangePage,
            };
            let res = self
                .router
                .call(
                    &range,
                    kind,
                    q.encode_to_vec(),
                    self.read_revision,
                    Retry::Read,
                )
                .await;
            let body = match res {
                Err(s) if is_stale(&s) && Instant::now() < deadline => {
                    let _ = self.router.refresh().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(s) if is_stale(&s) => return Err(strata_proto::errors::timeout()),
                Err(s) => return Err(s),
                Ok(b) => b,
            };
            let resp = PbRangeResponse::decode(&body[..])
                .map_err(|e| Status::internal(format!("strata: bad node response: {e}")))?;
            drop(body);
            if first {
                self.count = self.count.saturating_add(resp.count);
                self.counted_to = part.end.clone();
            }
            self.adapt(&resp.kvs);
            self.cursor = match (resp.more, resp.kvs.last()) {
                (true, Some(last)) => {
                    let mut next = last.key.clone();
                    next.push(0);
                    Some(next)
                }
                _ => match (&part.end, &self.end) {
                    (None, _) => None,
                    (Some(pe), Some(e)) if pe >= e => None,
                    (Some(pe), _) => Some(pe.clone()),
                },
            };
            return Ok(Some(resp.kvs));
        }
    }

    /// Sizes the next page from what this one weighed.
    fn adapt(&mut self, kvs: &[PbKeyValue]) {
        if kvs.is_empty() {
            return;
        }
        let bytes: usize = kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len() + 48)
            .sum();
        let per_key = (bytes / kvs.len()).max(1);
        let keys = (PAGE_TARGET_BYTES / per_key) as i64;
        self.page_keys = keys.clamp(1, MAX_PAGE_KEYS);
    }
}

/// Is `r` answered in key order (no sort, or ascending by key)? etcd sorts
/// NONE with a non-key target ascending by that target.
pub fn key_order(r: &PbRangeRequest) -> bool {
    r.sort_target == 0 && (r.sort_order == 0 || r.sort_order == 1)
}

/// A limited read in key order over several ranges: ranges are read one
/// after another, page by page, until `limit + 1` keys came (the one past
/// the limit only says `more`); what was not read is counted with
/// `count_only` reads. Holds at most `limit + 1` keys.
pub async fn limited(
    kv: &crate::kv::Kv,
    kr: &KeyRange,
    r: &PbRangeRequest,
    rr: i64,
) -> Result<PbRangeResponse, Status> {
    let mut scan = Scan::new(kv.router.clone(), r, kr, rr);
    let want = r.limit.saturating_add(1);
    let mut kvs: Vec<PbKeyValue> = Vec::new();
    while (kvs.len() as i64) < want {
        match scan.next_page(want - kvs.len() as i64).await? {
            Some(page) => kvs.extend(page),
            None => break,
        }
    }
    let more = kvs.len() as i64 > r.limit;
    kvs.truncate(r.limit as usize);
    let count = scan.count_all(kv, r).await?;
    Ok(PbRangeResponse {
        header: kv.header(rr),
        kvs,
        more,
        count,
    })
}

impl Scan {
    /// etcd's `count` of the whole interval: what the pages counted, plus
    /// `count_only` reads of the part not read.
    pub async fn count_all(&self, kv: &crate::kv::Kv, r: &PbRangeRequest) -> Result<i64, Status> {
        let (counted, rest) = self.counted();
        let Some(from) = rest else {
            return Ok(counted);
        };
        let rest = KeyRange {
            start: from.to_vec(),
            end: self.end.clone(),
        };
        if rest.is_empty() {
            return Ok(counted);
        }
        let mut q = r.clone();
        q.count_only = true;
        let deadline = Instant::now() + kv.router.request_timeout;
        loop {
            let ranges = kv.router.ranges_for(&rest);
            let res = match kv.router.covers(&rest, &ranges) {
                true => kv.range_parts(&ranges, &rest, &q, self.read_revision).await,
                false => Err(crate::routing::stale_range()),
            };
            match res {
                Err(s) if is_stale(&s) && Instant::now() < deadline => {
                    let _ = kv.router.refresh().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(s) if is_stale(&s) => return Err(strata_proto::errors::timeout()),
                Err(s) => return Err(s),
                Ok(part) => return Ok(counted.saturating_add(part.count)),
            }
        }
    }
}
