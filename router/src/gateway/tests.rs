//! The JSON mapping checked against answers a real etcd 3.4 gateway gave
//! (recorded byte for byte), and the route table against the descriptors.

use prost::Message as _;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use strata_proto::etcd::{
    PbCompare, PbEvent, PbKeyValue, PbRangeResponse, PbResponseHeader, PbResponseOp,
    PbStatusResponse, PbTxnRequest, PbTxnResponse, PbWatchResponse,
};
use tonic::Code;

use super::json;
use super::routes::{resolve, Close, ROUTES};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(strata_proto::GATEWAY_DESCRIPTORS).expect("descriptor set")
}

fn desc(name: &str) -> MessageDescriptor {
    pool().get_message_by_name(name).expect(name)
}

fn header(revision: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        cluster_id: 15118495548433857066,
        member_id: 13668033151171901709,
        revision,
        raft_term: 2,
    })
}

const HEADER: &str = r#"{"cluster_id":"15118495548433857066","member_id":"13668033151171901709","revision":"2","raft_term":"2"}"#;

fn kv(key: &[u8], value: &[u8], create: i64, modr: i64, version: i64) -> PbKeyValue {
    PbKeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

fn render<M: prost::Message>(name: &str, m: &M) -> String {
    String::from_utf8(json::render(&desc(name), &m.encode_to_vec()).expect("render"))
        .expect("utf-8")
}

#[test]
fn every_route_resolves() {
    let routes = resolve(&pool(), ROUTES).expect("routes");
    assert_eq!(routes.len(), ROUTES.len());
    let watch = &routes["/v3/watch"];
    assert!(watch.client_streaming && watch.server_streaming);
    assert_eq!(watch.close, Close::WhenClientGoes);
    assert_eq!(watch.grpc_path, "/etcdserverpb.Watch/Watch");
    let range = &routes["/v3/kv/range"];
    assert!(!range.client_streaming && !range.server_streaming);
    assert_eq!(range.output.full_name(), "etcdserverpb.RangeResponse");
    assert!(routes["/v3/maintenance/snapshot"].server_streaming);
    assert!(resolve(&pool(), &[("/x", "etcdserverpb.KV/Nope")]).is_err());
    assert!(resolve(&pool(), &[("/x", "v3lockpb.Lock/Nope")]).is_err());
    let observe = &routes["/v3/election/observe"];
    assert!(!observe.client_streaming && observe.server_streaming);
    assert_eq!(
        routes["/v3/lock/lock"].output.full_name(),
        "v3lockpb.LockResponse"
    );
}

#[test]
fn range_response_as_etcd_writes_it() {
    let r = PbRangeResponse {
        header: header(2),
        kvs: vec![kv(b"foo", b"bar", 2, 2, 1)],
        more: false,
        count: 1,
    };
    assert_eq!(
        render("etcdserverpb.RangeResponse", &r),
        format!(
            r#"{{"header":{HEADER},"kvs":[{{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}}],"count":"1"}}"#
        )
    );
    // Nothing found: no kvs, no count.
    let empty = PbRangeResponse {
        header: header(2),
        ..Default::default()
    };
    assert_eq!(
        render("etcdserverpb.RangeResponse", &empty),
        format!(r#"{{"header":{HEADER}}}"#)
    );
}

#[test]
fn txn_response_with_oneof_and_nested_header() {
    let r = PbTxnResponse {
        header: header(2),
        succeeded: true,
        responses: vec![PbResponseOp {
            response: Some(strata_proto::etcd::PbTxnOpResponse::ResponsePut(
                strata_proto::etcd::PbPutResponse {
                    header: Some(PbResponseHeader {
                        revision: 3,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
            )),
        }],
    };
    assert_eq!(
        render("etcdserverpb.TxnResponse", &r),
        format!(
            r#"{{"header":{HEADER},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"3"}}}}}}]}}"#
        )
    );
}

#[test]
fn watch_events_and_status_use_etcd_names() {
    let w = PbWatchResponse {
        header: header(2),
        events: vec![PbEvent {
            r#type: 1,
            kv: Some(PbKeyValue {
                key: b"foo".to_vec(),
                mod_revision: 7,
                ..Default::default()
            }),
            prev_kv: None,
        }],
        ..Default::default()
    };
    assert_eq!(
        String::from_utf8(
            json::stream_result(&desc("etcdserverpb.WatchResponse"), &w.encode_to_vec()).unwrap()
        )
        .unwrap(),
        format!(
            r#"{{"result":{{"header":{HEADER},"events":[{{"type":"DELETE","kv":{{"key":"Zm9v","mod_revision":"7"}}}}]}}}}"#
        ) + "\n"
    );
    let s = PbStatusResponse {
        header: header(2),
        version: "3.4.23".into(),
        db_size: 20480,
        leader: 13668033151171901709,
        raft_index: 12,
        raft_term: 2,
        raft_applied_index: 12,
        db_size_in_use: 16384,
        ..Default::default()
    };
    assert_eq!(
        render("etcdserverpb.StatusResponse", &s),
        format!(
            r#"{{"header":{HEADER},"version":"3.4.23","dbSize":"20480","leader":"13668033151171901709","raftIndex":"12","raftTerm":"2","raftAppliedIndex":"12","dbSizeInUse":"16384"}}"#
        )
    );
}

#[test]
fn txn_request_from_json() {
    let body = br#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
        "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],
        "failure":[{"request_range":{"key":"Zm9v","limit":"3"}}],"unknown_field":1} trailing"#;
    let msgs = json::parse_requests(&desc("etcdserverpb.TxnRequest"), body, false).expect("parse");
    assert_eq!(msgs.len(), 1);
    let t = PbTxnRequest::decode(msgs[0].as_slice()).expect("decode");
    assert_eq!(t.compare.len(), 1);
    let c: &PbCompare = &t.compare[0];
    assert_eq!((c.key.as_slice(), c.result, c.target), (&b"foo"[..], 0, 3));
    assert_eq!(
        c.target_union,
        Some(strata_proto::etcd::PbTargetUnion::Value(b"bar".to_vec()))
    );
    assert_eq!(t.success.len(), 1);
    assert_eq!(t.failure.len(), 1);
}

#[test]
fn request_bodies() {
    let range = desc("etcdserverpb.RangeRequest");
    // Empty and null bodies are the empty message; a stream's empty body none.
    assert_eq!(
        json::parse_requests(&range, b"", false).unwrap(),
        vec![Vec::<u8>::new()]
    );
    assert_eq!(
        json::parse_requests(&range, b" null ", false).unwrap(),
        vec![Vec::<u8>::new()]
    );
    let watch = desc("etcdserverpb.WatchRequest");
    assert!(json::parse_requests(&watch, b"", true).unwrap().is_empty());
    // Several messages in one stream body.
    let two = br#"{"create_request":{"key":"YQ=="}} {"create_request":{"key":"Yg=="}}"#;
    assert_eq!(json::parse_requests(&watch, two, true).unwrap().len(), 2);
    // Malformed JSON, bad base64, unknown enum names, wrong types: errors.
    let bad_bodies: [&[u8]; 5] = [
        b"{bad",
        br#"{"key":"!!"}"#,
        br#"{"key":5}"#,
        br#"{"sort_order":"BOGUS"}"#,
        b"[]",
    ];
    for bad in bad_bodies {
        assert!(
            json::parse_requests(&range, bad, false).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Enums by number and 64-bit integers as numbers or strings, as etcd takes them.
    let ok = br#"{"key":"Zm9v","sort_order":1,"limit":"-1","revision":5}"#;
    let m = json::parse_requests(&range, ok, false).unwrap();
    let r = strata_proto::etcd::PbRangeRequest::decode(m[0].as_slice()).unwrap();
    assert_eq!((r.sort_order, r.limit, r.revision), (1, -1, 5));
    // Deep nesting is refused, not recursed into.
    let deep = "[".repeat(100_000);
    assert!(json::parse_requests(&range, deep.as_bytes(), false).is_err());
}

#[test]
fn errors_as_etcd_writes_them() {
    let m = "etcdserver: mvcc: required revision has been compacted";
    assert_eq!(
        String::from_utf8(json::error_body(Code::OutOfRange, m)).unwrap(),
        format!(r#"{{"error":"{m}","message":"{m}","code":11}}"#)
    );
    assert_eq!(json::http_status(Code::OutOfRange).as_u16(), 400);
    assert_eq!(json::http_status(Code::FailedPrecondition).as_u16(), 412);
    assert_eq!(json::http_status(Code::NotFound).as_u16(), 404);
    assert_eq!(json::http_status(Code::Unimplemented).as_u16(), 501);
    assert_eq!(
        String::from_utf8(json::stream_error(Code::Unimplemented, "no \"x\"")).unwrap(),
        "{\"error\":{\"grpc_code\":12,\"http_code\":501,\"message\":\"no \\\"x\\\"\",\"http_status\":\"Not Implemented\"}}\n"
    );
}
