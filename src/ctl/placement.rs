//! `strata ctl placement members|add|remove`: placement's own raft group.
//!
//! Replacing a dead replica while the cluster serves: `remove` it, then
//! `add` the address of a fresh one and start that process as `add` prints
//! (or start it with `--join` alone: it adds itself). A replica is added as a
//! learner and becomes a voter once it has caught up, so adding one never
//! costs the group its quorum.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use strata_proto::strata::{
    AddMemberRequest, MembersRequest, MembersResponse, RemoveMemberRequest,
};

use super::{json_lines, table, Align};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum PlacementCommand {
    /// List placement's replicas: id, address, voter or learner, which one
    /// leads, and (from the leader) how far each has replicated its log.
    Members,
    /// Add a replica listening at HOST:PORT (a new process with an empty
    /// data directory); prints its id and the command that starts it.
    Add {
        /// The new replica's placement address (its --listen).
        #[arg(value_name = "HOST:PORT")]
        addr: String,
    },
    /// Remove replica ID from the group (the leader first hands its lead to
    /// another voter). The removed process stops serving; stop it.
    Remove {
        #[arg(value_name = "ID")]
        id: u64,
    },
}

/// One line of `strata ctl placement members --json`.
#[derive(Serialize, Debug, PartialEq)]
struct MemberRow {
    id: u64,
    addr: String,
    /// "voter" or "learner".
    role: &'static str,
    leader: bool,
    /// The last log index the leader knows is on this replica (null when the
    /// answering replica does not lead).
    matched: Option<u64>,
}

pub async fn run(
    cmd: &PlacementCommand,
    addrs: &str,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<String> {
    let mut client = strata_proto::oracle::placement_client(addrs)
        .map_err(|e| anyhow!("invalid placement address {addrs:?}: {}", e.message()))?;
    let call = |what: &str| format!("placement at {addrs}: {what}");
    macro_rules! ask {
        ($what:expr, $fut:expr) => {
            tokio::time::timeout(timeout + Duration::from_secs(2), $fut)
                .await
                .map_err(|_| anyhow!("{}: no answer within {timeout:?}", call($what)))?
                .map_err(|s| anyhow!("{}: {}", call($what), s.message()))?
                .into_inner()
        };
    }
    match cmd {
        PlacementCommand::Members => {
            let mut r = ask!(
                "members",
                client.members(with_timeout(MembersRequest {}, timeout))
            );
            // Only the leader knows how far each member has replicated: ask it
            // when another replica answered (best effort).
            if r.leader_id != 0 && r.leader_id != r.responder_id {
                let leader = r
                    .members
                    .iter()
                    .find(|m| m.id == r.leader_id)
                    .map(|m| m.addr.clone());
                if let Some(Ok(mut lc)) = leader.map(|a| strata_proto::oracle::placement_client(&a))
                {
                    let req = with_timeout(MembersRequest {}, timeout);
                    if let Ok(Ok(lr)) = tokio::time::timeout(timeout, lc.members(req)).await {
                        r = lr.into_inner();
                    }
                }
            }
            let rows = rows(&r);
            if json {
                return json_lines(&rows);
            }
            let mut out = members_table(&rows);
            out.push_str(&summary(&r));
            Ok(out)
        }
        PlacementCommand::Add { addr } => {
            let req = AddMemberRequest {
                addr: addr.clone(),
                id: 0,
            };
            let r = ask!("add member", client.add_member(with_timeout(req, timeout)));
            let others: Vec<String> = r
                .members
                .iter()
                .filter(|m| m.id != r.id && !m.addr.is_empty())
                .map(|m| m.addr.clone())
                .collect();
            if json {
                return Ok(
                    serde_json::to_string(&serde_json::json!({ "id": r.id, "addr": addr }))
                        .context("json")?
                        + "\n",
                );
            }
            Ok(format!(
                "added placement replica {} at {addr} as a learner (it becomes a voter once caught up).\n\
                 Start it with an empty data directory:\n  \
                 strata placement --id {} --listen {addr} --join {} --data-dir DIR\n",
                r.id,
                r.id,
                others.join(",")
            ))
        }
        PlacementCommand::Remove { id } => {
            let r = ask!(
                "remove member",
                client.remove_member(with_timeout(RemoveMemberRequest { id: *id }, timeout))
            );
            if json {
                return json_lines(&rows(&r));
            }
            Ok(format!(
                "removed placement replica {id}; members now:\n{}",
                members_table(&rows(&r))
            ))
        }
    }
}

fn with_timeout<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

fn rows(r: &MembersResponse) -> Vec<MemberRow> {
    let leads = r.leader_id == r.responder_id && r.leader_id != 0;
    let mut rows: Vec<MemberRow> = r
        .members
        .iter()
        .map(|m| MemberRow {
            id: m.id,
            addr: m.addr.clone(),
            role: if m.learner { "learner" } else { "voter" },
            leader: m.id == r.leader_id,
            matched: leads.then_some(m.matched),
        })
        .collect();
    rows.sort_by_key(|m| m.id);
    rows
}

fn members_table(rows: &[MemberRow]) -> String {
    table(
        &[
            ("ID", Align::Right),
            ("ADDRESS", Align::Left),
            ("ROLE", Align::Left),
            ("LEADER", Align::Left),
            ("MATCHED", Align::Right),
        ],
        rows.iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.addr.clone(),
                    m.role.to_string(),
                    if m.leader { "*".into() } else { String::new() },
                    m.matched.map_or("-".into(), |i| i.to_string()),
                ]
            })
            .collect(),
    )
}

fn summary(r: &MembersResponse) -> String {
    let leader = if r.leader_id == 0 {
        "no leader known (no quorum?)".to_string()
    } else {
        format!("leader {}", r.leader_id)
    };
    format!(
        "(as replica {} sees it: term {}, {leader}, commit {}, applied {})\n",
        r.responder_id, r.term, r.commit, r.applied
    )
}

#[cfg(test)]
mod tests {
    use strata_proto::strata::PlacementMember;

    use super::*;

    #[test]
    fn members_render_with_the_leader_marked() {
        let r = MembersResponse {
            members: vec![
                PlacementMember {
                    id: 3,
                    addr: "127.0.0.1:3".into(),
                    learner: true,
                    matched: 7,
                },
                PlacementMember {
                    id: 1,
                    addr: "127.0.0.1:1".into(),
                    learner: false,
                    matched: 9,
                },
            ],
            leader_id: 1,
            term: 4,
            commit: 9,
            responder_id: 1,
            applied: 9,
        };
        let out = members_table(&rows(&r));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "ADDRESS", "ROLE", "LEADER", "MATCHED"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["1", "127.0.0.1:1", "voter", "*", "9"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["3", "127.0.0.1:3", "learner", "7"]
        );
        // A follower's answer has no replication progress.
        let follower = MembersResponse {
            responder_id: 3,
            ..r
        };
        assert!(rows(&follower).iter().all(|m| m.matched.is_none()));
    }
}
