//! The raft log storage of every replica of the node, in the node's one
//! storage engine (see `storage`; RocksDB in production).
//!
//! Column families:
//! - `raft`: per replica `range_id ‖ kind ‖ index` → log entries, hard state,
//!   conf state and the applied index (see [`raft_key`]).
//! - `data`: MVCC versions (see `mvcc.rs`).
//! - `meta`: node identity, range descriptors, per-range compaction revision.
//!
//! Invariant: a replica's applied index is written in the same batch as the MVCC
//! changes it covers, so after a crash data and applied index agree and raft
//! re-applies exactly the entries after it.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::storage::{Cf, Engine, RocksEngine, WriteBatch};

mod entry_cache;
use entry_cache::EntryCache;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_APPLIED: u8 = 4;
const KIND_TRUNCATED: u8 = 5;

/// Opens (or creates) the node's RocksDB with the three column families.
pub fn open_db(dir: &Path) -> anyhow::Result<Arc<dyn Engine>> {
    Ok(Arc::new(RocksEngine::open(dir)?))
}

pub fn raft_key(range_id: u64, kind: u8, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = kind;
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

fn storage_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

#[derive(Default, Clone)]
struct Cache {
    hard_state: HardState,
    conf_state: ConfState,
    last_index: u64,
    last_term: u64,
    /// The log is truncated up to and including this index (a snapshot covers it).
    truncated_index: u64,
    truncated_term: u64,
    /// Entries and their bytes appended since the last truncation (an
    /// estimate: after a truncation, what is left is counted at the average
    /// size; a restart starts from zero). Log GC bounds the log by these.
    log_entries: u64,
    log_bytes: u64,
    /// The newest entries, as written (see `entry_cache.rs`).
    entry_cache: EntryCache,
}

/// Where the raft log of a range created by a split starts: as if entries up
/// to this index, of this term, were applied and truncated. A peer that holds
/// no log (an uninitialized replica, see `store/catchup.rs`) is therefore
/// always sent a snapshot of the range, never its log from index 1 — which
/// would lack the data the range inherited from its parent.
pub const SPLIT_INIT_INDEX: u64 = 5;
pub const SPLIT_INIT_TERM: u64 = 5;

mod snapgen;

pub use snapgen::{GeneratedSnapshot, SnapshotHeaderFn};

/// raft-rs `Storage` over the `raft` column family for one replica. The log is
/// truncated after a while; older entries are then served as a snapshot of the
/// range, generated off the raft thread (see `snapgen.rs`).
#[derive(Clone)]
pub struct RaftStorage {
    db: Arc<dyn Engine>,
    range_id: u64,
    cache: Arc<Mutex<Cache>>,
    snapgen: snapgen::SharedGen,
}

impl RaftStorage {
    /// Loads a replica's raft state, or creates it with `voters` when absent.
    pub fn open(db: Arc<dyn Engine>, range_id: u64, voters: &[u64]) -> anyhow::Result<Self> {
        let mut cache = Cache::default();
        match db.get(Cf::Raft, &raft_key(range_id, KIND_CONF_STATE, 0))? {
            Some(b) => cache.conf_state = ConfState::parse_from_bytes(&b)?,
            None => {
                cache.conf_state.set_voters(voters.to_vec());
                let mut wb = WriteBatch::new();
                wb.put(
                    Cf::Raft,
                    raft_key(range_id, KIND_CONF_STATE, 0),
                    cache.conf_state.write_to_bytes()?,
                );
                db.write(&wb, true)?;
            }
        }
        if let Some(b) = db.get(Cf::Raft, &raft_key(range_id, KIND_HARD_STATE, 0))? {
            cache.hard_state = HardState::parse_from_bytes(&b)?;
        }
        if let Some(b) = db.get(Cf::Raft, &raft_key(range_id, KIND_TRUNCATED, 0))? {
            anyhow::ensure!(b.len() == 16, "range {range_id}: corrupt truncated state");
            cache.truncated_index = u64::from_be_bytes(b[..8].try_into().unwrap());
            cache.truncated_term = u64::from_be_bytes(b[8..].try_into().unwrap());
            cache.last_index = cache.truncated_index;
            cache.last_term = cache.truncated_term;
        }
        // The last entry: seek backwards from the end of this replica's entries.
        {
            let mut it = db.iter(Cf::Raft);
            it.seek_for_prev(&raft_key(range_id, KIND_ENTRY, u64::MAX));
            if it.valid() {
                let k = it.key();
                if k.len() == 17 && k[..8] == range_id.to_be_bytes() && k[8] == KIND_ENTRY {
                    let e = Entry::parse_from_bytes(it.value())?;
                    cache.last_index = e.index;
                    cache.last_term = e.term;
                }
            }
            it.status()?;
        }
        // The persisted commit index should never exceed the persisted log; if
        // it does (torn state), trust the log: raft re-learns commits from peers.
        if cache.hard_state.commit > cache.last_index {
            tracing::warn!(
                range_id,
                commit = cache.hard_state.commit,
                last = cache.last_index,
                "commit index beyond the log; clamping"
            );
            cache.hard_state.commit = cache.last_index;
        }

        Ok(Self {
            db,
            range_id,
            cache: Arc::new(Mutex::new(cache)),
            snapgen: Arc::default(),
        })
    }

    pub fn applied_index(&self) -> anyhow::Result<u64> {
        Ok(
            match self
                .db
                .get(Cf::Raft, &raft_key(self.range_id, KIND_APPLIED, 0))?
            {
                Some(b) if b.len() == 8 => u64::from_be_bytes(b[..8].try_into().unwrap()),
                Some(_) => anyhow::bail!("range {}: corrupt applied index", self.range_id),
                None => 0,
            },
        )
    }

    /// Adds appended entries and a new hard state to `wb`; call
    /// [`RaftStorage::on_persisted`] after the batch is durable.
    pub fn stage_append(
        &self,
        wb: &mut WriteBatch,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> anyhow::Result<()> {
        if !entries.is_empty() {
            // Entries after the new tail from an older term are overwritten; drop any
            // beyond the new last index.
            let last = self.cache.lock().last_index;
            let new_last = entries.last().map(|e| e.index).unwrap_or(0);
            if new_last < last {
                wb.delete_range(
                    Cf::Raft,
                    raft_key(self.range_id, KIND_ENTRY, new_last + 1),
                    raft_key(self.range_id, KIND_ENTRY, last + 1),
                );
            }
        }
        for e in entries {
            wb.put(
                Cf::Raft,
                raft_key(self.range_id, KIND_ENTRY, e.index),
                e.write_to_bytes()?,
            );
        }
        if let Some(hs) = hs {
            wb.put(
                Cf::Raft,
                raft_key(self.range_id, KIND_HARD_STATE, 0),
                hs.write_to_bytes()?,
            );
        }
        Ok(())
    }

    pub fn on_persisted(&self, entries: &[Entry], hs: Option<&HardState>) {
        let mut c = self.cache.lock();
        if let Some(e) = entries.last() {
            c.last_index = e.index;
            c.last_term = e.term;
        }
        c.entry_cache.append(entries);
        c.log_entries = c.log_entries.saturating_add(entries.len() as u64);
        let bytes: u64 = entries.iter().map(|e| e.data.len() as u64).sum();
        c.log_bytes = c.log_bytes.saturating_add(bytes);
        if let Some(hs) = hs {
            c.hard_state = hs.clone();
        }
    }

    /// Records a commit index learned from a `LightReady` (persisted with the
    /// next hard state write).
    pub fn set_commit(&self, wb: &mut WriteBatch, commit: u64) -> anyhow::Result<()> {
        let mut c = self.cache.lock();
        if commit <= c.hard_state.commit {
            return Ok(());
        }
        c.hard_state.commit = commit;
        wb.put(
            Cf::Raft,
            raft_key(self.range_id, KIND_HARD_STATE, 0),
            c.hard_state.write_to_bytes()?,
        );
        Ok(())
    }

    pub fn stage_applied(&self, wb: &mut WriteBatch, applied: u64) {
        wb.put(
            Cf::Raft,
            raft_key(self.range_id, KIND_APPLIED, 0),
            applied.to_be_bytes(),
        );
    }

    pub fn conf_state(&self) -> ConfState {
        self.cache.lock().conf_state.clone()
    }

    pub fn truncated_index(&self) -> u64 {
        self.cache.lock().truncated_index
    }

    /// Estimated (entries, bytes of entry data) in the log since the last
    /// truncation.
    pub fn log_size(&self) -> (u64, u64) {
        let c = self.cache.lock();
        (c.log_entries, c.log_bytes)
    }

    /// Persists a new conf state (applied conf change) in `wb`.
    pub fn stage_conf_state(&self, wb: &mut WriteBatch, cs: &ConfState) -> anyhow::Result<()> {
        wb.put(
            Cf::Raft,
            raft_key(self.range_id, KIND_CONF_STATE, 0),
            cs.write_to_bytes()?,
        );
        self.cache.lock().conf_state = cs.clone();
        Ok(())
    }

    /// Drops log entries up to and including `index` (which must be applied).
    pub fn stage_truncate(&self, wb: &mut WriteBatch, index: u64) -> anyhow::Result<()> {
        use raft::Storage as _;
        let (first, last) = {
            let c = self.cache.lock();
            (c.truncated_index + 1, c.last_index)
        };
        if index < first || index > last {
            return Ok(());
        }
        let term = self.term(index).map_err(|e| anyhow::anyhow!("{e}"))?;
        wb.delete_range(
            Cf::Raft,
            raft_key(self.range_id, KIND_ENTRY, 0),
            raft_key(self.range_id, KIND_ENTRY, index + 1),
        );
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        wb.put(Cf::Raft, raft_key(self.range_id, KIND_TRUNCATED, 0), v);
        let mut c = self.cache.lock();
        let left = last - index;
        c.log_bytes = match c.log_entries {
            0 => 0,
            n => c.log_bytes / n * left.min(n),
        };
        c.log_entries = left;
        c.entry_cache.compact_to(index);
        c.truncated_index = index;
        c.truncated_term = term;
        Ok(())
    }

    /// Replaces the log with a received snapshot's position and conf state.
    pub fn stage_snapshot(&self, wb: &mut WriteBatch, snap: &Snapshot) -> anyhow::Result<()> {
        let md = snap.get_metadata();
        wb.delete_range(
            Cf::Raft,
            raft_key(self.range_id, KIND_ENTRY, 0),
            raft_key(self.range_id, KIND_ENTRY, u64::MAX),
        );
        let mut v = md.index.to_be_bytes().to_vec();
        v.extend_from_slice(&md.term.to_be_bytes());
        wb.put(Cf::Raft, raft_key(self.range_id, KIND_TRUNCATED, 0), v);
        wb.put(
            Cf::Raft,
            raft_key(self.range_id, KIND_CONF_STATE, 0),
            md.get_conf_state().write_to_bytes()?,
        );
        let mut c = self.cache.lock();
        c.truncated_index = md.index;
        c.truncated_term = md.term;
        c.last_index = md.index;
        c.last_term = md.term;
        c.log_entries = 0;
        c.log_bytes = 0;
        c.entry_cache.clear();
        c.conf_state = md.get_conf_state().clone();
        if c.hard_state.commit < md.index {
            c.hard_state.commit = md.index;
        }
        if c.hard_state.term < md.term {
            c.hard_state.term = md.term;
        }
        wb.put(
            Cf::Raft,
            raft_key(self.range_id, KIND_HARD_STATE, 0),
            c.hard_state.write_to_bytes()?,
        );
        drop(c);
        self.stage_applied(wb, md.index);
        Ok(())
    }

    /// Deletes every trace of this replica's raft state (replica removed).
    pub fn stage_destroy(&self, wb: &mut WriteBatch) {
        self.cache.lock().entry_cache.clear();
        stage_destroy_range(wb, self.range_id);
    }

    /// Drops cached entries more than `entry_cache::KEEP_APPLIED` behind
    /// `applied`.
    pub fn compact_entry_cache(&self, applied: u64) {
        let keep_from = applied.saturating_sub(entry_cache::KEEP_APPLIED);
        self.cache.lock().entry_cache.compact_to(keep_from);
    }

    /// Empties the entry cache (the replica went quiet).
    pub fn drop_entry_cache(&self) {
        self.cache.lock().entry_cache.clear();
    }

    /// Stages the raft state of a replica a split creates, replacing any
    /// there was: conf state `voters`, an empty log truncated at
    /// [`SPLIT_INIT_INDEX`] / [`SPLIT_INIT_TERM`], committed and applied
    /// there. Every replica that applies the split stages the same state, so
    /// they start the range consistently. `prior` (term, vote) is the hard
    /// state of an uninitialized replica of the range that was here: it may
    /// have voted, and a peer must never vote twice in one term, so both are
    /// kept when its term is not older.
    pub fn stage_split_init(
        wb: &mut WriteBatch,
        range_id: u64,
        voters: &[u64],
        prior: Option<(u64, u64)>,
    ) -> anyhow::Result<()> {
        stage_destroy_range(wb, range_id);
        let mut cs = ConfState::default();
        cs.set_voters(voters.to_vec());
        wb.put(
            Cf::Raft,
            raft_key(range_id, KIND_CONF_STATE, 0),
            cs.write_to_bytes()?,
        );
        let mut hs = HardState {
            term: SPLIT_INIT_TERM,
            commit: SPLIT_INIT_INDEX,
            ..Default::default()
        };
        if let Some((term, vote)) = prior.filter(|(term, _)| *term >= SPLIT_INIT_TERM) {
            hs.term = term;
            hs.vote = vote;
        }
        wb.put(
            Cf::Raft,
            raft_key(range_id, KIND_HARD_STATE, 0),
            hs.write_to_bytes()?,
        );
        let mut v = SPLIT_INIT_INDEX.to_be_bytes().to_vec();
        v.extend_from_slice(&SPLIT_INIT_TERM.to_be_bytes());
        wb.put(Cf::Raft, raft_key(range_id, KIND_TRUNCATED, 0), v);
        wb.put(
            Cf::Raft,
            raft_key(range_id, KIND_APPLIED, 0),
            SPLIT_INIT_INDEX.to_be_bytes(),
        );
        Ok(())
    }
}

fn stage_destroy_range(wb: &mut WriteBatch, range_id: u64) {
    wb.delete_range(
        Cf::Raft,
        raft_key(range_id, 0, 0),
        raft_key(range_id, u8::MAX, u64::MAX),
    );
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cache.lock();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max = max_size.into().unwrap_or(u64::MAX);
        {
            let c = self.cache.lock();
            if low <= c.truncated_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if let Some(out) = c.entry_cache.slice(low, high, max) {
                return Ok(out);
            }
        }
        let mut it = self.db.iter(Cf::Raft);
        it.seek(&raft_key(self.range_id, KIND_ENTRY, low));
        let mut out = Vec::new();
        let mut size = 0u64;
        let mut want = low;
        while want < high && it.valid() {
            let (k, v) = (it.key(), it.value());
            if k != raft_key(self.range_id, KIND_ENTRY, want) {
                break;
            }
            let e = Entry::parse_from_bytes(v).map_err(storage_err)?;
            size += v.len() as u64;
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
            want += 1;
            it.next();
        }
        it.status().map_err(storage_err)?;
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == 0 {
            return Ok(0);
        }
        {
            let c = self.cache.lock();
            if idx == c.last_index {
                return Ok(c.last_term);
            }
            if idx == c.truncated_index {
                return Ok(c.truncated_term);
            }
            if idx < c.truncated_index {
                return Err(raft::Error::Store(StorageError::Compacted));
            }
            if idx > c.last_index {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
            if let Some(term) = c.entry_cache.term(idx) {
                return Ok(term);
            }
        }
        match self
            .db
            .get(Cf::Raft, &raft_key(self.range_id, KIND_ENTRY, idx))
            .map_err(storage_err)?
        {
            Some(v) => Ok(Entry::parse_from_bytes(&v).map_err(storage_err)?.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache.lock().truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache.lock().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.generated_snapshot(request_index, to)
    }
}

#[cfg(test)]
mod tests;
