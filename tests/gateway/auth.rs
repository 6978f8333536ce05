//! Auth through the gateway: etcd's `/v3/auth/*` paths, and the token from
//! `/v3/auth/authenticate` sent as the `Authorization` header.

use super::*;

pub(super) fn post_to(c: &Cluster, path: &str, body: &str, token: Option<&str>) -> Reply {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-X",
        "POST",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
    ])
    .args(["--data-binary", body]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    cmd.arg(format!("http://{}{path}", c.endpoint));
    let out = run_bounded(cmd, None, CURL_TIMEOUT);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    crate::reply(&text)
}

#[track_caller]
fn assert_error(r: &Reply, http: u16, code: u32, message: &str) {
    let m = serde_json::Value::from(message).to_string();
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            http,
            format!(r#"{{"error":{m},"message":{m},"code":{code}}}"#).as_str()
        )
    );
}

#[test]
fn token_in_the_authorization_header() {
    // Auth changes the whole server: a fresh one.
    let c = Cluster::start();
    for (path, body) in [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/add", r#"{"name":"root","password":"pw"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let r = post_to(&c, path, body, None).ok_json();
        // (Strata's Auth answers carry no revision; etcd's do.)
        assert!(r["header"]["member_id"].is_string(), "{path}: {r}");
    }
    let range = format!(r#"{{"key":"{}"}}"#, b64("auth-key"));
    assert_error(
        &post_to(&c, "/v3/kv/range", &range, None),
        400,
        3,
        "etcdserver: user name is empty",
    );
    assert_error(
        &post_to(
            &c,
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"bad"}"#,
            None,
        ),
        400,
        3,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let a = post_to(
        &c,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        None,
    )
    .ok_json();
    let token = a["token"].as_str().expect("token").to_string();
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("auth-key"), b64("v"));
    let rev = header_rev(&post_to(&c, "/v3/kv/put", &put, Some(&token)).ok_json());
    let got = post_to(&c, "/v3/kv/range", &range, Some(&token)).ok_json();
    assert!(header_rev(&got) >= rev);
    assert_eq!(got["kvs"][0]["value"], b64("v"));
    let users = post_to(&c, "/v3/auth/user/list", "{}", Some(&token)).ok_json();
    assert!(users["header"]["member_id"].is_string(), "{users}");
    assert_eq!(users["users"], serde_json::json!(["root"]));
    assert_error(
        &post_to(&c, "/v3/kv/range", &range, Some("bogus")),
        401,
        16,
        "etcdserver: invalid auth token",
    );
}
