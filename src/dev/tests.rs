//! Unit tests of `strata dev`: argument parsing, the plan, log tails.

use super::serving::tail;
use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    dev: DevArgs,
}

fn args(argv: &[&str]) -> DevArgs {
    Cli::try_parse_from(std::iter::once("dev").chain(argv.iter().copied()))
        .unwrap()
        .dev
}

fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.iter()
        .position(|a| a == name)
        .map(|i| argv[i + 1].as_str())
}

#[test]
fn default_plan() {
    let a = args(&[]);
    assert_eq!(a.nodes, 3);
    assert_eq!(a.ready_timeout, Duration::from_secs(60));
    let p = plan(&a, Path::new("/bin/strata"), Path::new("/d")).unwrap();
    assert_eq!(p.client_endpoint, "127.0.0.1:2379");
    let names: Vec<&str> = p.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["placement", "node-1", "node-2", "node-3", "router"]);
    let pl = &p.components[0];
    assert_eq!(pl.args[..2], ["/bin/strata", "placement"]);
    assert_eq!(flag(&pl.args, "--listen"), Some("127.0.0.1:23790"));
    assert_eq!(flag(&pl.args, "--replicas"), Some("3"));
    assert_eq!(flag(&pl.args, "--data-dir"), Some("/d/placement"));
    assert_eq!(flag(&pl.args, "--metrics-addr"), Some("127.0.0.1:23800"));
    let n2 = &p.components[2];
    assert_eq!((n2.role, n2.id), ("node", 2));
    assert_eq!(flag(&n2.args, "--listen"), Some("127.0.0.1:23792"));
    assert_eq!(flag(&n2.args, "--placement"), Some("127.0.0.1:23790"));
    assert_eq!(flag(&n2.args, "--data-dir"), Some("/d/node-2"));
    assert_eq!(n2.metrics_url, "http://127.0.0.1:23802/metrics");
    assert_eq!(n2.log, Path::new("/d/logs/node-2.log"));
    assert_eq!(flag(&n2.args, "--raft-tick-ms"), None);
    let r = &p.components[4];
    assert_eq!(flag(&r.args, "--listen-client"), Some("127.0.0.1:2379"));
    assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:23804"));
    assert_eq!(flag(&r.args, "--watch-progress-notify-interval"), None);
    assert!(p.prometheus.is_none());
}

#[test]
fn custom_plan() {
    let a = args(&[
        "--nodes",
        "1",
        "--base-port",
        "30000",
        "--listen-client",
        "0.0.0.0:4000",
        "--watch-progress-notify-interval",
        "500ms",
        "--raft-tick-ms",
        "20",
        "--ready-timeout",
        "5s",
        "--prometheus",
    ]);
    assert_eq!(a.ready_timeout, Duration::from_secs(5));
    let p = plan(&a, Path::new("/x"), Path::new("/d")).unwrap();
    assert_eq!(p.client_endpoint, "127.0.0.1:4000");
    assert_eq!(p.components.len(), 3);
    assert_eq!(flag(&p.components[0].args, "--replicas"), Some("1"));
    assert_eq!(flag(&p.components[1].args, "--raft-tick-ms"), Some("20"));
    let r = &p.components[2];
    assert_eq!(
        flag(&r.args, "--watch-progress-notify-interval"),
        Some("500ms")
    );
    assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:30012"));
    let (prom, config) = p.prometheus.unwrap();
    assert_eq!(prom.addr, "127.0.0.1:30013");
    assert!(config.contains("'127.0.0.1:30011'"), "{config}");
    assert!(config.contains("job_name: strata-router"), "{config}");
}

#[test]
fn many_nodes_do_not_collide() {
    let p = plan(&args(&["--nodes", "12"]), Path::new("/x"), Path::new("/d")).unwrap();
    let mut ports: Vec<SocketAddr> = p
        .components
        .iter()
        .flat_map(|c| c.ports.iter().map(|(a, _)| *a))
        .collect();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n);
    assert!(plan(
        &args(&["--base-port", "65530"]),
        Path::new("/x"),
        Path::new("/d")
    )
    .is_err());
}

#[test]
fn bad_flags() {
    let parse = |argv: &[&str]| {
        Cli::try_parse_from(std::iter::once("dev").chain(argv.iter().copied())).is_ok()
    };
    assert!(!parse(&["--nodes", "0"]));
    assert!(!parse(&["--watch-progress-notify-interval", "soon"]));
    assert!(!parse(&["--prometheus-listen", "127.0.0.1:1"]));
}

#[test]
fn tail_lines() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("log");
    fs::write(&f, "a\nb\nc\n").unwrap();
    assert_eq!(tail(&f, 2).unwrap(), ["b", "c"]);
    assert_eq!(tail(&f, 10).unwrap(), ["a", "b", "c"]);
}
