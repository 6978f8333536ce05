//! The range cache's merge rules and lookups.

use super::*;
use strata_proto::strata::Epoch;

fn range(id: u64, start: &str, end: &str, version: u64, leader: u64) -> CachedRange {
    CachedRange {
        desc: RangeDescriptor {
            id,
            start_key: start.as_bytes().to_vec(),
            end_key: end.as_bytes().to_vec(),
            epoch: Some(Epoch {
                conf_ver: 1,
                version,
            }),
            peers: vec![],
        },
        leader_node: leader,
    }
}

fn ids(rs: &[CachedRange]) -> Vec<u64> {
    rs.iter().map(|r| r.desc.id).collect()
}

#[test]
fn learned_split_halves_survive_a_stale_placement_answer() {
    let old = RangeCache::build(vec![range(1, "", "", 1, 7)], &RangeCache::default());
    // A node's EpochNotMatch names the left half and the range split off
    // (what `Router::learn` merges in, ahead of the cache).
    let mut learned = vec![range(1, "", "m", 2, 0), range(2, "m", "", 2, 0)];
    learned.extend(old.by_start.iter().cloned());
    let cache = RangeCache::build(learned, &old);
    let n = KeyRange::from_etcd(b"n", &[]);
    assert_eq!(ids(&cache.overlapping(&n)), vec![2]);
    assert_eq!(
        cache.get(1).map(|r| r.leader_node),
        Some(7),
        "the left half keeps its leader"
    );
    // Placement has not heard of the split yet and answers the old
    // descriptor (what `refresh` merges, placement's list first).
    let mut stale = vec![range(1, "", "", 1, 7)];
    stale.extend(cache.by_start.iter().cloned());
    let after = RangeCache::build(stale, &cache);
    assert_eq!(ids(&after.by_start), vec![1, 2]);
    assert_eq!(ids(&after.overlapping(&n)), vec![2]);
}

#[test]
fn newest_epoch_wins_and_lookups_find_overlaps() {
    let old = RangeCache::build(vec![range(2, "m", "", 1, 7)], &RangeCache::default());
    // Range 1 [, "") split into 1 [, "g") and 2 ["g", "m") and 3 ["m", ""),
    // but placement still lists 1's old descriptor beside the new ones.
    let cache = RangeCache::build(
        vec![
            range(1, "", "", 1, 1),
            range(3, "m", "", 3, 3),
            range(1, "", "g", 3, 1),
            range(2, "g", "m", 3, 0),
        ],
        &old,
    );
    assert_eq!(ids(&cache.by_start), vec![1, 2, 3]);
    assert_eq!(cache.get(1).unwrap().desc.end_key, b"g");
    // Placement knows no leader for 2: the one learned before is kept.
    assert_eq!(cache.get(2).unwrap().leader_node, 7);
    assert!(cache.get(9).is_none());
    let kr = |s: &str, e: &str| KeyRange::from_etcd(s.as_bytes(), e.as_bytes());
    assert_eq!(ids(&cache.overlapping(&kr("a", ""))), vec![1]);
    assert_eq!(ids(&cache.overlapping(&kr("g", ""))), vec![2]);
    assert_eq!(ids(&cache.overlapping(&kr("f", "h"))), vec![1, 2]);
    assert_eq!(ids(&cache.overlapping(&kr("f", "m"))), vec![1, 2]);
    assert_eq!(ids(&cache.overlapping(&kr("f", "m\0"))), vec![1, 2, 3]);
    assert_eq!(ids(&cache.overlapping(&kr("\0", "\0"))), vec![1, 2, 3]);
    assert_eq!(ids(&cache.overlapping(&kr("z", "\0"))), vec![3]);
    assert_eq!(ids(&cache.overlapping(&kr("", ""))), vec![1]);
}

#[test]
fn thousands_of_ranges_build_and_resolve() {
    let n = 5000u64;
    let key = |i: u64| format!("k{i:05}");
    let ranges: Vec<CachedRange> = (0..n)
        .map(|i| {
            let start = if i == 0 { String::new() } else { key(i) };
            let end = if i == n - 1 {
                String::new()
            } else {
                key(i + 1)
            };
            range(i + 1, &start, &end, 2, 1)
        })
        .rev()
        .collect();
    let cache = RangeCache::build(ranges, &RangeCache::default());
    assert_eq!(cache.by_start.len(), n as usize);
    for i in (0..n).step_by(97) {
        let k = KeyRange::from_etcd(key(i).as_bytes(), b"");
        assert_eq!(ids(&cache.overlapping(&k)), vec![i + 1]);
    }
    let k = KeyRange::from_etcd(key(10).as_bytes(), key(20).as_bytes());
    assert_eq!(ids(&cache.overlapping(&k)), (11..=20).collect::<Vec<_>>());
}
