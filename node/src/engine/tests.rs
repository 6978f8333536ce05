//! Raft log storage semantics, run against every storage engine.

use raft::Storage;

use super::*;
use crate::storage::testing::{engine_tests, TestEngine};

engine_tests!(
    append_persist_reload,
    overwrite_drops_the_old_tail,
    truncate_keeps_term_of_first_index_minus_one,
    snapshot_replaces_the_log,
    snapshot_generation,
    destroy_removes_one_replica_only,
    split_init_starts_the_log_past_index_one,
    reload_clamps_commit_to_the_log,
    conf_state_commit_and_applied_persist,
    corrupt_records_are_errors,
    the_entry_cache_agrees_with_the_log;
    rocks_only: reload_after_engine_restart,
);

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8].into(),
        ..Default::default()
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

/// Appends as the Ready round does: stage, write with fsync, then tell the
/// storage it is durable.
fn append(db: &Arc<dyn Engine>, s: &RaftStorage, ents: &[Entry], hs: Option<&HardState>) {
    let mut wb = WriteBatch::new();
    s.stage_append(&mut wb, ents, hs).unwrap();
    db.write(&wb, true).unwrap();
    s.on_persisted(ents, hs);
}

fn get(s: &RaftStorage, low: u64, high: u64) -> raft::Result<Vec<Entry>> {
    s.entries(low, high, None, GetEntriesContext::empty(false))
}

fn indexes(ents: &[Entry]) -> Vec<(u64, u64)> {
    ents.iter().map(|e| (e.index, e.term)).collect()
}

fn is_store_err(r: raft::Result<impl std::fmt::Debug>, want: StorageError) -> bool {
    matches!(r, Err(raft::Error::Store(e)) if e == want)
}

fn append_persist_reload(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1, 2, 3]).unwrap();
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.first_index().unwrap(), 1);
    let hs = HardState {
        term: 1,
        commit: 3,
        ..Default::default()
    };
    append(&db, &s, &entries(1..=5, 1), Some(&hs));
    drop(s);
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(s.term(5).unwrap(), 1);
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state.commit, 3);
    assert_eq!(st.hard_state.term, 1);
    assert_eq!(
        st.conf_state.voters,
        vec![1, 2, 3],
        "voters of the first open"
    );
    assert_eq!(get(&s, 1, 6).unwrap(), entries(1..=5, 1));
    // max_size limits the answer, but never below one entry.
    let one = entry(2, 1).write_to_bytes().unwrap().len() as u64;
    let sized = |max| s.entries(2, 6, max, GetEntriesContext::empty(false));
    assert_eq!(sized(0).unwrap().len(), 1);
    assert_eq!(sized(2 * one - 1).unwrap().len(), 1);
    assert_eq!(sized(2 * one).unwrap().len(), 2);
    assert!(is_store_err(get(&s, 6, 7), StorageError::Unavailable));
}

fn overwrite_drops_the_old_tail(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    append(&db, &s, &entries(1..=10, 1), None);
    // A new leader's shorter log from index 5 replaces 5..=10.
    append(&db, &s, &entries(5..=6, 2), None);
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(s.term(4).unwrap(), 1);
    assert_eq!(s.term(6).unwrap(), 2);
    assert!(is_store_err(s.term(7), StorageError::Unavailable));
    let want = [entries(1..=4, 1), entries(5..=6, 2)].concat();
    assert_eq!(get(&s, 1, 11).unwrap(), want);
    // Nothing of the old tail is left on disk either.
    let s = RaftStorage::open(db.clone(), 7, &[]).unwrap();
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(s.term(6).unwrap(), 2);
    assert_eq!(get(&s, 1, 11).unwrap(), want);
    // A longer overwrite from the middle extends the log again.
    append(&db, &s, &entries(3..=8, 3), None);
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(
        indexes(&get(&s, 1, 9).unwrap()),
        vec![
            (1, 1),
            (2, 1),
            (3, 3),
            (4, 3),
            (5, 3),
            (6, 3),
            (7, 3),
            (8, 3)
        ]
    );
}

fn truncate_keeps_term_of_first_index_minus_one(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    append(
        &db,
        &s,
        &[entries(1..=4, 1), entries(5..=10, 2)].concat(),
        None,
    );
    let mut wb = WriteBatch::new();
    s.stage_truncate(&mut wb, 5).unwrap();
    db.write(&wb, false).unwrap();
    let check = |s: &RaftStorage| {
        assert_eq!(s.first_index().unwrap(), 6);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.truncated_index(), 5);
        // raft asks for the term of first_index - 1.
        assert_eq!(s.term(5).unwrap(), 2);
        assert!(is_store_err(s.term(4), StorageError::Compacted));
        assert!(is_store_err(get(s, 5, 11), StorageError::Compacted));
        assert_eq!(get(s, 6, 11).unwrap(), entries(6..=10, 2));
    };
    check(&s);
    check(&RaftStorage::open(db.clone(), 7, &[]).unwrap());
    // Truncating outside the log is a no-op.
    let mut wb = WriteBatch::new();
    s.stage_truncate(&mut wb, 3).unwrap();
    s.stage_truncate(&mut wb, 11).unwrap();
    assert!(wb.is_empty());
    check(&s);
    // Truncating everything leaves an empty log that knows its last term.
    let mut wb = WriteBatch::new();
    s.stage_truncate(&mut wb, 10).unwrap();
    db.write(&wb, false).unwrap();
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 10)
    );
    assert_eq!(s.term(10).unwrap(), 2);
}

fn snapshot_replaces_the_log(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[]).unwrap();
    append(&db, &s, &entries(1..=3, 1), None);
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 20;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
    snap.mut_metadata().mut_conf_state().learners = vec![4];
    let mut wb = WriteBatch::new();
    s.stage_snapshot(&mut wb, &snap).unwrap();
    db.write(&wb, true).unwrap();
    let check = |s: &RaftStorage| {
        assert_eq!(s.first_index().unwrap(), 21);
        assert_eq!(s.last_index().unwrap(), 20);
        assert_eq!(s.term(20).unwrap(), 3);
        assert!(is_store_err(s.term(3), StorageError::Compacted));
        assert_eq!(s.applied_index().unwrap(), 20);
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state.commit, st.hard_state.term), (20, 3));
        assert_eq!(st.conf_state.voters, vec![1, 2]);
        assert_eq!(st.conf_state.learners, vec![4]);
    };
    check(&s);
    let s = RaftStorage::open(db.clone(), 7, &[9]).unwrap();
    check(&s);
    // The log goes on after the snapshot.
    append(&db, &s, &entries(21..=22, 3), None);
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(get(&s, 21, 23).unwrap(), entries(21..=22, 3));
}

/// Asks for a snapshot until the background generation answers (bounded).
fn snapshot_when_ready(s: &RaftStorage, request_index: u64, to: u64) -> Snapshot {
    for _ in 0..500 {
        match s.snapshot(request_index, to) {
            Ok(snap) => return snap,
            Err(e) => assert!(
                is_store_err(
                    Err::<(), _>(e),
                    StorageError::SnapshotTemporarilyUnavailable
                ),
                "only 'temporarily unavailable' while generating"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("no snapshot generated");
}

fn snapshot_generation(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1, 2]).unwrap();
    append(&db, &s, &entries(1..=5, 2), None);
    let applied = |i: u64| {
        let mut wb = WriteBatch::new();
        s.stage_applied(&mut wb, i);
        db.write(&wb, false).unwrap();
    };
    applied(4);
    assert!(is_store_err(
        s.snapshot(3, 2),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    s.set_snapshot_header(Arc::new(|view: &dyn crate::storage::Snapshot| {
        // Read from the same view as the raft position.
        let applied = view.get(Cf::Raft, &raft_key(7, KIND_APPLIED, 0))?.unwrap();
        Ok([b"state at ".as_slice(), &applied].concat())
    }));
    // The first ask starts generating; what it sees is the state of then.
    assert!(is_store_err(
        s.snapshot(3, 2),
        StorageError::SnapshotTemporarilyUnavailable
    ));
    let snap = snapshot_when_ready(&s, 3, 2);
    let md = snap.get_metadata();
    assert_eq!((md.index, md.term), (4, 2));
    assert_eq!(md.get_conf_state().voters, vec![1, 2]);
    assert_eq!(
        &snap.data[..],
        [b"state at ".as_slice(), &4u64.to_be_bytes()].concat()
    );
    // The engine view it streams from goes to the transfer, once.
    assert!(
        s.take_generated(3, &snap).is_none(),
        "handed to peer 2 only"
    );
    let view = s.take_generated(2, &snap).expect("the view");
    assert!(s.take_generated(2, &snap).is_none());
    applied(5);
    let k = raft_key(7, KIND_APPLIED, 0);
    assert_eq!(view.get(Cf::Raft, &k).unwrap().unwrap(), 4u64.to_be_bytes());
    // A snapshot older than asked for is not one raft can use: a new one is
    // generated.
    let snap = snapshot_when_ready(&s, 5, 3);
    assert_eq!(snap.get_metadata().index, 5);
    // Truncating the log exactly at the applied index (a learner is added)
    // keeps its term known.
    let mut wb = WriteBatch::new();
    s.stage_truncate(&mut wb, 5).unwrap();
    db.write(&wb, true).unwrap();
    let snap = snapshot_when_ready(&s, 0, 3);
    assert_eq!(
        (snap.get_metadata().index, snap.get_metadata().term),
        (5, 2)
    );
}

fn destroy_removes_one_replica_only(t: &mut TestEngine) {
    let db = t.engine();
    let a = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    let b = RaftStorage::open(db.clone(), 8, &[1]).unwrap();
    let hs = HardState {
        term: 4,
        commit: 2,
        ..Default::default()
    };
    append(&db, &a, &entries(1..=3, 4), Some(&hs));
    append(&db, &b, &entries(1..=2, 4), Some(&hs));
    let mut wb = WriteBatch::new();
    a.stage_applied(&mut wb, 2);
    b.stage_applied(&mut wb, 2);
    db.write(&wb, false).unwrap();
    let mut wb = WriteBatch::new();
    a.stage_destroy(&mut wb);
    db.write(&wb, true).unwrap();
    let a = RaftStorage::open(db.clone(), 7, &[5]).unwrap();
    assert_eq!(a.last_index().unwrap(), 0);
    assert_eq!(a.applied_index().unwrap(), 0);
    let st = a.initial_state().unwrap();
    assert_eq!(st.hard_state, HardState::default());
    assert_eq!(st.conf_state.voters, vec![5], "created afresh");
    let b = RaftStorage::open(db, 8, &[]).unwrap();
    assert_eq!(b.last_index().unwrap(), 2);
    assert_eq!(b.applied_index().unwrap(), 2);
    assert_eq!(b.initial_state().unwrap().hard_state, hs);
}

/// A split-created replica's log starts truncated at the init index: a peer
/// with an empty log can only be sent a snapshot. An uninitialized
/// replica's term and vote survive (it may have voted in that term).
fn split_init_starts_the_log_past_index_one(t: &mut TestEngine) {
    let db = t.engine();
    let old = RaftStorage::open(db.clone(), 9, &[]).unwrap();
    let mut wb = WriteBatch::new();
    old.stage_append(
        &mut wb,
        &[],
        Some(&HardState {
            term: 8,
            vote: 3,
            ..Default::default()
        }),
    )
    .unwrap();
    db.write(&wb, true).unwrap();
    for (prior, want_term, want_vote) in [(None, SPLIT_INIT_TERM, 0), (Some((8, 3)), 8, 3)] {
        let mut wb = WriteBatch::new();
        RaftStorage::stage_split_init(&mut wb, 9, &[1, 2, 3], prior).unwrap();
        db.write(&wb, true).unwrap();
        let s = RaftStorage::open(db.clone(), 9, &[]).unwrap();
        assert_eq!(s.first_index().unwrap(), SPLIT_INIT_INDEX + 1);
        assert_eq!(s.last_index().unwrap(), SPLIT_INIT_INDEX);
        assert_eq!(s.term(SPLIT_INIT_INDEX).unwrap(), SPLIT_INIT_TERM);
        assert!(is_store_err(get(&s, 1, 2), StorageError::Compacted));
        assert_eq!(s.applied_index().unwrap(), SPLIT_INIT_INDEX);
        let st = s.initial_state().unwrap();
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(st.hard_state.commit, SPLIT_INIT_INDEX);
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote),
            (want_term, want_vote)
        );
    }
}

fn reload_clamps_commit_to_the_log(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    append(&db, &s, &entries(1..=3, 1), None);
    // A torn state: the hard state claims more than the log holds.
    let hs = HardState {
        term: 1,
        commit: 9,
        ..Default::default()
    };
    append(&db, &s, &[], Some(&hs));
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 3);
}

fn conf_state_commit_and_applied_persist(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    append(&db, &s, &entries(1..=6, 1), None);
    let mut wb = WriteBatch::new();
    s.set_commit(&mut wb, 5).unwrap();
    s.stage_applied(&mut wb, 5);
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.stage_conf_state(&mut wb, &cs).unwrap();
    db.write(&wb, false).unwrap();
    assert_eq!(s.conf_state().voters, vec![1, 2, 3]);
    // A commit index never goes back.
    let mut wb = WriteBatch::new();
    s.set_commit(&mut wb, 4).unwrap();
    assert!(wb.is_empty());
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!(s.applied_index().unwrap(), 5);
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state.commit, 5);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
}

fn corrupt_records_are_errors(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    append(&db, &s, &entries(1..=3, 1), None);
    let mut wb = WriteBatch::new();
    wb.put(Cf::Raft, raft_key(7, KIND_ENTRY, 2), b"\xff\xff\xff");
    wb.put(Cf::Raft, raft_key(7, KIND_APPLIED, 0), b"short");
    db.write(&wb, false).unwrap();
    // What was written is served from the entry cache; what is read from
    // the engine is checked.
    s.drop_entry_cache();
    assert!(get(&s, 1, 4).is_err(), "undecodable entry");
    assert!(s.term(2).is_err());
    assert!(s.applied_index().is_err());
    let mut wb = WriteBatch::new();
    wb.put(Cf::Raft, raft_key(7, KIND_TRUNCATED, 0), b"short");
    db.write(&wb, false).unwrap();
    assert!(RaftStorage::open(db.clone(), 7, &[]).is_err());
    let mut wb = WriteBatch::new();
    wb.put(Cf::Raft, raft_key(8, KIND_HARD_STATE, 0), b"\xff\xff\xff");
    db.write(&wb, false).unwrap();
    assert!(RaftStorage::open(db, 8, &[]).is_err());
}

fn reload_after_engine_restart(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1, 2, 3]).unwrap();
    let hs = HardState {
        term: 2,
        vote: 1,
        commit: 4,
        ..Default::default()
    };
    append(&db, &s, &entries(1..=6, 2), Some(&hs));
    let mut wb = WriteBatch::new();
    s.stage_truncate(&mut wb, 2).unwrap();
    s.stage_applied(&mut wb, 4);
    db.write(&wb, false).unwrap();
    drop((s, db));
    let db = t.reopen().expect("a persistent engine");
    let s = RaftStorage::open(db, 7, &[]).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 6));
    assert_eq!(s.term(2).unwrap(), 2);
    assert_eq!(s.applied_index().unwrap(), 4);
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, hs);
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(get(&s, 3, 7).unwrap(), entries(3..=6, 2));
}

/// Whatever happens to a log (appends, a new leader's overwrites,
/// truncation, snapshots, cache trimming and dropping), a storage that reads
/// through its entry cache answers `entries` and `term` exactly as one just
/// opened over the same engine, which has nothing cached.
fn the_entry_cache_agrees_with_the_log(t: &mut TestEngine) {
    let db = t.engine();
    let s = RaftStorage::open(db.clone(), 7, &[1]).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let mut term = 1;
    for step in 0..400 {
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        match next(20) {
            0..=11 => {
                // Mostly extend the log; sometimes a new leader overwrites its tail.
                let from = if next(4) == 0 {
                    term += 1;
                    first + next(last + 2 - first)
                } else {
                    last + 1
                };
                let ents: Vec<Entry> = (from..from + 1 + next(8))
                    .map(|i| Entry {
                        index: i,
                        term,
                        data: vec![i as u8; if next(10) == 0 { 300_000 } else { 40 }].into(),
                        ..Default::default()
                    })
                    .collect();
                append(&db, &s, &ents, None);
            }
            12..=14 if last >= first => {
                let mut wb = WriteBatch::new();
                s.stage_truncate(&mut wb, first + next(last + 1 - first))
                    .unwrap();
                db.write(&wb, true).unwrap();
            }
            15..=17 => s.compact_entry_cache(first + next(last + 2 - first)),
            18 => s.drop_entry_cache(),
            _ => {
                let mut snap = Snapshot::default();
                // Past the log, or inside it (a follower's uncommitted
                // tail that the snapshot replaces).
                snap.mut_metadata().index = match next(2) {
                    0 => last + next(3),
                    _ => first + next(last + 1 - first),
                };
                snap.mut_metadata().term = term;
                let mut wb = WriteBatch::new();
                s.stage_snapshot(&mut wb, &snap).unwrap();
                db.write(&wb, true).unwrap();
            }
        }
        let fresh = RaftStorage::open(db.clone(), 7, &[]).unwrap();
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        assert_eq!(
            (first, last),
            (fresh.first_index().unwrap(), fresh.last_index().unwrap())
        );
        for low in first.saturating_sub(1)..=last + 1 {
            assert_eq!(
                format!("{:?}", s.term(low)),
                format!("{:?}", fresh.term(low)),
                "step {step}: term({low})"
            );
            for high in low + 1..=last + 1 {
                for max in [None, Some(500)] {
                    let ctx = || GetEntriesContext::empty(false);
                    assert_eq!(
                        format!(
                            "{:?}",
                            s.entries(low, high, max, ctx()).map(|e| indexes(&e))
                        ),
                        format!(
                            "{:?}",
                            fresh.entries(low, high, max, ctx()).map(|e| indexes(&e))
                        ),
                        "step {step}: entries({low}, {high}, {max:?})"
                    );
                }
            }
        }
    }
}
