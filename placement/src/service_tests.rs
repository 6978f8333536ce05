//! Test helpers of the placement service.

use super::*;

/// A placement service over a fresh single-voter group whose persisted
/// oracle high-water mark is `high_water` (no network, no expiry loop).
pub(crate) async fn service(dir: &tempfile::TempDir, high_water: i64) -> Arc<PlacementService> {
    let db = strata_node::engine::open_db(dir.path()).expect("open db");
    let cfg = crate::replica::ReplicaConfig {
        id: 1,
        addr: "127.0.0.1:1".into(),
        peers: vec![(1, "127.0.0.1:1".into())],
        voters: vec![1],
    };
    let rep = Replicated::open(db, cfg).expect("open raft group");
    rep.wait_serving(Duration::from_secs(10))
        .await
        .expect("raft group started");
    rep.propose(Command::OracleWindow { high_water })
        .await
        .expect("window");
    PlacementService::new(rep, 1)
}
