//! `strata ctl check`: every range's replicas compared at one revision (the
//! check behind the router's HashKV, `strata_router::maintenance::hash`). One
//! line per range: its id and keys, the revision, each voter's hash and live
//! key count (leader first), and OK, MISMATCH (a replica's state differs
//! from its leader's: the command then fails) or UNAVAILABLE (a replica did
//! not answer; nothing compared against it).

use std::time::Duration;

use anyhow::anyhow;
use serde::Serialize;
use strata_router::maintenance::hash::{self, RangeCheck};

use super::{json_lines, key_text, table, Align};

/// One line of `strata ctl check --json`.
#[derive(Serialize, Debug)]
struct CheckRow {
    range_id: u64,
    start_key: String,
    end_key: String,
    revision: i64,
    leader_node: u64,
    /// Node id → hash (8 hex digits) and live keys, or the error.
    replicas: Vec<ReplicaRow>,
    /// "OK", "MISMATCH" or "UNAVAILABLE".
    result: &'static str,
}

#[derive(Serialize, Debug)]
struct ReplicaRow {
    node_id: u64,
    hash: Option<String>,
    keys: Option<u64>,
    error: Option<String>,
}

fn row(r: &RangeCheck) -> CheckRow {
    let result = if !r.mismatched().is_empty() {
        "MISMATCH"
    } else if r.replicas.iter().any(|x| x.result.is_err()) {
        "UNAVAILABLE"
    } else {
        "OK"
    };
    CheckRow {
        range_id: r.desc.id,
        start_key: key_text(&r.desc.start_key),
        end_key: key_text(&r.desc.end_key),
        revision: r.revision,
        leader_node: r.leader_node,
        replicas: r
            .replicas
            .iter()
            .map(|x| match &x.result {
                Ok((h, k)) => ReplicaRow {
                    node_id: x.node_id,
                    hash: Some(format!("{h:08x}")),
                    keys: Some(*k),
                    error: None,
                },
                Err(e) => ReplicaRow {
                    node_id: x.node_id,
                    hash: None,
                    keys: None,
                    error: Some(e.clone()),
                },
            })
            .collect(),
        result,
    }
}

/// The report, and whether a replica disagreed.
pub async fn run(
    placement: &str,
    revision: i64,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<(String, bool)> {
    let conn = strata_proto::oracle::placement_client(placement)
        .map_err(|e| anyhow!("invalid placement address {placement:?}: {}", e.message()))?;
    let router = strata_router::routing::Router::new(conn.clone(), timeout);
    router
        .refresh()
        .await
        .map_err(|e| anyhow!("placement at {placement}: {}", e.message()))?;
    let rev = match revision {
        0 => strata_proto::oracle::Oracle::new(conn)
            .current()
            .await
            .map_err(|e| anyhow!("placement at {placement}: {}", e.message()))?
            .max(1),
        r => r,
    };
    let checked = hash::check_all(&router, rev)
        .await
        .map_err(|e| anyhow!("check at revision {rev}: {}", e.message()))?;
    let rows: Vec<CheckRow> = checked.ranges.iter().map(row).collect();
    let bad = rows.iter().any(|r| r.result == "MISMATCH");
    if json {
        return Ok((json_lines(&rows)?, bad));
    }
    let mut out = table(
        &[
            ("RANGE", Align::Right),
            ("START", Align::Left),
            ("END", Align::Left),
            ("REVISION", Align::Right),
            ("REPLICAS(NODE=HASH/KEYS)", Align::Left),
            ("RESULT", Align::Left),
        ],
        rows.iter()
            .map(|r| {
                let replicas = r
                    .replicas
                    .iter()
                    .map(|x| match (&x.hash, x.keys) {
                        (Some(h), Some(k)) => format!("{}={h}/{k}", x.node_id),
                        _ => format!("{}=?", x.node_id),
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                vec![
                    r.range_id.to_string(),
                    if r.start_key.is_empty() {
                        "(start)".into()
                    } else {
                        r.start_key.clone()
                    },
                    if r.end_key.is_empty() {
                        "(end)".into()
                    } else {
                        r.end_key.clone()
                    },
                    r.revision.to_string(),
                    replicas,
                    r.result.to_string(),
                ]
            })
            .collect(),
    );
    if let Some(m) = checked.mismatch() {
        out.push_str(&format!("MISMATCH: {m}\n"));
    }
    Ok((out, bad))
}
