//! The oracle across leader kills, pauses and partitions, and a replica
//! replaced while it serves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_proto::strata::MembersRequest;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_oracle_survives_five_leader_kills_without_repeating_or_going_back() {
    let mut g = Group::start(3);
    let addrs = g.addrs();
    assert!(
        leader(&addrs, Duration::from_secs(20)).await.is_some(),
        "no placement leader elected"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 4, stop.clone());
    let kills = Arc::new(Mutex::new(Vec::new()));
    let mut extra = Vec::new();
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let pos = g.leader_pos().await;
        let r = &mut g.replicas[pos];
        let id = r.id;
        if round % 3 == 2 {
            // Paused past its lease: the others elect a leader, and it must
            // not answer from its old oracle state when it wakes up.
            eprintln!("round {round}: pausing placement leader {id}");
            // A client that sticks to it meanwhile: its calls, made after
            // the new leader answered others, wait in the socket until the
            // old leader wakes up.
            let sticky = sticky_calls(
                &r.addr,
                Duration::from_millis(2500),
                Duration::from_millis(100),
                false,
            )
            .await;
            let r = &*r;
            tokio::task::block_in_place(|| r.pause(Duration::from_millis(2500)));
            extra.extend(sticky.await.unwrap());
            continue;
        }
        r.kill9();
        kills.lock().unwrap().push(Instant::now());
        eprintln!("round {round}: killed placement leader {id}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        r.start();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ops, errs) = running.await.unwrap();
    eprintln!(
        "{} calls to a paused leader were answered after it woke up",
        extra.len()
    );
    ops.extend(extra);
    let kills = kills.lock().unwrap().clone();
    let gaps = gaps_after(&ops, &kills);
    let mut sorted = gaps.clone();
    sorted.sort();
    eprintln!(
        "{} answered allocations, {} failed calls; time from each kill to the first answer to a call made after it: {:?} (median {:?}, worst {:?})",
        ops.len(),
        errs.len(),
        gaps,
        sorted[sorted.len() / 2],
        sorted.last().unwrap()
    );
    check(&ops, &errs);
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(6)),
        "allocations did not resume after a kill: {gaps:?}"
    );
    for r in &mut g.replicas {
        r.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replica_is_replaced_by_a_fresh_one_while_the_oracle_serves() {
    let mut g = Group::start(3);
    let addrs = g.addrs();
    let lead = leader(&addrs, Duration::from_secs(20))
        .await
        .expect("a leader");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 2, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A follower dies for good.
    let victim = g
        .replicas
        .iter()
        .map(|r| r.id)
        .find(|&id| id != lead)
        .unwrap();
    g.replicas
        .iter_mut()
        .find(|r| r.id == victim)
        .unwrap()
        .kill9();
    let ctl = |args: &[&str]| ctl(&addrs, args);
    // Remove it (the list starts with the dead one: the client moves on).
    let out = tokio::task::block_in_place(|| ctl(&["placement", "remove", &victim.to_string()]));
    eprintln!("{out}");
    // Add a fresh replica's address, then start it as `add` says.
    let tmp = tempfile::tempdir().unwrap();
    let survivors: Vec<String> = g
        .replicas
        .iter()
        .filter(|r| r.id != victim)
        .map(|r| r.addr.clone())
        .collect();
    let fresh_addr = format!("127.0.0.1:{}", free_port());
    let out = tokio::task::block_in_place(|| ctl(&["placement", "add", &fresh_addr]));
    eprintln!("{out}");
    let id: u64 = out
        .split("--id ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    assert!(
        out.contains(&format!("--join {}", survivors.join(","))) || out.contains("--join "),
        "{out}"
    );
    let mut fresh = Replica {
        id,
        addr: fresh_addr,
        dir: tmp.path().join("fresh"),
        args: vec![
            "--id".into(),
            id.to_string(),
            "--join".into(),
            survivors.join(","),
            "--replicas".into(),
            "3".into(),
            "--no-scheduler".into(),
        ],
        proc: None,
    };
    fresh.start();
    let mut c = client(&survivors[0]).await.expect("a live replica");
    // It becomes a voter once caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let members = loop {
        let r = c
            .members(MembersRequest {})
            .await
            .expect("members")
            .into_inner();
        let joined = r.members.iter().find(|m| m.addr == fresh.addr);
        if joined.is_some_and(|m| !m.learner) && r.members.len() == 3 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the fresh replica did not become a voter: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("members after the replacement: {:?}", members.members);
    assert!(
        !members.members.iter().any(|m| m.id == victim),
        "the dead replica is still a member"
    );
    stop_and_check(stop, running).await;
    // The new member holds the state: with the original leader killed, the
    // group (the other survivor and the fresh replica) still serves.
    let first = g.replicas.iter().position(|r| r.id == lead).unwrap();
    g.replicas[first].kill9();
    let mut all = addrs.clone();
    all.push(fresh.addr.clone());
    let mut conns = vec![None; all.len()];
    let got = alloc(&all, &mut conns, 1, Duration::from_secs(15)).await;
    assert!(
        got.is_ok(),
        "no serving leader among the survivor and the fresh replica: {got:?}"
    );
    fresh.kill9();
    for r in &mut g.replicas {
        r.kill9();
    }
}

/// A leader cut off from its group (raft messages dropped both ways) while
/// clients still reach it: it must stop answering before the others elect a
/// new leader, or an answer of its could fall below one the new leader gave.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_group_stops_answering_before_a_new_one_serves() {
    let g = Group::start(3);
    let addrs = g.addrs();
    assert!(
        leader(&addrs, Duration::from_secs(20)).await.is_some(),
        "no placement leader elected"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 3, stop.clone());
    let mut sticky_ops = Vec::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let r = &g.replicas[g.leader_pos().await];
        let id = r.id;
        // Reads (`alloc(0)`: answered from memory, no window to persist)
        // to it alone, every 10 ms, through the cut and after.
        let sticky = sticky_calls(
            &r.addr,
            Duration::from_millis(3500),
            Duration::from_millis(10),
            true,
        )
        .await;
        r.failpoints("placement_partition=return\n");
        eprintln!("round {round}: cut placement leader {id} off its group");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        r.failpoints("");
        let answered = sticky.await.unwrap();
        eprintln!(
            "  it answered {} calls made to it during the cut",
            answered.len()
        );
        sticky_ops.extend(answered);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ops, errs) = running.await.unwrap();
    eprintln!(
        "{} answered allocations, {} failed calls",
        ops.len(),
        errs.len()
    );
    ops.extend(sticky_ops);
    check(&ops, &errs);
}

/// Removing the leader itself: it hands its lead to another voter first
/// (the caller retries there), then the new leader removes it; the oracle
/// serves throughout, its answers in order, and the removed replica refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_leader_hands_its_lead_over_first() {
    let g = Group::start(3);
    let addrs = g.addrs();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 2, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old = g.replicas[g.leader_pos().await].id;
    let out =
        tokio::task::block_in_place(|| ctl(&addrs, &["placement", "remove", &old.to_string()]));
    eprintln!("{out}");
    let new = leader(&addrs, Duration::from_secs(10))
        .await
        .expect("a leader");
    assert_ne!(new, old, "the removed replica still leads");
    let members = tokio::task::block_in_place(|| ctl(&addrs, &["placement", "members", "--json"]));
    assert!(!members.contains(&format!("\"id\":{old},")), "{members}");
    assert_eq!(members.lines().count(), 2, "{members}");
    stop_and_check(stop, running).await;
    // The removed replica answers nothing any more.
    let removed = &g.replicas.iter().find(|r| r.id == old).unwrap().addr;
    let mut c = client(removed).await.expect("connect");
    let got = c
        .alloc(strata_proto::strata::AllocRequest { count: 0 })
        .await;
    assert!(got.is_err(), "a removed replica answered: {got:?}");
}
