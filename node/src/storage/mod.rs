//! The storage engine seen by the rest of the node: three ordered key-value
//! column families, point reads, iterators, consistent snapshots and atomic
//! write batches.
//!
//! Everything above this module holds an `Arc<dyn Engine>` and builds our own
//! [`WriteBatch`]; it never names the engine behind it. Two implementations:
//! - [`rocks::RocksEngine`]: the one RocksDB per node (production);
//! - [`memory::MemoryEngine`]: ordered maps in memory, for fast tests.
//!
//! Both must pass the same conformance suite (`conformance.rs`), which pins
//! down the semantics this trait promises (the RocksDB ones): keys ordered as
//! bytes, an iterator sees the state at its creation, a batch is applied whole
//! or not at all and its operations in order (later ones win), a range
//! deletion covers `[start, end)`.
//!
//! This module knows nothing of RocksDB.

mod batch;
pub mod memory;
pub mod rocks;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

pub use batch::{BatchOp, WriteBatch};
pub use memory::MemoryEngine;
pub use rocks::RocksEngine;

/// A column family: an independent ordered keyspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Per replica: raft log entries, hard state, conf state, applied index.
    Raft,
    /// MVCC versions of user keys.
    Data,
    /// Node identity, range descriptors, per-range revision state.
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 3] = [Cf::Raft, Cf::Data, Cf::Meta];

    /// The column family's name on disk (and in metric labels).
    pub fn name(self) -> &'static str {
        match self {
            Cf::Raft => "raft",
            Cf::Data => "data",
            Cf::Meta => "meta",
        }
    }

    /// Position in [`Cf::ALL`], for per-cf arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Cf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What can go wrong below the trait. None of these is retryable by the caller:
/// the node treats a storage error as fatal for the operation that met it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open storage in {path}: {message}")]
    Open { path: String, message: String },
    #[error("column family {0} is missing")]
    MissingCf(Cf),
    /// The engine found its own files damaged.
    #[error("storage corruption: {0}")]
    Corruption(String),
    /// Any other failure reported by the engine (I/O, resource limits, ...).
    #[error("storage engine failure: {0}")]
    Backend(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Limits an iterator to `[lower_bound, upper_bound)`. Seeking below the lower
/// bound lands on the first key at or above it; seeking backwards from at or
/// above the upper bound lands on the last key below it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IterOptions {
    pub lower_bound: Option<Vec<u8>>,
    pub upper_bound: Option<Vec<u8>>,
}

impl IterOptions {
    /// Keys in `[lower, upper)`; `None` leaves that side open.
    pub fn range(lower: Option<Vec<u8>>, upper: Option<Vec<u8>>) -> Self {
        Self {
            lower_bound: lower,
            upper_bound: upper,
        }
    }
}

/// A cursor over one column family, in key order, that sees the state at its
/// creation (later writes are invisible to it). A new iterator is unpositioned
/// (`valid()` is false) until a seek.
pub trait EngineIterator {
    /// Positions at the first key `>= key`.
    fn seek(&mut self, key: &[u8]);
    /// Positions at the last key `<= key`.
    fn seek_for_prev(&mut self, key: &[u8]);
    fn seek_to_first(&mut self);
    fn seek_to_last(&mut self);
    /// Moves to the next key; no-op when not valid.
    fn next(&mut self);
    /// Moves to the previous key; no-op when not valid.
    fn prev(&mut self);
    /// Whether the iterator is positioned at an entry. False at either end and
    /// after an error (then [`EngineIterator::status`] says which).
    fn valid(&self) -> bool;
    /// The current key. Only meaningful while `valid()`: an empty slice
    /// otherwise (and a debug assertion fails).
    fn key(&self) -> &[u8];
    /// The current value; same rule as [`EngineIterator::key`].
    fn value(&self) -> &[u8];
    /// The error that stopped the iteration, if any. Check it once `valid()`
    /// turns false: an iteration cut short by an error must not pass for a
    /// complete one.
    fn status(&self) -> Result<()>;
}

/// Point reads and iterators: what the engine and its snapshots share.
pub trait Reader: Send + Sync {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn iter_opt(&self, cf: Cf, opts: IterOptions) -> Box<dyn EngineIterator + '_>;
    fn iter(&self, cf: Cf) -> Box<dyn EngineIterator + '_> {
        self.iter_opt(cf, IterOptions::default())
    }
}

/// A consistent, read-only view of every column family at the moment it was
/// taken: writes made afterwards are invisible to its reads and iterators. It
/// may be kept (and sent to another thread) for as long as needed; it pins
/// old data meanwhile, so keep it short.
pub trait Snapshot: Reader {}

/// Statistics an engine may keep about a column family, for metrics. An
/// engine returns `None` for one it does not track.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Property {
    /// Bytes in on-disk sorted tables and blob files.
    SstBytes,
    /// Bytes in in-memory write buffers.
    MemtableBytes,
    /// Estimated bytes of live (not overwritten or deleted) data, blob
    /// files' included.
    LiveDataBytes,
    /// Estimated number of keys.
    EstimatedKeys,
    /// Sorted tables in level 0, where flushed memtables land (writes slow
    /// down at [`L0_SLOWDOWN_FILES`] of them).
    Level0Files,
    /// Bytes compaction estimates it must rewrite to bring every level
    /// within its target size (writes slow down at
    /// [`PENDING_COMPACTION_SOFT_BYTES`]).
    PendingCompactionBytes,
}

impl Property {
    pub const ALL: [Property; 6] = [
        Property::SstBytes,
        Property::MemtableBytes,
        Property::LiveDataBytes,
        Property::EstimatedKeys,
        Property::Level0Files,
        Property::PendingCompactionBytes,
    ];
}

/// Where the engine starts delaying writes (and, at the `STOP` / `HARD`
/// values, stops them) until compaction catches up: level-0 files per column
/// family, and bytes of pending compaction. RocksDB's defaults, set
/// explicitly so that flow control (`crate::pressure`) can stay below them.
pub const L0_SLOWDOWN_FILES: u64 = 20;
pub const L0_STOP_FILES: u64 = 36;
pub const PENDING_COMPACTION_SOFT_BYTES: u64 = 64 << 30;
pub const PENDING_COMPACTION_HARD_BYTES: u64 = 256 << 30;

/// The node's storage engine. Object safe: the node holds an `Arc<dyn Engine>`.
pub trait Engine: Reader {
    /// A consistent view of the current state (see [`Snapshot`]).
    fn snapshot(&self) -> Arc<dyn Snapshot>;
    /// Applies `batch` atomically: after a crash either all of it or none of it
    /// is there, and readers never see part of it. With `sync` the write is
    /// durable when this returns (one fsync of the write-ahead log); without,
    /// it becomes durable with the next synced write; a crash before that may
    /// lose it and every write after it, never a part of it.
    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()>;
    /// An engine statistic, or `None` when this engine does not keep it.
    fn property(&self, cf: Cf, property: Property) -> Option<u64>;
    /// Rewrites all of `cf` compactly (etcd's defragment): whatever deletes
    /// and overwrites left behind is dropped and its space given back. Reads
    /// and writes go on meanwhile. An engine without such garbage (memory)
    /// has nothing to do.
    fn compact_all(&self, _cf: Cf) -> Result<()> {
        Ok(())
    }
}
