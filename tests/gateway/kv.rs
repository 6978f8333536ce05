//! `/v3/kv/*`: put, range, txn, deleterange.

use super::*;

fn put(key: &str, value: &str) -> i64 {
    let r = post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key), b64(value)),
    )
    .ok_json();
    // Nothing but the header: no prev_kv unless asked.
    assert_eq!(fields(&r), ["header"], "{r}");
    header_rev(&r)
}

#[test]
fn put_then_range_in_etcd_json() {
    let k = format!("{}k", prefix("gw-range"));
    let rev = put(&k, "bar");
    let r = post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64(&k))).ok_json();
    assert!(header_rev(&r) >= rev);
    assert_eq!(fields(&r), ["count", "header", "kvs"], "{r}");
    // count is an int64: a string.
    assert_eq!(r["count"], "1");
    let kv = &r["kvs"][0];
    // lease 0 is left out (default values are).
    assert_eq!(
        fields(kv),
        ["create_revision", "key", "mod_revision", "value", "version"],
        "{kv}"
    );
    assert_eq!(kv["key"], b64(&k));
    assert_eq!(kv["value"], b64("bar"));
    assert_eq!(int(&kv["create_revision"]), rev);
    assert_eq!(int(&kv["mod_revision"]), rev);
    assert_eq!(kv["version"], "1");

    // A second put: version 2; prev_kv comes back when asked.
    let body = format!(
        r#"{{"key":"{}","value":"{}","prev_kv":true}}"#,
        b64(&k),
        b64("baz")
    );
    let p = post("/v3/kv/put", &body).ok_json();
    assert_eq!(fields(&p), ["header", "prev_kv"], "{p}");
    assert_eq!(p["prev_kv"]["value"], b64("bar"));

    // A missing key: only the header (no kvs, no count).
    let missing = post(
        "/v3/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64(&format!("{k}-none"))),
    )
    .ok_json();
    assert_eq!(fields(&missing), ["header"], "{missing}");

    // A prefix, count only, with options given as etcd's JSON takes them
    // (int64 as a string, enum by name).
    let pre = prefix("gw-prefix");
    for i in 0..3 {
        put(&format!("{pre}{i}"), "v");
    }
    let end = format!("{}{}", &pre[..pre.len() - 1], '0'); // '/' + 1 == '0'
    let body = format!(
        r#"{{"key":"{}","range_end":"{}","limit":"2","sort_order":"DESCEND","keys_only":true}}"#,
        b64(&pre),
        b64(&end)
    );
    let r = post("/v3/kv/range", &body).ok_json();
    assert_eq!(r["count"], "3");
    assert_eq!(r["more"], true);
    let keys: Vec<&str> = r["kvs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| kv["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [b64(&format!("{pre}2")), b64(&format!("{pre}1"))]);
    assert!(r["kvs"][0].get("value").is_none(), "keys_only: {r}");
}

#[test]
fn txn_with_compare_both_ways() {
    let k = format!("{}t", prefix("gw-txn"));
    put(&k, "bar");
    let txn = |expect: &str| {
        format!(
            r#"{{"compare":[{{"key":"{k}","result":"EQUAL","target":"VALUE","value":"{v}"}}],
                "success":[{{"request_put":{{"key":"{k}","value":"{new}"}}}}],
                "failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#,
            k = b64(&k),
            v = b64(expect),
            new = b64("baz")
        )
    };
    let ok = post("/v3/kv/txn", &txn("bar")).ok_json();
    assert_eq!(fields(&ok), ["header", "responses", "succeeded"], "{ok}");
    assert_eq!(ok["succeeded"], true);
    let put_resp = &ok["responses"][0]["response_put"];
    assert_eq!(fields(put_resp), ["header"], "{ok}");
    // The nested header carries only the revision.
    assert_eq!(fields(&put_resp["header"]), ["revision"], "{ok}");
    assert_eq!(int(&put_resp["header"]["revision"]), header_rev(&ok));

    // The compare now fails: succeeded (false) is left out; the range runs.
    let failed = post("/v3/kv/txn", &txn("bar")).ok_json();
    assert_eq!(fields(&failed), ["header", "responses"], "{failed}");
    let range = &failed["responses"][0]["response_range"];
    assert_eq!(range["count"], "1");
    assert_eq!(range["kvs"][0]["value"], b64("baz"));
    assert_eq!(range["kvs"][0]["version"], "2");
}

#[test]
fn deleterange_with_prev_kv() {
    let k = format!("{}d", prefix("gw-del"));
    put(&k, "gone");
    let body = format!(r#"{{"key":"{}","prev_kv":true}}"#, b64(&k));
    let d = post("/v3/kv/deleterange", &body).ok_json();
    assert_eq!(fields(&d), ["deleted", "header", "prev_kvs"], "{d}");
    assert_eq!(d["deleted"], "1");
    assert_eq!(d["prev_kvs"][0]["value"], b64("gone"));
    // Again: nothing deleted, deleted (0) left out.
    let again = post("/v3/kv/deleterange", &body).ok_json();
    assert_eq!(fields(&again), ["header"], "{again}");
}
