//! One gateway request: the JSON body becomes gRPC-framed protobuf sent to
//! the router's own gRPC services in process (the tonic routes behind the
//! gateway layer, so the same code, auth and metrics as a gRPC client's
//! call), and the gRPC answer becomes etcd's JSON.

use std::convert::Infallible;
use std::future::poll_fn;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;

use strata_proto::errors;
use tokio::time::Instant;

use super::deadline::Deadline;
use super::routes::{Close, Route};
use super::{json, BoxError};

/// The largest request body taken: etcd's request limit with room for JSON's
/// overhead (base64 makes bytes a third larger, and field names and quotes).
pub const MAX_BODY_BYTES: usize = 2 * crate::kv::GRPC_MAX_RECV_BYTES;
/// The largest gRPC message taken from a service's answer.
pub const MAX_REPLY_MESSAGE_BYTES: usize = 256 << 20;

/// Runs `req` (a POST to `route`'s HTTP path) through `inner`, bounded by
/// `deadline` (until its answer starts; a stream's lines are bounded too).
pub async fn forward<S, B>(
    route: &Route,
    inner: S,
    req: Request<Body>,
    deadline: Option<Deadline>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let call = call(route, inner, req, deadline);
    let Some(d) = deadline else {
        return call.await;
    };
    // The deadline first: a call answering just as it passes is too late,
    // as for etcd's gateway, whose client gives up at the deadline.
    tokio::select! {
        biased;
        () = tokio::time::sleep_until(d.answer_at) => {
            let s = errors::deadline_exceeded();
            unary_error(s.code(), s.message())
        }
        r = call => r,
    }
}

async fn call<S, B>(
    route: &Route,
    mut inner: S,
    req: Request<Body>,
    deadline: Option<Deadline>,
) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large();
        }
        Err(e) => {
            return unary_error(
                Code::InvalidArgument,
                &format!("strata: cannot read the request body: {e}"),
            );
        }
    };
    let messages = match json::parse_requests(&route.input, &body, route.client_streaming) {
        Ok(m) => m,
        // etcd's gateway: InvalidArgument for a unary call's body; a stream's
        // body is read as the stream goes, its errors are Unknown.
        Err(e) if route.client_streaming => return unary_error(Code::Unknown, &e),
        Err(e) => return unary_error(Code::InvalidArgument, &e),
    };
    let mut framed = Vec::with_capacity(messages.len());
    for m in &messages {
        match frame(m) {
            Some(f) => framed.push(f),
            None => return too_large(),
        }
    }
    // The request stream ends when `client_gone` is dropped with the answer's
    // body (the HTTP client went), or at once.
    let (client_gone, gone) = tokio::sync::oneshot::channel::<()>();
    let grpc_body = match route.close {
        Close::AfterBody => {
            drop(gone);
            let mut all = BytesMut::new();
            for f in framed {
                all.extend_from_slice(&f);
            }
            Body::new(Full::new(all.freeze()))
        }
        Close::WhenClientGoes => {
            let frames = futures::stream::iter(framed).map(|f| Ok::<_, Infallible>(Frame::data(f)));
            let end = futures::stream::once(async move {
                let _ = gone.await;
            })
            .filter_map(|()| async { None::<Result<Frame<Bytes>, Infallible>> });
            Body::new(StreamBody::new(frames.chain(end)))
        }
    };
    let mut grpc = Request::new(grpc_body);
    *grpc.method_mut() = Method::POST;
    *grpc.version_mut() = Version::HTTP_2;
    *grpc.extensions_mut() = parts.extensions;
    match route.grpc_path.parse() {
        Ok(uri) => *grpc.uri_mut() = uri,
        Err(e) => {
            return unary_error(
                Code::Internal,
                &format!("strata: bad route {}: {e}", route.grpc_path),
            )
        }
    }
    let h = grpc.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    // etcd's gateway passes the Authorization header on as gRPC metadata; the
    // auth layer reads the token from it.
    if let Some(token) = parts.headers.get(header::AUTHORIZATION) {
        h.insert(header::AUTHORIZATION, token.clone());
    }
    // The services see the deadline too (a little later than the gateway's
    // own answer), so work they spawn is bounded by it.
    if let Some(v) = deadline
        .and_then(|d| d.inner_header())
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        h.insert("grpc-timeout", v);
    }

    let answer = match poll_fn(|cx| inner.poll_ready(cx)).await {
        Ok(()) => inner.call(grpc).await,
        Err(e) => Err(e),
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let e: BoxError = e.into();
            return unary_error(Code::Unavailable, &format!("strata: {e}"));
        }
    };
    let (head, body) = answer.into_parts();
    let mut reply = Reply {
        body: Body::new(body),
        buf: BytesMut::new(),
        status: Status::from_header_map(&head.headers),
        ended: false,
    };
    if route.server_streaming {
        stream_answer(route, reply, client_gone, deadline.map(|d| d.answer_at)).await
    } else {
        match reply.next().await {
            Ok(Some(m)) => match reply.finish().await {
                Ok(()) => match json::render(&route.output, &m) {
                    Ok(j) => json_response(StatusCode::OK, j),
                    Err(e) => unary_error(Code::Internal, &e),
                },
                Err(s) => unary_error(s.code(), s.message()),
            },
            Ok(None) => unary_error(Code::Internal, "strata: the call answered no message"),
            Err(s) => unary_error(s.code(), s.message()),
        }
    }
}

/// A streamed answer: `{"result":..}` lines, flushed one by one, the stream's
/// error (if any) as a last `{"error":..}` line. A call failing before its
/// first message is answered with the error's HTTP status.
async fn stream_answer(
    route: &Route,
    mut reply: Reply,
    client_gone: tokio::sync::oneshot::Sender<()>,
    deadline: Option<Instant>,
) -> Response<Body> {
    let first = match reply.next().await {
        Ok(Some(m)) => match json::stream_result(&route.output, &m) {
            Ok(line) => line,
            Err(e) => return stream_failed(Code::Internal, &e),
        },
        Ok(None) => return json_response(StatusCode::OK, Vec::new()),
        Err(s) => return stream_failed(s.code(), s.message()),
    };
    struct State {
        reply: Reply,
        output: prost_reflect::MessageDescriptor,
        ended: bool,
        deadline: Option<Instant>,
        _client_gone: tokio::sync::oneshot::Sender<()>,
    }
    let state = State {
        reply,
        output: route.output.clone(),
        ended: false,
        deadline,
        _client_gone: client_gone,
    };
    let rest = futures::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        let next = match st.deadline {
            None => Some(st.reply.next().await),
            Some(at) => tokio::select! {
                biased;
                () = tokio::time::sleep_until(at) => None,
                r = st.reply.next() => Some(r),
            },
        };
        let Some(next) = next else {
            // etcd's gateway ends such a stream with its client's
            // DeadlineExceeded (for a Watch always; for an Observe the
            // server's own Unknown sometimes comes first).
            st.ended = true;
            let s = errors::deadline_exceeded();
            let line = json::stream_error(s.code(), s.message());
            return Some((Bytes::from(line), st));
        };
        let line = match next {
            Ok(Some(m)) => match json::stream_result(&st.output, &m) {
                Ok(line) => line,
                Err(e) => {
                    st.ended = true;
                    json::stream_error(Code::Internal, &e)
                }
            },
            Ok(None) => return None,
            Err(s) => {
                st.ended = true;
                json::stream_error(s.code(), s.message())
            }
        };
        Some((Bytes::from(line), st))
    });
    let lines = futures::stream::once(async move { Bytes::from(first) })
        .chain(rest)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(Body::new(StreamBody::new(lines)));
    set_json_headers(&mut resp);
    resp
}

/// A gRPC message frame: uncompressed flag, big-endian length, message.
/// `None` past 4 GiB.
fn frame(msg: &[u8]) -> Option<Bytes> {
    let len = u32::try_from(msg.len()).ok()?;
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.put_u8(0);
    b.put_u32(len);
    b.extend_from_slice(msg);
    Some(b.freeze())
}

/// A gRPC answer being read: messages out of the body's frames, then the
/// status from the trailers (or from the headers of a trailers-only answer).
struct Reply {
    body: Body,
    buf: BytesMut,
    status: Option<Status>,
    ended: bool,
}

impl Reply {
    /// The next message; `None` once the call ended well.
    async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(m) = self.take_message()? {
                return Ok(Some(m));
            }
            if self.ended || self.status.is_some() {
                if !self.buf.is_empty() {
                    return Err(Status::internal(
                        "strata: a gRPC answer ended inside a message",
                    ));
                }
                return match self.status.take() {
                    Some(s) if s.code() == Code::Ok => Ok(None),
                    Some(s) => Err(s),
                    None => Err(Status::internal(
                        "strata: a gRPC answer ended without a status",
                    )),
                };
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(s)) => return Err(s),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        if let Ok(t) = f.into_trailers() {
                            self.status = Some(Status::from_header_map(&t).unwrap_or_else(|| {
                                Status::internal("strata: gRPC trailers without a status")
                            }));
                        }
                    }
                },
            }
        }
    }

    /// Reads to the end; fine when the call ended well with no other message.
    async fn finish(&mut self) -> Result<(), Status> {
        match self.next().await? {
            None => Ok(()),
            Some(_) => Err(Status::internal("strata: a unary call answered twice")),
        }
    }

    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::internal("strata: a compressed gRPC answer"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_REPLY_MESSAGE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "strata: an answer of {len} bytes is over the gateway's {MAX_REPLY_MESSAGE_BYTES}"
            )));
        }
        if self.buf.len() - 5 < len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

fn set_json_headers(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = json_only(status, body);
    set_json_headers(&mut resp);
    resp
}

/// A JSON body with `status` and only its content type.
fn json_only(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A failed unary call (or a request the gateway refused before calling).
pub fn unary_error(code: Code, message: &str) -> Response<Body> {
    json_only(json::http_status(code), json::error_body(code, message))
}

fn stream_failed(code: Code, message: &str) -> Response<Body> {
    json_only(json::http_status(code), json::stream_error(code, message))
}

/// A body over `MAX_BODY_BYTES`: 413, with etcd's error shape.
fn too_large() -> Response<Body> {
    let mut resp = unary_error(
        Code::ResourceExhausted,
        &format!("strata: request body over {MAX_BODY_BYTES} bytes"),
    );
    *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    resp
}
