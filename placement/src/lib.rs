//! strata-placement: cluster metadata (node registry, range directory), the
//! revision oracle, the compaction record and leases, persisted through
//! placement's own raft group. See ARCHITECTURE.md.

pub mod alarm;
mod auth;
mod config;
pub mod failpoint;
pub mod hosting;
mod identity;
mod lease;
mod lease_txn;
mod load;
pub mod metrics;
pub mod operator;
mod oracle;
pub mod replica;
pub mod routers;
pub mod scheduler;
pub mod service;
mod span_walk;
pub mod state;
pub mod txn;

use std::net::SocketAddr;

use anyhow::Context as _;
pub use config::*;
use strata_proto::strata::placement_server::PlacementServer;

/// A running placement service.
pub struct PlacementHandle {
    pub addr: SocketAddr,
}

/// Starts placement and returns once it serves gRPC.
pub async fn run(cfg: PlacementConfig) -> anyhow::Result<PlacementHandle> {
    strata_proto::tls::set_internal(&cfg.peer_tls).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(cfg.replicas >= 1, "--replicas must be at least 1");
    let telemetry = metrics::serve(cfg.metrics_addr).await?;
    let db = strata_node::engine::open_db(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let me = identity::identify(&cfg, &*db, &addr.to_string()).await?;
    let rep = replica::Replicated::open(db, me)?;
    if rep.single_voter() {
        // A group of one leads at once: serve before returning, as callers
        // (tests, `strata dev`) expect of a single placement.
        rep.wait_serving(std::time::Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!("placement raft group did not start: {}", e.message()))?;
    }
    let svc = service::PlacementService::new(rep, cfg.replicas);
    metrics::watch_state(svc.clone());
    tokio::spawn(svc.clone().expire_leases());
    if !cfg.no_scheduler {
        tokio::spawn(operator::run(svc.clone(), cfg.node_down_after, 8));
    }
    let server = tonic::transport::Server::builder()
        .layer(metrics::grpc_layer())
        .add_service(
            PlacementServer::new(service::Svc(svc))
                .max_decoding_message_size(replica::MAX_MESSAGE)
                .max_encoding_message_size(replica::MAX_MESSAGE),
        )
        .serve_with_incoming(strata_proto::tls::incoming(
            listener,
            strata_proto::tls::internal_server(),
        ));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("placement gRPC server stopped: {e}");
        }
    });
    tracing::info!(%addr, "placement serving");
    metrics::ready(&telemetry);
    Ok(PlacementHandle { addr })
}
