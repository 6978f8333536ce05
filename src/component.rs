//! Running one Strata component (placement, node or router) as a process.
//!
//! Shared by `strata node|placement|router` and the thin binaries `strata-node`,
//! `strata-placement` and `strata-router`. Those crates cannot depend on the root
//! package (it depends on them), so they include this file with
//! `#[path = "../../src/component.rs"] mod component;`: keep it free of anything but
//! `std`, `tokio`, `tracing`, `tracing-subscriber`, `clap` and `anyhow`, which every
//! component crate has, and `fail` under the `failpoints` feature, which every component crate
//! (and the root package) defines.
//!
//! **Runtime fault injection** (built with `--features failpoints`): when
//! `STRATA_FAILPOINTS_FILE` is set, a thread reads that file every 100 ms; each line
//! `name=actions` (the `fail` crate's action syntax: `partition=return`,
//! `crash_after_log_fsync=20%return`) is applied with `fail::cfg` when new or
//! changed, and a name whose line disappeared is removed. Blank lines and `#`
//! comments are ignored; a bad line is logged and skipped. The point names are listed
//! in `node/src/failpoint.rs`, `router/src/failpoint.rs` and
//! `placement/src/failpoint.rs`. Without the feature the variable is ignored.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

pub const NODE_ABOUT: &str =
    "Strata storage node: hosts range replicas, each one a Raft group member";
pub const NODE_LONG_ABOUT: &str = "\
Strata storage node: hosts range replicas, each one a Raft group member.

A node keeps all its replicas in one RocksDB under --data-dir (raft log, MVCC data,
metadata), registers with the placement service at --placement, and serves the
internal gRPC API (raft transport, routed KV requests, range feeds) on --listen.
Clients never talk to nodes directly: they connect to a router.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

pub const PLACEMENT_ABOUT: &str =
    "Strata placement service: node registry, range directory and revision oracle";
pub const PLACEMENT_LONG_ABOUT: &str = "\
Strata placement service: node registry, range directory and revision oracle.

Placement tracks which nodes are alive, which ranges exist and where their replicas
live, hands out the global revisions that order every write, and schedules replica
repair. It creates the first range once --replicas nodes have registered. Its state
is kept under --data-dir; nodes and routers find it through their --placement flag.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

pub const ROUTER_ABOUT: &str =
    "Strata router: the stateless etcd v3 gRPC endpoint that clients connect to";
pub const ROUTER_LONG_ABOUT: &str = "\
Strata router: the stateless etcd v3 gRPC endpoint that clients connect to.

A router serves etcd's v3 API (KV, Watch, Lease, Cluster, Maintenance) on
--listen-client, so etcdctl and etcd client libraries work unchanged. It asks
placement (--placement) where ranges live and forwards each request to the range
leader, retrying on routing errors within --request-timeout. It keeps no state of
its own: run as many routers as you like.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init`: a second initialisation in the same process is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The most worker threads `--worker-threads` accepts.
pub const MAX_WORKER_THREADS: u16 = 1024;

/// The process's async runtime, as every component's flags set it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RuntimeArgs {
    /// Worker threads of this process's async runtime (0: one per CPU this process
    /// may use). Lower it when several Strata processes share a machine's CPUs:
    /// `strata dev` gives each of its processes its share. More threads than the
    /// process gets CPUs only add hand-offs between threads to each request.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_WORKER_THREADS)))]
    pub worker_threads: u16,
}

/// Starts a component with `start` (its library's `run(config)`), then serves until
/// SIGTERM, SIGINT (Ctrl-C) or SIGHUP. Exits 0 after a signal, 1 if `start` fails.
pub fn serve<H, F>(name: &str, runtime: &RuntimeArgs, start: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<H>>,
{
    init_tracing();
    watch_failpoints_file();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if runtime.worker_threads > 0 {
        builder.worker_threads(usize::from(runtime.worker_threads));
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Install the handlers before starting, so that a signal arriving while the
        // component starts is not lost (and does not kill us with the default action).
        let mut signals = Signals::new()?;
        let handle = tokio::select! {
            h = start => h?,
            sig = signals.recv() => {
                eprintln!("{name}: received {sig} while starting, exiting");
                return Ok(());
            }
        };
        eprintln!(
            "{name}: serving (pid {}); stop with SIGTERM or Ctrl-C",
            std::process::id()
        );
        let sig = signals.recv().await;
        eprintln!("{name}: received {sig}, shutting down");
        drop(handle);
        anyhow::Ok(())
    });
    // Background tasks (servers, raft loops) end with the runtime; don't wait forever
    // on a blocking task that does not.
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable naming the failpoints file.
pub const FAILPOINTS_FILE_ENV: &str = "STRATA_FAILPOINTS_FILE";
#[cfg(any(test, feature = "failpoints"))]
const FAILPOINTS_POLL: Duration = Duration::from_millis(100);

/// Starts the thread that applies `STRATA_FAILPOINTS_FILE` (see the module doc).
fn watch_failpoints_file() {
    let Some(path) = std::env::var_os(FAILPOINTS_FILE_ENV) else {
        return;
    };
    #[cfg(feature = "failpoints")]
    {
        let path = std::path::PathBuf::from(path);
        tracing::info!(file = %path.display(), "failpoints: watching");
        let spawned = std::thread::Builder::new()
            .name("failpoints".into())
            .spawn(move || failpoints_loop(&path));
        if let Err(e) = spawned {
            tracing::warn!("failpoints: cannot start the watcher: {e}");
        }
    }
    #[cfg(not(feature = "failpoints"))]
    tracing::warn!(
        file = ?path,
        "{FAILPOINTS_FILE_ENV} is set but this binary was built without the \
         `failpoints` feature: ignored"
    );
}

#[cfg(feature = "failpoints")]
fn failpoints_loop(path: &std::path::Path) -> ! {
    let mut applied = Failpoints::new();
    let mut last_text: Option<String> = None;
    loop {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            // No file: no failpoints.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(String::new()),
            Err(e) => {
                if last_text.is_some() {
                    tracing::warn!(file = %path.display(), "failpoints: cannot read: {e}");
                }
                None // keep what is applied
            }
        };
        if let Some(text) = text {
            if last_text.as_ref() != Some(&text) {
                let (wanted, bad) = parse_failpoints(&text);
                for line in bad {
                    tracing::warn!("failpoints: ignoring bad line {line:?}");
                }
                let (set, removed) = diff_failpoints(&applied, &wanted);
                for name in removed {
                    fail::remove(&name);
                    eprintln!("failpoint {name}: removed");
                }
                for (name, actions) in set {
                    match fail::cfg(name.clone(), &actions) {
                        Ok(()) => eprintln!("failpoint {name}: set to {actions}"),
                        Err(e) => tracing::warn!("failpoints: bad actions for {name}: {e}"),
                    }
                }
                applied = wanted;
                last_text = Some(text);
            }
        }
        std::thread::sleep(FAILPOINTS_POLL);
    }
}

/// Failpoint names and their actions, as a failpoints file lists them.
#[cfg(any(test, feature = "failpoints"))]
type Failpoints = std::collections::BTreeMap<String, String>;

/// Parses a failpoints file: one `name=actions` per line; blank lines and `#`
/// comments are skipped. Returns the points (a later line for the same name wins)
/// and the lines that are not of that form.
#[cfg(any(test, feature = "failpoints"))]
fn parse_failpoints(text: &str) -> (Failpoints, Vec<String>) {
    let mut points = Failpoints::new();
    let mut bad = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line.split_once('=').and_then(|(name, actions)| {
            let (name, actions) = (name.trim(), actions.trim());
            let name_ok = !name.is_empty() && !name.contains(char::is_whitespace);
            (name_ok && !actions.is_empty()).then(|| (name.to_string(), actions.to_string()))
        });
        match parsed {
            Some((name, actions)) => {
                points.insert(name, actions);
            }
            None => bad.push(line.to_string()),
        }
    }
    (points, bad)
}

/// What changes from `old` to `new`: the points to (re)configure, new or with
/// changed actions, and the names to remove.
#[cfg(any(test, feature = "failpoints"))]
fn diff_failpoints(old: &Failpoints, new: &Failpoints) -> (Vec<(String, String)>, Vec<String>) {
    let set = new
        .iter()
        .filter(|(name, actions)| old.get(*name) != Some(*actions))
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect();
    let removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    (set, removed)
}

/// The termination signals a component or `strata dev` reacts to.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP; needs a tokio runtime.
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_file_lines_parse() {
        let text = "\
# a comment
partition=return

  crash_after_log_fsync = 20%return  
plant_stale_read=return
no equals sign
=return
name with space=return
empty=
partition=off
";
        let (points, bad) = parse_failpoints(text);
        let got: Vec<(&str, &str)> = points
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("crash_after_log_fsync", "20%return"),
                ("partition", "off"),
                ("plant_stale_read", "return"),
            ]
        );
        assert_eq!(
            bad,
            vec![
                "no equals sign",
                "=return",
                "name with space=return",
                "empty="
            ]
        );
        assert_eq!(FAILPOINTS_POLL, Duration::from_millis(100));
    }

    #[test]
    fn failpoints_diff_sets_changed_and_removes_gone() {
        let (old, _) = parse_failpoints("a=return\nb=return\nc=1*return\n");
        let (new, _) = parse_failpoints("a=return\nb=50%return\nd=return\n");
        let (set, removed) = diff_failpoints(&old, &new);
        assert_eq!(
            set,
            vec![
                ("b".to_string(), "50%return".to_string()),
                ("d".to_string(), "return".to_string())
            ]
        );
        assert_eq!(removed, vec!["c".to_string()]);
        let (set, removed) = diff_failpoints(&new, &new);
        assert!(set.is_empty() && removed.is_empty());
        let (set, removed) = diff_failpoints(&new, &Failpoints::new());
        assert!(set.is_empty());
        assert_eq!(removed, vec!["a", "b", "d"]);
    }
}
