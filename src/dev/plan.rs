//! The plan of a `strata dev` cluster: processes, ports and argvs (pure).

use super::*;

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Computes the processes, ports and argvs; pure, so it is unit-tested.
pub(super) fn plan(args: &DevArgs, exe: &Path, data_dir: &Path) -> anyhow::Result<Plan> {
    let n = u32::from(args.nodes);
    let base = u32::from(args.base_port);
    let metrics_offset = 10.max(n + 1);
    // The highest port: the router's metrics (or Prometheus right after it).
    let top = base + metrics_offset + n + 2;
    if top > u32::from(u16::MAX) {
        bail!("--base-port {base} is too high for {n} nodes: ports {base}..={top} are needed");
    }
    let port = |p: u32| localhost(p as u16);
    let exe = exe.to_string_lossy().into_owned();
    let dir = |name: &str| data_dir.join(name).to_string_lossy().into_owned();
    let log = |name: &str| data_dir.join("logs").join(format!("{name}.log"));
    let placement_addr = port(base);
    let metrics = |k: u32| port(base + metrics_offset + k);
    let metrics_url = |a: SocketAddr| format!("http://{a}/metrics");

    let mut components = Vec::new();
    let m = metrics(0);
    components.push(Spec {
        role: "placement",
        name: "placement".into(),
        id: 0,
        addr: placement_addr.to_string(),
        metrics_url: metrics_url(m),
        args: vec![
            exe.clone(),
            "placement".into(),
            "--data-dir".into(),
            dir("placement"),
            "--listen".into(),
            placement_addr.to_string(),
            "--replicas".into(),
            n.min(3).to_string(),
            "--metrics-addr".into(),
            m.to_string(),
        ]
        .into_iter()
        .chain(
            args.node_down_after
                .iter()
                .flat_map(|d| ["--node-down-after".to_string(), d.clone()]),
        )
        .collect(),
        log: log("placement"),
        ports: vec![
            (placement_addr, "placement".into()),
            (m, "placement metrics".into()),
        ],
    });
    for i in 1..=n {
        let name = format!("node-{i}");
        let addr = port(base + i);
        let m = metrics(i);
        let mut argv = vec![
            exe.clone(),
            "node".into(),
            "--data-dir".into(),
            dir(&name),
            "--listen".into(),
            addr.to_string(),
            "--placement".into(),
            placement_addr.to_string(),
            "--metrics-addr".into(),
            m.to_string(),
        ];
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
    let m = metrics(n + 1);
    let mut argv = vec![
        exe,
        "router".into(),
        "--listen-client".into(),
        args.listen_client.to_string(),
        "--placement".into(),
        placement_addr.to_string(),
        "--metrics-addr".into(),
        m.to_string(),
    ];
    if let Some(d) = &args.watch_progress_notify_interval {
        argv.extend(["--watch-progress-notify-interval".into(), d.clone()]);
    }
    components.push(Spec {
        role: "router",
        name: "router".into(),
        id: 0,
        addr: args.listen_client.to_string(),
        metrics_url: metrics_url(m),
        args: argv,
        log: log("router"),
        ports: vec![
            (args.listen_client, "router client endpoint".into()),
            (m, "router metrics".into()),
        ],
    });

    // A router listening on 0.0.0.0 or [::] is reached through loopback.
    let client = match args.listen_client.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => localhost(args.listen_client.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => localhost(args.listen_client.port()),
        _ => args.listen_client,
    };

    let prometheus = if args.prometheus {
        let listen = args.prometheus_listen.unwrap_or_else(|| metrics(n + 2));
        let prom_dir = data_dir.join("prometheus");
        let spec = Spec {
            role: "prometheus",
            name: "prometheus".into(),
            id: 0,
            addr: listen.to_string(),
            metrics_url: metrics_url(listen),
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
        let mut config = String::from(
            "# Written by `strata dev --prometheus`; rewritten on every start.\n\
             global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
             rule_files:\n  - alerts.yml\nscrape_configs:\n",
        );
        for role in ["placement", "node", "router"] {
            config.push_str(&format!(
                "  - job_name: strata-{role}\n    static_configs:\n      - targets:\n"
            ));
            for c in components.iter().filter(|c| c.role == role) {
                let target = c.metrics_url.trim_start_matches("http://");
                let target = target.trim_end_matches("/metrics");
                config.push_str(&format!("          - '{target}'\n"));
            }
        }
        Some((spec, config))
    } else {
        None
    };

    Ok(Plan {
        client_endpoint: client.to_string(),
        components,
        prometheus,
    })
}
