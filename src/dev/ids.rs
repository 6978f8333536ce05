//! Node ids in `dev.json`: a node's id is the one placement gave it when it
//! first registered (the id `strata ctl` and every range's replica list
//! show, kept across restarts in the node's data), not its number in
//! `strata dev`'s plan. Learned from placement once the cluster serves.

use std::collections::HashMap;

use strata_proto::strata::GetRangesRequest;

use super::*;

/// How long one `GetRanges` call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets the id of every node in `json` to placement's, asking until each
/// node registered or `timeout` passed. A node that did not register by then
/// keeps id 0 (unknown); the error says which.
pub(super) async fn learn_node_ids(
    json: &mut DevJson,
    tls: Option<&crate::certs::TlsFiles>,
    timeout: Duration,
) -> anyhow::Result<()> {
    for c in json.components.iter_mut().filter(|c| c.role == "node") {
        c.id = 0;
    }
    if let Some(t) = tls {
        strata_proto::tls::set_internal(&t.peer_flags()).map_err(anyhow::Error::msg)?;
    }
    let placement = json
        .components
        .iter()
        .filter(|c| c.role == "placement")
        .map(|c| c.addr.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut client = strata_proto::oracle::placement_client(&placement)
        .map_err(|e| anyhow::anyhow!("placement at {placement}: {}", e.message()))?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut req = tonic::Request::new(GetRangesRequest::default());
        req.set_timeout(CALL_TIMEOUT);
        let registered: HashMap<u16, u64> =
            match tokio::time::timeout(CALL_TIMEOUT * 2, client.get_ranges(req)).await {
                Ok(Ok(resp)) => resp
                    .into_inner()
                    .nodes
                    .iter()
                    .filter_map(|n| Some((port_of(&n.addr)?, n.id)))
                    .collect(),
                _ => HashMap::new(),
            };
        let mut missing = Vec::new();
        for c in json.components.iter_mut().filter(|c| c.role == "node") {
            match port_of(&c.addr).and_then(|p| registered.get(&p)) {
                Some(&id) => c.id = id,
                None => missing.push(c.name.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{} not registered with placement within {timeout:?}: id 0 in dev.json",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The port of `host:port` (every component runs on this host, so a port
/// names one).
fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}
