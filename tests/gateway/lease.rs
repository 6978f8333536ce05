//! `/v3/lease/*`: grant, keepalive (streamed), timetolive, leases, revoke.

use super::*;

#[test]
fn grant_keepalive_timetolive_revoke() {
    let g = post("/v3/lease/grant", r#"{"TTL":60}"#).ok_json();
    assert_eq!(fields(&g), ["ID", "TTL", "header"], "{g}");
    assert_eq!(g["TTL"], "60");
    let id = int(&g["ID"]);
    assert!(id > 0);

    // A key on the lease.
    let k = format!("{}l", prefix("gw-lease"));
    let body = format!(
        r#"{{"key":"{}","value":"{}","lease":"{id}"}}"#,
        b64(&k),
        b64("v")
    );
    post("/v3/kv/put", &body).ok_json();

    // keepalive: one request in the body, one streamed answer, then the
    // stream ends (the request stream is closed after the body).
    let ka = curl(
        "POST",
        "/v3/lease/keepalive",
        Some(&format!(r#"{{"ID":{id}}}"#)),
        &["-N"],
    );
    assert_eq!(ka.status, 200, "{ka:?}");
    let answers = lines(&ka.body);
    assert_eq!(answers.len(), 1, "{ka:?}");
    let r = &answers[0]["result"];
    assert_eq!(fields(r), ["ID", "TTL", "header"], "{r}");
    assert_eq!(int(&r["ID"]), id);
    assert_eq!(r["TTL"], "60");
    // Two keep-alives in one body: two answers.
    let two = format!(r#"{{"ID":"{id}"}}{{"ID":"{id}"}}"#);
    let ka2 = curl("POST", "/v3/lease/keepalive", Some(&two), &["-N"]);
    assert_eq!(lines(&ka2.body).len(), 2, "{ka2:?}");

    let t = post(
        "/v3/lease/timetolive",
        &format!(r#"{{"ID":"{id}","keys":true}}"#),
    )
    .ok_json();
    assert_eq!(
        fields(&t),
        ["ID", "TTL", "grantedTTL", "header", "keys"],
        "{t}"
    );
    assert_eq!(t["grantedTTL"], "60");
    let ttl = int(&t["TTL"]);
    assert!((50..=60).contains(&ttl), "{t}");
    assert_eq!(t["keys"], serde_json::json!([b64(&k)]));
    // The same under etcd's older path.
    let t2 = post("/v3/kv/lease/timetolive", &format!(r#"{{"ID":"{id}"}}"#)).ok_json();
    assert_eq!(int(&t2["ID"]), id);

    let all = post("/v3/lease/leases", "{}").ok_json();
    let ids: Vec<i64> = all["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| int(&l["ID"]))
        .collect();
    assert!(ids.contains(&id), "{all}");

    let rv = post("/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#)).ok_json();
    assert_eq!(fields(&rv), ["header"], "{rv}");
    // The key went with the lease; the lease is gone (TTL -1).
    let r = post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64(&k))).ok_json();
    assert!(r.get("kvs").is_none(), "{r}");
    let gone = post("/v3/lease/timetolive", &format!(r#"{{"ID":"{id}"}}"#)).ok_json();
    assert_eq!(gone["TTL"], "-1", "{gone}");
    // Revoking it again: etcd's NotFound, HTTP 404.
    let again = post("/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#));
    assert_eq!(again.status, 404, "{again:?}");
    let m = "etcdserver: requested lease not found";
    assert_eq!(
        again.body,
        format!(r#"{{"error":"{m}","message":"{m}","code":5}}"#)
    );
}

#[test]
fn maintenance_status_and_member_list() {
    let s = post("/v3/maintenance/status", "{}").ok_json();
    header_rev(&s);
    let f = fields(&s);
    // etcd's names (dbSize is left out where it is 0, as Strata reports it).
    for name in ["leader", "raftIndex", "raftTerm", "version"] {
        assert!(f.iter().any(|n| n == name), "{name} missing: {s}");
    }
    assert!(s["version"].as_str().unwrap().starts_with("3."), "{s}");
    uint(&s["raftIndex"]);

    let m = post("/v3/cluster/member/list", "{}").ok_json();
    let members = m["members"].as_array().expect("members");
    assert!(!members.is_empty(), "{m}");
    let me = format!("http://{}", shared().endpoint);
    let mine = members
        .iter()
        .find(|x| {
            x["clientURLs"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u == &me))
        })
        .unwrap_or_else(|| panic!("no member with client URL {me}: {m}"));
    assert_eq!(uint(&m["header"]["member_id"]), uint(&mine["ID"]));
}
