//! Waiting until the cluster serves clients, and reporting why it does not.

use super::plan::quorum;
use super::*;

/// Why the cluster cannot serve, if it cannot any more: a quorum of placement
/// replicas or every router exited (one of several is not enough).
pub(super) fn cannot_serve(children: &[Running]) -> Option<String> {
    let gone = |role: &str| -> (usize, Vec<&str>) {
        let all = children.iter().filter(|c| c.role == role).count();
        let gone = children
            .iter()
            .filter(|c| c.role == role && !c.is_running())
            .map(|c| c.name.as_str())
            .collect();
        (all, gone)
    };
    let (placements, placements_gone) = gone("placement");
    let (routers, routers_gone) = gone("router");
    if placements > 0 && placements - placements_gone.len() < quorum(placements) {
        return Some(format!(
            "{} exited: fewer than a quorum ({} of {placements}) of placement replicas run",
            placements_gone.join(", "),
            quorum(placements)
        ));
    }
    if routers > 0 && routers_gone.len() == routers {
        return Some(format!(
            "{} exited: no router runs",
            routers_gone.join(", ")
        ));
    }
    None
}

/// Retries a `get` through each router until every running router answered one,
/// the deadline passes, or the cluster cannot serve any more ([`cannot_serve`]).
pub(super) async fn wait_until_serving(
    endpoints: &[String],
    timeout: Duration,
    children: &[Running],
    tls: Option<&crate::certs::TlsFiles>,
) -> Result<(), String> {
    let tls = match tls.map(|t| t.etcd_client_tls()).transpose() {
        Ok(t) => t,
        Err(e) => return Err(format!("{e:#}")),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let deadline = Instant::now() + timeout;
    let routers: Vec<&Running> = children.iter().filter(|c| c.role == "router").collect();
    let mut answered = vec![false; endpoints.len()];
    let mut last_error = String::from("no attempt finished");
    loop {
        if let Some(why) = cannot_serve(children) {
            return Err(format!("{why}, before the cluster served a client request"));
        }
        // Routers that exited are not waited for (reported; the others serve).
        let pending: Vec<usize> = (0..endpoints.len())
            .filter(|&i| !answered[i] && routers.get(i).is_none_or(|r| r.is_running()))
            .collect();
        let Some(&i) = pending.first() else {
            return Ok(());
        };
        let endpoint = &endpoints[i];
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the cluster did not serve a client request at {endpoint} within {timeout:?} \
                 (last error: {last_error})"
            ));
        }
        let attempt_budget = (deadline - now).min(Duration::from_secs(3));
        let url = format!("{scheme}://{endpoint}");
        let attempt = async {
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(attempt_budget)
                .with_timeout(attempt_budget);
            if let Some(t) = &tls {
                opts = opts.with_tls(t.clone());
            }
            let mut client = etcd_client::Client::connect([url.as_str()], Some(opts)).await?;
            match client.get(PROBE_KEY, None).await {
                // With auth enabled an anonymous read is refused: the router
                // answered, which counts as serving (as in etcd's health check).
                Err(etcd_client::Error::GRpcStatus(s)) if is_auth_refusal(&s) => Ok(()),
                r => r.map(|_| ()),
            }
        };
        match tokio::time::timeout(attempt_budget, attempt).await {
            Ok(Ok(())) => {
                answered[i] = true;
                continue;
            }
            Ok(Err(e)) => last_error = format!("{endpoint}: {e}"),
            Err(_) => last_error = format!("{endpoint}: no answer within {attempt_budget:?}"),
        }
        let pause =
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// A refusal by etcd's auth (no user, or no permission on the probe key).
pub(crate) fn is_auth_refusal(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::PermissionDenied || s.message() == "etcdserver: user name is empty"
}

/// Prints which components are not running, with the end of their logs (or of every
/// log when all are running but the cluster does not answer).
pub(super) fn report_failure(children: &[Running]) {
    let down: Vec<&Running> = children.iter().filter(|c| !c.is_running()).collect();
    let mut err = io::stderr().lock();
    if down.is_empty() {
        let _ = writeln!(
            err,
            "strata dev: every component is still running; the end of each log follows"
        );
    } else {
        let names: Vec<&str> = down.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(err, "strata dev: not running: {}", names.join(", "));
    }
    let show: Vec<&Running> = if down.is_empty() {
        children.iter().collect()
    } else {
        down
    };
    for c in show {
        let state = c
            .exited
            .borrow()
            .clone()
            .unwrap_or_else(|| "is running".into());
        let _ = writeln!(
            err,
            "--- {} (pid {}) {}; last lines of {}:",
            c.name,
            c.pid,
            state,
            c.log.display()
        );
        match tail(&c.log, 20) {
            Ok(lines) => {
                for l in lines {
                    let _ = writeln!(err, "    {l}");
                }
            }
            Err(e) => {
                let _ = writeln!(err, "    (cannot read the log: {e})");
            }
        }
    }
}

/// The last `n` lines of a file (reading at most its last 64 KiB).
pub(super) fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably a partial line
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}
