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
