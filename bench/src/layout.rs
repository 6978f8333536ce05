//! Where a `strata dev` cluster's ranges and their leaders are, read with
//! `strata ctl` after each `scale` round: whether the cluster found and split
//! its hot ranges and spread their leaders is what its throughput rests on.

use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The cluster's ranges and, per node, the ranges it leads and holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layout {
    pub ranges: usize,
    /// (node id, ranges it leads, replicas it holds), by node id.
    pub nodes: Vec<(u64, u64, u64)>,
}

/// One line of `strata ctl nodes --json` (the fields used here).
#[derive(Deserialize)]
struct NodeLine {
    node_id: u64,
    range_count: u64,
    leader_count: u64,
}

impl Layout {
    /// Asks the `strata dev` cluster whose `--data-dir` is `data_dir`.
    pub fn read(bin: &Path, data_dir: &Path) -> Result<Layout> {
        let ctl = |what: &str| -> Result<String> {
            let out = Command::new(bin)
                .args(["ctl", "--json", "--data-dir"])
                .arg(data_dir)
                .arg(what)
                .output()
                .with_context(|| format!("run {} ctl {what}", bin.display()))?;
            if !out.status.success() {
                bail!(
                    "strata ctl {what}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        Layout::parse(&ctl("nodes")?, &ctl("ranges")?)
    }

    /// From the JSON lines of `strata ctl nodes` and of `strata ctl ranges`.
    pub fn parse(nodes: &str, ranges: &str) -> Result<Layout> {
        let mut rows = Vec::new();
        for line in nodes.lines().filter(|l| !l.trim().is_empty()) {
            let n: NodeLine =
                serde_json::from_str(line).with_context(|| format!("a node line: {line}"))?;
            rows.push((n.node_id, n.leader_count, n.range_count));
        }
        rows.sort_unstable();
        Ok(Layout {
            ranges: ranges.lines().filter(|l| !l.trim().is_empty()).count(),
            nodes: rows,
        })
    }

    /// The most ranges one node leads over the mean (1.0: even; NaN: none led).
    pub fn leader_skew(&self) -> f64 {
        let led: Vec<u64> = self.nodes.iter().map(|n| n.1).collect();
        let total: u64 = led.iter().sum();
        match (led.iter().max(), total) {
            (Some(&most), t) if t > 0 => most as f64 * led.len() as f64 / t as f64,
            _ => f64::NAN,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |pick: fn(&(u64, u64, u64)) -> u64| {
            self.nodes
                .iter()
                .map(|n| pick(n).to_string())
                .collect::<Vec<_>>()
                .join("/")
        };
        write!(
            f,
            "{} ranges; leaders per node {} (most {:.2}x the mean), replicas {}",
            self.ranges,
            join(|n| n.1),
            self.leader_skew(),
            join(|n| n.2)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ranges_and_who_leads_them() {
        let nodes = concat!(
            r#"{"node_id":3,"addr":"127.0.0.1:3","state":"up","range_count":5,"leader_count":1}"#,
            "\n",
            r#"{"node_id":1,"addr":"127.0.0.1:1","state":"up","range_count":5,"leader_count":3}"#,
            "\n",
            r#"{"node_id":2,"addr":"127.0.0.1:2","state":"down","range_count":5,"leader_count":0}"#,
            "\n"
        );
        let ranges = "{}\n{}\n{}\n{}\n{}\n";
        let l = Layout::parse(nodes, ranges).unwrap();
        assert_eq!(l.ranges, 5);
        assert_eq!(l.nodes, vec![(1, 3, 5), (2, 0, 5), (3, 1, 5)]);
        assert!((l.leader_skew() - 2.25).abs() < 1e-9, "{}", l.leader_skew());
        assert_eq!(
            l.to_string(),
            "5 ranges; leaders per node 3/0/1 (most 2.25x the mean), replicas 5/5/5"
        );
    }

    #[test]
    fn nothing_led_is_no_skew_and_garbage_is_an_error() {
        let l = Layout::parse(r#"{"node_id":1,"range_count":0,"leader_count":0}"#, "").unwrap();
        assert_eq!(l.ranges, 0);
        assert!(l.leader_skew().is_nan());
        assert!(Layout::parse("not json", "").is_err());
    }
}
