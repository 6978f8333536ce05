//! `/v3/watch`: a streamed answer of newline-delimited `{"result":..}` lines,
//! flushed one by one and kept open while the client stays.

use super::*;

#[test]
fn watch_stream_sees_puts_from_other_requests() {
    let k = format!("{}w", prefix("gw-watch"));
    let body = format!(
        r#"{{"create_request":{{"key":"{}","prev_kv":true}}}}"#,
        b64(&k)
    );
    let watch = post_stream("/v3/watch", &body);
    assert!(
        watch.wait_stdout(RECV_TIMEOUT, |o| !lines(o).is_empty()),
        "no created line: {:?} {:?}",
        watch.stdout(),
        watch.stderr()
    );
    let created = &lines(&watch.stdout())[0];
    assert_eq!(fields(created), ["result"], "{created}");
    assert_eq!(created["result"]["created"], true);
    header_rev(&created["result"]);

    // Two puts and a delete, each its own request.
    for (v, path) in [
        ("a", "/v3/kv/put"),
        ("b", "/v3/kv/put"),
        ("", "/v3/kv/deleterange"),
    ] {
        let body = if path.ends_with("put") {
            format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&k), b64(v))
        } else {
            format!(r#"{{"key":"{}"}}"#, b64(&k))
        };
        assert_eq!(post(path, &body).status, 200);
    }
    assert!(
        watch.wait_stdout(RECV_TIMEOUT, |o| lines(o).len() >= 4),
        "events missing: {:?}",
        watch.stdout()
    );
    let out = watch.stdout();
    // One JSON object per line, each ended by a newline.
    assert!(out.ends_with('\n'));
    let got = lines(&out);
    let events: Vec<&Value> = got[1..].iter().map(|l| &l["result"]["events"][0]).collect();
    // A put's type (PUT, the default) is left out; a delete's is named.
    assert!(events[0].get("type").is_none(), "{}", got[1]);
    assert_eq!(events[0]["kv"]["value"], b64("a"));
    assert_eq!(events[0]["kv"]["version"], "1");
    assert!(events[0].get("prev_kv").is_none(), "{}", got[1]);
    assert_eq!(events[1]["kv"]["value"], b64("b"));
    assert_eq!(events[1]["prev_kv"]["value"], b64("a"));
    assert_eq!(events[2]["type"], "DELETE");
    assert_eq!(
        fields(&events[2]["kv"]),
        ["key", "mod_revision"],
        "{}",
        got[3]
    );
    let revs: Vec<i64> = got[1..].iter().map(|l| header_rev(&l["result"])).collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    // The stream stays open: one more put still arrives.
    let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&k), b64("c"));
    assert_eq!(post("/v3/kv/put", &body).status, 200);
    assert!(
        watch.wait_stdout(RECV_TIMEOUT, |o| lines(o).len() >= 5),
        "late event missing: {:?}",
        watch.stdout()
    );
    drop(watch);
}

#[test]
fn watch_from_a_revision_replays_history() {
    let k = format!("{}h", prefix("gw-watch-hist"));
    let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64(&k), b64("old"));
    let rev = header_rev(&post("/v3/kv/put", &body).ok_json());
    // Two create requests in one body (etcd's gateway reads them in turn).
    let body = format!(
        r#"{{"create_request":{{"key":"{k}","start_revision":"{rev}"}}}} {{"create_request":{{"key":"{k}","start_revision":{rev}}}}}"#,
        k = b64(&k)
    );
    let watch = post_stream("/v3/watch", &body);
    assert!(
        watch.wait_stdout(RECV_TIMEOUT, |o| {
            lines(o)
                .iter()
                .filter(|l| l["result"].get("events").is_some())
                .count()
                >= 2
        }),
        "history missing: {:?} {:?}",
        watch.stdout(),
        watch.stderr()
    );
    let got = lines(&watch.stdout());
    let created = got
        .iter()
        .filter(|l| l["result"]["created"] == true)
        .count();
    assert_eq!(created, 2, "{got:?}");
    for l in got.iter().filter(|l| l["result"].get("events").is_some()) {
        assert_eq!(l["result"]["events"][0]["kv"]["value"], b64("old"));
        assert_eq!(int(&l["result"]["events"][0]["kv"]["mod_revision"]), rev);
    }
}

/// The router's open Watch streams (its `strata_router_watch_streams`).
fn open_watch_streams(c: &Cluster) -> i64 {
    let text = std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json");
    let dev: Value = serde_json::from_str(&text).expect("dev.json is JSON");
    let router = dev["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|x| x["name"] == "router-1")
        .expect("router-1");
    let url = router["metrics_url"].as_str().expect("metrics_url");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", url]);
    let out = String::from_utf8(run_bounded(cmd, None, CURL_TIMEOUT).stdout).expect("utf-8");
    out.lines()
        .find_map(|l| l.strip_prefix("strata_router_watch_streams "))
        .expect("strata_router_watch_streams")
        .trim()
        .parse()
        .expect("gauge")
}

#[test]
fn watch_ends_when_its_http_client_goes() {
    if Target::from_env() == Target::Etcd {
        return; // Strata's router metrics.
    }
    // Its own cluster: no other test's watches in the gauge.
    let c = Cluster::start();
    assert_eq!(open_watch_streams(&c), 0);
    let mut cmd = Command::new("curl");
    let body = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("gone"));
    cmd.args(["-sS", "-N", "-X", "POST", "-d", &body])
        .arg(format!("http://{}/v3/watch", c.endpoint));
    let watch = Background::spawn(cmd);
    assert!(
        watch.wait_stdout(RECV_TIMEOUT, |o| o.contains("created")),
        "{:?}",
        watch.stderr()
    );
    assert_eq!(open_watch_streams(&c), 1);
    drop(watch); // kills curl
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    while open_watch_streams(&c) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watch outlived its client"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn watch_ends_at_its_grpc_timeout() {
    let k = format!("{}t", prefix("gw-watch-timeout"));
    let body = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64(&k));
    let started = std::time::Instant::now();
    let r = curl(
        "POST",
        "/v3/watch",
        Some(&body),
        &["-N", "-H", "Grpc-Timeout: 1S"],
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.status, 200, "{r:?}");
    let got = lines(&r.body);
    assert_eq!(got.len(), 2, "{r:?}");
    assert_eq!(got[0]["result"]["created"], true, "{r:?}");
    assert_eq!(
        r.body.lines().last(),
        Some(
            r#"{"error":{"grpc_code":4,"http_code":504,"message":"context deadline exceeded","http_status":"Gateway Timeout"}}"#
        )
    );
}
