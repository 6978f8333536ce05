//! Placement leader kills, and a placement replica replaced, under load.

use std::process::Command;
use std::time::{Duration, Instant};

use common::{start_strata_with, Background};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_survives_five_placement_leader_kills() {
    let c = start_strata_with(&["--placement-replicas", "3", "--routers", "2"]);
    let routers = c.router_endpoints();
    let paddrs = c.placement_addrs();
    assert_eq!((routers.len(), paddrs.len()), (2, 3));
    let load = Load::start(&routers).await;
    let mut kills = Vec::new();
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let i = placement_leader(&paddrs).await.expect("a placement leader");
        tokio::task::block_in_place(|| c.kill_placement(i));
        kills.push(Instant::now());
        eprintln!("round {round}: killed placement leader placement-{i}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| c.restart_placement(i));
    }
    let (log, mut admin, leases) = load.finish().await;
    let resumed = resumed(&log, &kills);
    assert!(
        resumed.iter().all(|d| *d < Duration::from_secs(10)),
        "writes did not resume: {resumed:?}"
    );
    check(&log, &mut admin, leases).await;
    c.stop();
}

/// A placement follower dies for good; the operator removes it and adds a
/// fresh replica (`strata ctl placement remove|add`), all under load; then
/// the leader is killed, so the group needs the new member for its quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_replica_is_replaced_under_load_without_client_errors() {
    let c = start_strata_with(&["--placement-replicas", "3", "--routers", "2"]);
    let routers = c.router_endpoints();
    let paddrs = c.placement_addrs();
    let load = Load::start(&routers).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lead = placement_leader(&paddrs).await.expect("a placement leader");
    let dead = (1..=3).find(|&i| i != lead).unwrap();
    tokio::task::block_in_place(|| c.kill_placement(dead));
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("ctl")
            .args(args)
            .args(["--placement", &paddrs.join(","), "--timeout", "10s"])
            .output()
            .expect("strata ctl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "strata ctl {args:?}: {err}");
        text
    };
    eprintln!(
        "{}",
        tokio::task::block_in_place(|| ctl(&["placement", "remove", &dead.to_string()]))
    );
    let fresh_addr = format!("127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let added = tokio::task::block_in_place(|| ctl(&["placement", "add", &fresh_addr]));
    eprintln!("{added}");
    let id: u64 = added
        .split("--id ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no id in {added:?}"));
    let survivors: Vec<String> = (1..=3)
        .filter(|&i| i != dead)
        .map(|i| paddrs[i - 1].clone())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.arg("placement")
        .args(["--id", &id.to_string(), "--listen", &fresh_addr])
        .args(["--join", &survivors.join(",")])
        .arg("--data-dir")
        .arg(tmp.path().join("fresh"));
    let fresh = Background::spawn(cmd);
    // It becomes a voter once caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let members = tokio::task::block_in_place(|| ctl(&["placement", "members", "--json"]));
        let voter = members
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|m| m["id"] == id && m["role"] == "voter");
        if voter {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica {id} did not become a voter: {members}\n{}",
            fresh.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Now the old leader goes: the survivor and the new replica carry on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kill_at = Instant::now();
    tokio::task::block_in_place(|| c.kill_placement(lead));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (log, mut admin, leases) = load.finish().await;
    resumed(&log, &[kill_at]);
    check(&log, &mut admin, leases).await;
    drop(fresh);
    c.stop();
}
