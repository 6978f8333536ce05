//! The plan of a `strata dev` cluster: processes, ports and argvs (pure).
//!
//! Ports, with P placement replicas, N nodes and R routers (all internal ones
//! on 127.0.0.1):
//! - placement replica i (1..=P): BASE+i−1;
//! - node i (1..=N): BASE+P−1+i;
//! - router 1: --listen-client; router j (2..=R): the port j−1 after it, on
//!   the same IP;
//! - metrics of component k (0-based, in the order placement replicas, nodes,
//!   routers): BASE+M+k with M = max(10, P+N);
//! - Prometheus (`--prometheus`): the port after the last metrics port.
//!
//! With one placement replica and one router this is the plan of the single
//! placement days (placement BASE, node i BASE+i, metrics from BASE+10).

use super::*;

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A router listening on 0.0.0.0 or [::] is reached through loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        localhost(addr.port())
    } else {
        addr
    }
}

/// The replicas of placement's group a quorum needs, of `replicas`.
pub(super) fn quorum(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// Threads of each process's runtime: `--threads-per-process`, or the `cpus` this
/// machine gives `strata dev` shared evenly among its `processes` (at least one).
pub(super) fn threads_per_process(args: &DevArgs, processes: u32, cpus: usize) -> u16 {
    args.threads_per_process.unwrap_or_else(|| {
        let share = cpus / (processes.max(1) as usize);
        share.clamp(1, usize::from(crate::component::MAX_WORKER_THREADS)) as u16
    })
}

/// Computes the processes, ports and argvs for a machine with `cpus` CPUs; pure,
/// so it is unit-tested.
pub(super) fn plan(
    args: &DevArgs,
    exe: &Path,
    data_dir: &Path,
    cpus: usize,
) -> anyhow::Result<Plan> {
    let n = u32::from(args.nodes);
    let p = u32::from(args.placement_replicas);
    let r = u32::from(args.routers);
    let base = u32::from(args.base_port);
    let metrics_offset = 10.max(p + n);
    // The highest internal port: Prometheus, right after the last metrics port.
    let top = base + metrics_offset + p + n + r;
    if top > u32::from(u16::MAX) {
        bail!(
            "--base-port {base} is too high for {p} placement replicas, {n} nodes and {r} \
             routers: ports {base}..={top} are needed"
        );
    }
    let client_top = u32::from(args.listen_client.port()) + r - 1;
    if client_top > u32::from(u16::MAX) {
        bail!(
            "--listen-client port {} is too high for {r} routers: router j listens on the \
             port j-1 after it (up to {client_top})",
            args.listen_client.port()
        );
    }
    let port = |q: u32| localhost(q as u16);
    // Every component's runtime threads (routers' client threads: below).
    let threads = threads_per_process(args, p + n + r, cpus).to_string();
    let runtime_flags = ["--worker-threads".to_string(), threads.clone()];
    let exe = exe.to_string_lossy().into_owned();
    let dir = |name: &str| data_dir.join(name).to_string_lossy().into_owned();
    let log = |name: &str| data_dir.join("logs").join(format!("{name}.log"));
    let metrics = |k: u32| port(base + metrics_offset + k);
    let tls = args
        .tls
        .then(|| crate::certs::TlsFiles::in_dir(&data_dir.join("tls")));
    // Every component's peer flags: mutual TLS on internal links.
    let peer_flags: Vec<String> = tls.iter().flat_map(|t| t.peer_args()).collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let metrics_url = |a: SocketAddr| format!("{scheme}://{a}/metrics");
    let placement_addrs: Vec<SocketAddr> = (0..p).map(|i| port(base + i)).collect();
    let placement_list = placement_addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let peers = placement_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");

    let mut components = Vec::new();
    for (i, addr) in (1..=p).zip(&placement_addrs) {
        let name = format!("placement-{i}");
        let m = metrics(i - 1);
        let mut argv = vec![
            exe.clone(),
            "placement".into(),
            "--id".into(),
            i.to_string(),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            dir(&name),
            "--listen".into(),
            addr.to_string(),
            "--replicas".into(),
            n.min(3).to_string(),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        argv.extend(runtime_flags.iter().cloned());
        if let Some(d) = &args.node_down_after {
            argv.extend(["--node-down-after".into(), d.clone()]);
        }
        argv.extend(peer_flags.iter().cloned());
        components.push(Spec {
            role: "placement",
            name: name.clone(),
            id: u64::from(i),
            addr: addr.to_string(),
            metrics_url: metrics_url(m),
            args: argv,
            log: log(&name),
            ports: vec![(*addr, name.clone()), (m, format!("{name} metrics"))],
        });
    }
    for i in 1..=n {
        let name = format!("node-{i}");
        let addr = port(base + p - 1 + i);
        let m = metrics(p - 1 + i);
        let mut argv = vec![
            exe.clone(),
            "node".into(),
            "--data-dir".into(),
            dir(&name),
            "--listen".into(),
            addr.to_string(),
            "--placement".into(),
            placement_list.clone(),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        argv.extend(runtime_flags.iter().cloned());
        if let Some(t) = args.raft_tick_ms {
            argv.extend(["--raft-tick-ms".into(), t.to_string()]);
        }
        if let Some(q) = args.quiesce_after_ticks {
            argv.extend(["--quiesce-after-ticks".into(), q.to_string()]);
        }
        if let Some(b) = args.range_split_bytes {
            argv.extend(["--range-split-bytes".into(), b.to_string()]);
        }
        if let Some(w) = args.range_split_write_rate {
            argv.extend(["--range-split-write-rate".into(), w.to_string()]);
        }
        if let Some(k) = args.range_split_keys {
            argv.extend(["--range-split-keys".into(), k.to_string()]);
        }
        if let Some(q) = args.quota_backend_bytes {
            argv.extend(["--quota-backend-bytes".into(), q.to_string()]);
        }
        argv.extend(peer_flags.iter().cloned());
        components.push(Spec {
            role: "node",
            name: name.clone(),
            id: u64::from(i),
            addr: addr.to_string(),
            metrics_url: metrics_url(m),
            args: argv,
            log: log(&name),
            ports: vec![(addr, name.clone()), (m, format!("{name} metrics"))],
        });
    }
    let mut client_endpoints = Vec::new();
    for j in 1..=r {
        let name = format!("router-{j}");
        let listen = SocketAddr::new(
            args.listen_client.ip(),
            (u32::from(args.listen_client.port()) + j - 1) as u16,
        );
        let endpoint = reachable(listen);
        let m = metrics(p + n + j - 1);
        let mut argv = vec![
            exe.clone(),
            "router".into(),
            "--listen-client".into(),
            listen.to_string(),
            "--advertise-client-urls".into(),
            format!("{scheme}://{endpoint}"),
            "--placement".into(),
            placement_list.clone(),
            "--metrics-addr".into(),
            m.to_string(),
            "--client-threads".into(),
            threads.clone(),
        ];
        argv.extend(runtime_flags.iter().cloned());
        if let Some(d) = &args.watch_progress_notify_interval {
            argv.extend(["--watch-progress-notify-interval".into(), d.clone()]);
        }
        if let Some(t) = &args.auth_token {
            argv.extend(["--auth-token".into(), t.clone()]);
        }
        if let Some(ttl) = args.auth_token_ttl {
            argv.extend(["--auth-token-ttl".into(), ttl.to_string()]);
        }
        argv.extend(tls.iter().flat_map(|t| t.client_port_args()));
        argv.extend(peer_flags.iter().cloned());
        components.push(Spec {
            role: "router",
            name: name.clone(),
            id: u64::from(j),
            addr: listen.to_string(),
            metrics_url: metrics_url(m),
            args: argv,
            log: log(&name),
            ports: vec![
                (listen, format!("{name} client endpoint")),
                (m, format!("{name} metrics")),
            ],
        });
        client_endpoints.push(endpoint.to_string());
    }

    let prometheus = if args.prometheus {
        let listen = args.prometheus_listen.unwrap_or_else(|| metrics(p + n + r));
        let prom_dir = data_dir.join("prometheus");
        let spec = Spec {
            role: "prometheus",
            name: "prometheus".into(),
            id: 0,
            addr: listen.to_string(),
            metrics_url: format!("http://{listen}/metrics"),
            args: vec![
                "prometheus".into(), // replaced by the path found on PATH
                format!(
                    "--config.file={}",
                    prom_dir.join("prometheus.yml").display()
                ),
                format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                format!("--web.listen-address={listen}"),
            ],
            log: log("prometheus"),
            ports: vec![(listen, "prometheus".into())],
        };
        Some((spec, prometheus_config(&components, tls.as_ref())))
    } else {
        None
    };

    let plan = Plan {
        client_endpoints,
        components,
        prometheus,
        tls,
    };
    check_distinct_ports(&plan)?;
    Ok(plan)
}

/// With `tls`, scrapes over HTTPS with the peer certificate (accepted by
/// routers too: one CA signs everything `strata dev` makes).
fn prometheus_config(components: &[Spec], tls: Option<&crate::certs::TlsFiles>) -> String {
    let mut config = String::from(
        "# Written by `strata dev --prometheus`; rewritten on every start.\n\
         global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
         rule_files:\n  - alerts.yml\nscrape_configs:\n",
    );
    for role in ["placement", "node", "router"] {
        config.push_str(&format!("  - job_name: strata-{role}\n"));
        if let Some(t) = tls {
            config.push_str(&format!(
                "    scheme: https\n    tls_config:\n      ca_file: '{}'\n      \
                 cert_file: '{}'\n      key_file: '{}'\n",
                t.ca, t.peer_cert, t.peer_key
            ));
        }
        config.push_str("    static_configs:\n      - targets:\n");
        for c in components.iter().filter(|c| c.role == role) {
            let target = c.metrics_url.split_once("://").map_or("", |(_, t)| t);
            let target = target.trim_end_matches("/metrics");
            config.push_str(&format!("          - '{target}'\n"));
        }
    }
    config
}

/// No port is planned twice (e.g. routers after --listen-client running into
/// --base-port's block): the binding check before the start could not see it.
fn check_distinct_ports(plan: &Plan) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<u16, &str> = std::collections::HashMap::new();
    let specs = plan
        .components
        .iter()
        .chain(plan.prometheus.as_ref().map(|(s, _)| s));
    for spec in specs {
        for (addr, what) in &spec.ports {
            if let Some(first) = seen.insert(addr.port(), what) {
                bail!(
                    "port {} would be used twice, by {first} and by {what}; choose other \
                     ports with --listen-client, --base-port or --prometheus-listen",
                    addr.port()
                );
            }
        }
    }
    Ok(())
}
