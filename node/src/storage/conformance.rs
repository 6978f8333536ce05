//! The conformance suite of the [`Engine`] trait: every test runs against each
//! engine (see [`engine_tests!`]), so the in-memory engine behaves like RocksDB
//! wherever the node could tell them apart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::testing::{engine_tests, TestEngine};
use super::{Cf, Engine, EngineIterator, IterOptions, Property, Reader, WriteBatch};

engine_tests!(
    get_put_delete,
    column_families_are_isolated,
    delete_range_covers_start_to_end,
    iterator_orders_keys_as_bytes,
    iterator_seeks,
    iterator_bounds,
    iterator_sees_state_at_creation,
    batch_applies_in_order,
    batch_is_atomic_to_readers,
    snapshot_isolation,
    snapshot_outlives_engine_handle,
    sync_and_unsynced_writes,
    properties_are_plausible,
    matches_a_model,
    big_values_survive_compaction;
    rocks_only: reopen_keeps_writes,
);

fn put(e: &dyn Engine, cf: Cf, k: &[u8], v: &[u8]) {
    let mut wb = WriteBatch::new();
    wb.put(cf, k, v);
    e.write(&wb, false).unwrap();
}

/// Every (key, value) of `cf` from a forward scan, checking the status.
fn scan(r: &dyn Reader, cf: Cf, opts: IterOptions) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut it = r.iter_opt(cf, opts);
    it.seek_to_first();
    let out = collect_forward(&mut *it);
    it.status().unwrap();
    out
}

fn collect_forward(it: &mut dyn EngineIterator) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    out
}

fn keys(r: &dyn Reader, cf: Cf) -> Vec<Vec<u8>> {
    scan(r, cf, IterOptions::default())
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn at(it: &dyn EngineIterator) -> Option<Vec<u8>> {
    it.valid().then(|| it.key().to_vec())
}

fn get_put_delete(t: &mut TestEngine) {
    let e = t.engine();
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), None);
    put(&*e, Cf::Data, b"k", b"v1");
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), Some(b"v1".to_vec()));
    put(&*e, Cf::Data, b"k", b"v2");
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), Some(b"v2".to_vec()));
    // An empty value is a value, not an absence; so is an empty key.
    put(&*e, Cf::Data, b"empty", b"");
    assert_eq!(e.get(Cf::Data, b"empty").unwrap(), Some(Vec::new()));
    put(&*e, Cf::Data, b"", b"root");
    assert_eq!(e.get(Cf::Data, b"").unwrap(), Some(b"root".to_vec()));
    let mut wb = WriteBatch::new();
    wb.delete(Cf::Data, b"k");
    wb.delete(Cf::Data, b"never-written");
    e.write(&wb, false).unwrap();
    assert_eq!(e.get(Cf::Data, b"k").unwrap(), None);
    assert_eq!(e.get(Cf::Data, b"never-written").unwrap(), None);
    assert_eq!(keys(&*e, Cf::Data), vec![b"".to_vec(), b"empty".to_vec()]);
}

fn column_families_are_isolated(t: &mut TestEngine) {
    let e = t.engine();
    for cf in Cf::ALL {
        put(&*e, cf, b"same", cf.name().as_bytes());
        put(&*e, cf, format!("only-{cf}").as_bytes(), b"x");
    }
    for cf in Cf::ALL {
        assert_eq!(
            e.get(cf, b"same").unwrap(),
            Some(cf.name().as_bytes().to_vec())
        );
        let want = vec![format!("only-{cf}").into_bytes(), b"same".to_vec()];
        assert_eq!(keys(&*e, cf), want, "{cf} sees only its own keys");
    }
    let mut wb = WriteBatch::new();
    wb.delete(Cf::Raft, b"same");
    wb.delete_range(Cf::Meta, b"", b"\xff");
    e.write(&wb, false).unwrap();
    assert_eq!(e.get(Cf::Raft, b"same").unwrap(), None);
    assert_eq!(e.get(Cf::Data, b"same").unwrap(), Some(b"data".to_vec()));
    assert_eq!(keys(&*e, Cf::Meta), Vec::<Vec<u8>>::new());
    assert_eq!(keys(&*e, Cf::Data).len(), 2);
    assert_eq!(keys(&*e, Cf::Raft), vec![b"only-raft".to_vec()]);
}

fn delete_range_covers_start_to_end(t: &mut TestEngine) {
    let e = t.engine();
    let all: [&[u8]; 7] = [b"a", b"b", b"b\0", b"ba", b"c", b"c\0", b"d"];
    for k in all {
        put(&*e, Cf::Data, k, b"v");
    }
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Data, b"b", b"c");
    // Empty and inverted ranges delete nothing.
    wb.delete_range(Cf::Data, b"d", b"d");
    wb.delete_range(Cf::Data, b"d", b"a");
    e.write(&wb, false).unwrap();
    // `start` is included, `end` is not.
    let want: Vec<Vec<u8>> = [&b"a"[..], b"c", b"c\0", b"d"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    assert_eq!(keys(&*e, Cf::Data), want);
    assert_eq!(e.get(Cf::Data, b"b\0").unwrap(), None);
    assert_eq!(e.get(Cf::Data, b"c").unwrap(), Some(b"v".to_vec()));
    // A key written after the range deletion (same key range) is visible.
    put(&*e, Cf::Data, b"b", b"again");
    assert_eq!(e.get(Cf::Data, b"b").unwrap(), Some(b"again".to_vec()));
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Data, b"", [0xff; 9]);
    e.write(&wb, false).unwrap();
    assert_eq!(keys(&*e, Cf::Data), Vec::<Vec<u8>>::new());
}

/// Keys in byte order: shorter prefixes first, `0x00` and `0xff` bytes are
/// plain bytes, big-endian integers sort numerically.
fn ordered_keys() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"\0".to_vec(),
        b"\0\0".to_vec(),
        b"\0\x01".to_vec(),
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"a\0\0".to_vec(),
        b"aa".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"\x7f".to_vec(),
        b"\x80".to_vec(),
        b"\xff".to_vec(),
        b"\xff\xff".to_vec(),
    ];
    for n in [1u64, 255, 256, 65_536, u64::MAX - 1] {
        let mut k = b"n".to_vec();
        k.extend_from_slice(&n.to_be_bytes());
        v.push(k);
    }
    v.sort();
    v
}

fn iterator_orders_keys_as_bytes(t: &mut TestEngine) {
    let e = t.engine();
    let want = ordered_keys();
    // Written in reverse order, in one batch.
    let mut wb = WriteBatch::new();
    for k in want.iter().rev() {
        wb.put(Cf::Data, k.as_slice(), [k.as_slice(), b"=v"].concat());
    }
    e.write(&wb, false).unwrap();
    let got = scan(&*e, Cf::Data, IterOptions::default());
    assert_eq!(got.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
    assert!(got
        .iter()
        .all(|(k, v)| *v == [k.as_slice(), b"=v"].concat()));
    // Backwards from the last key.
    let mut it = e.iter(Cf::Data);
    it.seek_to_last();
    let mut back = Vec::new();
    while it.valid() {
        back.push(it.key().to_vec());
        it.prev();
    }
    it.status().unwrap();
    back.reverse();
    assert_eq!(back, want);
}

fn iterator_seeks(t: &mut TestEngine) {
    let e = t.engine();
    for k in [&b"b"[..], b"d", b"d\0", b"f"] {
        put(&*e, Cf::Data, k, b"v");
    }
    put(&*e, Cf::Meta, b"a", b"other cf");
    put(&*e, Cf::Meta, b"z", b"other cf");
    let mut it = e.iter(Cf::Data);
    assert!(!it.valid(), "a new iterator is unpositioned");
    /// (target, where seek lands, where seek_for_prev lands)
    type Case = (&'static [u8], Option<&'static [u8]>, Option<&'static [u8]>);
    let cases: [Case; 8] = [
        (b"", Some(b"b"), None),
        (b"a", Some(b"b"), None),
        (b"b", Some(b"b"), Some(b"b")),
        (b"c", Some(b"d"), Some(b"b")),
        (b"d", Some(b"d"), Some(b"d")),
        (b"d\0\0", Some(b"f"), Some(b"d\0")),
        (b"f", Some(b"f"), Some(b"f")),
        (b"g", None, Some(b"f")),
    ];
    for (target, seek, prev) in cases {
        it.seek(target);
        assert_eq!(at(&*it), seek.map(<[u8]>::to_vec), "seek({target:?})");
        it.seek_for_prev(target);
        assert_eq!(
            at(&*it),
            prev.map(<[u8]>::to_vec),
            "seek_for_prev({target:?})"
        );
    }
    // next and prev step one key; stepping off an end invalidates, and
    // stepping an invalid iterator does nothing.
    it.seek(b"d");
    it.next();
    assert_eq!(at(&*it), Some(b"d\0".to_vec()));
    it.prev();
    it.prev();
    assert_eq!(at(&*it), Some(b"b".to_vec()));
    it.prev();
    assert!(!it.valid());
    it.next();
    assert!(!it.valid());
    it.seek(b"f");
    it.next();
    assert!(!it.valid());
    it.status().unwrap();
    // A seek repositions an exhausted iterator.
    it.seek_to_first();
    assert_eq!(at(&*it), Some(b"b".to_vec()));
    it.seek_to_last();
    assert_eq!(at(&*it), Some(b"f".to_vec()));
    // An empty column family.
    let mut it = e.iter(Cf::Raft);
    it.seek_to_first();
    assert!(!it.valid());
    it.seek_for_prev(b"\xff");
    assert!(!it.valid());
    it.status().unwrap();
}

fn iterator_bounds(t: &mut TestEngine) {
    let e = t.engine();
    for k in [&b"a"[..], b"b", b"c", b"d", b"e"] {
        put(&*e, Cf::Data, k, b"v");
    }
    let opts = IterOptions::range(Some(b"b".to_vec()), Some(b"d".to_vec()));
    let got: Vec<_> = scan(&*e, Cf::Data, opts.clone())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(got, vec![b"b".to_vec(), b"c".to_vec()]);
    let mut it = e.iter_opt(Cf::Data, opts);
    it.seek(b"a");
    assert_eq!(at(&*it), Some(b"b".to_vec()), "seek below the lower bound");
    it.seek(b"d");
    assert!(!it.valid(), "seek at the upper bound");
    it.seek_for_prev(b"z");
    assert_eq!(
        at(&*it),
        Some(b"c".to_vec()),
        "seek_for_prev above the upper bound"
    );
    it.prev();
    it.prev();
    assert!(!it.valid(), "prev past the lower bound");
    it.seek_to_last();
    assert_eq!(at(&*it), Some(b"c".to_vec()));
    it.next();
    assert!(!it.valid(), "next past the upper bound");
    it.status().unwrap();
    // One side only.
    let upper = IterOptions::range(None, Some(b"c".to_vec()));
    assert_eq!(scan(&*e, Cf::Data, upper).len(), 2);
    let lower = IterOptions::range(Some(b"c\0".to_vec()), None);
    assert_eq!(scan(&*e, Cf::Data, lower).len(), 2);
}

fn iterator_sees_state_at_creation(t: &mut TestEngine) {
    let e = t.engine();
    put(&*e, Cf::Data, b"a", b"1");
    put(&*e, Cf::Data, b"c", b"1");
    let mut it = e.iter(Cf::Data);
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"b", b"new");
    wb.put(Cf::Data, b"c", b"2");
    wb.delete(Cf::Data, b"a");
    e.write(&wb, true).unwrap();
    it.seek_to_first();
    assert_eq!(
        collect_forward(&mut *it),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"c".to_vec(), b"1".to_vec())
        ]
    );
    // A new iterator sees the write.
    assert_eq!(keys(&*e, Cf::Data), vec![b"b".to_vec(), b"c".to_vec()]);
}

fn batch_applies_in_order(t: &mut TestEngine) {
    let e = t.engine();
    put(&*e, Cf::Data, b"old", b"v");
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"a", b"1");
    wb.delete(Cf::Data, b"a"); // then gone
    wb.delete(Cf::Data, b"b");
    wb.put(Cf::Data, b"b", b"2"); // then there
    wb.put(Cf::Data, b"c", b"1");
    wb.put(Cf::Data, b"c", b"2"); // the last put wins
    wb.delete_range(Cf::Data, b"", b"z"); // everything so far goes,
    wb.put(Cf::Data, b"d", b"after"); // but not what comes after
    wb.put(Cf::Meta, b"m", b"1");
    e.write(&wb, false).unwrap();
    assert_eq!(
        scan(&*e, Cf::Data, IterOptions::default()),
        vec![(b"d".to_vec(), b"after".to_vec())]
    );
    assert_eq!(e.get(Cf::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    // An empty batch is a valid no-op.
    e.write(&WriteBatch::new(), true).unwrap();
    e.write(&WriteBatch::new(), false).unwrap();
    assert_eq!(keys(&*e, Cf::Data), vec![b"d".to_vec()]);
}

/// A reader never sees part of a batch: every batch moves a counter in two
/// column families and rewrites a block of keys, and concurrent readers
/// (snapshots and plain iterators) always find them consistent.
fn batch_is_atomic_to_readers(t: &mut TestEngine) {
    const ROUNDS: u64 = 300;
    const BLOCK: u64 = 20;
    let e = t.engine();
    let write_round = |round: u64| {
        let mut wb = WriteBatch::new();
        wb.delete_range(Cf::Data, b"blk/", b"blk0");
        for i in 0..BLOCK {
            wb.put(Cf::Data, format!("blk/{i:03}"), round.to_be_bytes());
        }
        wb.put(Cf::Raft, b"counter", round.to_be_bytes());
        wb.put(Cf::Meta, b"counter", round.to_be_bytes());
        e.write(&wb, round.is_multiple_of(7)).unwrap();
    };
    write_round(0);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (e, done) = (e.clone(), done.clone());
        std::thread::spawn(move || {
            let mut checks = 0u64;
            while !done.load(Ordering::Acquire) || checks < 10 {
                let snap = e.snapshot();
                let raft = snap.get(Cf::Raft, b"counter").unwrap().unwrap();
                let meta = snap.get(Cf::Meta, b"counter").unwrap().unwrap();
                assert_eq!(raft, meta, "snapshot saw half a batch");
                let block = scan(&*snap, Cf::Data, IterOptions::default());
                assert_eq!(
                    block.len() as u64,
                    BLOCK,
                    "snapshot saw half a range delete"
                );
                assert!(block.iter().all(|(_, v)| *v == raft), "mixed block");
                let block = scan(&*e, Cf::Data, IterOptions::default());
                assert_eq!(block.len() as u64, BLOCK, "iterator saw half a batch");
                assert!(block.windows(2).all(|w| w[0].1 == w[1].1), "mixed block");
                checks += 1;
            }
            checks
        })
    };
    for round in 1..=ROUNDS {
        write_round(round);
    }
    done.store(true, Ordering::Release);
    assert!(reader.join().expect("reader panicked") >= 10);
    let last = e.get(Cf::Meta, b"counter").unwrap().unwrap();
    assert_eq!(last, ROUNDS.to_be_bytes());
}

fn snapshot_isolation(t: &mut TestEngine) {
    let e = t.engine();
    put(&*e, Cf::Data, b"a", b"1");
    put(&*e, Cf::Data, b"b", b"1");
    put(&*e, Cf::Data, b"c", b"1");
    put(&*e, Cf::Meta, b"m", b"1");
    let snap = e.snapshot();
    let mut early = snap.iter(Cf::Data); // made before the write, used after
    let mut wb = WriteBatch::new();
    wb.put(Cf::Data, b"a", b"2");
    wb.delete(Cf::Data, b"b");
    wb.put(Cf::Data, b"bb", b"new");
    wb.delete_range(Cf::Data, b"c", b"d");
    wb.delete(Cf::Meta, b"m");
    e.write(&wb, true).unwrap();
    let old = vec![
        (b"a".to_vec(), b"1".to_vec()),
        (b"b".to_vec(), b"1".to_vec()),
        (b"c".to_vec(), b"1".to_vec()),
    ];
    assert_eq!(snap.get(Cf::Data, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(snap.get(Cf::Data, b"b").unwrap(), Some(b"1".to_vec()));
    assert_eq!(snap.get(Cf::Data, b"bb").unwrap(), None);
    assert_eq!(snap.get(Cf::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    assert_eq!(scan(&*snap, Cf::Data, IterOptions::default()), old);
    early.seek(b"");
    assert_eq!(collect_forward(&mut *early), old);
    let mut it = snap.iter(Cf::Data);
    it.seek_for_prev(b"bz");
    assert_eq!(at(&*it), Some(b"b".to_vec()));
    // The engine itself moved on.
    assert_eq!(
        scan(&*e, Cf::Data, IterOptions::default()),
        vec![
            (b"a".to_vec(), b"2".to_vec()),
            (b"bb".to_vec(), b"new".to_vec())
        ]
    );
    // A later snapshot sees the write; the first one still does not.
    let snap2 = e.snapshot();
    assert_eq!(snap2.get(Cf::Data, b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(snap.get(Cf::Data, b"a").unwrap(), Some(b"1".to_vec()));
    // Snapshots may be read from another thread.
    drop((early, it));
    let handle = std::thread::spawn(move || snap.get(Cf::Data, b"c").unwrap());
    assert_eq!(handle.join().unwrap(), Some(b"1".to_vec()));
}

fn snapshot_outlives_engine_handle(t: &mut TestEngine) {
    let e = t.engine();
    put(&*e, Cf::Data, b"k", b"v");
    let snap = e.snapshot();
    drop(e);
    t.close();
    assert_eq!(snap.get(Cf::Data, b"k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(keys(&*snap, Cf::Data), vec![b"k".to_vec()]);
}

fn sync_and_unsynced_writes(t: &mut TestEngine) {
    let e = t.engine();
    for i in 0..50u32 {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Raft, i.to_be_bytes(), b"x");
        e.write(&wb, i % 2 == 0).unwrap();
    }
    assert_eq!(keys(&*e, Cf::Raft).len(), 50);
    assert_eq!(
        e.get(Cf::Raft, &7u32.to_be_bytes()).unwrap(),
        Some(b"x".to_vec())
    );
}

fn properties_are_plausible(t: &mut TestEngine) {
    let e = t.engine();
    let mut wb = WriteBatch::new();
    for i in 0..100u32 {
        wb.put(Cf::Data, i.to_be_bytes(), [7u8; 100]);
    }
    e.write(&wb, true).unwrap();
    for cf in Cf::ALL {
        for p in Property::ALL {
            // Any value is allowed, or none; asking must not fail.
            let _ = e.property(cf, p);
        }
    }
    if let Some(n) = e.property(Cf::Data, Property::EstimatedKeys) {
        assert!(n > 0, "100 keys estimated as none");
    }
    if let Some(n) = e.property(Cf::Data, Property::MemtableBytes) {
        assert!(n > 0, "10 KB written, empty write buffer");
    }
}

/// A deterministic random mix of puts, deletes and range deletes, checked
/// against a `BTreeMap` by full scans and seeks in both directions.
fn matches_a_model(t: &mut TestEngine) {
    let e = t.engine();
    let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let key = |r: u64| -> Vec<u8> {
        // Short keys over a small alphabet, so operations collide often.
        let len = (r % 3) as usize + 1;
        (0..len)
            .map(|i| b"\0ab\xff"[((r >> (2 + 2 * i)) % 4) as usize])
            .collect()
    };
    for round in 0..200u64 {
        let mut wb = WriteBatch::new();
        for _ in 0..rand(8) + 1 {
            match rand(10) {
                0..=5 => {
                    let (k, v) = (key(rand(1 << 12)), round.to_be_bytes().to_vec());
                    wb.put(Cf::Data, k.as_slice(), v.as_slice());
                    model.insert(k, v);
                }
                6..=8 => {
                    let k = key(rand(1 << 12));
                    wb.delete(Cf::Data, k.as_slice());
                    model.remove(&k);
                }
                _ => {
                    let (a, b) = (key(rand(1 << 12)), key(rand(1 << 12)));
                    wb.delete_range(Cf::Data, &a, &b);
                    if a < b {
                        model.retain(|k, _| *k < a || *k >= b);
                    }
                }
            }
        }
        e.write(&wb, false).unwrap();
        if round % 20 != 19 {
            continue;
        }
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(scan(&*e, Cf::Data, IterOptions::default()), want);
        let mut it = e.iter(Cf::Data);
        for _ in 0..50 {
            let target = key(rand(1 << 12));
            it.seek(&target);
            let want = model.range(target.clone()..).next().map(|(k, _)| k.clone());
            assert_eq!(at(&*it), want, "seek({target:?})");
            it.seek_for_prev(&target);
            let want = model
                .range(..=target.clone())
                .next_back()
                .map(|(k, _)| k.clone());
            assert_eq!(at(&*it), want, "seek_for_prev({target:?})");
        }
        for (k, v) in &model {
            assert_eq!(e.get(Cf::Data, k).unwrap().as_ref(), Some(v));
        }
    }
}

/// Values big enough for RocksDB's blob files (in `data`) read back exactly, by `get`
/// and by iteration, after deletions and full compactions, and the size
/// properties count them.
fn big_values_survive_compaction(t: &mut TestEngine) {
    let e = t.engine();
    // Above the blob threshold, and random (so no compression shrinks it).
    let value = |i: u32| -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(i);
        (0..64 * 1024 + i as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    for cf in [Cf::Raft, Cf::Data] {
        for round in 0..2u32 {
            let mut wb = WriteBatch::new();
            for i in 0..32u32 {
                wb.put(cf, i.to_be_bytes(), value(i + round));
            }
            e.write(&wb, false).unwrap();
            e.compact_all(cf).unwrap();
        }
        let mut wb = WriteBatch::new();
        for i in (0..32u32).filter(|i| i % 2 == 1) {
            wb.delete(cf, i.to_be_bytes());
        }
        e.write(&wb, false).unwrap();
        e.compact_all(cf).unwrap();
        let want: Vec<_> = (0..32u32)
            .filter(|i| i % 2 == 0)
            .map(|i| (i.to_be_bytes().to_vec(), value(i + 1)))
            .collect();
        assert_eq!(scan(&*e, cf, IterOptions::default()), want, "{cf:?}");
        for (k, v) in &want {
            assert_eq!(e.get(cf, k).unwrap().as_ref(), Some(v), "{cf:?}");
        }
        if let Some(n) = e.property(cf, Property::SstBytes) {
            let live = want.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
            assert!(n >= live, "{cf:?}: {n} bytes on disk, {live} live");
        }
    }
}

/// Everything written, synced or not, is there after a clean close and reopen
/// (RocksDB only: the in-memory engine keeps nothing across a restart).
fn reopen_keeps_writes(t: &mut TestEngine) {
    let e = t.engine();
    let mut wb = WriteBatch::new();
    for i in 0..10u8 {
        wb.put(Cf::Raft, [i], [i]);
        wb.put(Cf::Data, [i], [i]);
    }
    wb.put(Cf::Meta, b"id", b"7");
    e.write(&wb, true).unwrap();
    let mut wb = WriteBatch::new();
    wb.delete_range(Cf::Raft, [2u8], [5u8]);
    wb.delete(Cf::Data, [9u8]);
    e.write(&wb, false).unwrap();
    drop(e);
    let e = t.reopen().expect("a persistent engine");
    assert_eq!(
        keys(&*e, Cf::Raft),
        [0u8, 1, 5, 6, 7, 8, 9].map(|i| vec![i])
    );
    assert_eq!(
        keys(&*e, Cf::Data),
        (0u8..9).map(|i| vec![i]).collect::<Vec<_>>()
    );
    assert_eq!(e.get(Cf::Meta, b"id").unwrap(), Some(b"7".to_vec()));
    // Still writable after the reopen.
    put(&*e, Cf::Meta, b"id", b"8");
    drop(e);
    let e = t.reopen().expect("reopen");
    assert_eq!(e.get(Cf::Meta, b"id").unwrap(), Some(b"8".to_vec()));
}
