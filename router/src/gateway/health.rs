//! etcd 3.6's health endpoints on the client port: `GET /health` (JSON
//! `{"health":"true","reason":""}`; `?serializable=true` reads without
//! consensus), `GET /livez` and `GET /readyz` (plain `ok`; `?verbose` lists
//! every check as `[+]name ok`; `?exclude=name` skips one; `/livez/<check>`,
//! `/readyz/<check>` run one; a failure is a 503 listing the checks).
//!
//! A read check is the KV service's own read (`Kv::do_range` of one key,
//! keys only, limit 1 — etcd's check) within the request timeout: a
//! linearizable read needs the oracle and the key's range leader, a
//! serializable one only the range leader. A router is never a raft
//! learner and Strata raises no alarms (Maintenance.Alarm lists none), so
//! `non_learner` and `data_corruption` always pass; they are listed because
//! etcd lists them and probes exclude them by name.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Response, StatusCode};
use strata_proto::etcd::PbRangeRequest;
use tonic::body::Body;

use crate::kv::Kv;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

pub struct Health {
    kv: Arc<Kv>,
    timeout: Duration,
}

impl Health {
    pub fn new(kv: Arc<Kv>, timeout: Duration) -> Self {
        Health { kv, timeout }
    }

    /// The answer when `path` is a health endpoint, else `None`.
    pub async fn handle(&self, method: &Method, path: &str, query: &str) -> Option<Response<Body>> {
        let (registry, single) = match path {
            "/health" => {
                if method != Method::GET {
                    return Some(method_not_allowed());
                }
                let serializable = query_values(query, "serializable").any(|v| v == "true");
                return Some(self.health(serializable).await);
            }
            "/livez" => (LIVEZ, None),
            "/readyz" => (READYZ, None),
            p => {
                let (registry, name) = if let Some(n) = p.strip_prefix("/livez/") {
                    (LIVEZ, n)
                } else if let Some(n) = p.strip_prefix("/readyz/") {
                    (READYZ, n)
                } else {
                    return None;
                };
                let check = registry.iter().copied().find(|c| c.name() == name)?;
                (registry, Some(check))
            }
        };
        if method != Method::GET {
            return Some(method_not_allowed());
        }
        let checks: Vec<Check> = match single {
            Some(c) => vec![c],
            None => {
                let excluded: Vec<&str> = query_values(query, "exclude").collect();
                registry
                    .iter()
                    .copied()
                    .filter(|c| !excluded.contains(&c.name()))
                    .collect()
            }
        };
        let mut report = String::new();
        let mut failed = false;
        for c in checks {
            match self.run(c).await {
                Ok(()) => report.push_str(&format!("[+]{} ok\n", c.name())),
                Err(e) => {
                    failed = true;
                    report.push_str(&format!("[-]{} failed: {e}\n", c.name()));
                }
            }
        }
        if failed {
            // etcd always details a failure (and ends it with one more newline).
            return Some(text(StatusCode::SERVICE_UNAVAILABLE, format!("{report}\n")));
        }
        let verbose = query_values_present(query, "verbose");
        let body = if verbose {
            format!("{report}ok\n")
        } else {
            "ok\n".to_string()
        };
        Some(text(StatusCode::OK, body))
    }

    /// `/health`: `{"health":"true","reason":""}`, or 503 with the reason.
    async fn health(&self, serializable: bool) -> Response<Body> {
        match self.read(serializable).await {
            Ok(()) => sniffed(r#"{"health":"true","reason":""}"#.to_string()),
            Err(e) => {
                let reason = serde_json::Value::from(format!("RANGE ERROR:{e}"));
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{{\"health\":\"false\",\"reason\":{reason}}}\n"),
                )
            }
        }
    }

    async fn run(&self, c: Check) -> Result<(), String> {
        match c {
            Check::DataCorruption | Check::NonLearner => Ok(()),
            Check::SerializableRead => self.read(true).await,
            Check::LinearizableRead => self.read(false).await,
        }
    }

    /// etcd's health read: one key, keys only, at most one, as root.
    async fn read(&self, serializable: bool) -> Result<(), String> {
        let r = PbRangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        };
        match tokio::time::timeout(self.timeout, self.kv.do_range(r)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Err(_) => Err(strata_proto::errors::timeout().message().to_string()),
        }
    }
}

/// The values of `name` in a query string (no percent-decoding: every name
/// and value these endpoints know is plain ASCII).
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name && !v.is_empty()).then_some(v)
    })
}

fn query_values_present(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|kv| kv.split_once('=').map_or(kv, |(k, _)| k) == name)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    super::plain(status, body)
}

/// A 200 whose type Go's server sniffs (etcd writes `/health` so).
fn sniffed(body: String) -> Response<Body> {
    let mut resp = text(StatusCode::OK, body);
    resp.headers_mut().remove("x-content-type-options");
    resp
}

/// Go's `http.Error(w, "Method Not Allowed", 405)` with `Allow: GET`.
fn method_not_allowed() -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method Not Allowed\n".to_string(),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = "exclude=serializable_read&verbose&exclude=&serializable=true";
        assert_eq!(
            query_values(q, "exclude").collect::<Vec<_>>(),
            ["serializable_read"]
        );
        assert!(query_values_present(q, "verbose"));
        assert!(query_values_present("verbose=1", "verbose"));
        assert!(!query_values_present("verbosely", "verbose"));
        assert_eq!(
            query_values(q, "serializable").collect::<Vec<_>>(),
            ["true"]
        );
    }
}
