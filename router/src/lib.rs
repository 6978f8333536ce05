//! strata-router: a stateless etcd v3 gRPC front end over Strata's ranges.
//! See ARCHITECTURE.md.

pub mod announce;
pub mod auth;
pub mod concurrency;
mod config;
pub mod failpoint;
pub mod gateway;
pub mod kv;
pub mod maintenance;
pub mod metrics;
pub mod misc;
mod mux;
mod range_stream;
pub mod reqmeta;
pub mod routing;
mod scan;
pub mod snapshot;
mod threads;
mod txn;
pub mod watch;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
pub use config::*;
use strata_proto::etcd::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer,
};
use strata_proto::etcd_auth::AuthServer;
use strata_proto::etcd_election::ElectionServer;
use strata_proto::etcd_lock::LockServer;
use strata_proto::oracle::{placement_client, Oracle};

/// A running router.
pub struct RouterHandle {
    pub client_addr: SocketAddr,
}

/// Starts a router and returns once it serves clients.
pub async fn run(cfg: RouterConfig) -> anyhow::Result<RouterHandle> {
    let (client_tls, metrics_tls) = cfg.tls()?;
    let telemetry = metrics::serve(cfg.metrics_addr, metrics_tls).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen_client)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen_client))?;
    let addr = listener.local_addr()?;
    let placement =
        placement_client(&cfg.placement).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    let router = routing::Router::new(placement.clone(), cfg.request_timeout);
    let _ = router.refresh().await;
    tokio::spawn(router.clone().refresh_loop());
    let tokens = auth::Tokens::parse(&cfg.auth_token, Duration::from_secs(cfg.auth_token_ttl))
        .map_err(|e| anyhow::anyhow!(e))?;
    let auth = auth::Auth::new(
        placement.clone(),
        tokens,
        cfg.bcrypt_cost,
        cfg.client_tls.client_cert_auth,
    );
    // Serving waits (a little) for the auth state: until it is loaded every
    // request is refused as unavailable.
    let _ = tokio::time::timeout(Duration::from_secs(2), auth.refresh()).await;
    tokio::spawn(auth.clone().refresh_loop());
    let oracle = Oracle::new(placement);
    let me = announce::Me::new(&cfg.advertise_client_urls, addr, client_tls.is_some());
    let member_id = me.id;
    tokio::spawn(announce::run(router.placement.clone(), me.clone()));
    let cluster_id = 0x5354_5241_5441_0001; // "STRATA" 1
    let common = misc::Common {
        router: router.clone(),
        oracle: oracle.clone(),
        member_id,
        cluster_id,
        me,
        auth: auth.clone(),
    };
    let kv = std::sync::Arc::new(kv::Kv {
        router: router.clone(),
        auth: auth.clone(),
        oracle: oracle.clone(),
        member_id,
        cluster_id,
    });
    let watch = watch::Watch {
        router,
        auth: auth.clone(),
        oracle,
        member_id,
        cluster_id,
        progress_every: cfg
            .watch_progress_notify_interval
            .max(Duration::from_millis(100)),
    };
    // HTTP/1.1 and HTTP/2 requests that are not gRPC go to the HTTP/JSON
    // gateway and health endpoints, which call the services below in process.
    let gateway = gateway::GatewayLayer::new(kv.clone(), cfg.request_timeout)?;
    let recipes = concurrency::Recipes {
        kv: kv.clone(),
        lease: std::sync::Arc::new(misc::Lease(common.clone(), kv.clone())),
    };
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(gateway)
        .layer(metrics::grpc_layer())
        .layer(reqmeta::layer())
        .add_service(
            PbKvServer::from_arc(kv.clone()).max_decoding_message_size(kv::GRPC_MAX_RECV_BYTES),
        )
        .add_service(PbWatchServer::new(watch))
        .add_service(PbLeaseServer::new(misc::Lease(common.clone(), kv)))
        .add_service(PbClusterServer::new(misc::Cluster(common.clone())))
        .add_service(PbMaintenanceServer::new(maintenance::Maintenance(
            common.clone(),
        )))
        .add_service(AuthServer::new(auth::service::AuthSvc { auth, common }))
        .add_service(LockServer::new(concurrency::lock::LockSvc(recipes.clone())))
        .add_service(ElectionServer::new(concurrency::election::ElectionSvc(
            recipes,
        )));
    let client_threads = threads::count(cfg.client_threads);
    threads::serve(listener, client_tls, client_threads, move |incoming| {
        let server = server.clone();
        async move {
            if let Err(e) = server.serve_with_incoming(incoming).await {
                tracing::error!("router gRPC server stopped: {e}");
            }
        }
    })?;
    tracing::info!(%addr, client_threads, "router serving etcd clients");
    metrics::ready(&telemetry);
    Ok(RouterHandle { client_addr: addr })
}

/// The common name of the verified client certificate `req` came with.
pub(crate) fn tls_cn<T>(req: &tonic::Request<T>) -> Option<String> {
    strata_proto::tls::peer_common_name(req)
}
