//! Which replica of placement's group a process is, from its data directory
//! and flags: a restart keeps its id; a new initial member takes its id from
//! `--id`/`--peers`; a new member with `--join` is added by the running group.

use std::time::{Duration, Instant};

use strata_node::storage::Engine;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::AddMemberRequest;

use crate::replica::{stored_id, ReplicaConfig, MAX_MESSAGE};
use crate::PlacementConfig;

/// How long `--join` keeps asking the group to add this replica.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses `--peers` (`ID=HOST:PORT,...`).
pub fn parse_peers(peers: &[String]) -> anyhow::Result<Vec<(u64, String)>> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for p in peers.iter().filter(|p| !p.trim().is_empty()) {
        let (id, addr) = p
            .trim()
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--peers: {p:?} is not ID=HOST:PORT"))?;
        let id: u64 =
            id.parse().ok().filter(|&i| i != 0).ok_or_else(|| {
                anyhow::anyhow!("--peers: {id:?} in {p:?} is not an id (1, 2, ...)")
            })?;
        check_addr(addr).map_err(|e| anyhow::anyhow!("--peers: {p:?}: {e}"))?;
        anyhow::ensure!(
            !out.iter().any(|o| o.0 == id),
            "--peers: id {id} is listed twice"
        );
        out.push((id, addr.to_string()));
    }
    anyhow::ensure!(
        out.len() <= 7,
        "--peers: at most 7 placement replicas (3 or 5 are usual)"
    );
    Ok(out)
}

fn check_addr(addr: &str) -> anyhow::Result<()> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{addr:?} is not HOST:PORT"))?;
    anyhow::ensure!(
        !host.is_empty() && addr.len() <= 256,
        "{addr:?} is not HOST:PORT"
    );
    port.parse::<u16>()
        .map_err(|_| anyhow::anyhow!("{addr:?}: bad port"))?;
    Ok(())
}

/// This process's replica: its id, what it knows of the others, and the
/// voters of a new group.
pub async fn identify(
    cfg: &PlacementConfig,
    db: &dyn Engine,
    my_addr: &str,
) -> anyhow::Result<ReplicaConfig> {
    let peers = parse_peers(&cfg.peers)?;
    if let Some(id) = stored_id(db)? {
        // Restarted: the stored conf state and state say who the group is.
        return Ok(ReplicaConfig {
            id,
            addr: my_addr.to_string(),
            peers,
            voters: Vec::new(),
        });
    }
    if !cfg.join.is_empty() {
        for a in &cfg.join {
            check_addr(a).map_err(|e| anyhow::anyhow!("--join: {e}"))?;
        }
        let id = join(&cfg.join, my_addr, cfg.id).await?;
        return Ok(ReplicaConfig {
            id,
            addr: my_addr.to_string(),
            peers,
            voters: Vec::new(),
        });
    }
    let peers = if peers.is_empty() {
        vec![(cfg.id.max(1), my_addr.to_string())]
    } else {
        peers
    };
    let id = match cfg.id {
        0 => peers
            .iter()
            .find(|p| p.1 == my_addr)
            .map(|p| p.0)
            .ok_or_else(|| {
                anyhow::anyhow!("--peers does not list this replica's address {my_addr}; give --id")
            })?,
        id => id,
    };
    anyhow::ensure!(
        peers.iter().any(|p| p.0 == id),
        "--peers does not list this replica (id {id})"
    );
    let voters = peers.iter().map(|p| p.0).collect();
    Ok(ReplicaConfig {
        id,
        addr: my_addr.to_string(),
        peers,
        voters,
    })
}

/// Asks the running group (through any of `via`, following leader hints)
/// to add this replica; returns its id. Idempotent: adding an address that
/// is a member already answers its id.
async fn join(via: &[String], my_addr: &str, want: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut addrs: Vec<String> = via.to_vec();
    let mut i = 0;
    let mut last = String::new();
    while Instant::now() < deadline {
        let addr = addrs[i % addrs.len()].clone();
        i += 1;
        let ep = strata_proto::tls::endpoint(&addr)?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(10));
        let res = match strata_proto::tls::connect(&ep).await {
            Ok(ch) => {
                PlacementClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .add_member(AddMemberRequest {
                        addr: my_addr.to_string(),
                        id: want,
                    })
                    .await
            }
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match res {
            Ok(r) => {
                let id = r.into_inner().id;
                tracing::info!(id, via = %addr, "joined placement's group as a learner");
                return Ok(id);
            }
            Err(st) => {
                if let Some(hint) = strata_proto::errors::placement_leader_hint(&st) {
                    if !hint.is_empty() && check_addr(&hint).is_ok() {
                        if let Some(pos) = addrs.iter().position(|a| *a == hint) {
                            i = pos;
                        } else if addrs.len() < 16 {
                            addrs.push(hint);
                            i = addrs.len() - 1;
                        }
                    }
                } else if st.code() != tonic::Code::Unavailable {
                    anyhow::bail!("cannot join placement's group via {addr}: {}", st.message());
                }
                last = format!("{addr}: {}", st.message());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    anyhow::bail!("cannot join placement's group within {JOIN_TIMEOUT:?}: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_parsed_and_checked() {
        let p = |v: &[&str]| parse_peers(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            p(&["1=127.0.0.1:7100", "2=localhost:7101"]).unwrap(),
            vec![(1, "127.0.0.1:7100".into()), (2, "localhost:7101".into())]
        );
        for bad in [
            &["x=1:2"][..],
            &["0=a:1"],
            &["1=a"],
            &["1=a:99999"],
            &["1=a:1", "1=b:2"],
            &["1"],
        ] {
            assert!(p(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
