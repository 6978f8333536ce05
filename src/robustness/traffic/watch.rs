//! Recorded watchers: each one a logical watch on an interval, re-opened from the
//! last revision it received + 1 whenever its stream ends (a router killed, a
//! connection dropped), through the next router — what a resuming client does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{WatchFilterType, WatchOptions};

use super::{connect, exec::kvs, exec::opt_kv, prefix_end, Recorder};
use crate::robustness::history::*;
use crate::robustness::traffic::profile::Profile;

/// A watcher's interval and options.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub key: String,
    pub end: String,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    /// Ask for progress (`RequestProgress`) this often, as Kubernetes does.
    pub request_progress: Option<Duration>,
}

/// The watchers of a profile.
pub fn specs(profile: Profile) -> Vec<WatchSpec> {
    let p = profile.prefix();
    let whole = WatchSpec {
        key: p.to_string(),
        end: prefix_end(p),
        prev_kv: true,
        no_put: false,
        no_delete: false,
        progress_notify: true,
        request_progress: None,
    };
    let first = profile.key(0);
    let tenth = &first[..first.len() - 2];
    match profile {
        Profile::Etcd { .. } => vec![
            whole.clone(),
            WatchSpec {
                key: tenth.to_string(),
                end: prefix_end(tenth),
                prev_kv: false,
                no_delete: true,
                ..whole.clone()
            },
            WatchSpec {
                key: profile.key(7),
                end: String::new(),
                ..whole
            },
        ],
        Profile::Kubernetes { .. } => vec![
            whole.clone(),
            WatchSpec {
                request_progress: Some(Duration::from_millis(700)),
                progress_notify: false,
                ..whole.clone()
            },
            WatchSpec {
                key: tenth.to_string(),
                end: prefix_end(tenth),
                no_put: true,
                prev_kv: false,
                ..whole
            },
        ],
    }
}

fn response(rec: &Recorder, r: &etcd_client::WatchResponse) -> WatchResp {
    let events: Vec<Event> = r
        .events()
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(Event {
                kind: match e.event_type() {
                    etcd_client::EventType::Put => EventKind::Put,
                    etcd_client::EventType::Delete => EventKind::Delete,
                },
                kv: kvs(std::slice::from_ref(kv)).remove(0),
                prev_kv: opt_kv(e.prev_kv()),
            })
        })
        .collect();
    WatchResp {
        at: rec.now(),
        revision: r.header().map(|h| h.revision()).unwrap_or(0),
        created: r.created(),
        canceled: r.canceled(),
        compact_revision: r.compact_revision(),
        progress: events.is_empty() && !r.created() && !r.canceled(),
        events,
    }
}

/// Runs watcher `index` until `stop` turns true; returns its log.
pub async fn watch_loop(
    rec: Arc<Recorder>,
    index: usize,
    spec: WatchSpec,
    endpoints: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
    initial: i64,
) -> WatchLog {
    let mut log = WatchLog {
        watcher: index as u32,
        key: spec.key.clone(),
        end: spec.end.clone(),
        prev_kv: spec.prev_kv,
        no_put: spec.no_put,
        no_delete: spec.no_delete,
        progress_notify: spec.progress_notify,
        streams: Vec::new(),
    };
    let mut next_start = initial;
    // Bounded: at most one stream per 100 ms for a whole run's length.
    for attempt in 0..100_000usize {
        let endpoint = endpoints[(index + attempt) % endpoints.len()].clone();
        let mut stream = WatchStream {
            endpoint: endpoint.clone(),
            opened: rec.now(),
            start_revision: next_start,
            ..WatchStream::default()
        };
        let stopped = run_stream(&rec, index, &spec, &mut stream, stop.clone()).await;
        let last = stream
            .responses
            .iter()
            .map(WatchResp::reached)
            .max()
            .unwrap_or(0);
        if let Some(c) = stream
            .responses
            .iter()
            .find(|r| r.canceled && r.compact_revision > 0)
        {
            next_start = next_start.max(c.compact_revision);
        }
        if last > 0 {
            next_start = next_start.max(last + 1);
        }
        let had_any = !stream.responses.is_empty();
        log.streams.push(stream);
        if stopped {
            break;
        }
        if !had_any {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    log
}

/// One stream; true when it ended because the run asked watchers to stop.
async fn run_stream(
    rec: &Recorder,
    index: usize,
    spec: &WatchSpec,
    stream: &mut WatchStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> bool {
    if *stop.borrow() {
        stream.ended = "end of run".into();
        return true;
    }
    let mut client = match connect(&stream.endpoint).await {
        Ok(c) => c,
        Err(e) => {
            stream.ended = format!("connect: {e}");
            return false;
        }
    };
    let mut opts = WatchOptions::new().with_start_revision(stream.start_revision);
    if !spec.end.is_empty() {
        opts = opts.with_range(spec.end.as_bytes().to_vec());
    }
    if spec.prev_kv {
        opts = opts.with_prev_key();
    }
    if spec.progress_notify {
        opts = opts.with_progress_notify();
    }
    let mut filters = Vec::new();
    if spec.no_put {
        filters.push(WatchFilterType::NoPut);
    }
    if spec.no_delete {
        filters.push(WatchFilterType::NoDelete);
    }
    if !filters.is_empty() {
        opts = opts.with_filters(filters);
    }
    let opened = tokio::time::timeout(
        Duration::from_secs(5),
        client.watch(spec.key.as_bytes(), Some(opts)),
    )
    .await;
    let ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            stream.ended = format!("watch: {e}");
            return false;
        }
        Err(_) => {
            stream.ended = "watch: no answer in 5s".into();
            return false;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let mut ask = tokio::time::interval(spec.request_progress.unwrap_or(Duration::from_secs(3600)));
    ask.tick().await;
    // A stream silent this long is given up (a paused router): the watcher
    // resumes elsewhere, as clients with keep-alives do.
    let silent_limit = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => {
                stream.ended = "end of run".into();
                return true;
            }
            _ = ask.tick() => {
                let _ = tx.request_progress().await;
            }
            msg = tokio::time::timeout(silent_limit, rx.message()) => match msg {
                Err(_) => {
                    stream.ended = format!("silent for {silent_limit:?}");
                    return false;
                }
                Ok(Ok(Some(r))) => {
                    let resp = response(rec, &r);
                    rec.watch_progress[index].fetch_max(resp.reached(), Ordering::Relaxed);
                    let canceled = resp.canceled;
                    stream.responses.push(resp);
                    if canceled {
                        stream.ended = format!("canceled: {}", r.cancel_reason());
                        return false;
                    }
                }
                Ok(Ok(None)) => {
                    stream.ended = "stream closed".into();
                    return false;
                }
                Ok(Err(e)) => {
                    stream.ended = format!("stream: {e}");
                    return false;
                }
            }
        }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}
