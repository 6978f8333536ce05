//! Tokens: hand-made and forged ones refused, shared by routers, expiry of
//! simple tokens, JWT. (See `main.rs` for what was checked against etcd.)

use crate::common::*;
use crate::{client_as, fails_with, setup, ALICE, ROOT};

/// A Put of `key` sent by hand with `token` (as the metadata key `token`, as
/// etcd's clients send it) to `endpoint` (`http://HOST:PORT` or `HOST:PORT`).
async fn put_with_token(
    endpoint: &str,
    token: &str,
    key: &str,
    value: &str,
) -> Result<(), tonic::Status> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let ch = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(strata_proto::etcd::PbPutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert("token", token.parse().unwrap());
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<_, strata_proto::etcd::PbPutResponse>::default();
    grpc.unary(req, path, codec).await.map(|_| ())
}

/// Asserts a put with `token` is refused as etcd refuses a bad token.
async fn assert_token_refused(endpoint: &str, token: &str) {
    let e = put_with_token(endpoint, token, "foo", "refused")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token"
        ),
        "token {token:?}"
    );
}

async fn token_of(c: &mut etcd_client::Client, user: &str, password: &str) -> String {
    c.auth_client()
        .authenticate(user.into(), password.into())
        .await
        .unwrap()
        .token()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused() {
    let c = start();
    setup(&c);
    let mut anon = client_as(&c, None).await;
    let token = token_of(&mut anon, "alice", "alicepw").await;
    assert!(!token.is_empty());
    put_with_token(&c.endpoint, &token, "foo", "valid")
        .await
        .unwrap();
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        forged,
        "garbage".to_string(),
        format!("{token}x"),
        "a.b".into(),
    ] {
        assert_token_refused(&c.endpoint, &bad).await;
    }
    let mut root = client_as(&c, Some(("root", "rootpw"))).await;
    let v = root.get("foo", None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"valid");
    // Deleting the user ends its tokens.
    root.user_delete("alice").await.unwrap();
    assert_token_refused(&c.endpoint, &token).await;
}

/// Strata-only: several routers. A token from one router works on another; a
/// permission revoked through one router stops working on the other within
/// the documented bound (one poll of placement, 500 ms, plus the RPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_share_tokens_and_revocations() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--routers", "2"]);
    setup(&c);
    let eps = c.router_endpoints();
    assert_eq!(eps.len(), 2, "{eps:?}");
    let mut anon = client_as(&c, None).await;
    let token = token_of(&mut anon, "alice", "alicepw").await;
    for ep in &eps {
        put_with_token(ep, &token, "k2", ep).await.unwrap();
    }
    let mut root = client_as(&c, Some(("root", "rootpw"))).await;
    root.role_revoke_permission(
        "r1",
        "k1",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_range_end("k5")),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let mut refused = Vec::new();
    for ep in &eps {
        loop {
            match put_with_token(ep, &token, "k2", "after").await {
                Err(e) if e.code() == tonic::Code::PermissionDenied => break,
                Err(e) => panic!("{ep}: {e:?}"),
                Ok(()) => {
                    assert!(
                        started.elapsed() < std::time::Duration::from_secs(3),
                        "{ep} still allows k2"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        refused.push(started.elapsed());
    }
    assert!(
        refused
            .iter()
            .all(|d| *d < std::time::Duration::from_secs(2)),
        "{refused:?}"
    );
}

/// Strata-only (etcd's TTL is a server flag the harness does not set): a
/// simple token lasts `--auth-token-ttl` after its last use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tokens_expire_when_idle() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--auth-token-ttl", "2"]);
    setup(&c);
    let mut anon = client_as(&c, None).await;
    let idle = token_of(&mut anon, "alice", "alicepw").await;
    let used = token_of(&mut anon, "alice", "alicepw").await;
    for i in 0..7 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        put_with_token(&c.endpoint, &used, "foo", &format!("v{i}"))
            .await
            .unwrap();
    }
    assert_token_refused(&c.endpoint, &idle).await;
}

/// Strata-only (a router flag): JWT tokens (ES256, keys made here). etcdctl
/// works with them; like etcd's, a token issued before an auth change is
/// refused as "revision of auth store is old".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let opt = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m",
        public.display(),
        private.display()
    );
    let c = start_strata_with(&["--auth-token", &opt]);
    setup(&c);
    assert_eq!(
        ok(&c.etcdctl(&["--user", ALICE, "put", "foo", "jwt"])),
        "OK\n"
    );
    fails_with(
        &c.etcdctl(&["--user", ALICE, "put", "other", "x"]),
        "etcdserver: permission denied",
    );
    let mut anon = client_as(&c, None).await;
    let token = token_of(&mut anon, "alice", "alicepw").await;
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    put_with_token(&c.endpoint, &token, "foo", "ok")
        .await
        .unwrap();
    assert_eq!(
        ok(&c.etcdctl(&["--user", ROOT, "role", "add", "r9"])),
        "Role r9 created\n"
    );
    let e = put_with_token(&c.endpoint, &token, "foo", "old")
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: revision of auth store is old"
        )
    );
}
