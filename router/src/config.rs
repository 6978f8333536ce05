use std::net::SocketAddr;
use std::time::Duration;

use strata_proto::tls::ServerTls;

/// Command-line configuration of a router (`strata-router`).
#[derive(clap::Args, Debug, Clone)]
pub struct RouterConfig {
    /// Address clients (etcdctl, etcd client libraries) connect to.
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,
    /// Placement service addresses: a comma-separated list of placement's
    /// replicas (HOST:PORT[,HOST:PORT...]); requests follow its leader from any
    /// of them.
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        default_value = "127.0.0.1:7100",
        value_parser = placement_addrs
    )]
    pub placement: String,
    /// Address to serve Prometheus /metrics, /health and /ready on (optional).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Interval of progress notifications to watches that asked for them.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// Deadline for one client request, retries included.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// URLs clients may reach this router at, comma-separated, as `MemberList`
    /// lists them (the first also derives its member id) [default: http:// +
    /// --listen-client].
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// Auth token type, as etcd's --auth-token: `simple` (signed tokens that
    /// every router accepts), or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG[,ttl=DURATION]`
    /// (ALG: RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512;
    /// for HS*, priv-key is the shared secret). Every router of a cluster
    /// needs the same setting.
    #[arg(long, default_value = "simple")]
    pub auth_token: String,
    /// Seconds a simple token stays valid after its last use (etcd's
    /// --auth-token-ttl).
    #[arg(long, default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// bcrypt cost of the password hashes of new users (etcd's --bcrypt-cost).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Threads serving client connections, each its own event loop with its
    /// own connections to the nodes for KV calls (0: one per CPU this process
    /// may use).
    #[arg(long, default_value_t = 0)]
    pub client_threads: usize,
    /// TLS on the client port (etcd's client flags).
    #[command(flatten)]
    pub client_tls: strata_proto::tls::ClientPortFlags,
    /// Mutual TLS on internal links (etcd's peer flags).
    #[command(flatten)]
    pub peer_tls: strata_proto::tls::PeerFlags,
}

impl RouterConfig {
    /// Sets this process's internal TLS (`--peer-*`) and returns the client
    /// port's and the metrics endpoint's (the client port's files; `None`:
    /// plaintext).
    pub fn tls(&self) -> anyhow::Result<(Option<ServerTls>, Option<ServerTls>)> {
        use strata_proto::tls::{set_internal, ALPN_H2_HTTP1, ALPN_HTTP1};
        set_internal(&self.peer_tls).map_err(anyhow::Error::msg)?;
        let port = |alpn| self.client_tls.server(alpn).map_err(anyhow::Error::msg);
        Ok((port(ALPN_H2_HTTP1)?, port(ALPN_HTTP1)?))
    }
}

/// Parses `500ms`, `10s`, `10m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 10s, 10m"))?;
    Ok(Duration::from_millis(n * mult_ms))
}

/// Checks a `--placement` list (see `strata_proto::placement_client::parse_addrs`).
fn placement_addrs(s: &str) -> Result<String, String> {
    strata_proto::placement_client::parse_addrs(s)
        .map(|_| s.to_string())
        .map_err(|e| e.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("x1").is_err());
    }

    #[test]
    fn placement_lists() {
        assert!(placement_addrs("127.0.0.1:7100").is_ok());
        assert!(placement_addrs("p1:7100,p2:7100, p3:7100").is_ok());
        for bad in ["", "p1", "p1:7100,", "p1:7100;p2:7100"] {
            assert!(placement_addrs(bad).is_err(), "{bad:?}");
        }
    }
}
