//! Over TLS the client port offers ALPN `h2` and `http/1.1`: the gateway
//! answers HTTP/1.1 and HTTP/2 JSON requests, gRPC (etcdctl) still works.
//! Strata only (see the test).

use super::*;

#[test]
fn gateway_over_tls_with_both_alpn_protocols() {
    // Strata only: etcd 3.4 agrees on no ALPN protocol, and its gateway
    // answers 503 under --client-cert-auth (its own gRPC dial is refused).
    if Target::from_env() == Target::Etcd {
        return;
    }
    let c = Cluster::start_tls();
    let tls = c.tls.as_ref().expect("TLS paths");
    let url = format!("https://{}/v3/kv/put", c.endpoint);
    let body = format!(r#"{{"key":"{}","value":"{}"}}"#, b64("tls-key"), b64("v"));
    for (flag, alpn) in [("--http1.1", "http/1.1"), ("--http2", "h2")] {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-v", "-X", "POST", "-d", &body, flag])
            .args(["--cacert", &tls.file("ca.pem")])
            .args([
                "--cert",
                &tls.file("client.pem"),
                "--key",
                &tls.file("client-key.pem"),
            ])
            .arg(&url);
        let out = run_bounded(cmd, None, CURL_TIMEOUT);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{flag}: {stdout} {stderr}");
        assert!(
            stderr.contains(&format!("ALPN: server accepted {alpn}"))
                || stderr.contains(&format!("ALPN, server accepted to use {alpn}")),
            "{flag}: {stderr}"
        );
        let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        header_rev(&v);
    }
    // gRPC on the same port.
    let got = ok(&c.etcdctl(&["get", "tls-key", "--print-value-only"]));
    assert_eq!(got.trim(), "v");
}
