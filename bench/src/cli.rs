//! Command line, after etcd's `benchmark` tool (same subcommands, flags and defaults;
//! `--duration`, `--prefix`, `--json`, `--csv`, `--plot`, `compare` and `scale` are
//! ours).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Serialize, Serializer};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "strata-bench",
    version,
    about = "Load generator for etcd v3 endpoints (Strata or etcd), after etcd's `benchmark` tool",
    after_help = "Examples:\n  strata-bench --endpoints 127.0.0.1:2379 --conns 10 --clients 100 put --total 20000 --key-space-size 100000\n  strata-bench range foo --consistency s --total 10000 --json range.json\n  strata-bench compare --a strata --b etcd --rounds 3 -- put --conns 10 --clients 100 --total 20000"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct GlobalArgs {
    /// gRPC endpoints, comma separated (host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of gRPC clients (sharing the connections round-robin).
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Dial timeout of each connection.
    #[arg(long, global = true, default_value = "5s")]
    pub dial_timeout: Secs,
    /// Bound on every request; one that takes longer counts as an error.
    #[arg(long, global = true, default_value = "30s")]
    pub request_timeout: Secs,
    /// Write every figure and the exact workload as JSON to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the per-second time series as CSV to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Draw the latency CDF and the throughput over time as PNG to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// TLS: verify the server's certificate with this CA (PEM); endpoints
    /// are then dialled with TLS (etcd benchmark's --cacert).
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// TLS: client certificate to present (PEM; with --key).
    #[arg(
        long,
        id = "tls_cert",
        global = true,
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// TLS: private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
    /// Authenticate every connection as this user (etcd benchmark's --user
    /// NAME:PASSWORD).
    #[arg(long, global = true, value_name = "NAME:PASSWORD")]
    pub user: Option<String>,
    /// Never show a progress bar (it is only shown when stderr is a terminal anyway).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl GlobalArgs {
    /// --user as (name, password).
    pub fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        let Some(u) = &self.user else { return Ok(None) };
        let (name, password) = u
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--user {u:?}: use NAME:PASSWORD"))?;
        Ok(Some((name.to_string(), password.to_string())))
    }

    /// The TLS of --cacert/--cert/--key (`None`: plaintext).
    pub fn tls(&self) -> anyhow::Result<Option<strata_proto::tls::ClientTls>> {
        let Some(ca) = &self.cacert else {
            anyhow::ensure!(self.cert.is_none(), "--cert needs --cacert");
            return Ok(None);
        };
        let id = self.cert.clone().zip(self.key.clone());
        strata_proto::tls::ClientTls::new(ca.clone(), id)
            .map(Some)
            .map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Benchmark put.
    Put(PutArgs),
    /// Benchmark range: `range KEY [END]` (or the whole `--prefix` when KEY is omitted).
    Range(RangeArgs),
    /// Benchmark put through txn (`--txn-ops` puts per txn).
    TxnPut(TxnPutArgs),
    /// Benchmark a mixed load of txn-put and txn-range (`--rw-ratio` reads per write).
    TxnMixed(TxnMixedArgs),
    /// Benchmark watch: watch creation, then puts on the watched keys and event delivery.
    Watch(WatchArgs),
    /// Benchmark the latency between writing a key and receiving its watch event.
    WatchLatency(WatchLatencyArgs),
    /// Benchmark lease keepalive (one keepalive request-response per request).
    LeaseKeepalive(LeaseArgs),
    /// Run one workload against two targets, interleaved A B A B, and print a ratio table.
    Compare(crate::compare::CompareArgs),
    /// Write throughput of Strata clusters of 3, 6 and 9 nodes on this one machine, each
    /// node capped to the same CPU share (a one-machine simulation). After each round it
    /// prints the requests that failed, by error, and the cluster's range count and the
    /// ranges each node leads and holds.
    Scale(crate::scale::ScaleArgs),
}

impl Cmd {
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Put(_) => "put",
            Cmd::Range(_) => "range",
            Cmd::TxnPut(_) => "txn-put",
            Cmd::TxnMixed(_) => "txn-mixed",
            Cmd::Watch(_) => "watch",
            Cmd::WatchLatency(_) => "watch-latency",
            Cmd::LeaseKeepalive(_) => "lease-keepalive",
            Cmd::Compare(_) => "compare",
            Cmd::Scale(_) => "scale",
        }
    }
}

/// How many requests, for how long, how fast.
#[derive(Args, Debug, Clone, Serialize)]
pub struct LoadArgs {
    /// Total number of requests (default 10000, or unbounded by count with --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// Stop issuing requests after this long (e.g. 30s, 2m); with --total, whichever
    /// comes first.
    #[arg(long)]
    pub duration: Option<Secs>,
    /// Maximum requests per second over all clients (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

impl LoadArgs {
    /// The request count bound: `--total`, else 10000 without `--duration`, else none.
    pub fn total(&self) -> u64 {
        match (self.total, self.duration) {
            (Some(t), _) => t,
            (None, Some(_)) => u64::MAX,
            (None, None) => 10_000,
        }
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct KeyArgs {
    /// Key size in bytes (after --prefix).
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys (request i writes key i % key-space-size).
    #[arg(long)]
    pub sequential_keys: bool,
    /// Put this in front of every key (keeps a run to its own part of the keyspace).
    #[arg(long, default_value = "")]
    pub prefix: String,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Consistency {
    /// Linearizable.
    #[value(name = "l")]
    #[serde(rename = "l")]
    L,
    /// Serializable.
    #[value(name = "s")]
    #[serde(rename = "s")]
    S,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct PutArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct RangeArgs {
    /// First key of the range.
    pub key: Option<String>,
    /// End of the range (exclusive); without it, KEY alone.
    pub end: Option<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Linearizable (l) or serializable (s).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Maximum keys per response (0 is no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Only count the keys.
    #[arg(long)]
    pub count_only: bool,
    /// Range over every key with this prefix when KEY is omitted.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Use etcd 3.7's streaming RangeStream (chunks) instead of Range.
    #[arg(long)]
    pub stream: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct TxnPutArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Number of puts per txn.
    #[arg(long, default_value_t = 1)]
    pub txn_ops: u64,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct TxnMixedArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Read/write ops ratio (a request is a read with probability r/(1+r)).
    #[arg(long, default_value_t = 1.0)]
    pub rw_ratio: f64,
    /// Linearizable (l) or serializable (s) reads.
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
    /// Read operation range result limit.
    #[arg(long, default_value_t = 1000)]
    pub limit: i64,
    /// Read range end key; by default reads cover every key with --prefix (all keys
    /// without it).
    #[arg(long)]
    pub end_key: Option<String>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct WatchArgs {
    /// Total watch streams.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Total watchers per stream.
    #[arg(long, default_value_t = 100)]
    pub watch_per_stream: usize,
    /// Total number of keys to be watched.
    #[arg(long, default_value_t = 1)]
    pub watched_key_total: usize,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 0.0)]
    pub put_rate: f64,
    /// Number of put requests.
    #[arg(long, alias = "total", default_value_t = 1000)]
    pub put_total: u64,
    /// Key size of watch request.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of the puts (at least 8: the put's number is in the value).
    #[arg(long, default_value_t = 8)]
    pub val_size: usize,
    /// Maximum possible keys.
    #[arg(long, default_value_t = 1)]
    pub key_space_size: u64,
    /// Use sequential keys.
    #[arg(long)]
    pub sequential_keys: bool,
    /// Put this in front of every key.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// How long to wait for the last events after the last put.
    #[arg(long, default_value = "30s")]
    pub event_timeout: Secs,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct WatchLatencyArgs {
    /// Total number of put requests.
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Number of keys to put per second (0 is no limit).
    #[arg(long, default_value_t = 100.0)]
    pub put_rate: f64,
    /// Key size of watch response.
    #[arg(long, default_value_t = 32)]
    pub key_size: usize,
    /// Value size of watch response (at least 8).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// Put this in front of the key.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// How long to wait for every watcher's event of one put.
    #[arg(long, default_value = "10s")]
    pub event_timeout: Secs,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub load: LoadArgs,
}

/// A duration on the command line (`10s`, `500ms`, `2m`, `1h`, or plain seconds);
/// serialised as seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Secs(pub Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Secs, String> {
        let s = s.trim();
        let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = s.strip_suffix("us") {
            (n, 1e-6)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1.0)
        } else if let Some(n) = s.strip_suffix('m') {
            (n, 60.0)
        } else if let Some(n) = s.strip_suffix('h') {
            (n, 3600.0)
        } else {
            (s, 1.0)
        };
        let v: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 500ms, 2m)"))?;
        if !(v >= 0.0 && v.is_finite()) {
            return Err(format!("invalid duration {s:?}"));
        }
        Ok(Secs(Duration::from_secs_f64(v * mult)))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("10s".parse::<Secs>().unwrap().0, Duration::from_secs(10));
        assert_eq!(
            "500ms".parse::<Secs>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("2m".parse::<Secs>().unwrap().0, Duration::from_secs(120));
        assert_eq!(
            "1.5".parse::<Secs>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert!("x".parse::<Secs>().is_err());
        assert!("-1s".parse::<Secs>().is_err());
    }

    #[test]
    fn flags_like_etcd() {
        let c = Cli::try_parse_from([
            "strata-bench",
            "--endpoints",
            "a:1,b:2",
            "--conns",
            "10",
            "--clients",
            "100",
            "put",
            "--total",
            "20000",
            "--key-size",
            "16",
            "--sequential-keys",
        ])
        .unwrap();
        assert_eq!(c.global.endpoints, vec!["a:1", "b:2"]);
        assert_eq!((c.global.conns, c.global.clients), (10, 100));
        let Cmd::Put(p) = c.cmd else { panic!() };
        assert_eq!(p.load.total(), 20000);
        assert_eq!(p.keys.key_size, 16);
        assert!(p.keys.sequential_keys);
        assert_eq!(p.keys.key_space_size, 1);
        // Global flags after the subcommand too.
        let c = Cli::try_parse_from([
            "strata-bench",
            "range",
            "foo",
            "--consistency",
            "s",
            "--clients",
            "4",
        ])
        .unwrap();
        assert_eq!(c.global.clients, 4);
        let Cmd::Range(r) = c.cmd else { panic!() };
        assert_eq!(r.key.as_deref(), Some("foo"));
        assert_eq!(r.consistency, Consistency::S);
        assert_eq!(r.load.total(), 10_000);
        let c = Cli::try_parse_from(["strata-bench", "put", "--duration", "3s"]).unwrap();
        let Cmd::Put(p) = c.cmd else { panic!() };
        assert_eq!(p.load.total(), u64::MAX);
        let c = Cli::try_parse_from(["strata-bench", "watch", "--total", "5"]).unwrap();
        let Cmd::Watch(w) = c.cmd else { panic!() };
        assert_eq!(w.put_total, 5);
        // etcd benchmark's TLS flags, beside `range KEY`.
        let c = Cli::try_parse_from([
            "strata-bench",
            "--cacert",
            "ca.pem",
            "range",
            "k",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(
            c.global.cacert.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        assert_eq!(c.global.key.as_deref(), Some(std::path::Path::new("k.pem")));
        let Cmd::Range(r) = c.cmd else { panic!() };
        assert_eq!(r.key.as_deref(), Some("k"));
        assert!(Cli::try_parse_from(["strata-bench", "--cert", "c.pem", "put"]).is_err());
    }
}
