//! Tests of `strata ctl` (parsing, finding placement, rendering).
use super::*;
use strata_proto::strata::{Epoch, Peer, RangeDescriptor, RangeStats};

#[test]
fn keys_are_text_when_printable_else_escaped() {
    assert_eq!(key_text(b""), "");
    assert_eq!(key_text(b"foo/bar 1"), "foo/bar 1");
    assert_eq!(key_text("clé/ü".as_bytes()), "clé/ü");
    assert_eq!(key_text(br"a\b"), r"a\b");
    assert_eq!(key_text(b"a\x00b"), r"a\x00b");
    assert_eq!(key_text(b"a\nb\\"), r"a\x0ab\\");
    assert_eq!(key_text(b"k\xff\x01"), r"k\xff\x01");
    assert_eq!(key_text("é\u{85}\t".as_bytes()), r"é\xc2\x85\x09");
    assert_eq!(hex(b"k\xff\x01"), "6bff01");
}

#[test]
fn placement_is_found_in_dev_json() {
    let text = r#"{"client_endpoint":"127.0.0.1:2379","components":[
            {"role":"node","name":"node-1","addr":"127.0.0.1:23791"},
            {"role":"placement","name":"placement","addr":"127.0.0.1:23790"}]}"#;
    assert_eq!(
        placement_addr_from_dev_json(text).unwrap(),
        "127.0.0.1:23790"
    );
    assert!(placement_addr_from_dev_json(r#"{"components":[]}"#).is_err());
    assert!(placement_addr_from_dev_json("not json").is_err());
}

#[test]
fn flag_wins_and_a_missing_dev_json_says_what_to_do() {
    let dir = Path::new("/nonexistent/strata-ctl-test");
    let t = find_placement(Some("http://10.0.0.1:23790"), dir).unwrap();
    assert_eq!(t.addr, "10.0.0.1:23790");
    let err = format!("{:#}", find_placement(None, dir).unwrap_err());
    assert!(
        err.contains("/nonexistent/strata-ctl-test/dev.json"),
        "{err}"
    );
    assert!(
        err.contains("--placement") && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
// `..Default::default()` keeps this test building when the messages gain fields.
#[allow(clippy::needless_update)]
fn tables_are_aligned_and_sorted() {
    let range = |id, start: &[u8], end: &[u8], leader| RangeInfo {
        desc: Some(RangeDescriptor {
            id,
            start_key: start.to_vec(),
            end_key: end.to_vec(),
            epoch: Some(Epoch {
                conf_ver: 1,
                version: id,
            }),
            peers: (1..=3)
                .map(|n| Peer {
                    id: id * 10 + n,
                    node_id: n,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        leader_node: leader,
        stats: (leader != 0).then_some(RangeStats {
            approx_keys: 120,
            approx_bytes: 5000,
            writes_per_sec: 2.5,
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp = GetRangesResponse {
        ranges: vec![range(2, b"m", b"", 0), range(1, b"", b"m", 2)],
        nodes: vec![NodeInfo {
            id: 1,
            addr: "127.0.0.1:23791".into(),
            up: true,
            range_count: 2,
            leader_count: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let rows = ranges(&resp);
    assert_eq!(rows[0].range_id, 1);
    assert_eq!(rows[1].leader_node, None);
    assert_eq!(
        ranges_table(&rows),
        "\
RANGE  START    END    EPOCH(CONF/VER)  REPLICAS  LEADER     SIZE  KEYS  WRITES/S
    1  (start)  m      1/1              1,2,3          2  4.9 KiB   120       2.5
    2  m        (end)  1/2              1,2,3          -        -     -         -
"
    );
    assert_eq!(
        json_lines(&rows[1..]).unwrap(),
        "{\"range_id\":2,\"start_key\":\"m\",\"end_key\":\"\",\"start_key_hex\":\"6d\",\
             \"end_key_hex\":\"\",\"epoch\":{\"conf_ver\":1,\"version\":2},\"replicas\":[1,2,3],\
             \"learners\":[],\"leader_node\":null,\"approx_bytes\":null,\"approx_keys\":null,\
             \"writes_per_sec\":null}\n"
    );
    assert_eq!(
        nodes_table(&nodes(&resp)),
        "\
NODE  ADDRESS          STATE  RANGES  LEADERS
   1  127.0.0.1:23791  up          2        1
"
    );
}

#[test]
fn sizes_are_human() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    assert_eq!(truncate("abcdef", 4), "abc…");
}

#[test]
fn every_placement_replica_is_found_in_dev_json() {
    let text = r#"{"components":[
        {"role":"placement","name":"placement-1","addr":"127.0.0.1:23790"},
        {"role":"placement","name":"placement-2","addr":"127.0.0.1:23791"},
        {"role":"node","name":"node-1","addr":"127.0.0.1:23792"}]}"#;
    assert_eq!(
        placement_addr_from_dev_json(text).unwrap(),
        "127.0.0.1:23790,127.0.0.1:23791"
    );
}
