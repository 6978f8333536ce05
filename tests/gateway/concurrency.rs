//! `/v3/lock/*` and `/v3/election/*`: etcd's Lock and Election services
//! through the gateway, with blocked calls left running in the background.
//! etcd 3.4 answers these services' errors with gRPC code Unknown (HTTP 500),
//! etcd's own messages included.

use super::*;

/// The bound of a call expected to block for a while.
const BLOCKED_MAX_TIME: &str = "25";

/// A lease of 60 s; its id.
fn grant() -> i64 {
    int(&post("/v3/lease/grant", r#"{"TTL":60}"#).ok_json()["ID"])
}

/// A call left running: curl bounded by `BLOCKED_MAX_TIME`, printing the
/// body then a last line with the HTTP status.
fn post_background(path: &str, body: &str) -> Background {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        BLOCKED_MAX_TIME,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-d",
        body,
        &url(path),
    ]);
    Background::spawn(cmd)
}

/// Asserts `bg` is still waiting (no output, still running) after a while.
#[track_caller]
fn assert_blocked(bg: &mut Background, what: &str) {
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        bg.try_wait().is_none() && bg.stdout().is_empty(),
        "{what} returned early: {:?} {:?}",
        bg.stdout(),
        bg.stderr()
    );
}

/// Waits for `bg` to answer; its HTTP status and JSON body.
#[track_caller]
fn answer(bg: &Background, what: &str) -> (u16, Value) {
    let done = |o: &str| {
        o.rsplit_once('\n')
            .is_some_and(|(_, s)| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
    };
    assert!(
        bg.wait_stdout(RECV_TIMEOUT, done),
        "{what} did not return: {:?} {:?}",
        bg.stdout(),
        bg.stderr()
    );
    let out = bg.stdout();
    let (body, status) = out.rsplit_once('\n').expect("status line");
    let v =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out:?}"));
    (status.parse().expect("HTTP status"), v)
}

/// An error of the Lock or Election service: 500, code 2, etcd's message.
#[track_caller]
fn assert_unknown(r: &Reply, message: &str) {
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.content_type, "application/json", "{r:?}");
    let m = Value::from(message).to_string();
    assert_eq!(r.body, format!(r#"{{"error":{m},"message":{m},"code":2}}"#));
}

/// The key clientv3's recipes make for a lease under `name`.
fn key_for(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

#[test]
fn lock_blocks_until_unlock() {
    let name = format!("{}lock", prefix("gw-lock"));
    let (l1, l2) = (grant(), grant());
    let body = |lease: i64| format!(r#"{{"name":"{}","lease":"{lease}"}}"#, b64(&name));

    let first = post("/v3/lock/lock", &body(l1)).ok_json();
    assert_eq!(fields(&first), ["header", "key"], "{first}");
    let locked_at = header_rev(&first);
    let k1 = first["key"].as_str().expect("key").to_string();
    assert_eq!(base64_decode(&k1), key_for(&name, l1).as_bytes());
    // The key is there, on the lease, with an empty value.
    let got = post("/v3/kv/range", &format!(r#"{{"key":"{k1}"}}"#)).ok_json();
    assert_eq!(int(&got["kvs"][0]["lease"]), l1, "{got}");
    assert!(got["kvs"][0].get("value").is_none(), "{got}");
    // The same lease locking again holds it already: the same key at once.
    let again = post("/v3/lock/lock", &body(l1)).ok_json();
    assert_eq!(again["key"], k1.as_str(), "{again}");

    // Another lease waits...
    let mut second = post_background("/v3/lock/lock", &body(l2));
    assert_blocked(&mut second, "a second lock");
    // ...until the first is unlocked.
    let un = post("/v3/lock/unlock", &format!(r#"{{"key":"{k1}"}}"#)).ok_json();
    assert_eq!(fields(&un), ["header"], "{un}");
    let unlocked_at = header_rev(&un);
    assert!(unlocked_at > locked_at, "{un}");
    let (status, v) = answer(&second, "the second lock");
    assert_eq!(status, 200, "{v}");
    assert_eq!(fields(&v), ["header", "key"], "{v}");
    assert_eq!(
        base64_decode(v["key"].as_str().expect("key")),
        key_for(&name, l2).as_bytes()
    );
    assert!(header_rev(&v) >= unlocked_at, "{v}");
    // The first key is gone; unlocking it again is fine (a delete of nothing).
    let got = post("/v3/kv/range", &format!(r#"{{"key":"{k1}"}}"#)).ok_json();
    assert!(got.get("kvs").is_none(), "{got}");
    post("/v3/lock/unlock", &format!(r#"{{"key":"{k1}"}}"#)).ok_json();
    let k2 = v["key"].as_str().expect("key");
    post("/v3/lock/unlock", &format!(r#"{{"key":"{k2}"}}"#)).ok_json();
}

#[test]
fn lock_waiter_goes_on_when_the_holder_lease_is_revoked() {
    let name = format!("{}lock", prefix("gw-lock-revoke"));
    let (l1, l2) = (grant(), grant());
    let body = |lease: i64| format!(r#"{{"name":"{}","lease":{lease}}}"#, b64(&name));
    post("/v3/lock/lock", &body(l1)).ok_json();
    let mut second = post_background("/v3/lock/lock", &body(l2));
    assert_blocked(&mut second, "a second lock");
    post("/v3/lease/revoke", &format!(r#"{{"ID":"{l1}"}}"#)).ok_json();
    let (status, v) = answer(&second, "the second lock");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        base64_decode(v["key"].as_str().expect("key")),
        key_for(&name, l2).as_bytes()
    );
}

#[test]
fn lock_errors_as_etcd() {
    let name = b64(&format!("{}lock", prefix("gw-lock-err")));
    // A lease that does not exist: the put's error, code Unknown.
    let r = post(
        "/v3/lock/lock",
        &format!(r#"{{"name":"{name}","lease":"12345"}}"#),
    );
    assert_unknown(&r, LEASE_NOT_FOUND);
    // Unlock without a key: the delete's error, code Unknown.
    assert_unknown(&post("/v3/lock/unlock", "{}"), EMPTY_KEY);
    // A lease that is not a number: bad JSON, InvalidArgument.
    let r = post(
        "/v3/lock/lock",
        &format!(r#"{{"name":"{name}","lease":"abc"}}"#),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["code"], 3, "{r:?}");
}

#[test]
fn election_campaign_leader_proclaim_resign_observe() {
    let name = format!("{}elect", prefix("gw-elect"));
    let n = b64(&name);
    let (l1, l2) = (grant(), grant());

    // Observing before anyone campaigns: lines come as leaders do.
    let observe = post_stream("/v3/election/observe", &format!(r#"{{"name":"{n}"}}"#));
    let r = post("/v3/election/leader", &format!(r#"{{"name":"{n}"}}"#));
    assert_unknown(&r, "election: no leader");

    let campaign =
        |lease: i64, v: &str| format!(r#"{{"name":"{n}","lease":"{lease}","value":"{}"}}"#, b64(v));
    let c1 = post("/v3/election/campaign", &campaign(l1, "v1")).ok_json();
    assert_eq!(fields(&c1), ["header", "leader"], "{c1}");
    let leader1 = c1["leader"].clone();
    assert_eq!(fields(&leader1), ["key", "lease", "name", "rev"], "{c1}");
    assert_eq!(leader1["name"], n.as_str());
    assert_eq!(int(&leader1["lease"]), l1);
    assert_eq!(
        base64_decode(leader1["key"].as_str().expect("key")),
        key_for(&name, l1).as_bytes()
    );
    let rev1 = int(&leader1["rev"]);
    assert_eq!(header_rev(&c1), rev1, "{c1}");

    // A second candidate waits.
    let mut second = post_background("/v3/election/campaign", &campaign(l2, "v2"));

    let leader = |want_value: &str| {
        let r = post("/v3/election/leader", &format!(r#"{{"name":"{n}"}}"#)).ok_json();
        assert_eq!(fields(&r), ["header", "kv"], "{r}");
        let kv = &r["kv"];
        assert_eq!(
            fields(kv),
            [
                "create_revision",
                "key",
                "lease",
                "mod_revision",
                "value",
                "version"
            ],
            "{r}"
        );
        assert_eq!(kv["value"], b64(want_value), "{r}");
        kv.clone()
    };
    let kv = leader("v1");
    assert_eq!(kv["key"], leader1["key"]);
    assert_eq!(int(&kv["create_revision"]), rev1);
    assert_eq!(kv["version"], "1");

    // Proclaim a new value.
    let body = format!(r#"{{"leader":{leader1},"value":"{}"}}"#, b64("v1b"));
    let p = post("/v3/election/proclaim", &body).ok_json();
    assert_eq!(fields(&p), ["header"], "{p}");
    assert!(header_rev(&p) > rev1, "{p}");
    let kv = leader("v1b");
    assert_eq!(kv["version"], "2");
    assert_eq!(int(&kv["mod_revision"]), header_rev(&p));

    assert_blocked(&mut second, "a second campaign");
    // Resigning lets the second candidate lead.
    let r = post("/v3/election/resign", &format!(r#"{{"leader":{leader1}}}"#)).ok_json();
    assert_eq!(fields(&r), ["header"], "{r}");
    let (status, c2) = answer(&second, "the second campaign");
    assert_eq!(status, 200, "{c2}");
    let leader2 = &c2["leader"];
    assert_eq!(int(&leader2["lease"]), l2, "{c2}");
    assert!(int(&leader2["rev"]) > rev1, "{c2}");
    leader("v2");

    // The old leader key is stale now.
    let body = format!(r#"{{"leader":{leader1},"value":"{}"}}"#, b64("x"));
    assert_unknown(
        &post("/v3/election/proclaim", &body),
        "election: not leader",
    );
    // Resigning a stale key does nothing, as etcd.
    post("/v3/election/resign", &format!(r#"{{"leader":{leader1}}}"#)).ok_json();
    leader("v2");
    for path in ["/v3/election/proclaim", "/v3/election/resign"] {
        assert_unknown(&post(path, "{}"), "\"leader\" field must be provided");
    }

    // Observe saw each leader value in turn: v1, v1b, then v2.
    assert!(
        observe.wait_stdout(RECV_TIMEOUT, |o| lines(o).len() >= 3),
        "observe: {:?} {:?}",
        observe.stdout(),
        observe.stderr()
    );
    let out = observe.stdout();
    assert!(out.ends_with('\n'), "{out:?}");
    let got = lines(&out);
    let values: Vec<&Value> = got.iter().map(|l| &l["result"]["kv"]["value"]).collect();
    assert_eq!(values, [&b64("v1"), &b64("v1b"), &b64("v2")], "{out}");
    let mut last = 0;
    for l in &got {
        assert_eq!(fields(l), ["result"], "{l}");
        assert_eq!(fields(&l["result"]), ["header", "kv"], "{l}");
        let rev = header_rev(&l["result"]);
        assert!(rev >= int(&l["result"]["kv"]["mod_revision"]), "{l}");
        assert!(rev > last, "{out}");
        last = rev;
    }
    assert_eq!(got[1]["result"]["kv"]["key"], leader1["key"]);
    assert_eq!(got[2]["result"]["kv"]["key"], leader2["key"]);
    drop(observe);
    post("/v3/election/resign", &format!(r#"{{"leader":{leader2}}}"#)).ok_json();
}

/// How many keys there are under `name/`.
fn keys_under(name: &str) -> i64 {
    let body = format!(
        r#"{{"key":"{}","range_end":"{}","count_only":true}}"#,
        b64(&format!("{name}/")),
        b64(&format!("{name}0"))
    );
    post("/v3/kv/range", &body)
        .ok_json()
        .get("count")
        .map_or(0, int)
}

/// Waits (bounded) until `name/` holds `n` keys.
#[track_caller]
fn wait_keys_under(name: &str, n: i64, what: &str) {
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    while keys_under(name) != n {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn waiters_past_their_grpc_timeout_give_up_and_delete_their_key() {
    let name = format!("{}lock", prefix("gw-lock-timeout"));
    let (l1, l2) = (grant(), grant());
    let lock = |lease: i64| format!(r#"{{"name":"{}","lease":"{lease}"}}"#, b64(&name));
    post("/v3/lock/lock", &lock(l1)).ok_json();
    // etcd's gateway bounds the call by Grpc-Timeout: 504, DeadlineExceeded.
    let started = std::time::Instant::now();
    let r = curl(
        "POST",
        "/v3/lock/lock",
        Some(&lock(l2)),
        &["-H", "Grpc-Timeout: 1S"],
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.body,
        r#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":4}"#
    );
    wait_keys_under(&name, 1, "the timed-out waiter's key stayed");

    // The same for a campaign.
    let campaign = format!(
        r#"{{"name":"{}","lease":"{l2}","value":"{}"}}"#,
        b64(&name),
        b64("v")
    );
    let r = curl(
        "POST",
        "/v3/election/campaign",
        Some(&campaign),
        &["-H", "Grpc-Timeout: 500m"],
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (504, 4.into()),
        "{r:?}"
    );
    wait_keys_under(&name, 1, "the timed-out candidate's key stayed");

    // A malformed value is refused before the call; 0 is no bound.
    let r = curl(
        "POST",
        "/v3/lock/lock",
        Some(&lock(l2)),
        &["-H", "Grpc-Timeout: soon"],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.body,
        r#"{"error":"invalid grpc-timeout: soon","message":"invalid grpc-timeout: soon","code":3}"#
    );
    assert_eq!(keys_under(&name), 1);
    let r = curl(
        "POST",
        "/v3/lock/lock",
        Some(&lock(l1)),
        &["-H", "Grpc-Timeout: 0S"],
    );
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_waiter_whose_http_client_goes_deletes_its_key() {
    let name = format!("{}lock", prefix("gw-lock-gone"));
    let (l1, l2) = (grant(), grant());
    let lock = |lease: i64| format!(r#"{{"name":"{}","lease":"{lease}"}}"#, b64(&name));
    post("/v3/lock/lock", &lock(l1)).ok_json();
    let mut waiter = post_background("/v3/lock/lock", &lock(l2));
    assert_blocked(&mut waiter, "a second lock");
    assert_eq!(keys_under(&name), 2);
    drop(waiter); // kills curl
    wait_keys_under(&name, 1, "the gone waiter's key stayed");
}

#[test]
fn observe_ends_at_its_grpc_timeout() {
    let name = format!("{}elect", prefix("gw-observe-timeout"));
    let n = b64(&name);
    let l = grant();
    let body = format!(r#"{{"name":"{n}","lease":"{l}","value":"{}"}}"#, b64("v"));
    post("/v3/election/campaign", &body).ok_json();
    let r = curl(
        "POST",
        "/v3/election/observe",
        Some(&format!(r#"{{"name":"{n}"}}"#)),
        &["-N", "-H", "Grpc-Timeout: 1S"],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let got = lines(&r.body);
    assert_eq!(got.len(), 2, "{r:?}");
    assert_eq!(got[0]["result"]["kv"]["value"], b64("v"));
    // The stream's last line: the gateway's client's DeadlineExceeded (etcd's
    // server sometimes answers its Unknown first; Strata's gateway never).
    let last = r.body.lines().last().unwrap_or_default();
    let unknown = r#"{"error":{"grpc_code":2,"http_code":500,"message":"context deadline exceeded","http_status":"Internal Server Error"}}"#;
    let deadline = r#"{"error":{"grpc_code":4,"http_code":504,"message":"context deadline exceeded","http_status":"Gateway Timeout"}}"#;
    match Target::from_env() {
        Target::Etcd => assert!(last == deadline || last == unknown, "{r:?}"),
        Target::Strata => assert_eq!(last, deadline, "{r:?}"),
    }
    // Nobody leading yet: nothing was answered, so a 504.
    let other = b64(&format!("{name}-none"));
    let r = curl(
        "POST",
        "/v3/election/observe",
        Some(&format!(r#"{{"name":"{other}"}}"#)),
        &["-N", "-H", "Grpc-Timeout: 1S"],
    );
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(
        r.body,
        r#"{"error":"context deadline exceeded","message":"context deadline exceeded","code":4}"#
    );
}

#[test]
fn lock_and_election_check_the_caller() {
    use super::auth::post_to;
    // Auth changes the whole server: a fresh one.
    let c = Cluster::start();
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#.to_string()),
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"pw"}"#.to_string(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#.to_string(),
        ),
        ("/v3/auth/role/add", r#"{"name":"r"}"#.to_string()),
        (
            "/v3/auth/role/grant",
            format!(
                r#"{{"name":"r","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                b64("lk/"),
                b64("lk0")
            ),
        ),
        (
            "/v3/auth/user/add",
            r#"{"name":"u","password":"pw"}"#.to_string(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"u","role":"r"}"#.to_string(),
        ),
        ("/v3/auth/enable", "{}".to_string()),
    ] {
        post_to(&c, path, &body, None).ok_json();
    }
    let auth = post_to(
        &c,
        "/v3/auth/authenticate",
        r#"{"name":"u","password":"pw"}"#,
        None,
    )
    .ok_json();
    let t = auth["token"].as_str().expect("token");
    let g = post_to(&c, "/v3/lease/grant", r#"{"TTL":60}"#, Some(t)).ok_json();
    let l = int(&g["ID"]);
    let lock = |name: &str| format!(r#"{{"name":"{}","lease":"{l}"}}"#, b64(name));

    // Under the user's keys: locked, the key made with the caller's rights.
    let r = post_to(&c, "/v3/lock/lock", &lock("lk"), Some(t)).ok_json();
    assert_eq!(
        base64_decode(r["key"].as_str().expect("key")),
        key_for("lk", l).as_bytes()
    );
    // Elsewhere, or without a token: the KV errors, as Unknown.
    assert_unknown(
        &post_to(&c, "/v3/lock/lock", &lock("xx"), Some(t)),
        "etcdserver: permission denied",
    );
    assert_unknown(
        &post_to(&c, "/v3/lock/lock", &lock("lk"), None),
        "etcdserver: user name is empty",
    );
    let leader = format!(r#"{{"name":"{}"}}"#, b64("xx"));
    assert_unknown(
        &post_to(&c, "/v3/election/leader", &leader, Some(t)),
        "etcdserver: permission denied",
    );
    // An Observe that may not read ends at once with nothing.
    let r = post_to(&c, "/v3/election/observe", &leader, Some(t));
    assert_eq!((r.status, r.body.as_str()), (200, ""), "{r:?}");
}
