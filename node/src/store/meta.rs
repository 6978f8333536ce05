//! Per-range records in the `meta` column family: the descriptor, the highest
//! applied revision and the compaction revision.

use crate::storage::{Cf, Reader};

fn key(prefix: &[u8], range_id: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

pub(crate) const DESC_PREFIX: &[u8] = b"range/";

pub(crate) fn desc_key(range_id: u64) -> Vec<u8> {
    key(DESC_PREFIX, range_id)
}

pub(crate) fn maxrev_key(range_id: u64) -> Vec<u8> {
    key(b"maxrev/", range_id)
}

pub(crate) fn compacted_key(range_id: u64) -> Vec<u8> {
    key(b"compacted/", range_id)
}

/// Every per-range meta key of `range_id` (for destroying a replica).
pub(crate) fn all_keys(range_id: u64) -> [Vec<u8>; 4] {
    [
        desc_key(range_id),
        compacted_key(range_id),
        maxrev_key(range_id),
        crate::txn::intent_key(range_id),
    ]
}

/// Reads an `i64` record; absent reads as 0, a malformed one is an error.
pub(crate) fn load_i64(db: &dyn Reader, key: &[u8]) -> anyhow::Result<i64> {
    match db.get(Cf::Meta, key)? {
        None => Ok(0),
        Some(b) => match <[u8; 8]>::try_from(&b[..]) {
            Ok(a) => Ok(i64::from_be_bytes(a)),
            Err(_) => anyhow::bail!("corrupt meta record {key:?} ({} bytes)", b.len()),
        },
    }
}
