//! A recorded history: every client request with its invoke and return times and
//! outcome, every watch stream's responses, and every fault the nemesis injected.
//! Written as JSON (`--history FILE`) so a failing run can be checked again
//! (`strata robustness check FILE`).
//!
//! Keys and values are ASCII strings (the traffic only writes those), so the JSON
//! stays readable.

use serde::{Deserialize, Serialize};

/// Microseconds since the run started (one clock for every client).
pub type Micros = u64;

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct History {
    pub seed: u64,
    pub profile: String,
    pub nemesis: String,
    /// Every KV, lease and compact request, in invoke order.
    pub ops: Vec<Op>,
    /// Every watcher: its requested interval and options, and each stream it opened.
    pub watches: Vec<WatchLog>,
    pub faults: Vec<Fault>,
    /// The final read after the faults healed: every key at one revision.
    pub final_read: Option<Op>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Op {
    /// Unique over the history (its index in `ops`, or u64::MAX for the final read).
    pub id: u64,
    pub client: u32,
    /// The router endpoint the request went to.
    pub endpoint: String,
    pub invoke: Micros,
    /// When the response (or error) arrived.
    pub ret: Micros,
    pub req: Request,
    /// `Err(message)`: the request failed or timed out. A failed write may or may
    /// not have taken effect (its outcome is unknown); a failed read has no effect.
    pub resp: Result<Response, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// A Range over `[key, end)` (`end` empty: the single key `key`) at `revision`
    /// (0: the current one), at most `limit` keys (0: no limit).
    Range(RangeReq),
    Put(PutReq),
    /// DeleteRange over `[key, end)` (`end` empty: the single key).
    Delete(DeleteReq),
    Txn(TxnReq),
    LeaseGrant {
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    Compact {
        revision: i64,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RangeReq {
    pub key: String,
    #[serde(default)]
    pub end: String,
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub limit: i64,
    #[serde(default)]
    pub serializable: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PutReq {
    pub key: String,
    pub value: String,
    #[serde(default)]
    pub lease: i64,
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct DeleteReq {
    pub key: String,
    #[serde(default)]
    pub end: String,
    #[serde(default)]
    pub prev_kv: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TxnReq {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOp {
    Range(RangeReq),
    Put(PutReq),
    Delete(DeleteReq),
}

/// One compare of a Txn, on the single key `key`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Compare {
    pub key: String,
    pub target: CompareTarget,
    pub result: CompareResult,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "target", content = "value", rename_all = "snake_case")]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(String),
    Lease(i64),
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Response {
    /// The response header's revision.
    pub revision: i64,
    pub body: ResponseBody,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseBody {
    Range(RangeResp),
    Put {
        prev_kv: Option<Kv>,
    },
    Delete(DeleteResp),
    Txn {
        succeeded: bool,
        responses: Vec<TxnOpResp>,
    },
    LeaseGrant {
        id: i64,
    },
    LeaseRevoke,
    Compact,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct RangeResp {
    pub kvs: Vec<Kv>,
    pub count: i64,
    pub more: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct DeleteResp {
    pub deleted: i64,
    pub prev_kvs: Vec<Kv>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TxnOpResp {
    Range(RangeResp),
    Put { prev_kv: Option<Kv> },
    Delete(DeleteResp),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

/// One logical watcher: the same interval and options, re-opened (from the last
/// revision it received + 1) whenever its stream ends.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WatchLog {
    pub watcher: u32,
    pub key: String,
    /// Empty: the single key; otherwise `[key, end)`.
    pub end: String,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub streams: Vec<WatchStream>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct WatchStream {
    pub endpoint: String,
    pub opened: Micros,
    /// The `start_revision` asked for.
    pub start_revision: i64,
    pub responses: Vec<WatchResp>,
    /// Why the stream ended (error text, "canceled", "end of run").
    pub ended: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WatchResp {
    pub at: Micros,
    pub revision: i64,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default)]
    pub compact_revision: i64,
    /// An answer to a progress request or a periodic progress notification: no
    /// events, not created, not canceled.
    #[serde(default)]
    pub progress: bool,
    pub events: Vec<Event>,
}

impl WatchResp {
    /// The revision this response shows the watcher has reached: its last
    /// event's, or a progress notification's (0: neither).
    pub fn reached(&self) -> i64 {
        let p = if self.progress { self.revision } else { 0 };
        self.events
            .iter()
            .map(|e| e.kv.mod_revision)
            .chain([p])
            .max()
            .unwrap_or(0)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: Kv,
    pub prev_kv: Option<Kv>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

/// A fault the nemesis injected (or healed).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Fault {
    pub at: Micros,
    pub kind: String,
    pub target: String,
    pub detail: String,
}

/// A broken guarantee, with the requests and watch responses that show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Violation {
    /// The checker and guarantee, e.g. "linearizable", "watch.reliable".
    pub kind: String,
    pub message: String,
    /// Ids of the ops that show it (the minimal excerpt printed with it).
    pub ops: Vec<u64>,
}
