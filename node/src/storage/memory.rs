//! An in-memory engine for tests: one ordered map per column family behind a
//! lock. Nothing survives the process.
//!
//! Maps are shared copy-on-write (`Arc`): a snapshot or an iterator takes the
//! current maps in O(1), and a write copies a map only while some snapshot or
//! iterator still holds it. A batch is applied whole under the write lock, so
//! readers see all of it or none of it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use super::{
    BatchOp, Cf, Engine, EngineIterator, IterOptions, Property, Reader, Result, Snapshot,
    WriteBatch,
};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
type Maps = [Arc<Map>; 3];

#[derive(Default)]
pub struct MemoryEngine {
    maps: RwLock<Maps>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Reader for MemoryEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps.read()[cf.index()].get(key).cloned())
    }

    fn iter_opt(&self, cf: Cf, opts: IterOptions) -> Box<dyn EngineIterator + '_> {
        let map = self.maps.read()[cf.index()].clone();
        Box::new(MemoryIter::new(map, opts))
    }
}

impl Engine for MemoryEngine {
    fn snapshot(&self) -> Arc<dyn Snapshot> {
        Arc::new(MemorySnapshot {
            maps: self.maps.read().clone(),
        })
    }

    fn write(&self, batch: &WriteBatch, _sync: bool) -> Result<()> {
        let mut maps = self.maps.write();
        for op in batch.ops() {
            match op {
                BatchOp::Put { cf, key, value } => {
                    Arc::make_mut(&mut maps[cf.index()]).insert(key.clone(), value.clone());
                }
                BatchOp::Delete { cf, key } => {
                    Arc::make_mut(&mut maps[cf.index()]).remove(key);
                }
                BatchOp::DeleteRange { cf, start, end } => {
                    let map = Arc::make_mut(&mut maps[cf.index()]);
                    let mut from_start = map.split_off(start.as_slice());
                    let mut from_end = from_start.split_off(end.as_slice());
                    map.append(&mut from_end);
                }
            }
        }
        Ok(())
    }

    fn property(&self, cf: Cf, property: Property) -> Option<u64> {
        match property {
            Property::EstimatedKeys => Some(self.maps.read()[cf.index()].len() as u64),
            Property::SstBytes
            | Property::MemtableBytes
            | Property::LiveDataBytes
            | Property::Level0Files
            | Property::PendingCompactionBytes => None,
        }
    }
}

struct MemorySnapshot {
    maps: Maps,
}

impl Reader for MemorySnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.maps[cf.index()].get(key).cloned())
    }

    fn iter_opt(&self, cf: Cf, opts: IterOptions) -> Box<dyn EngineIterator + '_> {
        Box::new(MemoryIter::new(self.maps[cf.index()].clone(), opts))
    }
}

impl Snapshot for MemorySnapshot {}

/// An iterator over a frozen map. Every step is a lookup from the current key
/// (O(log n)), which keeps the iterator free of borrows.
struct MemoryIter {
    map: Arc<Map>,
    opts: IterOptions,
    current: Option<(Vec<u8>, Vec<u8>)>,
}

impl MemoryIter {
    fn new(map: Arc<Map>, opts: IterOptions) -> Self {
        Self {
            map,
            opts,
            current: None,
        }
    }

    /// The first entry after `from`, within the upper bound.
    fn forward(&self, from: Bound<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        let upper = self.opts.upper_bound.as_deref();
        self.map
            .range::<[u8], _>((from, Bound::Unbounded))
            .next()
            .filter(|(k, _)| upper.is_none_or(|u| k.as_slice() < u))
            .map(|(k, v)| (k.clone(), v.clone()))
    }

    /// The last entry before `to`, within the lower bound.
    fn backward(&self, to: Bound<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
        let lower = self.opts.lower_bound.as_deref();
        self.map
            .range::<[u8], _>((Bound::Unbounded, to))
            .next_back()
            .filter(|(k, _)| lower.is_none_or(|l| k.as_slice() >= l))
            .map(|(k, v)| (k.clone(), v.clone()))
    }
}

impl EngineIterator for MemoryIter {
    fn seek(&mut self, key: &[u8]) {
        self.current = match self.opts.lower_bound.as_deref() {
            Some(l) if key < l => self.forward(Bound::Included(l)),
            _ => self.forward(Bound::Included(key)),
        };
    }

    fn seek_for_prev(&mut self, key: &[u8]) {
        self.current = match self.opts.upper_bound.as_deref() {
            Some(u) if key >= u => self.backward(Bound::Excluded(u)),
            _ => self.backward(Bound::Included(key)),
        };
    }

    fn seek_to_first(&mut self) {
        let lower = self.opts.lower_bound.as_deref();
        self.current = self.forward(lower.map_or(Bound::Unbounded, Bound::Included));
    }

    fn seek_to_last(&mut self) {
        let upper = self.opts.upper_bound.as_deref();
        self.current = self.backward(upper.map_or(Bound::Unbounded, Bound::Excluded));
    }

    fn next(&mut self) {
        if let Some((k, _)) = self.current.take() {
            self.current = self.forward(Bound::Excluded(&k));
        }
    }

    fn prev(&mut self) {
        if let Some((k, _)) = self.current.take() {
            self.current = self.backward(Bound::Excluded(&k));
        }
    }

    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn key(&self) -> &[u8] {
        debug_assert!(self.valid(), "key() on an invalid iterator");
        self.current.as_ref().map_or(&[], |(k, _)| k)
    }

    fn value(&self) -> &[u8] {
        debug_assert!(self.valid(), "value() on an invalid iterator");
        self.current.as_ref().map_or(&[], |(_, v)| v)
    }

    fn status(&self) -> Result<()> {
        Ok(())
    }
}
