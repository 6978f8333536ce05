//! Planted watch bugs on the scenario of tests.rs.
//!
//! Watcher 0 (everything, prev_kv) has one stream: [0] created, [1]..=[9] one response
//! per revision 1..=9 (rev 3 has two events), [10] a progress notify at rev 9.
//! Watcher 1 watches key a (revs 1, 3); watcher 2 watches [b, c) without deletes.

use super::tests::{assert_clean, kinds, scenario};
use crate::robustness::history::{EventKind, History, WatchResp, WatchStream};

fn built() -> History {
    scenario().0.build()
}

fn resp(h: &mut History, w: usize, i: usize) -> &mut WatchResp {
    &mut h.watches[w].streams[0].responses[i]
}

#[test]
fn layout_is_as_documented() {
    let h = built();
    let revs: Vec<i64> = h.watches[0].streams[0]
        .responses
        .iter()
        .map(|r| r.revision)
        .collect();
    assert_eq!(revs, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]);
    assert_eq!(h.watches[0].streams[0].responses[3].events.len(), 2);
}

#[test]
fn dropped_event() {
    let mut h = built();
    h.watches[0].streams[0].responses.remove(5); // rev 5, also seen by watcher 2
    assert_eq!(kinds(&h), vec!["watch.reliable"]);
    // Rev 4 is the unknown put only watcher 0 saw; the final read still reveals it.
    let mut h = built();
    h.watches[0].streams[0].responses.remove(4);
    assert_eq!(kinds(&h), vec!["watch.reliable"]);
}

#[test]
fn duplicated_event() {
    let mut h = built();
    let dup = resp(&mut h, 0, 2).clone();
    h.watches[0].streams[0].responses.insert(3, dup);
    assert_eq!(kinds(&h), vec!["watch.unique"]);
}

#[test]
fn revision_split_across_responses() {
    let mut h = built();
    let second = resp(&mut h, 0, 3).events.pop().unwrap();
    let mut r = resp(&mut h, 0, 3).clone();
    r.events = vec![second];
    h.watches[0].streams[0].responses.insert(4, r);
    assert_eq!(kinds(&h), vec!["watch.atomic"]);
}

#[test]
fn reordered_events() {
    let mut h = built();
    h.watches[0].streams[0].responses.swap(4, 5);
    assert_eq!(kinds(&h), vec!["watch.ordered"]);
    // Within one response too: revs 3, 3, 2.
    let mut h = built();
    let moved = resp(&mut h, 0, 2).events.remove(0);
    resp(&mut h, 0, 3).events.push(moved);
    h.watches[0].streams[0].responses.remove(2);
    assert_eq!(kinds(&h), vec!["watch.ordered"]);
}

#[test]
fn progress_notify_before_lower_event() {
    let mut h = built();
    let p = WatchResp {
        revision: 5,
        progress: true,
        ..WatchResp::default()
    };
    h.watches[0].streams[0].responses.insert(5, p); // before rev 5's response
    assert_eq!(kinds(&h), vec!["watch.bookmarkable"]);
}

#[test]
fn wrong_prev_kv() {
    let mut h = built();
    let ev = &mut resp(&mut h, 0, 6).events[0]; // rev 6: delete b1
    assert_eq!(ev.kind, EventKind::Delete);
    ev.prev_kv.as_mut().unwrap().version = 7;
    assert_eq!(kinds(&h), vec!["watch.prev_kv"]);
}

#[test]
fn filter_ignored() {
    // Watcher 2 has no_delete, yet receives the delete of b1 at rev 6.
    let mut h = built();
    let mut del = resp(&mut h, 0, 6).clone();
    del.events[0].prev_kv = None;
    let st = &mut h.watches[2].streams[0];
    let at = st.responses.iter().position(|r| r.revision == 5).unwrap() + 1;
    st.responses.insert(at, del);
    assert_eq!(kinds(&h), vec!["watch.filter"]);
    // Watcher 1 (key a) receives b1's put.
    let mut h = built();
    let mut put = resp(&mut h, 0, 2).clone();
    put.events[0].prev_kv = None;
    h.watches[1].streams[0].responses.insert(2, put);
    assert_eq!(kinds(&h), vec!["watch.filter"]);
}

#[test]
fn watchers_disagree() {
    let mut h = built();
    resp(&mut h, 1, 1).events[0].kv.value = "other".into();
    let k = kinds(&h);
    assert!(k.contains(&"watch.consistent".to_string()), "{k:?}");
    assert!(k.contains(&"watch.event_state".to_string()), "{k:?}");
}

#[test]
fn event_state_differs() {
    let mut h = built();
    resp(&mut h, 2, 3).events[0].kv.create_revision = 1; // watcher 2's b3 at rev 3
    let k = kinds(&h);
    assert!(k.contains(&"watch.event_state".to_string()), "{k:?}");
}

fn split_at(h: &mut History, at: usize, start: i64) {
    let st = &mut h.watches[0].streams[0];
    let rest = st.responses.split_off(at);
    st.ended = "connection reset".into();
    h.watches[0].streams.push(WatchStream {
        endpoint: "r1".into(),
        opened: 5,
        start_revision: start,
        responses: rest,
        ended: "end of run".into(),
    });
}

#[test]
fn restart_resumes() {
    let mut h = built();
    split_at(&mut h, 5, 5); // stream 1 from rev 5: fine
    assert_clean(&h);
    let mut h = built();
    split_at(&mut h, 5, 6); // asked from 6, yet delivers rev 5
    assert_eq!(kinds(&h), vec!["watch.resumable"]);
    let mut h = built();
    split_at(&mut h, 5, 6); // resumes one revision late and so loses rev 5
    h.watches[0].streams[1].responses.remove(0);
    assert_eq!(kinds(&h), vec!["watch.reliable"]);
}

#[test]
fn compaction_cancel_excuses_the_gap() {
    let mut h = built();
    split_at(&mut h, 5, 7);
    h.watches[0].streams[1].responses.drain(0..2); // revs 5, 6 never delivered
    let lost = WatchResp {
        revision: 8,
        canceled: true,
        compact_revision: 6,
        ..WatchResp::default()
    };
    h.watches[0].streams[0].responses.push(lost);
    assert_clean(&h);
    h.watches[0].streams[0]
        .responses
        .last_mut()
        .unwrap()
        .compact_revision = 0;
    assert_eq!(kinds(&h), vec!["watch.reliable", "watch.reliable"]);
}
