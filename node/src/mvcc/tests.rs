//! MVCC semantics, run against every storage engine.

use std::collections::BTreeMap;

use super::*;
use crate::storage::testing::{engine_tests, TestEngine};

engine_tests!(
    reads_at_revisions_and_compaction,
    split_scan_halves_oversized_ranges,
    snapshot_reads_survive_compaction,
    ranges_are_bounded,
    corrupt_versions_are_errors,
    hashes_at_a_revision_add_up_over_spans,
    first_keys_and_the_count,
    point_reads_see_every_layer,
);

#[test]
fn key_encoding_orders_and_roundtrips() {
    let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"a", b"a\0", b"a\0b", b"ab", b"b"];
    let enc: Vec<_> = keys.iter().map(|k| version_key(k, 5)).collect();
    let mut sorted = enc.clone();
    sorted.sort();
    assert_eq!(enc, sorted, "encoding must preserve key order");
    for k in &keys {
        assert_eq!(dec_key(&version_key(k, 42)), Some((k.to_vec(), 42)));
    }
    // Newer versions of a key sort first.
    assert!(version_key(b"a", 9) < version_key(b"a", 3));
    assert_eq!(dec_key(b"a\0"), None);
    assert_eq!(dec_key(b"a\0\x07xxxxxxxx"), None);
}

fn put(m: &Mvcc, db: &Arc<dyn Engine>, key: &[u8], rev: i64, val: &[u8], tomb: bool) {
    let mut wb = WriteBatch::new();
    m.stage_version(
        &mut wb,
        key,
        rev,
        &MvccValue {
            value: val.to_vec(),
            create_revision: rev,
            version: 1,
            lease: 0,
            tombstone: tomb,
            op: 0,
        },
    );
    db.write(&wb, false).unwrap();
}

fn reads_at_revisions_and_compaction(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    put(&m, &db, b"a", 2, b"a2", false);
    put(&m, &db, b"a", 5, b"a5", false);
    put(&m, &db, b"b", 3, b"b3", false);
    put(&m, &db, b"b", 6, b"", true);
    let all = KeyRange::from_etcd(b"\0", b"\0");
    let at = |r| -> Vec<(Vec<u8>, i64)> {
        m.range_at(&all, r)
            .unwrap()
            .into_iter()
            .map(|v| (v.key, v.mod_revision))
            .collect()
    };
    assert_eq!(at(1), vec![]);
    assert_eq!(at(4), vec![(b"a".to_vec(), 2), (b"b".to_vec(), 3)]);
    assert_eq!(at(7), vec![(b"a".to_vec(), 5)]);
    assert_eq!(m.get_at(b"b", 3).unwrap().unwrap().value.value, b"b3");
    assert!(m.get_at(b"b", 6).unwrap().is_none());
    let h = m.history(&all, 3, 6, 100).unwrap();
    let revs: Vec<_> = h
        .iter()
        .map(|(v, p)| (v.mod_revision, p.is_some()))
        .collect();
    assert_eq!(revs, vec![(3, false), (5, true), (6, true)]);

    assert_eq!(
        m.median_key(&all, 100).unwrap(),
        None,
        "one live key: no median"
    );
    put(&m, &db, b"c", 7, b"c7", false);
    put(&m, &db, b"d", 8, b"d8", false);
    assert_eq!(m.median_key(&all, 100).unwrap(), Some(b"c".to_vec()));
    let mut wb = WriteBatch::default();
    m.stage_compact(&mut wb, &all, 6).unwrap();
    db.write(&wb, false).unwrap();
    assert_eq!(at(6), vec![(b"a".to_vec(), 5)]);
    assert!(m.get_at(b"a", 2).unwrap().is_none(), "a@2 compacted away");
    assert_eq!(m.history(&all, 0, 10, 100).unwrap().len(), 3);
}

fn split_scan_halves_oversized_ranges(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    for i in 0..1000 {
        put(&m, &db, format!("k{i:04}").as_bytes(), i + 1, b"v", false);
    }
    // A deleted key is neither counted nor chosen.
    put(&m, &db, b"k0500", 2000, b"", true);
    let all = KeyRange::from_etcd(b"\0", b"\0");
    // Far over an 8-key limit: split in the middle, not after 5 keys.
    let (keys, _, split) = m.split_scan(&all, 8, u64::MAX).unwrap();
    assert_eq!(keys, 999);
    assert_eq!(split.as_deref(), Some(&b"k0499"[..]));
    // Just over the limit: both halves end up under it.
    let small = KeyRange::from_etcd(b"k0000", b"k0010");
    let (keys, _, split) = m.split_scan(&small, 8, u64::MAX).unwrap();
    assert_eq!((keys, split.as_deref()), (10, Some(&b"k0005"[..])));
    // Under both limits: no split.
    assert_eq!(m.split_scan(&small, 10, u64::MAX).unwrap().2, None);
    // Over the byte limit only: the split falls at about half the bytes.
    let (_, bytes, split) = m.split_scan(&all, u64::MAX / 4, 1000).unwrap();
    assert!(bytes > 1000);
    let split = split.unwrap();
    assert!(split.as_slice() > &b"k0450"[..] && split.as_slice() < &b"k0550"[..]);
}

/// A view taken before a compaction still reads every version it saw, so
/// a read at a revision the compaction removes stays consistent.
fn snapshot_reads_survive_compaction(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    put(&m, &db, b"a", 2, b"a2", false);
    put(&m, &db, b"a", 4, b"a4", false);
    put(&m, &db, b"b", 3, b"b3", false);
    put(&m, &db, b"b", 5, b"", true);
    let all = KeyRange::from_etcd(b"\0", b"\0");
    let view = m.snapshot();
    let mut wb = WriteBatch::new();
    m.stage_compact(&mut wb, &all, 5).unwrap();
    db.write(&wb, false).unwrap();
    put(&m, &db, b"c", 6, b"c6", false);
    let keys_at = |m: &Mvcc, rev| -> Vec<(Vec<u8>, i64)> {
        m.range_at(&all, rev)
            .unwrap()
            .into_iter()
            .map(|v| (v.key, v.mod_revision))
            .collect()
    };
    // The view: every old version, nothing written after it.
    assert_eq!(
        keys_at(&view, 3),
        vec![(b"a".to_vec(), 2), (b"b".to_vec(), 3)]
    );
    assert_eq!(view.get_at(b"a", 2).unwrap().unwrap().value.value, b"a2");
    assert!(view.get_at(b"c", 6).unwrap().is_none());
    assert_eq!(view.history(&all, 1, 10, 100).unwrap().len(), 4);
    // The engine: compacted below 5 (b's tombstone too), and c.
    assert_eq!(
        keys_at(&m, 10),
        vec![(b"a".to_vec(), 4), (b"c".to_vec(), 6)]
    );
    assert!(m.get_at(b"a", 2).unwrap().is_none());
    assert_eq!(m.history(&all, 1, 10, 100).unwrap().len(), 2);
    // A new view sees the new state.
    assert_eq!(keys_at(&m.snapshot(), 10), keys_at(&m, 10));
}

/// Reads stay inside their key range, including next to keys that share a
/// prefix and keys containing 0x00.
fn ranges_are_bounded(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    for (i, k) in [&b"a"[..], b"a\0", b"a\0\0", b"ab", b"b", b"b\0"]
        .iter()
        .enumerate()
    {
        put(&m, &db, k, i as i64 + 1, k, false);
    }
    let keys = |kr: &KeyRange| -> Vec<Vec<u8>> {
        m.range_at(kr, 100)
            .unwrap()
            .into_iter()
            .map(|v| v.key)
            .collect()
    };
    assert_eq!(keys(&KeyRange::from_etcd(b"a", b"")), vec![b"a".to_vec()]);
    assert_eq!(
        keys(&KeyRange::from_etcd(b"a", b"ab")),
        vec![b"a".to_vec(), b"a\0".to_vec(), b"a\0\0".to_vec()]
    );
    assert_eq!(
        keys(&KeyRange::from_etcd(b"a\0", b"b")),
        vec![b"a\0".to_vec(), b"a\0\0".to_vec(), b"ab".to_vec()]
    );
    assert_eq!(keys(&KeyRange::from_etcd(b"b", b"\0")).len(), 2);
    assert!(
        m.get_at(b"a\0", 1).unwrap().is_none(),
        "a\\0 is newer than rev 1"
    );
    assert_eq!(m.get_at(b"a\0", 2).unwrap().unwrap().value.value, b"a\0");
    assert!(m.get_at(b"c", 100).unwrap().is_none());
}

/// Bad data in the data column family is an error, never a panic.
fn corrupt_versions_are_errors(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    put(&m, &db, b"a", 1, b"a1", false);
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, version_key(b"b", 2), b"\xff\xff\xff");
    wb.put(Cf::Data, b"no-terminator", b"");
    db.write(&wb, false).unwrap();
    let all = KeyRange::from_etcd(b"\0", b"\0");
    assert!(m.range_at(&all, 10).is_err(), "undecodable key");
    assert!(m.get_at(b"b", 2).is_err(), "undecodable value");
    assert!(m.history(&all, 0, 10, 100).is_err());
    let a_only = KeyRange::from_etcd(b"a", b"");
    assert_eq!(m.range_at(&a_only, 10).unwrap().len(), 1);
}

/// `hash_at`: the state at a revision (later versions and history below it
/// do not count), additive over spans, and changed by any changed value.
fn hashes_at_a_revision_add_up_over_spans(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    put(&m, &db, b"a", 2, b"a2", false);
    put(&m, &db, b"a", 5, b"a5", false);
    put(&m, &db, b"b", 3, b"b3", false);
    put(&m, &db, b"c", 4, b"c4", false);
    put(&m, &db, b"c", 6, b"", true);
    let all = KeyRange::from_etcd(b"\0", b"\0");
    let (h5, keys5) = m.hash_at(&all, 5).unwrap();
    assert_eq!(keys5, 3);
    // A later version or a deletion after the revision changes nothing.
    put(&m, &db, b"b", 7, b"b7", false);
    assert_eq!(m.hash_at(&all, 5).unwrap(), (h5, 3));
    assert_eq!(m.hash_at(&all, 6).unwrap().1, 2, "c deleted at 6");
    // Split anywhere, the halves add up to the whole.
    for split in [&b"b"[..], b"bb", b"c"] {
        let left = m.hash_at(&KeyRange::from_etcd(b"\0", split), 5).unwrap();
        let right = m.hash_at(&KeyRange::from_etcd(split, b"\0"), 5).unwrap();
        assert_eq!(left.0.wrapping_add(right.0), h5, "split at {split:?}");
        assert_eq!(left.1 + right.1, 3);
    }
    // The same value under another revision, or another value, differs.
    put(&m, &db, b"a", 5, b"a5!", false);
    assert_ne!(m.hash_at(&all, 5).unwrap().0, h5);
}

fn first_keys_and_the_count(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
        put(&m, &db, *k, 2 + i as i64, b"v", false);
    }
    put(&m, &db, b"b", 7, b"", true); // deleted at 7
    put(&m, &db, b"c", 8, b"c8", false);
    let all = KeyRange::from_etcd(b"\0", b"\0");
    let keys = |vs: &[Version]| -> Vec<(Vec<u8>, i64)> {
        vs.iter().map(|v| (v.key.clone(), v.mod_revision)).collect()
    };
    // Every live key counted, only the first `keep` kept.
    let (first, count) = m.range_at_first(&all, 8, 2, true).unwrap();
    assert_eq!(count, 3);
    assert_eq!(keys(&first), vec![(b"a".to_vec(), 2), (b"c".to_vec(), 8)]);
    let (none, count) = m.range_at_first(&all, 6, 0, true).unwrap();
    assert_eq!((none.len(), count), (0, 4));
    // Without the count: the scan stops at the last key kept.
    let (first, count) = m.range_at_first(&all, 8, 2, false).unwrap();
    assert_eq!(
        (keys(&first), count),
        (vec![(b"a".to_vec(), 2), (b"c".to_vec(), 8)], 2)
    );
    // The same as range_at where everything is kept.
    for rev in 1..=8 {
        let (kept, count) = m.range_at_first(&all, rev, 100, true).unwrap();
        let full = m.range_at(&all, rev).unwrap();
        assert_eq!(kept, full, "at {rev}");
        assert_eq!(count as usize, full.len());
    }
}

/// A version written: its revision, and its value (`None`: a tombstone).
type Written = (i64, Option<Vec<u8>>);

/// `get_at` reads only the key's own versions (its iterator is bounded by
/// them): whether they sit in SSTs, the memtable or both, next to keys that
/// are prefixes of each other or hold `0x00` bytes, it finds the right one,
/// and nothing for a key that has none.
fn point_reads_see_every_layer(t: &mut TestEngine) {
    let db = t.engine();
    let m = Mvcc::new(db.clone());
    let names: Vec<Vec<u8>> = (0..60u8)
        .map(|i| match i % 4 {
            0 => vec![b'k', i],
            1 => vec![b'k', i, 0],
            2 => vec![b'k', i, 0, 1],
            _ => vec![0, i],
        })
        .collect();
    // key -> (revision, value or tombstone), oldest first.
    let mut model: BTreeMap<Vec<u8>, Vec<Written>> = BTreeMap::new();
    let mut seed = 7u64;
    let mut rev = 1;
    for phase in 0..3 {
        for _ in 0..150 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Keys with an odd index only ever get written in the last phase,
            // those past 50 never: absent keys must read as absent.
            let i = (seed >> 33) as usize % 50;
            if i % 2 == 1 && phase < 2 {
                continue;
            }
            let tomb = (seed >> 20).is_multiple_of(5);
            let val = format!("v{rev}").into_bytes();
            put(&m, &db, &names[i], rev, &val, tomb);
            model
                .entry(names[i].clone())
                .or_default()
                .push((rev, (!tomb).then_some(val)));
            rev += 1;
        }
        if phase < 2 {
            db.compact_all(Cf::Data).unwrap();
        }
    }
    for name in &names {
        let versions = model.get(name).cloned().unwrap_or_default();
        for at in (0..=rev).step_by(7).chain([rev + 100]) {
            let want = versions
                .iter()
                .rev()
                .find(|(r, _)| *r <= at)
                .and_then(|(r, v)| v.clone().map(|v| (*r, v)));
            let got = m
                .get_at(name, at)
                .unwrap()
                .map(|v| (v.mod_revision, v.value.value));
            assert_eq!(got, want, "key {name:?} at {at}");
        }
    }
}
