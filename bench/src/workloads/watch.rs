//! The watch benchmarks: `watch` (creation, then puts on the watched keys and
//! event delivery) and `watch-latency` (put to event).

use super::*;

/// Creates `n` watches on one stream, one at a time, each timed from sending the
/// create request to its `created` response.
async fn create_watches(
    client: Client,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
    t0: Instant,
) -> (Option<WatchStream>, Recorder) {
    let mut rec = Recorder::new();
    let mut wc = client.watch_client();
    let mut stream: Option<WatchStream> = None;
    let n = keys.len();
    for (j, key) in keys.into_iter().enumerate() {
        let st = Instant::now();
        let r = tokio::time::timeout(timeout, async {
            match stream.as_mut() {
                None => stream = Some(wc.watch(key, None).await.map_err(|e| err_text(&e))?),
                Some(s) => s.watch(key, None).await.map_err(|e| err_text(&e))?,
            }
            let s = stream.as_mut().unwrap();
            loop {
                match s.message().await.map_err(|e| err_text(&e))? {
                    Some(resp) if resp.created() => return Ok(()),
                    Some(resp) if resp.canceled() => {
                        return Err(format!("watch canceled: {}", resp.cancel_reason()))
                    }
                    Some(_) => continue,
                    None => return Err("watch stream closed".to_string()),
                }
            }
        })
        .await;
        let end = Instant::now();
        let err = match r {
            Ok(Ok(())) => {
                rec.record(end - st, end - t0);
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("watch create timed out after {timeout:?}"),
        };
        // The stream is unusable: the remaining watches of it fail too.
        for _ in j..n {
            rec.record_error(&err, end - t0);
        }
        return (None, rec);
    }
    (stream, rec)
}

pub(super) async fn watch(
    g: &GlobalArgs,
    a: &crate::cli::WatchArgs,
    clients: &[Client],
    progress: &Progress,
) -> Result<Vec<Summary>> {
    if a.streams == 0 || a.watch_per_stream == 0 || a.watched_key_total == 0 {
        bail!("--streams, --watch-per-stream and --watched-key-total must be at least 1");
    }
    let kg = KeyGen::new(
        a.prefix.as_bytes(),
        a.key_size,
        a.key_space_size,
        a.sequential_keys,
    )
    .map_err(|e| anyhow!(e))?;
    let mut rng = seeded();
    let watched: Vec<Vec<u8>> = (0..a.watched_key_total as u64)
        .map(|i| kg.key(i, &mut rng))
        .collect();
    let total_watchers = a.streams * a.watch_per_stream;
    let mut num_watchers: HashMap<&[u8], u64> = HashMap::new();
    for j in 0..total_watchers {
        *num_watchers.entry(&watched[j % watched.len()]).or_default() += 1;
    }

    // Phase 1: create the watches.
    let t0 = Instant::now();
    let created = Arc::new(AtomicU64::new(0));
    let bar = progress.track("watch create", total_watchers as u64, None, created.clone());
    let mut tasks = Vec::new();
    for s in 0..a.streams {
        let keys: Vec<Vec<u8>> = (0..a.watch_per_stream)
            .map(|w| watched[(s * a.watch_per_stream + w) % watched.len()].clone())
            .collect();
        let client = clients[s % clients.len()].clone();
        let (timeout, created) = (g.request_timeout.0, created.clone());
        tasks.push(tokio::spawn(async move {
            let r = create_watches(client, keys, timeout, t0).await;
            created.fetch_add(r.1.count(), Ordering::Relaxed);
            r
        }));
    }
    let mut streams = Vec::new();
    let mut creation = Recorder::new();
    for t in tasks {
        let (s, rec) = t.await?;
        creation.merge(&rec);
        streams.extend(s);
    }
    let creation_wall = t0.elapsed();
    bar.finish();
    let creation_sum = creation.summary("watch-creation", creation_wall, total_watchers as u64);

    // Phase 2: put the watched keys; every watcher of a key gets an event per put.
    // Watches whose creation failed are counted there and not expected to deliver.
    let events_total: u64 = if creation.error_count() == 0 {
        (0..a.put_total)
            .map(|i| num_watchers[watched[(i % watched.len() as u64) as usize].as_slice()])
            .sum()
    } else {
        0
    };
    let t1 = Instant::now();
    let starts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let remaining = Arc::new(AtomicI64::new(events_total as i64));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut rx_tasks = Vec::new();
    if events_total > 0 {
        for mut s in streams {
            let (starts, remaining, all_in, received) = (
                starts.clone(),
                remaining.clone(),
                all_in.clone(),
                received.clone(),
            );
            let mut stop_rx = stop_rx.clone();
            rx_tasks.push(tokio::spawn(async move {
                let mut rec = Recorder::new();
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => break,
                        m = s.message() => {
                            let now = Instant::now();
                            let resp = match m {
                                Ok(Some(r)) => r,
                                Ok(None) => { rec.record_error("watch stream closed", now - t1); break }
                                Err(e) => { rec.record_error(&err_text(&e), now - t1); break }
                            };
                            for ev in resp.events() {
                                let Some(idx) = ev.kv().and_then(|kv| value_index(kv.value())) else { continue };
                                let Some(st) = starts.get(idx as usize) else { continue };
                                let st_ns = st.load(Ordering::Acquire);
                                if st_ns == 0 { continue; }
                                let at = now - t1;
                                rec.record(at.saturating_sub(Duration::from_nanos(st_ns - 1)), at);
                                received.fetch_add(1, Ordering::Relaxed);
                                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                                    all_in.notify_one();
                                }
                            }
                        }
                    }
                }
                rec
            }));
        }
    } else {
        drop(streams);
    }
    let bar = progress.track("watch events", events_total, None, received.clone());
    let load = Load {
        total: a.put_total,
        duration: None,
        rate: a.put_rate,
        request_timeout: g.request_timeout.0,
    };
    let val_size = a.val_size;
    let workers = clients
        .iter()
        .map(|c| {
            let (kv, watched, starts) = (c.kv_client(), watched.clone(), starts.clone());
            Box::new(move |i: u64| {
                let key = watched[(i % watched.len() as u64) as usize].clone();
                starts[i as usize].store((t1.elapsed().as_nanos() as u64) + 1, Ordering::Release);
                let mut kv = kv.clone();
                let f: OpFuture = Box::pin(async move {
                    kv.put(key, indexed_value(i, val_size), None)
                        .await
                        .map(|_| ())
                        .map_err(|e| err_text(&e))
                });
                (0usize, f)
            }) as Worker
        })
        .collect();
    let ph = run_closed_loop(1, workers, load, &Progress::hidden(), "watch put").await;
    let put_sum = ph.recorders[0].summary("put", ph.wall, a.put_total);
    if events_total > 0 && remaining.load(Ordering::Acquire) > 0 {
        let _ = tokio::time::timeout(a.event_timeout.0, async {
            while remaining.load(Ordering::Acquire) > 0 {
                tokio::select! {
                    _ = all_in.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
    }
    let events_wall = t1.elapsed();
    let _ = stop_tx.send(true);
    let mut events = Recorder::new();
    for t in rx_tasks {
        if let Ok(rec) = t.await {
            events.merge(&rec);
        }
    }
    bar.finish();
    let missing = events_total.saturating_sub(events.count());
    for _ in 0..missing.min(1_000_000) {
        events.record_error(
            &format!(
                "event not received within {:?} of the last put",
                a.event_timeout.0
            ),
            events_wall,
        );
    }
    let events_sum = events.summary("watch-events", events_wall, events_total);
    Ok(vec![creation_sum, put_sum, events_sum])
}

// ---------------------------------------------------------------------------
// watch-latency

pub(super) async fn watch_latency(
    g: &GlobalArgs,
    a: &crate::cli::WatchLatencyArgs,
    clients: &[Client],
    progress: &Progress,
) -> Result<Vec<Summary>> {
    let mut rng = seeded();
    let mut key = a.prefix.as_bytes().to_vec();
    key.extend(rand_bytes(a.key_size, &mut rng));
    let n_w = clients.len();
    // One watch (on its own stream) per client; events go to one channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(4096.max(n_w * 4));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx_tasks = Vec::new();
    for c in clients {
        let mut wc = c.watch_client();
        let mut s = tokio::time::timeout(g.request_timeout.0, async {
            let mut s = wc.watch(key.clone(), None).await?;
            loop {
                match s.message().await? {
                    Some(r) if r.created() => return Ok::<_, etcd_client::Error>(s),
                    Some(_) => continue,
                    None => {
                        return Err(etcd_client::Error::WatchError("watch stream closed".into()))
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow!("watch create timed out"))?
        .map_err(|e| anyhow!("watch create: {}", err_text(&e)))?;
        let (tx, mut stop_rx) = (tx.clone(), stop_rx.clone());
        rx_tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    m = s.message() => {
                        let now = Instant::now();
                        let Ok(Some(resp)) = m else { break };
                        for ev in resp.events() {
                            if let Some(idx) = ev.kv().and_then(|kv| value_index(kv.value())) {
                                if tx.send((idx, now)).await.is_err() { return; }
                            }
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    // The writer has a connection of its own, as in etcd's tool.
    let put_conn = connect(
        &g.endpoints,
        1,
        g.dial_timeout.0,
        g.tls()?.as_ref(),
        g.credentials()?.as_ref(),
    )
    .await?;
    let mut kv = put_conn[0].kv_client();
    let limiter = RateLimiter::optional(a.put_rate);
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress.track("watch-latency", a.total, None, done.clone());
    let (mut from_ack, mut from_start, mut puts) =
        (Recorder::new(), Recorder::new(), Recorder::new());
    let t0 = Instant::now();
    for i in 0..a.total {
        if let Some(l) = &limiter {
            l.acquire().await;
        }
        let st = Instant::now();
        let r = tokio::time::timeout(
            g.request_timeout.0,
            kv.put(key.clone(), indexed_value(i, a.val_size), None),
        )
        .await;
        let ack = Instant::now();
        match r {
            Ok(Ok(_)) => puts.record(ack - st, ack - t0),
            Ok(Err(e)) => {
                puts.record_error(&err_text(&e), ack - t0);
                continue;
            }
            Err(_) => {
                puts.record_error("put timed out", ack - t0);
                continue;
            }
        }
        let mut got = 0usize;
        let deadline = tokio::time::Instant::now() + a.event_timeout.0;
        while got < n_w {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, at))) if idx == i => {
                    got += 1;
                    from_ack.record(at.saturating_duration_since(ack), at - t0);
                    from_start.record(at - st, at - t0);
                }
                Ok(Some(_)) => {} // a late event of an earlier put (already counted missing)
                Ok(None) | Err(_) => break,
            }
        }
        for _ in got..n_w {
            let msg = format!("event not received within {:?}", a.event_timeout.0);
            from_ack.record_error(&msg, t0.elapsed());
            from_start.record_error(&msg, t0.elapsed());
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    let wall = t0.elapsed();
    bar.finish();
    let _ = stop_tx.send(true);
    for t in rx_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let put_ok = puts.count();
    Ok(vec![
        from_ack.summary("watch-latency", wall, put_ok * n_w as u64),
        from_start.summary("watch-latency-from-put-start", wall, put_ok * n_w as u64),
        puts.summary("put", wall, a.total),
    ])
}
