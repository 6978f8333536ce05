//! etcd's authentication and role-based access control, through etcdctl 3.4 and
//! the etcd-client crate: users, roles, permissions on keys and prefixes,
//! enable/disable, tokens, and every request kind checked.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test auth`), except those marked
//! Strata-only (several routers). Each test starts its own server: enabling
//! auth changes the whole cluster.

#[path = "../common/mod.rs"]
mod common;
mod tokens;

use std::process::Output;

use common::*;
use etcd_client::{
    Compare, CompareOp, ConnectOptions, GetOptions, Permission, PutOptions, Txn, TxnOp,
    WatchOptions,
};

/// Asserts failure with `msg` in stderr.
#[track_caller]
fn fails_with(out: &Output, msg: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(msg),
        "expected failure with {msg:?}; status {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// root, and alice with role r1: readwrite on `foo`, read on prefix `pre/`,
/// readwrite on [k1, k5); auth enabled.
fn setup(c: &Cluster) {
    assert_eq!(
        ok(&c.etcdctl(&["user", "add", ROOT])),
        "User root created\n"
    );
    assert_eq!(ok(&c.etcdctl(&["role", "add", "r1"])), "Role r1 created\n");
    for args in [
        &["readwrite", "foo"][..],
        &["read", "--prefix=true", "pre/"],
        &["readwrite", "k1", "k5"],
    ] {
        let mut a = vec!["role", "grant-permission", "r1"];
        a.extend_from_slice(args);
        assert_eq!(ok(&c.etcdctl(&a)), "Role r1 updated\n");
    }
    assert_eq!(
        ok(&c.etcdctl(&["user", "add", ALICE])),
        "User alice created\n"
    );
    assert_eq!(
        ok(&c.etcdctl(&["user", "grant-role", "alice", "r1"])),
        "Role r1 is granted to user alice\n"
    );
    assert_eq!(
        ok(&c.etcdctl(&["auth", "enable"])),
        "Authentication Enabled\n"
    );
}

#[test]
fn etcdctl_users_roles_permissions() {
    let c = start();
    setup(&c);
    // No user: refused, nothing written.
    fails_with(
        &c.etcdctl(&["put", "foo", "x"]),
        "etcdserver: user name is empty",
    );
    fails_with(
        &c.etcdctl(&["--user", "alice:wrong", "get", "foo"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );
    fails_with(
        &c.etcdctl(&["--user", "nobody:pw", "get", "foo"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let alice = |args: &[&str]| {
        let mut a = vec!["--user", ALICE];
        a.extend_from_slice(args);
        c.etcdctl(&a)
    };
    assert_eq!(ok(&alice(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok(&alice(&["get", "foo"])), "foo\nbar\n");
    assert_eq!(ok(&alice(&["put", "k3", "v"])), "OK\n");
    fails_with(&alice(&["put", "k5", "v"]), "etcdserver: permission denied");
    fails_with(
        &alice(&["put", "other", "v"]),
        "etcdserver: permission denied",
    );
    fails_with(
        &alice(&["put", "pre/a", "v"]),
        "etcdserver: permission denied",
    );
    assert_eq!(ok(&alice(&["get", "pre/a"])), "");
    assert_eq!(ok(&alice(&["get", "--prefix", "pre/"])), "");
    assert_eq!(ok(&alice(&["get", "k1", "k5"])), "k3\nv\n");
    fails_with(
        &alice(&["get", "k1", "k6"]),
        "etcdserver: permission denied",
    );
    fails_with(
        &alice(&["get", "--prefix", "pre"]),
        "etcdserver: permission denied",
    );
    fails_with(&alice(&["del", "pre/a"]), "etcdserver: permission denied");
    fails_with(&alice(&["user", "list"]), "etcdserver: permission denied");
    fails_with(
        &alice(&["role", "add", "r2"]),
        "etcdserver: permission denied",
    );
    fails_with(
        &alice(&["auth", "disable"]),
        "etcdserver: permission denied",
    );
    // A user sees its own user and roles.
    assert!(ok(&alice(&["user", "get", "alice"])).contains("Roles: r1"));
    fails_with(
        &alice(&["user", "get", "root"]),
        "etcdserver: permission denied",
    );
    let role = ok(&alice(&["role", "get", "r1"]));
    assert!(role.contains("KV Read:"), "{role}");
    assert!(role.contains("[pre/, pre0) (prefix pre/)"), "{role}");
    assert!(role.contains("[k1, k5)"), "{role}");
    // A watch outside the permissions is refused at creation (etcdctl 3.4
    // keeps running and prints nothing); one inside sees events.
    let denied = c.etcdctl_spawn(&["--user", ALICE, "watch", "other"]);
    let allowed = c.etcdctl_spawn(&["--user", ALICE, "watch", "foo"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        ok(&c.etcdctl(&["--user", ROOT, "put", "other", "w"])),
        "OK\n"
    );
    assert_eq!(ok(&alice(&["put", "foo", "w"])), "OK\n");
    assert!(
        allowed.wait_stdout(RECV_TIMEOUT, |o| o.contains("foo\nw")),
        "{}",
        allowed.stdout()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(denied.stdout(), "");
    drop((denied, allowed));
    assert_eq!(ok(&alice(&["put", "foo", "bar"])), "OK\n");
    // A txn needs permission on every key it touches, in both branches.
    fails_with(
        &c.etcdctl_stdin(
            &["--user", ALICE, "txn"],
            "value(\"foo\") = \"bar\"\n\nput foo baz\n\nput other x\n\n",
        ),
        "etcdserver: permission denied",
    );
    assert_eq!(ok(&alice(&["get", "foo", "--print-value-only"])), "bar\n");

    let root = |args: &[&str]| {
        let mut a = vec!["--user", ROOT];
        a.extend_from_slice(args);
        c.etcdctl(&a)
    };
    assert_eq!(ok(&root(&["user", "list"])), "alice\nroot\n");
    assert_eq!(ok(&root(&["role", "list"])), "r1\nroot\n");
    assert_eq!(ok(&root(&["put", "other", "v"])), "OK\n");
    for (args, err) in [
        (
            &["user", "delete", "root"][..],
            "etcdserver: invalid auth management",
        ),
        (
            &["role", "delete", "root"][..],
            "etcdserver: invalid auth management",
        ),
        (
            &["user", "add", ALICE][..],
            "etcdserver: user name already exists",
        ),
        (
            &["role", "add", "r1"][..],
            "etcdserver: role name already exists",
        ),
        (
            &["user", "grant-role", "alice", "nope"][..],
            "etcdserver: role name not found",
        ),
        (
            &["user", "revoke-role", "alice", "root"][..],
            "etcdserver: role is not granted to the user",
        ),
        (
            &["user", "get", "nobody"][..],
            "etcdserver: user name not found",
        ),
        (
            &["role", "get", "nope"][..],
            "etcdserver: role name not found",
        ),
        (
            &["role", "revoke-permission", "r1", "nokey"][..],
            "etcdserver: permission is not granted to the role",
        ),
    ] {
        fails_with(&root(args), err);
    }
    // Revoking a permission takes effect at once.
    assert_eq!(
        ok(&root(&["role", "revoke-permission", "r1", "foo"])),
        "Permission of key foo is revoked from role r1\n"
    );
    fails_with(
        &alice(&["put", "foo", "x"]),
        "etcdserver: permission denied",
    );
    // A password change ends the old one.
    assert_eq!(
        ok(&c.etcdctl_stdin(
            &[
                "--user",
                ROOT,
                "user",
                "passwd",
                "alice",
                "--interactive=false"
            ],
            "newpw\n"
        )),
        "Password updated\n"
    );
    fails_with(
        &alice(&["get", "k3"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_eq!(
        ok(&c.etcdctl(&["--user", "alice:newpw", "get", "k3", "--print-value-only"])),
        "v\n"
    );
    assert_eq!(
        ok(&root(&["user", "delete", "alice"])),
        "User alice deleted\n"
    );
    fails_with(
        &c.etcdctl(&["--user", "alice:newpw", "get", "k3"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_eq!(ok(&root(&["role", "delete", "r1"])), "Role r1 deleted\n");
    assert_eq!(ok(&root(&["auth", "disable"])), "Authentication Disabled\n");
    // Disabled: anyone again, and tokens are not needed.
    assert_eq!(ok(&c.etcdctl(&["put", "foo", "free"])), "OK\n");
    assert_eq!(
        ok(&c.etcdctl(&["user", "delete", "root"])),
        "User root deleted\n"
    );
}

#[test]
fn enable_needs_root() {
    let c = start();
    fails_with(
        &c.etcdctl(&["auth", "enable"]),
        "etcdserver: root user does not exist",
    );
    // Authenticating while auth is off fails; etcdctl goes on without a token.
    let out = c.etcdctl(&["--user", ROOT, "get", "x"]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("etcdserver: authentication is not enabled"),
        "{stderr}"
    );
    assert_eq!(ok(&c.etcdctl(&["put", "x", "1"])), "OK\n");
}

async fn client_as(c: &Cluster, user: Option<(&str, &str)>) -> etcd_client::Client {
    let opts = match user {
        Some((u, p)) => ConnectOptions::new().with_user(u, p),
        None => ConnectOptions::new(),
    };
    c.client_with(opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_requests_are_checked() {
    let c = start();
    setup(&c);
    let mut alice = client_as(&c, Some(("alice", "alicepw"))).await;
    let mut root = client_as(&c, Some(("root", "rootpw"))).await;
    let mut anon = client_as(&c, None).await;
    assert_grpc_err(
        anon.put("foo", "x", None).await,
        "InvalidArgument",
        "etcdserver: user name is empty",
    );
    alice.put("foo", "a", None).await.unwrap();
    // prev_kv needs read permission too; foo has it.
    let r = alice
        .put("foo", "b", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(r.prev_key().map(|kv| kv.value()), Some(&b"a"[..]));
    assert_grpc_err(
        alice
            .get("pre", Some(GetOptions::new().with_prefix()))
            .await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    alice
        .get("pre/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    // A txn reading a key outside its permissions in the branch not taken is
    // refused all the same.
    let txn = Txn::new()
        .when([Compare::value("foo", CompareOp::Equal, "b")])
        .and_then([TxnOp::put("k2", "t", None)])
        .or_else([TxnOp::get("secret", None)]);
    assert_grpc_err(
        alice.txn(txn).await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    let txn = Txn::new()
        .when([Compare::value("foo", CompareOp::Equal, "b")])
        .and_then([TxnOp::put("k2", "t", None)]);
    assert!(alice.txn(txn).await.unwrap().succeeded());
    // Watches: refused at creation outside the permissions.
    let mut stream = alice
        .watch("secret", Some(WatchOptions::new()))
        .await
        .unwrap();
    let resp = within(RECV_TIMEOUT, "watch refusal", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(resp.canceled(), "{resp:?}");
    assert_eq!(
        resp.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let mut stream = alice.watch("foo", None).await.unwrap();
    let created = within(RECV_TIMEOUT, "watch created", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    // Lease revoke deletes keys: it needs write permission on each of them.
    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("secret", "s", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    // Attaching a key to that lease needs write permission on the keys it
    // already holds (etcd's checkLeasePuts).
    assert_grpc_err(
        alice
            .put("foo", "leased", Some(PutOptions::new().with_lease(lease)))
            .await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    let txn = Txn::new().and_then([TxnOp::put(
        "foo",
        "t",
        Some(PutOptions::new().with_lease(lease)),
    )]);
    // (In a txn as etcd 3.5 checks it; 3.4 let a txn's Put through.)
    if Target::from_env() == Target::Strata {
        assert_grpc_err(
            alice.txn(txn).await,
            "PermissionDenied",
            "etcdserver: permission denied",
        );
    }
    let own = alice.lease_grant(60, None).await.unwrap().id();
    alice
        .put("foo", "leased", Some(PutOptions::new().with_lease(own)))
        .await
        .unwrap();
    assert_grpc_err(
        alice.lease_revoke(lease).await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    assert_eq!(root.get("secret", None).await.unwrap().kvs().len(), 1);
    root.lease_revoke(lease).await.unwrap();
    // Admin-only maintenance (etcd 3.4 answers Unknown "auth: permission
    // denied"; 3.5 and Strata PermissionDenied).
    let e = alice.defragment().await.unwrap_err().to_string();
    assert!(e.contains("permission denied"), "{e}");
    alice.status().await.unwrap();
    assert_grpc_err(
        alice
            .role_grant_permission("r1", Permission::read_write("secret"))
            .await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    root.role_grant_permission("r1", Permission::read_write("secret"))
        .await
        .unwrap();
    alice.put("secret", "mine", None).await.unwrap();
}

/// Strata-only: the auth state lives in placement's raft group. It survives
/// the loss of a placement replica and a `kill -9` of the whole cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_survives_failover_and_restart() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--placement-replicas", "3"]);
    setup(&c);
    c.kill_placement(1);
    let check = |c: &Cluster| {
        fails_with(
            &c.etcdctl(&["put", "foo", "x"]),
            "etcdserver: user name is empty",
        );
        assert_eq!(
            ok(&c.etcdctl(&["--user", ALICE, "put", "foo", "y"])),
            "OK\n"
        );
        fails_with(
            &c.etcdctl(&["--user", ALICE, "put", "other", "y"]),
            "etcdserver: permission denied",
        );
    };
    check(&c);
    assert_eq!(
        ok(&c.etcdctl(&["--user", ROOT, "role", "add", "r2"])),
        "Role r2 created\n"
    );
    c.restart_placement(1);
    c.kill9();
    c.restart();
    check(&c);
    assert_eq!(
        ok(&c.etcdctl(&["--user", ROOT, "role", "list"])),
        "r1\nr2\nroot\n"
    );
}

/// With `--client-cert-auth`, a request without a token runs as the common
/// name of its verified client certificate; a token, when given, wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_common_name_is_the_user() {
    let c = Cluster::start_tls();
    setup(&c);
    // etcdctl here presents client.pem (CN root) and no --user.
    assert_eq!(ok(&c.etcdctl(&["user", "list"])), "alice\nroot\n");
    assert_eq!(ok(&c.etcdctl(&["put", "other", "by-root"])), "OK\n");
    let tls = c.tls.clone().expect("a TLS cluster");
    let alice_cert = ConnectOptions::new().with_tls(tls.client_tls("client-alice"));
    let (url, _) = client_url(&c.endpoint, Some(&tls), ConnectOptions::new());
    let connect = |opts: ConnectOptions| {
        let url = url.clone();
        async move {
            let opts = opts
                .with_connect_timeout(std::time::Duration::from_secs(5))
                .with_timeout(REQUEST_TIMEOUT);
            etcd_client::Client::connect([url.as_str()], Some(opts))
                .await
                .unwrap()
        }
    };
    let mut alice = connect(alice_cert.clone()).await;
    alice.put("foo", "by-alice", None).await.unwrap();
    assert_grpc_err(
        alice.put("other", "x", None).await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    assert_grpc_err(
        alice.user_list().await,
        "PermissionDenied",
        "etcdserver: permission denied",
    );
    // alice's certificate with root's password: the token names root.
    let mut as_root = connect(alice_cert.with_user("root", "rootpw")).await;
    as_root.put("other", "by-token", None).await.unwrap();
    let v = as_root.get("other", None).await.unwrap();
    assert_eq!(v.kvs()[0].value(), b"by-token");
}
