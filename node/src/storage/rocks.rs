//! The RocksDB engine: one database, one column family per [`Cf`].
//!
//! This is the only file of the node that names RocksDB.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRawIterator, ErrorKind, Options, ReadOptions,
    SnapshotWithThreadMode, WriteOptions, DB,
};

use super::{
    BatchOp, Cf, Engine, EngineError, EngineIterator, IterOptions, Property, Reader, Result,
    Snapshot, WriteBatch, L0_SLOWDOWN_FILES, L0_STOP_FILES, PENDING_COMPACTION_HARD_BYTES,
    PENDING_COMPACTION_SOFT_BYTES,
};

pub struct RocksEngine {
    /// Shared with snapshots, which must keep the database open.
    db: Arc<DB>,
}

impl RocksEngine {
    /// Opens (or creates) the database in `dir` with the three column families.
    pub fn open(dir: &Path) -> Result<Self> {
        let open_err = |message: String| EngineError::Open {
            path: dir.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf)))
            .collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_err(e.to_string()))?;
        for cf in Cf::ALL {
            if db.cf_handle(cf.name()).is_none() {
                return Err(EngineError::MissingCf(cf));
            }
        }
        Ok(Self { db: Arc::new(db) })
    }
}

/// Values at least this big live in blob files, out of the LSM tree.
pub const MIN_BLOB_SIZE: u64 = 4096;

/// Per column family. In `data`, big values (MVCC versions of multi-KiB
/// values) go to **blob files** (RocksDB's key-value separation), so
/// compactions move keys and small blob references instead of rewriting every
/// value at each level, and a read's seek through the data's SSTs touches
/// small blocks that stay cached. Small values (the usual etcd workload) stay
/// inline. Blob garbage collection is off: RocksDB's collects by age,
/// rewriting every live value of the oldest files whenever a compaction
/// touches their keys — on a 10 GiB fill it rewrote more blob bytes than were
/// written, compactions took 16 s each, level 0 piled up, writes were
/// stalled and raft threads blocked past their election timeouts. A blob
/// file is deleted once none of its values is referenced (deleted ranges,
/// replicas moved away, versions compacted). The raft log is not separated:
/// its entries die soon after they are written, a blob file would hold those
/// of many ranges and be freed only once every one of them is truncated and
/// compacted, while compaction drops dead log entries from SSTs directly.
fn cf_options(cf: Cf) -> Options {
    let mut o = Options::default();
    o.set_level_zero_slowdown_writes_trigger(L0_SLOWDOWN_FILES as i32);
    o.set_level_zero_stop_writes_trigger(L0_STOP_FILES as i32);
    o.set_soft_pending_compaction_bytes_limit(PENDING_COMPACTION_SOFT_BYTES as usize);
    o.set_hard_pending_compaction_bytes_limit(PENDING_COMPACTION_HARD_BYTES as usize);
    if cf == Cf::Data {
        o.set_enable_blob_files(true);
        o.set_min_blob_size(MIN_BLOB_SIZE);
        o.set_blob_file_size(256 << 20);
        o.set_enable_blob_gc(false);
    }
    o
}

fn handle(db: &DB, cf: Cf) -> Result<&ColumnFamily> {
    db.cf_handle(cf.name()).ok_or(EngineError::MissingCf(cf))
}

fn engine_err(e: rocksdb::Error) -> EngineError {
    match e.kind() {
        ErrorKind::Corruption => EngineError::Corruption(e.into_string()),
        _ => EngineError::Backend(e.into_string()),
    }
}

fn read_options(opts: IterOptions) -> ReadOptions {
    let mut ro = ReadOptions::default();
    if let Some(l) = opts.lower_bound {
        ro.set_iterate_lower_bound(l);
    }
    if let Some(u) = opts.upper_bound {
        ro.set_iterate_upper_bound(u);
    }
    ro
}

fn get(db: &DB, cf: Cf, key: &[u8], ro: &ReadOptions) -> Result<Option<Vec<u8>>> {
    db.get_cf_opt(handle(db, cf)?, key, ro).map_err(engine_err)
}

impl Reader for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        get(&self.db, cf, key, &ReadOptions::default())
    }

    fn iter_opt(&self, cf: Cf, opts: IterOptions) -> Box<dyn EngineIterator + '_> {
        match handle(&self.db, cf) {
            Ok(h) => Box::new(RocksIter(
                self.db.raw_iterator_cf_opt(h, read_options(opts)),
            )),
            Err(_) => Box::new(FailedIter(cf)),
        }
    }
}

impl Engine for RocksEngine {
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        let db = self.db.clone();
        // SAFETY: the reference points into the `Arc`'s allocation, which `db`
        // keeps alive for as long as the `RocksSnapshot` exists, and fields drop
        // in declaration order: the snapshot is released before `db` goes. The
        // invented `'static` never leaves `RocksSnapshot`: iterators made from
        // it borrow the `RocksSnapshot` itself.
        let db_ref: &'static DB = unsafe { &*Arc::as_ptr(&db) };
        Arc::new(RocksSnapshot {
            snap: db_ref.snapshot(),
            db,
        })
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> Result<()> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { cf, key, value } => wb.put_cf(handle(&self.db, *cf)?, key, value),
                BatchOp::Delete { cf, key } => wb.delete_cf(handle(&self.db, *cf)?, key),
                BatchOp::DeleteRange { cf, start, end } => {
                    wb.delete_range_cf(handle(&self.db, *cf)?, start, end)
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(engine_err)
    }

    fn property(&self, cf: Cf, property: Property) -> Option<u64> {
        use rocksdb::properties as p;
        let h = handle(&self.db, cf).ok()?;
        // Blob files hold the big values: sizes count them too.
        let (name, blobs) = match property {
            Property::Level0Files => {
                // A string property (RocksDB has no integer one for it).
                let v = self.db.property_value_cf(h, p::num_files_at_level(0));
                return v.ok().flatten()?.trim().parse().ok();
            }
            Property::PendingCompactionBytes => (p::ESTIMATE_PENDING_COMPACTION_BYTES, None),
            Property::SstBytes => (
                p::TOTAL_SST_FILES_SIZE,
                Some("rocksdb.total-blob-file-size"),
            ),
            Property::MemtableBytes => (p::CUR_SIZE_ALL_MEM_TABLES, None),
            Property::LiveDataBytes => (
                p::ESTIMATE_LIVE_DATA_SIZE,
                Some("rocksdb.live-blob-file-size"),
            ),
            Property::EstimatedKeys => (p::ESTIMATE_NUM_KEYS, None),
        };
        let v = self.db.property_int_value_cf(h, name).ok().flatten()?;
        let blob_bytes = blobs
            .and_then(|b| self.db.property_int_value_cf(h, b).ok().flatten())
            .unwrap_or(0);
        Some(v.saturating_add(blob_bytes))
    }

    fn compact_all(&self, cf: Cf) -> Result<()> {
        let h = handle(&self.db, cf)?;
        // Write buffers first, so their data is compacted too; then every
        // level down to the last, including it (where deletions are dropped).
        self.db.flush_cf(h).map_err(engine_err)?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(h, None::<&[u8]>, None::<&[u8]>, &opts);
        Ok(())
    }
}

struct RocksSnapshot {
    // Declared before `db`, so released before it (see `RocksEngine::snapshot`).
    snap: SnapshotWithThreadMode<'static, DB>,
    db: Arc<DB>,
}

impl Reader for RocksSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let h = handle(&self.db, cf)?;
        self.snap
            .get_cf_opt(h, key, ReadOptions::default())
            .map_err(engine_err)
    }

    fn iter_opt(&self, cf: Cf, opts: IterOptions) -> Box<dyn EngineIterator + '_> {
        match handle(&self.db, cf) {
            Ok(h) => Box::new(RocksIter(
                self.snap.raw_iterator_cf_opt(h, read_options(opts)),
            )),
            Err(_) => Box::new(FailedIter(cf)),
        }
    }
}

impl Snapshot for RocksSnapshot {}

struct RocksIter<'a>(DBRawIterator<'a>);

impl EngineIterator for RocksIter<'_> {
    fn seek(&mut self, key: &[u8]) {
        self.0.seek(key);
    }
    fn seek_for_prev(&mut self, key: &[u8]) {
        self.0.seek_for_prev(key);
    }
    fn seek_to_first(&mut self) {
        self.0.seek_to_first();
    }
    fn seek_to_last(&mut self) {
        self.0.seek_to_last();
    }
    fn next(&mut self) {
        self.0.next();
    }
    fn prev(&mut self) {
        self.0.prev();
    }
    fn valid(&self) -> bool {
        self.0.valid()
    }
    fn key(&self) -> &[u8] {
        debug_assert!(self.valid(), "key() on an invalid iterator");
        self.0.key().unwrap_or(&[])
    }
    fn value(&self) -> &[u8] {
        debug_assert!(self.valid(), "value() on an invalid iterator");
        self.0.value().unwrap_or(&[])
    }
    fn status(&self) -> Result<()> {
        self.0.status().map_err(engine_err)
    }
}

/// Stands in for an iterator over a column family the database lacks (which
/// `open` rules out): never valid, and its status says why.
struct FailedIter(Cf);

impl EngineIterator for FailedIter {
    fn seek(&mut self, _key: &[u8]) {}
    fn seek_for_prev(&mut self, _key: &[u8]) {}
    fn seek_to_first(&mut self) {}
    fn seek_to_last(&mut self) {}
    fn next(&mut self) {}
    fn prev(&mut self) {}
    fn valid(&self) -> bool {
        false
    }
    fn key(&self) -> &[u8] {
        &[]
    }
    fn value(&self) -> &[u8] {
        &[]
    }
    fn status(&self) -> Result<()> {
        Err(EngineError::MissingCf(self.0))
    }
}
