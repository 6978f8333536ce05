//! Unit tests of `strata dev`: argument parsing, the plan, log tails.

use super::serving::{cannot_serve, tail};
use super::setup::check_placement_dirs;
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

/// The dev.json of plan `p` before anything started.
fn json_of(p: &Plan) -> DevJson {
    DevJson {
        client_endpoint: p.client_endpoints[0].clone(),
        client_endpoints: p.client_endpoints.clone(),
        data_dir: "/d".into(),
        dev_pid: 1,
        components: Vec::new(),
        prometheus: None,
        tls: p.tls.clone(),
    }
}

fn names(p: &Plan) -> Vec<&str> {
    p.components.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn default_plan() {
    let a = args(&[]);
    assert_eq!((a.nodes, a.placement_replicas, a.routers), (3, 3, 1));
    assert_eq!(a.ready_timeout, Duration::from_secs(60));
    let p = plan(&a, Path::new("/bin/strata"), Path::new("/d"), 2).unwrap();
    assert_eq!(p.client_endpoints, ["127.0.0.1:2379"]);
    assert_eq!(
        names(&p),
        [
            "placement-1",
            "placement-2",
            "placement-3",
            "node-1",
            "node-2",
            "node-3",
            "router-1"
        ]
    );
    let peers = "1=127.0.0.1:23790,2=127.0.0.1:23791,3=127.0.0.1:23792";
    let list = "127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792";
    for (i, pl) in p.components[..3].iter().enumerate() {
        assert_eq!((pl.role, pl.id), ("placement", i as u64 + 1));
        assert_eq!(pl.args[..2], ["/bin/strata", "placement"]);
        assert_eq!(flag(&pl.args, "--id"), Some((i + 1).to_string().as_str()));
        assert_eq!(flag(&pl.args, "--peers"), Some(peers));
        let listen = format!("127.0.0.1:{}", 23790 + i);
        assert_eq!(flag(&pl.args, "--listen"), Some(listen.as_str()));
        assert_eq!(pl.addr, listen);
        let dir = format!("/d/placement-{}", i + 1);
        assert_eq!(flag(&pl.args, "--data-dir"), Some(dir.as_str()));
        let m = format!("127.0.0.1:{}", 23800 + i);
        assert_eq!(flag(&pl.args, "--metrics-addr"), Some(m.as_str()));
        assert_eq!(flag(&pl.args, "--replicas"), Some("3"));
    }
    let n2 = &p.components[4];
    assert_eq!((n2.role, n2.id), ("node", 2));
    assert_eq!(flag(&n2.args, "--listen"), Some("127.0.0.1:23794"));
    assert_eq!(flag(&n2.args, "--placement"), Some(list));
    assert_eq!(flag(&n2.args, "--data-dir"), Some("/d/node-2"));
    assert_eq!(n2.metrics_url, "http://127.0.0.1:23804/metrics");
    assert_eq!(n2.log, Path::new("/d/logs/node-2.log"));
    assert_eq!(flag(&n2.args, "--raft-tick-ms"), None);
    let r = &p.components[6];
    assert_eq!((r.role, r.id), ("router", 1));
    assert_eq!(flag(&r.args, "--listen-client"), Some("127.0.0.1:2379"));
    assert_eq!(
        flag(&r.args, "--advertise-client-urls"),
        Some("http://127.0.0.1:2379")
    );
    assert_eq!(flag(&r.args, "--placement"), Some(list));
    assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:23806"));
    assert_eq!(flag(&r.args, "--watch-progress-notify-interval"), None);
    assert!(p.prometheus.is_none());
}

/// One placement replica and one router: the ports of the single-placement plan.
#[test]
fn custom_plan() {
    let a = args(&[
        "--nodes",
        "1",
        "--placement-replicas",
        "1",
        "--base-port",
        "30000",
        "--listen-client",
        "0.0.0.0:4000",
        "--watch-progress-notify-interval",
        "500ms",
        "--auth-token-ttl",
        "7",
        "--raft-tick-ms",
        "20",
        "--ready-timeout",
        "5s",
        "--prometheus",
    ]);
    assert_eq!(a.ready_timeout, Duration::from_secs(5));
    let p = plan(&a, Path::new("/x"), Path::new("/d"), 2).unwrap();
    assert_eq!(p.client_endpoints, ["127.0.0.1:4000"]);
    assert_eq!(names(&p), ["placement-1", "node-1", "router-1"]);
    let pl = &p.components[0];
    assert_eq!(flag(&pl.args, "--replicas"), Some("1"));
    assert_eq!(flag(&pl.args, "--listen"), Some("127.0.0.1:30000"));
    assert_eq!(flag(&pl.args, "--peers"), Some("1=127.0.0.1:30000"));
    assert_eq!(flag(&p.components[1].args, "--raft-tick-ms"), Some("20"));
    assert_eq!(
        flag(&p.components[1].args, "--listen"),
        Some("127.0.0.1:30001")
    );
    assert_eq!(
        flag(&p.components[1].args, "--placement"),
        Some("127.0.0.1:30000")
    );
    let r = &p.components[2];
    assert_eq!(flag(&r.args, "--listen-client"), Some("0.0.0.0:4000"));
    // Announced (MemberList) as reachable, not as 0.0.0.0.
    assert_eq!(
        flag(&r.args, "--advertise-client-urls"),
        Some("http://127.0.0.1:4000")
    );
    assert_eq!(
        flag(&r.args, "--watch-progress-notify-interval"),
        Some("500ms")
    );
    assert_eq!(flag(&r.args, "--auth-token-ttl"), Some("7"));
    assert_eq!(flag(&r.args, "--auth-token"), None);
    assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:30012"));
    let (prom, config) = p.prometheus.unwrap();
    assert_eq!(prom.addr, "127.0.0.1:30013");
    assert!(config.contains("'127.0.0.1:30011'"), "{config}");
    assert!(config.contains("job_name: strata-router"), "{config}");
}

#[test]
fn two_routers_three_placement_replicas() {
    let a = args(&[
        "--routers",
        "2",
        "--placement-replicas",
        "3",
        "--nodes",
        "3",
        "--prometheus",
    ]);
    let p = plan(&a, Path::new("/x"), Path::new("/d"), 2).unwrap();
    assert_eq!(p.client_endpoints, ["127.0.0.1:2379", "127.0.0.1:2380"]);
    assert_eq!(
        names(&p),
        [
            "placement-1",
            "placement-2",
            "placement-3",
            "node-1",
            "node-2",
            "node-3",
            "router-1",
            "router-2"
        ]
    );
    let list = "127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792";
    for c in &p.components[3..] {
        assert_eq!(flag(&c.args, "--placement"), Some(list), "{}", c.name);
    }
    let r2 = &p.components[7];
    assert_eq!((r2.role, r2.id), ("router", 2));
    assert_eq!(flag(&r2.args, "--listen-client"), Some("127.0.0.1:2380"));
    assert_eq!(
        flag(&r2.args, "--advertise-client-urls"),
        Some("http://127.0.0.1:2380")
    );
    assert_eq!(flag(&r2.args, "--metrics-addr"), Some("127.0.0.1:23807"));
    assert_eq!(r2.log, Path::new("/d/logs/router-2.log"));
    let (prom, config) = p.prometheus.clone().unwrap();
    assert_eq!(prom.addr, "127.0.0.1:23808");
    for m in ["23800", "23801", "23802", "23806", "23807"] {
        assert!(config.contains(&format!("'127.0.0.1:{m}'")), "{config}");
    }

    // The banner names both endpoints, and etcdctl's flag with both.
    let json = json_of(&p);
    let line = ready_line(&p, &a, Path::new("/d"), &json);
    assert!(
        line.starts_with(
            "strata dev ready: etcd endpoints 127.0.0.1:2379 127.0.0.1:2380 \
             (etcdctl --endpoints=127.0.0.1:2379,127.0.0.1:2380) (3 placement replicas, \
             3 nodes, 2 routers;"
        ),
        "{line}"
    );
}

/// A router's exit leaves the cluster serving while another runs; placement
/// replicas, while a quorum runs.
#[test]
fn the_cluster_cannot_serve_without_a_placement_quorum_or_any_router() {
    let child = |role: &'static str, name: &str, gone: bool| Running {
        role,
        name: name.into(),
        pid: 0,
        log: PathBuf::from("/dev/null"),
        exited: watch::channel(gone.then(|| "exited with status 1".to_string())).1,
    };
    let cluster = |placement_gone: usize, routers_gone: usize| {
        let mut v = Vec::new();
        for i in 1..=3 {
            v.push(child(
                "placement",
                &format!("placement-{i}"),
                i <= placement_gone,
            ));
        }
        v.push(child("node", "node-1", true));
        for j in 1..=2 {
            v.push(child("router", &format!("router-{j}"), j <= routers_gone));
        }
        v
    };
    assert_eq!(cannot_serve(&cluster(0, 0)), None);
    assert_eq!(
        cannot_serve(&cluster(1, 1)),
        None,
        "one of each is not fatal"
    );
    let why = cannot_serve(&cluster(2, 0)).expect("no placement quorum");
    assert!(why.contains("placement-1, placement-2 exited"), "{why}");
    assert!(why.contains("quorum (2 of 3)"), "{why}");
    let why = cannot_serve(&cluster(0, 2)).expect("no router");
    assert!(
        why.contains("router-1, router-2 exited: no router runs"),
        "{why}"
    );
    let single = [child("placement", "placement-1", true)];
    assert!(cannot_serve(&single).is_some());
}

#[test]
fn placement_data_must_match_the_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    check_placement_dirs(d, 3).unwrap(); // new
    fs::create_dir(d.join("placement")).unwrap();
    assert!(
        check_placement_dirs(d, 3).is_err(),
        "single placement, 3 asked"
    );
    check_placement_dirs(d, 1).unwrap();
    assert!(d.join("placement-1").is_dir() && !d.join("placement").exists());
    let err = check_placement_dirs(d, 3).unwrap_err().to_string();
    assert!(err.contains("made with 1 placement replica"), "{err}");
    for i in 2..=3 {
        fs::create_dir(d.join(format!("placement-{i}"))).unwrap();
    }
    check_placement_dirs(d, 3).unwrap();
    assert!(check_placement_dirs(d, 1).is_err());
    assert!(check_placement_dirs(d, 5).is_err());
}

#[test]
fn many_nodes_do_not_collide() {
    let p = plan(
        &args(&["--nodes", "12"]),
        Path::new("/x"),
        Path::new("/d"),
        2,
    )
    .unwrap();
    let mut ports: Vec<SocketAddr> = p
        .components
        .iter()
        .flat_map(|c| c.ports.iter().map(|(a, _)| *a))
        .collect();
    let n = ports.len();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), n);
    let bad = |argv: &[&str]| {
        plan(&args(argv), Path::new("/x"), Path::new("/d"), 2)
            .unwrap_err()
            .to_string()
    };
    assert!(bad(&["--base-port", "65530"]).contains("too high"));
    assert!(bad(&["--listen-client", "127.0.0.1:65535", "--routers", "2"]).contains("too high"));
    // Router 2 would land on placement replica 1's port.
    let e = bad(&["--listen-client", "127.0.0.1:23789", "--routers", "2"]);
    assert!(
        e.contains("port 23790 would be used twice, by placement-1 and by router-2"),
        "{e}"
    );
}

#[test]
fn bad_flags() {
    let parse = |argv: &[&str]| {
        Cli::try_parse_from(std::iter::once("dev").chain(argv.iter().copied())).is_ok()
    };
    assert!(!parse(&["--nodes", "0"]));
    assert!(!parse(&["--routers", "0"]));
    for n in ["0", "2", "4", "6", "x"] {
        assert!(
            !parse(&["--placement-replicas", n]),
            "--placement-replicas {n}"
        );
    }
    let err = Cli::try_parse_from(["dev", "--placement-replicas", "2"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use 1, 3 or 5"), "{err}");
    for n in ["1", "3", "5"] {
        assert!(parse(&["--placement-replicas", n]));
    }
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

#[test]
fn tls_plan() {
    let a = args(&["--tls", "--placement-replicas", "1", "--nodes", "1"]);
    let p = plan(&a, Path::new("/x"), Path::new("/d"), 2).unwrap();
    let t = p.tls.clone().expect("--tls plans certificates");
    assert_eq!(t.ca, "/d/tls/ca.pem");
    // Every component gets the peer flags; the router also the client port's.
    for c in &p.components {
        assert_eq!(
            flag(&c.args, "--peer-cert-file"),
            Some("/d/tls/peer.pem"),
            "{}",
            c.name
        );
        assert_eq!(
            flag(&c.args, "--peer-key-file"),
            Some("/d/tls/peer-key.pem")
        );
        assert_eq!(
            flag(&c.args, "--peer-trusted-ca-file"),
            Some("/d/tls/ca.pem")
        );
        let client_port = flag(&c.args, "--cert-file").is_some();
        assert_eq!(client_port, c.role == "router", "{}", c.name);
    }
    let r = &p.components[2];
    assert_eq!(flag(&r.args, "--cert-file"), Some("/d/tls/server.pem"));
    assert_eq!(flag(&r.args, "--trusted-ca-file"), Some("/d/tls/ca.pem"));
    assert!(r.args.iter().any(|a| a == "--client-cert-auth"));
    assert_eq!(
        flag(&r.args, "--advertise-client-urls"),
        Some("https://127.0.0.1:2379")
    );
    let json = json_of(&p);
    let line = ready_line(&p, &a, Path::new("/d"), &json);
    assert!(
        line.ends_with(
            "etcdctl --endpoints https://127.0.0.1:2379 --cacert /d/tls/ca.pem \
             --cert /d/tls/client.pem --key /d/tls/client-key.pem endpoint health"
        ),
        "{line}"
    );
    // Metrics over HTTPS, and Prometheus told so.
    assert_eq!(r.metrics_url, "https://127.0.0.1:23802/metrics");
    let a = args(&["--tls", "--prometheus"]);
    let p = plan(&a, Path::new("/x"), Path::new("/d"), 2).unwrap();
    let (_, config) = p.prometheus.unwrap();
    assert!(config.contains("scheme: https"), "{config}");
    assert!(config.contains("cert_file: '/d/tls/peer.pem'"), "{config}");
    assert!(config.contains("- '127.0.0.1:23806'"), "{config}");
    // Without --tls: plaintext, no TLS flag anywhere.
    let p = plan(&args(&[]), Path::new("/x"), Path::new("/d"), 2).unwrap();
    assert!(p.tls.is_none());
    assert!(p
        .components
        .iter()
        .all(|c| !c.args.iter().any(|a| a.contains("tls"))));
}

/// Every process's runtime gets its share of the machine's CPUs, at least one
/// thread, unless `--threads-per-process` says how many.
#[test]
fn threads_are_the_machines_cpus_shared_among_the_processes() {
    let threads = |argv: &[&str], cpus: usize| {
        let p = plan(&args(argv), Path::new("/x"), Path::new("/d"), cpus).unwrap();
        let mut seen = Vec::new();
        for c in &p.components {
            let w = flag(&c.args, "--worker-threads").map(str::to_owned);
            let client = flag(&c.args, "--client-threads").map(str::to_owned);
            match c.role {
                "router" => assert_eq!(client, w, "{}", c.name),
                _ => assert_eq!(client, None, "{}", c.name),
            }
            seen.push(w.expect("every process is told its threads"));
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "one share for all: {seen:?}");
        seen.remove(0)
    };
    // 3 placement replicas, 3 nodes, a router: 7 processes.
    assert_eq!(threads(&[], 2), "1");
    assert_eq!(threads(&[], 1), "1");
    assert_eq!(threads(&[], 16), "2");
    assert_eq!(threads(&["--placement-replicas", "1"], 16), "3");
    assert_eq!(threads(&["--threads-per-process", "4"], 2), "4");
    for bad in ["0", "1025", "x"] {
        let argv = ["dev", "--threads-per-process", bad];
        assert!(Cli::try_parse_from(argv).is_err(), "{bad}");
    }
}
