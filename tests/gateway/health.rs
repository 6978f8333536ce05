//! etcd 3.6's `/health`, `/livez` and `/readyz` on the client port (Strata
//! only: etcd 3.4 has `/health` without a reason and no livez/readyz).

use super::*;

fn strata() -> bool {
    Target::from_env() == Target::Strata
}

#[test]
fn health_is_a_linearizable_read() {
    if !strata() {
        return;
    }
    for path in ["/health", "/health?serializable=true"] {
        let r = curl("GET", path, None, &[]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.body, r#"{"health":"true","reason":""}"#, "{path}");
    }
    let r = curl("POST", "/health", Some(""), &[]);
    assert_eq!(r.status, 405, "{r:?}");
}

#[test]
fn livez_and_readyz() {
    if !strata() {
        return;
    }
    let r = curl("GET", "/livez", None, &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"), "{r:?}");
    assert_eq!(r.content_type, "text/plain; charset=utf-8");
    let r = curl("GET", "/livez?verbose", None, &[]);
    assert_eq!(r.body, "[+]serializable_read ok\nok\n", "{r:?}");
    let r = curl("GET", "/readyz?verbose", None, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let mut checks: Vec<&str> = r.body.lines().collect();
    assert_eq!(checks.pop(), Some("ok"));
    checks.sort();
    assert_eq!(
        checks,
        [
            "[+]data_corruption ok",
            "[+]linearizable_read ok",
            "[+]non_learner ok",
            "[+]serializable_read ok"
        ]
    );
    let r = curl(
        "GET",
        "/readyz?verbose&exclude=linearizable_read&exclude=non_learner",
        None,
        &[],
    );
    assert!(
        !r.body.contains("linearizable_read") && !r.body.contains("non_learner"),
        "{r:?}"
    );
    assert!(r.body.contains("[+]serializable_read ok"), "{r:?}");
    let r = curl("GET", "/readyz/linearizable_read?verbose", None, &[]);
    assert_eq!(r.body, "[+]linearizable_read ok\nok\n", "{r:?}");
    let r = curl("GET", "/readyz/no_such_check", None, &[]);
    assert_eq!(r.status, 404, "{r:?}");
}

/// `curl` of `path` on `c` (not the shared server).
fn get_on(c: &Cluster, path: &str) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code} %{content_type}"])
        .arg(format!("http://{}{path}", c.endpoint));
    let out = run_bounded(cmd, None, CURL_TIMEOUT);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    crate::reply(&text)
}

#[test]
fn without_placement_only_serializable_reads_pass() {
    if !strata() {
        return;
    }
    // Its own cluster: placement goes away.
    let c = Cluster::start();
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("health"), b64("v"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", "POST", "-d", &put])
        .arg(format!("http://{}/v3/kv/put", c.endpoint));
    assert!(run_bounded(cmd, None, CURL_TIMEOUT).status.success());
    assert_eq!(get_on(&c, "/readyz").status, 200);

    c.kill_placement(1);
    // A linearizable read needs the oracle: /health and /readyz fail and say why.
    let h = get_on(&c, "/health");
    assert_eq!(h.status, 503, "{h:?}");
    let v = h.json();
    assert_eq!(v["health"], "false", "{h:?}");
    assert!(
        v["reason"].as_str().unwrap().starts_with("RANGE ERROR:"),
        "{h:?}"
    );
    let r = get_on(&c, "/readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.ends_with("\n\n"), "{r:?}");
    let mut lines: Vec<&str> = r.body.lines().filter(|l| !l.is_empty()).collect();
    lines.sort();
    assert_eq!(lines.len(), 4, "{r:?}");
    assert_eq!(lines[0], "[+]data_corruption ok");
    assert_eq!(lines[1], "[+]non_learner ok");
    assert_eq!(lines[2], "[+]serializable_read ok");
    assert!(
        lines[3].starts_with("[-]linearizable_read failed: "),
        "{r:?}"
    );
    // A serializable read needs only the key's range leader.
    let s = get_on(&c, "/health?serializable=true");
    assert_eq!(
        (s.status, s.body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    assert_eq!(get_on(&c, "/livez").body, "ok\n");
    assert_eq!(get_on(&c, "/readyz?exclude=linearizable_read").status, 200);

    // Placement back: healthy again.
    c.restart_placement(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get_on(&c, "/health").status != 200 {
        assert!(std::time::Instant::now() < deadline, "still unhealthy");
        std::thread::sleep(Duration::from_millis(200));
    }
}
