//! A unary gRPC call over plain HTTP/2 (the `h2` crate), for what tonic's
//! client cannot show: the *server's* answer to a request past its
//! `grpc-timeout` (tonic's channel enforces the header itself and answers
//! Cancelled "Timeout expired" locally, racing the server). Plaintext only.

use std::time::Duration;

use bytes::Bytes;

/// The gRPC status a server answered: code (as a number), message, and the
/// response message's bytes when it succeeded.
#[derive(Debug)]
pub struct RawAnswer {
    pub code: i32,
    pub message: String,
    pub body: Vec<u8>,
}

/// Sends `request` (an encoded protobuf message) to `path` (e.g.
/// `/etcdserverpb.KV/Put`) at `addr` with extra `headers`, and waits at most
/// `limit` for the whole answer.
pub async fn unary(
    addr: &str,
    path: &str,
    request: Vec<u8>,
    headers: &[(&str, &str)],
    limit: Duration,
) -> RawAnswer {
    tokio::time::timeout(limit, unary_inner(addr, path, request, headers))
        .await
        .unwrap_or_else(|_| panic!("no answer to {path} within {limit:?}"))
}

async fn unary_inner(
    addr: &str,
    path: &str,
    request: Vec<u8>,
    headers: &[(&str, &str)],
) -> RawAnswer {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.expect("h2 ready");
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, mut send) = h2
        .send_request(req.body(()).expect("request"), false)
        .expect("send request");
    // gRPC framing: not compressed, 4-byte big-endian length, message.
    let len = u32::try_from(request.len()).expect("small request");
    let mut frame = vec![0u8];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&request);
    // A server may answer from the headers alone (a deadline already
    // passed) and close the stream first: its answer is still read below.
    let _ = send.send_data(Bytes::from(frame), true);
    let resp = resp.await.expect("response");
    let (parts, mut body) = resp.into_parts();
    let status_of = |h: &http::HeaderMap| {
        let code = h
            .get("grpc-status")
            .map(|v| v.to_str().unwrap_or("2").parse().unwrap_or(2));
        let message = h
            .get("grpc-message")
            .map(|v| percent_decode(v.to_str().unwrap_or("")))
            .unwrap_or_default();
        code.map(|c| (c, message))
    };
    // Trailers-only (every error of a unary call): the status is in the headers.
    if let Some((code, message)) = status_of(&parts.headers) {
        return RawAnswer {
            code,
            message,
            body: Vec::new(),
        };
    }
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers").unwrap_or_default();
    let (code, message) = status_of(&trailers).unwrap_or((2, "no grpc-status".into()));
    RawAnswer {
        code,
        message,
        body: data.get(5..).map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
