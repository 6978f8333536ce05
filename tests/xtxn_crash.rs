//! `kill -9` of the router in the middle of a cross-range txn (real
//! processes, the etcd-client crate): stopped by a failpoint between prepare
//! and commit, the txn is aborted in every range; stopped after its commit
//! decision, it is committed in every range at one revision — either way
//! within seconds, and no range stays frozen; the same when placement's
//! leader is killed too, mid-protocol. Strata only; needs the
//! `failpoints` feature (the router reads its failpoints file).

mod common;

#[cfg(feature = "failpoints")]
mod crash {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use etcd_client::{Client, GetOptions, Txn, TxnOp};
    use strata_proto::strata::node_client::NodeClient;
    use strata_proto::strata::{AdminKind, AdminRequest, GetRangesRequest};

    use super::common::{placement_leader, start_strata_with, Cluster, Target};

    const KEYS: usize = 21;

    /// Splits range 1 at `x/01` … `x/20` (largest first: range 1 keeps the
    /// next key), through its leader's Admin RPC.
    async fn split_into_21(c: &Cluster) {
        // Follows placement's leader (there may be several replicas).
        let mut p =
            strata_proto::placement_client::placement_client(&c.placement_addrs().join(","))
                .expect("placement");
        for i in (1..KEYS).rev() {
            let key = format!("x/{i:02}").into_bytes();
            let mut done = false;
            for _ in 0..100 {
                let r = p
                    .get_ranges(GetRangesRequest::default())
                    .await
                    .expect("ranges");
                let r = r.into_inner();
                let leader = r
                    .ranges
                    .iter()
                    .find(|i| i.desc.as_ref().is_some_and(|d| d.id == 1))
                    .map(|i| i.leader_node)
                    .unwrap_or(0);
                if let Some(n) = r.nodes.iter().find(|n| n.id == leader) {
                    if let Ok(mut node) = NodeClient::connect(format!("http://{}", n.addr)).await {
                        let req = AdminRequest {
                            range_id: 1,
                            epoch: None,
                            kind: AdminKind::Split as i32,
                            peer: None,
                            split_key: key.clone(),
                        };
                        if node
                            .admin(req)
                            .await
                            .is_ok_and(|a| a.get_ref().error.is_none())
                        {
                            done = true;
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(done, "split at x/{i:02}");
        }
        for _ in 0..100 {
            let r = p
                .get_ranges(GetRangesRequest::default())
                .await
                .expect("ranges");
            if r.into_inner().ranges.len() >= KEYS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("placement never listed {KEYS} ranges");
    }

    fn put_all(value: &str) -> Txn {
        let ops: Vec<TxnOp> = (0..KEYS)
            .map(|i| TxnOp::put(format!("x/{i:02}"), value, None))
            .collect();
        Txn::new().and_then(ops)
    }

    async fn values(kv: &mut Client) -> Vec<(String, i64)> {
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            kv.get("x/", Some(GetOptions::new().with_prefix())),
        )
        .await
        .expect("list timed out")
        .expect("list");
        r.kvs()
            .iter()
            .map(|kv| (kv.value_str().unwrap().to_string(), kv.mod_revision()))
            .collect()
    }

    /// Sets the router's failpoint, runs the txn into it, and kills the router
    /// (`kill -9`) while the txn hangs there — and, with `placement_too`, the
    /// placement leader just before, so the txn's record (or its absence)
    /// must be read from the next leader; then starts the router again,
    /// without the failpoint. Returns the placement replica killed.
    async fn txn_into_crash(
        c: &Cluster,
        fp: &std::path::Path,
        point: &str,
        value: &str,
        placement_too: bool,
    ) -> Option<usize> {
        std::fs::write(fp, format!("{point}=1*return\n")).expect("failpoints file");
        tokio::time::sleep(Duration::from_millis(400)).await; // polled every 100 ms
        let mut kv = c.client().await;
        let stuck = tokio::time::timeout(Duration::from_secs(2), kv.txn(put_all(value))).await;
        assert!(
            stuck.is_err(),
            "the txn answered although its router stalled: {stuck:?}"
        );
        let placement = match placement_too {
            true => {
                let addrs = c.placement_addrs();
                let leader = placement_leader(&addrs).await.expect("a placement leader");
                c.kill_placement(leader);
                Some(leader)
            }
            false => None,
        };
        c.kill_router(1);
        std::fs::write(fp, "# nothing\n").expect("failpoints file");
        c.restart_router(1);
        placement
    }

    /// Killed between prepare and commit: aborted everywhere ("old" left).
    async fn aborted_everywhere(c: &Cluster) {
        unfrozen(c).await;
        let mut kv = c.client().await;
        let now: Vec<(String, i64)> = values(&mut kv).await;
        let main: BTreeSet<&str> = now
            .iter()
            .map(|(v, _)| v.as_str())
            .filter(|v| !v.starts_with('v'))
            .collect();
        assert_eq!(main, BTreeSet::from(["old"]), "{now:?}");
    }

    /// Killed after recording its commit decision: `value` everywhere, at
    /// one revision.
    async fn committed_everywhere(c: &Cluster, value: &str) {
        let mut kv = c.client().await;
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen = values(&mut kv).await;
            if seen.iter().filter(|(v, _)| v == value).count() == KEYS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let new: Vec<&(String, i64)> = seen.iter().filter(|(v, _)| v == value).collect();
        assert_eq!(new.len(), KEYS, "{seen:?}");
        let revs: BTreeSet<i64> = new.iter().map(|(_, r)| *r).collect();
        assert_eq!(revs.len(), 1, "one revision: {seen:?}");
        unfrozen(c).await;
    }

    /// Writes to every key get through (no range stays frozen) within `limit`.
    async fn unfrozen(c: &Cluster) {
        let mut kv = c.client().await;
        for i in 0..KEYS {
            tokio::time::timeout(
                Duration::from_secs(20),
                kv.put(format!("x/{i:02}/after"), "v", None),
            )
            .await
            .expect("a write to a participant range timed out")
            .expect("put");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn router_killed_mid_txn_is_resolved_in_every_range() {
        if Target::from_env() != Target::Strata {
            return;
        }
        // Three placement replicas: the last part kills placement's leader.
        let c = start_strata_with(&["--placement-replicas", "3"]);
        split_into_21(&c).await;
        // The router, restarted watching a failpoints file (the variable is
        // inherited by what the harness starts; this binary has one test).
        let fp = c.data_dir.join("router.failpoints");
        std::fs::write(&fp, "# nothing\n").expect("failpoints file");
        c.kill_router(1);
        std::env::set_var("STRATA_FAILPOINTS_FILE", &fp);
        c.restart_router(1);
        let mut kv = c.client().await;
        kv.txn(put_all("old")).await.expect("txn over 21 ranges");

        // Killed between prepare and commit: aborted everywhere.
        txn_into_crash(&c, &fp, "txn_stall_after_prepare", "new", false).await;
        aborted_everywhere(&c).await;
        // Killed after recording its commit decision: committed everywhere,
        // at one revision.
        txn_into_crash(&c, &fp, "txn_stall_after_decide", "new", false).await;
        committed_everywhere(&c, "new").await;

        // The same with placement's leader killed too (the decision, or
        // none, is raft state: the next leader answers the resolvers).
        let mut kv = c.client().await;
        kv.txn(put_all("old")).await.expect("txn over 21 ranges");
        let p = txn_into_crash(&c, &fp, "txn_stall_after_prepare", "new", true).await;
        aborted_everywhere(&c).await;
        c.restart_placement(p.expect("killed a placement replica"));
        let p = txn_into_crash(&c, &fp, "txn_stall_after_decide", "newer", true).await;
        committed_everywhere(&c, "newer").await;
        c.restart_placement(p.expect("killed a placement replica"));
    }
}
