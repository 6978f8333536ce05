//! Chunking, staging, the receiver's checks and the crash-safe install, run
//! against every storage engine where they touch one.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use strata_proto::strata::{
    MvccValue, Peer, RaftEnvelope, RangeDescriptor, RangeSnapshotHeader, RevokedLease,
    SnapshotChunk, SnapshotInstall,
};

use super::stage::{self, Installed};
use super::*;
use crate::mvcc::version_key;
use crate::range::{RangeShared, Ranges};
use crate::storage::testing::{engine_tests, TestEngine};
use crate::storage::{Cf, Engine, IterOptions, WriteBatch};
use crate::store::{meta, StoreMsg};

engine_tests!(
    chunks_are_bounded_ordered_and_complete,
    install_interrupted_after_k_chunks_is_redone_on_restart,
    staging_without_an_install_record_is_dropped_on_restart,
);

const RANGE: u64 = 7;

fn desc(start: &[u8], end: &[u8]) -> RangeDescriptor {
    RangeDescriptor {
        id: RANGE,
        start_key: start.to_vec(),
        end_key: end.to_vec(),
        peers: vec![
            Peer {
                id: 1,
                node_id: 1,
                learner: false,
            },
            Peer {
                id: 2,
                node_id: 2,
                learner: true,
            },
        ],
        ..Default::default()
    }
}

fn value(n: usize, fill: u8) -> Vec<u8> {
    MvccValue {
        value: vec![fill; n],
        create_revision: 1,
        version: 1,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Puts versions of `keys` (several revisions each) with values of `size(i)`.
fn put_versions(db: &dyn Engine, keys: &[&[u8]], revs: i64, size: impl Fn(usize) -> usize) {
    let mut wb = WriteBatch::new();
    for (i, k) in keys.iter().enumerate() {
        for rev in 1..=revs {
            wb.put(Cf::Data, version_key(k, rev), value(size(i), rev as u8));
        }
    }
    db.write(&wb, false).unwrap();
}

type Kvs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every (key, value) of the data column family in `[start, end)`.
fn data_in(db: &dyn Engine, start: &[u8], end: &[u8]) -> Kvs {
    let (lo, hi) = (crate::mvcc::enc_key(start), crate::mvcc::enc_key(end));
    let mut it = db.iter_opt(Cf::Data, IterOptions::range(Some(lo.clone()), Some(hi)));
    it.seek(&lo);
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    out
}

fn all_chunks(reader: &mut ChunkReader) -> Vec<SnapshotChunk> {
    std::iter::from_fn(|| reader.next_chunk().unwrap()).collect()
}

fn chunks_are_bounded_ordered_and_complete(t: &mut TestEngine) {
    let db = t.engine();
    let keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i:04}").into_bytes()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    // Mostly 10 KiB values, one far larger than a chunk.
    put_versions(&*db, &refs, 2, |i| {
        if i == 150 {
            3 * CHUNK_BYTES_MAX
        } else {
            10_000
        }
    });
    put_versions(&*db, &[b"a-before", b"z-after"], 1, |_| 10);
    let want = data_in(&*db, b"k", b"l");
    let view = db.snapshot();
    // Written after the view: invisible to the transfer.
    put_versions(&*db, &[b"k0000x"], 1, |_| 10);
    let kr = crate::range::desc_range(&desc(b"k", b"l"));
    let mut reader = ChunkReader::new(view, &kr);
    let chunks = all_chunks(&mut reader);
    assert!(reader.next_chunk().unwrap().is_none(), "stays finished");
    let mut got = Vec::new();
    let mut digest = Digest::default();
    for c in &chunks {
        let bytes: usize = c.keys.iter().chain(&c.values).map(|b| b.len()).sum();
        assert!(
            bytes <= CHUNK_BYTES_MAX || c.keys.len() == 1,
            "a chunk of {bytes} bytes with {} versions",
            c.keys.len()
        );
        assert_eq!(c.keys.len(), c.values.len());
        for (k, v) in c.keys.iter().zip(&c.values) {
            digest.add(k, v);
            got.push((k.clone(), v.clone()));
        }
        digest.add_chunk();
    }
    assert_eq!(got, want, "every version of the range once, in key order");
    assert!(chunks.len() >= 6, "{} chunks", chunks.len());
    assert_eq!(digest.done(), reader.done(), "what the receiver will check");
    assert_eq!(reader.done().versions, 600);

    // An empty range: no chunks, a trailer of zeros.
    let kr = crate::range::desc_range(&desc(b"m", b"n"));
    let mut reader = ChunkReader::new(db.snapshot(), &kr);
    assert!(all_chunks(&mut reader).is_empty());
    assert_eq!(reader.done().versions, 0);
    // The last range (no end) reaches the last key.
    let kr = crate::range::desc_range(&desc(b"z", b""));
    let mut reader = ChunkReader::new(db.snapshot(), &kr).with_chunk_bytes(1);
    assert_eq!(all_chunks(&mut reader).len(), 1);
}

fn header(d: RangeDescriptor) -> RangeSnapshotHeader {
    RangeSnapshotHeader {
        desc: Some(d),
        compacted: 3,
        applied_revision: 42,
        revoked_leases: vec![RevokedLease { seq: 0, lease: 9 }],
        revoked_next_seq: 1,
        txn_intent: None,
    }
}

/// Stages the snapshot data of `[k, l)` read from `src` as chunks of
/// about 20 KB; returns the install record and the data.
fn stage_from(
    src: &dyn Engine,
    db: &dyn Engine,
    d: &RangeDescriptor,
    range_id: u64,
) -> (SnapshotInstall, Kvs) {
    let kr = crate::range::desc_range(d);
    let mut reader = ChunkReader::new(src.snapshot(), &kr).with_chunk_bytes(20_000);
    let chunks = all_chunks(&mut reader);
    stage::clear_staging(db, range_id).unwrap();
    for (seq, c) in chunks.iter().enumerate() {
        stage::stage_chunk(db, range_id, seq as u64, c).unwrap();
    }
    let rec = SnapshotInstall {
        index: 30,
        term: 4,
        header: Some(header(d.clone())),
        chunks: chunks.len() as u64,
    };
    (rec, data_in(src, &d.start_key, &d.end_key))
}

fn staged_keys(db: &dyn Engine) -> usize {
    let mut it = db.iter_opt(Cf::Meta, IterOptions::default());
    it.seek(b"snap");
    let mut n = 0;
    while it.valid() && it.key().starts_with(b"snap") {
        n += 1;
        it.next();
    }
    n
}

fn install_interrupted_after_k_chunks_is_redone_on_restart(t: &mut TestEngine) {
    // Crashes after 0 chunks, after some, after all but before the last
    // batch; each on its own range of the same engine, restarted each time.
    for (j, k) in [0u64, 3, u64::MAX].into_iter().enumerate() {
        let range_id = 10 + j as u64;
        let (start, end) = (format!("r{j}/").into_bytes(), format!("r{j}~").into_bytes());
        let d = RangeDescriptor {
            id: range_id,
            ..desc(&start, &end)
        };
        // The leader's data, staged on the follower.
        let leader = TestEngine::memory();
        let keys: Vec<Vec<u8>> = (0..40)
            .map(|i| [&start[..], format!("{i:03}").as_bytes()].concat())
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        put_versions(&*leader.engine(), &refs, 2, |_| 3000);
        let db = t.engine();
        // The follower's old data: keys the snapshot no longer has.
        let stale: Vec<Vec<u8>> = ["000", "500", "999"]
            .iter()
            .map(|x| [&start[..], x.as_bytes()].concat())
            .collect();
        let stale: Vec<&[u8]> = stale.iter().map(|k| k.as_slice()).collect();
        put_versions(&*db, &stale, 1, |_| 10);
        put_versions(&*db, &[b"zz-other-range"], 1, |_| 10);
        let (mut rec, want) = stage_from(&*leader.engine(), &*db, &d, range_id);
        rec.header.as_mut().unwrap().desc = Some(d.clone());
        assert!(rec.chunks > 5, "{} chunks", rec.chunks);
        // B0: the install record (with the raft state, not modelled here).
        let mut wb = WriteBatch::new();
        stage::stage_install_record(&mut wb, range_id, &rec);
        db.write(&wb, true).unwrap();
        let after = k.min(rec.chunks);
        stage::install_crashing_after(&*db, range_id, &rec, after).unwrap();
        if after < rec.chunks {
            assert!(
                data_in(&*db, &start, &end).len() < want.len(),
                "half installed"
            );
        }
        // "kill -9" and restart.
        drop(db);
        let db = t.reopen().unwrap_or_else(|| t.engine());
        assert_eq!(stage::recover(&*db).unwrap(), vec![range_id]);
        assert_eq!(
            data_in(&*db, &start, &end),
            want,
            "crashed after {after} chunks"
        );
        assert_eq!(
            data_in(&*db, b"zz", b"zz~").len(),
            1,
            "other ranges untouched"
        );
        let got_desc = db
            .get(Cf::Meta, &meta::desc_key(range_id))
            .unwrap()
            .unwrap();
        assert_eq!(RangeDescriptor::decode(&got_desc[..]).unwrap(), d);
        assert_eq!(
            meta::load_i64(&*db, &meta::maxrev_key(range_id)).unwrap(),
            42
        );
        assert_eq!(
            meta::load_i64(&*db, &meta::compacted_key(range_id)).unwrap(),
            3
        );
        assert!(crate::lease::Revoked::of(&*db, range_id)
            .contains(9)
            .unwrap());
        assert_eq!(staged_keys(&*db), 0, "record and staging are gone");
        assert!(
            stage::recover(&*db).unwrap().is_empty(),
            "nothing left to redo"
        );
    }
    // Without a crash, the install answers what to publish.
    let d = desc(b"k", b"l");
    let leader = TestEngine::memory();
    put_versions(&*leader.engine(), &[b"k1", b"k2"], 3, |_| 100);
    let db = TestEngine::memory().engine();
    let (rec, want) = stage_from(&*leader.engine(), &*db, &d, RANGE);
    let want_meta = Installed {
        desc: d,
        compacted: 3,
        applied_rev: 42,
        index: 30,
        intent: None,
    };
    assert_eq!(stage::install(&*db, RANGE, &rec).unwrap(), want_meta);
    assert_eq!(data_in(&*db, b"k", b"l"), want);
}

fn staging_without_an_install_record_is_dropped_on_restart(t: &mut TestEngine) {
    let db = t.engine();
    put_versions(&*db, &[b"k1"], 1, |_| 10);
    let before = data_in(&*db, b"k", b"l");
    let src = TestEngine::memory();
    put_versions(&*src.engine(), &[b"k2", b"k3"], 1, |_| 10);
    stage_from(&*src.engine(), &*db, &desc(b"k", b"l"), RANGE);
    assert!(staged_keys(&*db) > 0);
    drop(db);
    let db = t.reopen().unwrap_or_else(|| t.engine());
    assert!(stage::recover(&*db).unwrap().is_empty());
    assert_eq!(staged_keys(&*db), 0);
    assert_eq!(
        data_in(&*db, b"k", b"l"),
        before,
        "the replica is as it was"
    );
}

// ---- the receiver ----------------------------------------------------------

fn head(d: &RangeDescriptor) -> RaftEnvelope {
    let mut m = RaftMessage::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.to = 2;
    let snap = m.mut_snapshot();
    snap.data = header(d.clone()).encode_to_vec().into();
    snap.mut_metadata().index = 30;
    snap.mut_metadata().term = 4;
    RaftEnvelope {
        range_id: RANGE,
        from_peer: 1,
        to_peer: 2,
        from_node: 1,
        message: m.write_to_bytes().unwrap(),
        ..Default::default()
    }
}

/// A receiver for a node hosting peer 2 of the range, and its store inbox.
fn receiver(db: Arc<dyn Engine>) -> (Arc<SnapshotReceiver>, tokio::sync::mpsc::Receiver<StoreMsg>) {
    let ranges: Ranges = Arc::default();
    ranges.insert(RANGE, RangeShared::for_tests(desc(b"k", b"l"), 2));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let r = SnapshotReceiver {
        db,
        ranges,
        store: tx,
        slots: Slots::default(),
    };
    (Arc::new(r), rx)
}

/// The messages of a transfer of `src`'s range `[k, l)`, in small chunks.
fn transfer(src: &dyn Engine) -> Vec<SnapshotChunk> {
    let d = desc(b"k", b"l");
    let mut reader =
        ChunkReader::new(src.snapshot(), &crate::range::desc_range(&d)).with_chunk_bytes(5000);
    let mut out = vec![SnapshotChunk {
        head: Some(head(&d)),
        ..Default::default()
    }];
    out.extend(all_chunks(&mut reader));
    out.push(SnapshotChunk {
        done: Some(reader.done()),
        ..Default::default()
    });
    out
}

async fn receive(r: &SnapshotReceiver, msgs: Vec<SnapshotChunk>) -> Result<(), tonic::Status> {
    r.receive(futures::stream::iter(msgs.into_iter().map(Ok)).boxed())
        .await
}

#[tokio::test]
async fn the_receiver_checks_stages_and_hands_over() {
    let src = TestEngine::memory();
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("k{i:02}").into_bytes()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
    put_versions(&*src.engine(), &refs, 1, |_| 2000);
    let db = TestEngine::memory().engine();
    let (r, mut inbox) = receiver(db.clone());
    let good = transfer(&*src.engine());
    let n_chunks = good.len() as u64 - 2;

    // Broken transfers: refused, the store never hears of them, nothing
    // stays staged, and the range's staging area is free again.
    let mut truncated = good.clone();
    truncated.pop();
    let mut outside = good.clone();
    outside[1].keys[0] = version_key(b"zz", 1);
    let mut unordered = good.clone();
    unordered[1].keys.swap(0, 1);
    unordered[1].values.swap(0, 1);
    let mut miscounted = good.clone();
    miscounted
        .last_mut()
        .unwrap()
        .done
        .as_mut()
        .unwrap()
        .versions += 1;
    let mut bad_value = good.clone();
    bad_value[2].values[0] = vec![0xFF; 3];
    let mut no_head = good.clone();
    no_head.remove(0);
    for (what, msgs) in [
        ("truncated", truncated),
        ("key outside", outside),
        ("out of order", unordered),
        ("miscounted", miscounted),
        ("bad value", bad_value),
        ("no head", no_head),
    ] {
        assert!(receive(&r, msgs).await.is_err(), "{what} accepted");
        assert!(inbox.try_recv().is_err(), "{what} reached the store");
        assert_eq!(staged_keys(&*db), 0, "{what} left staged data");
    }

    // A good one reaches the store with all of it staged; the store's
    // answer is the transfer's.
    let store = tokio::spawn(async move {
        let Some(StoreMsg::Snapshot { env, staged, reply }) = inbox.recv().await else {
            panic!("no snapshot for the store");
        };
        assert_eq!((env.range_id, staged.index, staged.term), (RANGE, 30, 4));
        let _ = reply.send(Ok(true));
        (staged.chunks, staged)
    });
    receive(&r, good.clone()).await.expect("a good transfer");
    let (chunks, staged) = store.await.unwrap();
    assert_eq!(chunks, n_chunks);
    // While the store holds it (installing), another transfer of the range
    // is turned away.
    let busy = receive(&r, good).await.unwrap_err();
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
    // The staged data installs as the leader's.
    let rec = SnapshotInstall {
        index: 30,
        term: 4,
        header: Some(staged.header.clone()),
        chunks,
    };
    stage::install(&*db, RANGE, &rec).unwrap();
    assert_eq!(
        data_in(&*db, b"k", b"l"),
        data_in(&*src.engine(), b"k", b"l")
    );
    drop(staged);
    assert!(r.slots.acquire(RANGE).is_some(), "free once installed");
}
