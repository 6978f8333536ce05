//! `strata ctl`: the operator's view of a running cluster, as placement sees it.
//!
//! `strata ctl ranges` lists every range (its keys, epoch, replicas, leader and
//! stats) and `strata ctl nodes` every storage node, both from one `GetRanges` call
//! to placement: an aligned table by default, JSON lines with `--json`. Placement is
//! found from `--placement ADDR[,ADDR...]`, else from the `dev.json` that `strata
//! dev` writes in its data directory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use strata_proto::strata::{GetRangesRequest, GetRangesResponse, NodeInfo, RangeInfo};

pub const CTL_ABOUT: &str =
    "Inspect a running cluster: its ranges and storage nodes, as placement sees them";

pub const CTL_LONG_ABOUT: &str = "\
Inspect a running cluster: its ranges and storage nodes, as placement sees them.

`strata ctl ranges` lists every range: its id, the keys it covers [START, END), its
epoch, the nodes holding its replicas, the node leading it and its approximate size,
key count and write rate (reported by the leader). `strata ctl nodes` lists every
storage node: its id, address, state (up = heard from in the last 5 s), the number
of range replicas it holds and how many of them it leads.

The output is an aligned table by default; --json prints JSON lines instead, one
object per range or node (the first range starts at \"\", the last ends at \"\").
Keys are shown as UTF-8 when printable, otherwise escaped (\\\\ for a backslash,
\\xNN for other bytes); the JSON also carries their exact bytes in hex.

`strata ctl snapshot restore FILE --data-dir DIR` needs no cluster: it prepares a
new DIR from a snapshot saved with `etcdctl snapshot save` (see its --help).

Placement is found from --placement HOST:PORT[,HOST:PORT...] (any of its
replicas; requests follow its leader), else from DIR/dev.json (written by
`strata dev --data-dir DIR`), DIR defaulting to ./strata-data.";

const CTL_AFTER_HELP: &str = "\
Examples:
  strata ctl ranges                              # the `strata dev` cluster in ./strata-data
  strata ctl nodes --data-dir /tmp/strata        # a `strata dev --data-dir /tmp/strata` cluster
  strata ctl ranges --placement 10.0.0.5:23790 --json | jq .leader_node";

/// Where `strata ctl` finds the cluster, and how it prints.
#[derive(clap::Args, Debug)]
#[command(after_help = CTL_AFTER_HELP, subcommand_required = true)]
pub struct CtlArgs {
    #[command(subcommand)]
    command: CtlCommand,

    /// Address (HOST:PORT) of the placement service to ask, or a comma-separated list
    /// of its replicas' addresses; takes precedence over --data-dir.
    #[arg(long, global = true, value_name = "ADDR[,ADDR...]")]
    placement: Option<String>,

    /// Data directory of a `strata dev` cluster: placement's address is read from
    /// DIR/dev.json (used when --placement is not given).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "./strata-data"
    )]
    data_dir: PathBuf,

    /// Print JSON lines (one object per range or node) instead of a table.
    #[arg(long, global = true)]
    json: bool,

    /// Give up on placement after this long (e.g. 500ms, 5s, 1m).
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = strata_router::parse_duration
    )]
    timeout: Duration,

    /// Mutual TLS to placement (default: the peer certificate of a `strata dev
    /// --tls` cluster found through --data-dir).
    #[command(flatten)]
    peer_tls: strata_proto::tls::PeerFlags,
}

#[derive(clap::Subcommand, Debug, Clone)]
enum CtlCommand {
    /// List every range: keys [START, END), epoch, replicas, leader, size, keys, writes/s.
    Ranges,
    /// List every storage node: id, address, up/down, ranges held, ranges led.
    Nodes,
    /// Placement's own replicas: list, add or remove them.
    #[command(subcommand)]
    Placement(placement::PlacementCommand),
    /// Compare every range's replicas at one revision: per range its keys,
    /// each replica's hash, OK or MISMATCH (then the command fails).
    Check {
        /// The revision to compare at (0: the current one).
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// Snapshots: `restore FILE --data-dir DIR` prepares a new cluster's data dir.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
}

mod check;
mod placement;
pub(crate) mod snapshot;

/// Entry point of `strata ctl`.
pub fn main(args: CtlArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata ctl: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (out, failed) = match rt.block_on(run(&args)) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("strata ctl: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) if failed => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        // `strata ctl ... | head`: the reader is gone, nothing more to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata ctl: error: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Everything to print on stdout, and whether the command failed anyway.
async fn run(args: &CtlArgs) -> anyhow::Result<(String, bool)> {
    // Needs no cluster.
    if let CtlCommand::Snapshot(snapshot::SnapshotCommand::Restore { file }) = &args.command {
        return Ok((snapshot::restore(file, &args.data_dir)?, false));
    }
    let target = find_placement(args.placement.as_deref(), &args.data_dir)?;
    let mut peer_tls = args.peer_tls.clone();
    if peer_tls.peer_cert_file.is_none() && args.placement.is_none() {
        peer_tls = dev_json_peer_tls(&args.data_dir).unwrap_or_default();
    }
    strata_proto::tls::set_internal(&peer_tls).map_err(anyhow::Error::msg)?;
    if let CtlCommand::Placement(cmd) = &args.command {
        return Ok((
            placement::run(cmd, &target.addr, args.timeout, args.json).await?,
            false,
        ));
    }
    if let CtlCommand::Check { revision } = &args.command {
        return check::run(&target.addr, *revision, args.timeout, args.json).await;
    }
    let resp = get_ranges(&target, args.timeout).await?;
    let out = match (&args.command, args.json) {
        (CtlCommand::Ranges, false) => ranges_table(&ranges(&resp)),
        (CtlCommand::Ranges, true) => json_lines(&ranges(&resp))?,
        (CtlCommand::Nodes, false) => nodes_table(&nodes(&resp)),
        (CtlCommand::Nodes, true) => json_lines(&nodes(&resp))?,
        (CtlCommand::Placement(_) | CtlCommand::Check { .. } | CtlCommand::Snapshot(_), _) => {
            unreachable!("answered above")
        }
    };
    Ok((out, false))
}

// ---------------------------------------------------------------------------
// Finding placement.

/// Placement's address and where it came from (for error messages).
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `HOST:PORT[,HOST:PORT...]`.
    addr: String,
    /// "--placement" or "DIR/dev.json".
    from: String,
}

fn find_placement(flag: Option<&str>, data_dir: &Path) -> anyhow::Result<Target> {
    if let Some(addr) = flag {
        let addr = addr
            .split(',')
            .map(|a| a.trim().strip_prefix("http://").unwrap_or(a.trim()))
            .collect::<Vec<_>>()
            .join(",");
        if addr.is_empty() {
            bail!("--placement is empty: give placement's address as HOST:PORT");
        }
        return Ok(Target {
            addr: addr.to_string(),
            from: "--placement".into(),
        });
    }
    let path = data_dir.join("dev.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "no cluster found: {} does not exist. Point `strata ctl` at a cluster with \
             --placement HOST:PORT (the placement service's address) or with \
             --data-dir DIR (the --data-dir of a running `strata dev`)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let addr = placement_addr_from_dev_json(&text)
        .with_context(|| format!("{} is not a usable `strata dev` layout", path.display()))?;
    Ok(Target {
        addr,
        from: path.display().to_string(),
    })
}

/// The `addr`s of the components whose `role` is "placement" in a dev.json,
/// comma-separated.
fn placement_addr_from_dev_json(text: &str) -> anyhow::Result<String> {
    let json: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
    let components = json
        .get("components")
        .and_then(|c| c.as_array())
        .ok_or_else(|| anyhow!("no \"components\" list"))?;
    let addrs: Vec<&str> = components
        .iter()
        .filter(|c| c.get("role").and_then(|r| r.as_str()) == Some("placement"))
        .map(|c| c.get("addr").and_then(|a| a.as_str()).unwrap_or(""))
        .collect();
    if addrs.is_empty() {
        bail!("no component with role \"placement\"");
    }
    if addrs.iter().any(|a| a.is_empty()) {
        bail!("the placement component has no \"addr\"");
    }
    Ok(addrs.join(","))
}

/// The peer certificate files of a `strata dev --tls` cluster (its dev.json's
/// `tls`), if any.
fn dev_json_peer_tls(data_dir: &Path) -> Option<strata_proto::tls::PeerFlags> {
    let text = std::fs::read_to_string(data_dir.join("dev.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let file = |k: &str| json["tls"][k].as_str().map(PathBuf::from);
    Some(strata_proto::tls::PeerFlags {
        peer_cert_file: Some(file("peer_cert")?),
        peer_key_file: Some(file("peer_key")?),
        peer_trusted_ca_file: Some(file("ca")?),
    })
}

/// gRPC's `UNAVAILABLE`: the server could not be reached (or is going away).
const GRPC_UNAVAILABLE: i32 = 14;

async fn get_ranges(target: &Target, timeout: Duration) -> anyhow::Result<GetRangesResponse> {
    let Target { addr, from } = target;
    let mut client = strata_proto::oracle::placement_client(addr).map_err(|_| {
        anyhow!(
            "invalid placement address {addr:?} (from {from}): expected HOST:PORT[,HOST:PORT...]"
        )
    })?;
    let unreachable = |why: String| {
        let hint = if from == "--placement" {
            "is the address right and placement running?".to_string()
        } else {
            format!("is the `strata dev` that wrote {from} still running?")
        };
        anyhow!("cannot reach placement at {addr} (from {from}): {why}; {hint}")
    };
    // Retried within the request's timeout, then answers why; the outer bound guards a hang.
    let mut req = tonic::Request::new(GetRangesRequest::default());
    req.set_timeout(timeout);
    let bound = timeout + Duration::from_secs(2);
    match tokio::time::timeout(bound, client.get_ranges(req)).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => {
            // The transport error behind an `Unavailable` says why (refused, timed out).
            let mut why = status.message().to_string();
            let mut source = std::error::Error::source(&status);
            while let Some(err) = source {
                let text = err.to_string();
                if !why.contains(&text) {
                    why = format!("{why}: {text}");
                }
                source = err.source();
            }
            if i32::from(status.code()) == GRPC_UNAVAILABLE {
                return Err(unreachable(why));
            }
            // Something answered, but not as placement does.
            let code = format!("{:?}", status.code());
            let why = if why.is_empty() {
                code
            } else {
                format!("{code}: {why}")
            };
            Err(anyhow!(
                "placement at {addr} (from {from}) failed: {why}; is that the address of \
                 Strata's placement service?"
            ))
        }
        Err(_) => Err(unreachable(format!("no answer within {timeout:?}"))),
    }
}

// ---------------------------------------------------------------------------
// What is printed.

/// One line of `strata ctl ranges --json`.
#[derive(Serialize, Debug, PartialEq)]
struct RangeRow {
    range_id: u64,
    /// Inclusive; "" = start of the keyspace.
    start_key: String,
    /// Exclusive; "" = end of the keyspace.
    end_key: String,
    /// The exact bytes of the keys, hex-encoded.
    start_key_hex: String,
    end_key_hex: String,
    epoch: EpochRow,
    /// Node ids holding a replica, in peer order.
    replicas: Vec<u64>,
    /// Those of them that are learners (being added: not voting yet).
    learners: Vec<u64>,
    /// Node id of the leader; null when placement does not know it.
    leader_node: Option<u64>,
    /// Approximate stats, reported by the leader (null until it has).
    approx_bytes: Option<u64>,
    approx_keys: Option<u64>,
    writes_per_sec: Option<f64>,
}

#[derive(Serialize, Debug, PartialEq)]
struct EpochRow {
    conf_ver: u64,
    version: u64,
}

/// One line of `strata ctl nodes --json`.
#[derive(Serialize, Debug, PartialEq)]
struct NodeRow {
    node_id: u64,
    addr: String,
    /// "up" or "down".
    state: &'static str,
    /// Range replicas it holds.
    range_count: u64,
    /// Ranges it leads.
    leader_count: u64,
}

/// The ranges, in key order.
fn ranges(resp: &GetRangesResponse) -> Vec<RangeRow> {
    let mut infos: Vec<&RangeInfo> = resp.ranges.iter().collect();
    infos.sort_by(|a, b| {
        let key = |r: &RangeInfo| r.desc.as_ref().map(|d| d.start_key.clone());
        key(a).cmp(&key(b))
    });
    infos
        .into_iter()
        .map(|r| {
            let desc = r.desc.clone().unwrap_or_default();
            let epoch = desc.epoch.unwrap_or_default();
            RangeRow {
                range_id: desc.id,
                start_key: key_text(&desc.start_key),
                end_key: key_text(&desc.end_key),
                start_key_hex: hex(&desc.start_key),
                end_key_hex: hex(&desc.end_key),
                epoch: EpochRow {
                    conf_ver: epoch.conf_ver,
                    version: epoch.version,
                },
                replicas: desc.peers.iter().map(|p| p.node_id).collect(),
                learners: (desc.peers.iter())
                    .filter(|p| p.learner)
                    .map(|p| p.node_id)
                    .collect(),
                leader_node: (r.leader_node != 0).then_some(r.leader_node),
                approx_bytes: r.stats.as_ref().map(|s| s.approx_bytes),
                approx_keys: r.stats.as_ref().map(|s| s.approx_keys),
                writes_per_sec: r.stats.as_ref().map(|s| s.writes_per_sec),
            }
        })
        .collect()
}

/// The storage nodes, by id.
fn nodes(resp: &GetRangesResponse) -> Vec<NodeRow> {
    let mut infos: Vec<&NodeInfo> = resp.nodes.iter().collect();
    infos.sort_by_key(|n| n.id);
    infos
        .into_iter()
        .map(|n| NodeRow {
            node_id: n.id,
            addr: n.addr.clone(),
            state: if n.up { "up" } else { "down" },
            range_count: n.range_count,
            leader_count: n.leader_count,
        })
        .collect()
}

pub(crate) fn json_lines<T: Serialize>(rows: &[T]) -> anyhow::Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&serde_json::to_string(row).context("encoding JSON")?);
        out.push('\n');
    }
    Ok(out)
}

/// Longest key shown in a table cell (the JSON has them whole).
const TABLE_KEY_CHARS: usize = 40;

fn ranges_table(rows: &[RangeRow]) -> String {
    let cells = |k: &str, empty: &str| {
        if k.is_empty() {
            empty.to_string()
        } else {
            truncate(k, TABLE_KEY_CHARS)
        }
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    table(
        &[
            ("RANGE", Align::Right),
            ("START", Align::Left),
            ("END", Align::Left),
            ("EPOCH(CONF/VER)", Align::Left),
            ("REPLICAS", Align::Left),
            ("LEADER", Align::Right),
            ("SIZE", Align::Right),
            ("KEYS", Align::Right),
            ("WRITES/S", Align::Right),
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.range_id.to_string(),
                    cells(&r.start_key, "(start)"),
                    cells(&r.end_key, "(end)"),
                    format!("{}/{}", r.epoch.conf_ver, r.epoch.version),
                    r.replicas
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    opt(r.leader_node.map(|n| n.to_string())),
                    opt(r.approx_bytes.map(human_bytes)),
                    opt(r.approx_keys.map(|k| k.to_string())),
                    opt(r.writes_per_sec.map(|w| format!("{w:.1}"))),
                ]
            })
            .collect(),
    )
}

fn nodes_table(rows: &[NodeRow]) -> String {
    table(
        &[
            ("NODE", Align::Right),
            ("ADDRESS", Align::Left),
            ("STATE", Align::Left),
            ("RANGES", Align::Right),
            ("LEADERS", Align::Right),
        ],
        rows.iter()
            .map(|n| {
                vec![
                    n.node_id.to_string(),
                    n.addr.clone(),
                    n.state.to_string(),
                    n.range_count.to_string(),
                    n.leader_count.to_string(),
                ]
            })
            .collect(),
    )
}

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Columns separated by two spaces, each as wide as its widest cell.
pub(crate) fn table(columns: &[(&str, Align)], rows: Vec<Vec<String>>) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| width(h)).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - width(cell));
            match columns[i].1 {
                Align::Left => {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                Align::Right => {
                    line.push_str(&pad);
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A key as text: itself when it is printable UTF-8, else escaped: `\` as `\\`,
/// and every byte of a control character or of invalid UTF-8 as `\xNN` (so the
/// escaped text decodes back to the exact bytes).
pub(crate) fn key_text(key: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(key) {
        if !s.chars().any(char::is_control) {
            return s.to_string();
        }
    }
    let mut out = String::new();
    let escape = |bytes: &[u8], out: &mut String| {
        for b in bytes {
            out.push_str(&format!("\\x{b:02x}"));
        }
    };
    for chunk in key.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else if c.is_control() {
                escape(c.encode_utf8(&mut [0; 4]).as_bytes(), &mut out);
            } else {
                out.push(c);
            }
        }
        escape(chunk.invalid(), &mut out);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
