//! Our own write batch: a list of operations an engine applies atomically, in
//! order. Building one touches no engine, so callers stage writes from many
//! places (raft appends of every replica, MVCC versions, metadata) into one
//! batch and write it with one fsync.

use super::Cf;

/// Bytes counted per operation on top of its keys and values, so that a batch
/// of many tiny operations does not look free (RocksDB's own record overhead
/// is of this order).
const OP_OVERHEAD_BYTES: usize = 8;

/// One operation of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put {
        cf: Cf,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: Cf,
        key: Vec<u8>,
    },
    /// Deletes every key in `[start, end)`; never built with `start >= end`.
    DeleteRange {
        cf: Cf,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Writes applied together by [`super::Engine::write`]: all or nothing, in the
/// order they were added (a later operation on a key wins over an earlier one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
    size_bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Owned keys and values (`Vec<u8>`) are taken as they are, borrowed
    /// ones copied.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        let (key, value) = (key.into(), value.into());
        self.size_bytes += key.len() + value.len() + OP_OVERHEAD_BYTES;
        self.ops.push(BatchOp::Put { cf, key, value });
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        let key = key.into();
        self.size_bytes += key.len() + OP_OVERHEAD_BYTES;
        self.ops.push(BatchOp::Delete { cf, key });
    }

    /// Deletes every key in `[start, end)`. An empty or inverted range
    /// (`start >= end`) deletes nothing and is not recorded, so every engine
    /// treats it alike.
    pub fn delete_range(&mut self, cf: Cf, start: impl AsRef<[u8]>, end: impl AsRef<[u8]>) {
        let (start, end) = (start.as_ref(), end.as_ref());
        if start >= end {
            return;
        }
        let (start, end) = (start.to_vec(), end.to_vec());
        self.size_bytes += start.len() + end.len() + OP_OVERHEAD_BYTES;
        self.ops.push(BatchOp::DeleteRange { cf, start, end });
    }

    /// Appends every operation of `other`, after those already here.
    pub fn append(&mut self, other: WriteBatch) {
        self.size_bytes += other.size_bytes;
        self.ops.extend(other.ops);
    }

    /// Number of operations.
    pub fn count(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate size: keys and values plus a small per-operation overhead.
    pub fn size_in_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    pub fn clear(&mut self) {
        self.ops.clear();
        self.size_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sizes_and_skips_empty_ranges() {
        let mut wb = WriteBatch::new();
        assert!(wb.is_empty());
        assert_eq!((wb.count(), wb.size_in_bytes()), (0, 0));
        wb.put(Cf::Data, b"k", b"vv");
        wb.delete(Cf::Meta, b"k");
        wb.delete_range(Cf::Raft, b"a", b"b");
        assert_eq!(wb.count(), 3);
        assert_eq!(wb.size_in_bytes(), 3 + 1 + 2 + 3 * OP_OVERHEAD_BYTES);
        wb.delete_range(Cf::Raft, b"b", b"b");
        wb.delete_range(Cf::Raft, b"c", b"b");
        assert_eq!(wb.count(), 3, "empty and inverted ranges are dropped");
        let mut other = WriteBatch::new();
        other.put(Cf::Data, b"x", b"");
        let size = wb.size_in_bytes() + other.size_in_bytes();
        wb.append(other);
        assert_eq!((wb.count(), wb.size_in_bytes()), (4, size));
        assert_eq!(
            wb.ops()[3],
            BatchOp::Put {
                cf: Cf::Data,
                key: b"x".to_vec(),
                value: vec![],
            }
        );
        wb.clear();
        assert!(wb.is_empty());
        assert_eq!(wb.size_in_bytes(), 0);
    }
}
