use std::time::Duration;

use super::{
    saturated_now, split_when_saturated, Counters, LeadShare, Measure, Rated, Seen, REMEASURE_EVERY,
};

const KEYS: u64 = 1600;
const BYTES: u64 = 64 << 20;

fn at(writes: u64, added_keys: u64, added_bytes: u64) -> Counters {
    Counters {
        replica: 1,
        writes,
        added_keys,
        added_bytes,
        version: 3,
        data_gen: 0,
    }
}

fn measured(keys: u64, bytes: u64) -> Measure {
    Measure {
        found: Some((keys, bytes)),
        ..Measure::start(at(1000, 500, 1 << 20))
    }
}

#[test]
fn a_range_is_measured_again_only_when_it_may_have_crossed_a_threshold() {
    let m = measured(1500, 10 << 20);
    // Fewer writes than a sixteenth of the key threshold: never.
    assert!(!m.due(&at(1099, 600, 2 << 20), KEYS, BYTES));
    // Enough writes, all overwrites: 1500 keys stay under 1600.
    assert!(!m.due(&at(1100, 500, 2 << 20), KEYS, BYTES));
    assert!(!m.due(&at(5000, 599, 50 << 20), KEYS, BYTES));
    // 101 new keys may make 1601.
    assert!(m.due(&at(1100, 601, 2 << 20), KEYS, BYTES));
    // Bytes may pass the byte threshold (10 MiB measured + 55 MiB).
    assert!(m.due(&at(1100, 500, 56 << 20), KEYS, BYTES));
    // A new descriptor, new data or a new replica: always.
    for changed in [
        Counters {
            version: 4,
            ..at(1000, 500, 1 << 20)
        },
        Counters {
            data_gen: 2,
            ..at(1000, 500, 1 << 20)
        },
        Counters {
            replica: 2,
            ..at(1000, 500, 1 << 20)
        },
    ] {
        assert!(m.due(&changed, KEYS, BYTES), "{changed:?}");
    }
    // Not answered (or failed): once enough was written.
    let unknown = Measure { found: None, ..m };
    assert!(!unknown.due(&at(1099, 500, 1 << 20), KEYS, BYTES));
    assert!(unknown.due(&at(1100, 500, 1 << 20), KEYS, BYTES));
    // An old measure is refreshed once enough was written.
    let old = Measure {
        when: std::time::Instant::now() - REMEASURE_EVERY,
        ..m
    };
    assert!(!old.due(&at(1099, 500, 1 << 20), KEYS, BYTES));
    assert!(old.due(&at(1100, 500, 1 << 20), KEYS, BYTES));
}

/// Settled ranges at these (id, writes/s).
fn settled(rates: &[(u64, f64)]) -> Vec<Rated> {
    rates
        .iter()
        .map(|&(id, rate)| Rated {
            id,
            rate,
            settled: true,
        })
        .collect()
}

#[test]
fn rates_are_smoothed_and_a_changed_range_waits_to_settle() {
    let t0 = std::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut s = Seen::next(None, 0, 1, t0);
    assert_eq!((s.rate, s.smoothed, s.settled()), (0.0, 0.0, false));
    // A burst of 1000 writes in one 500 ms check (2000/s), then none:
    // the smoothed rate takes a tenth of it, and falls back slowly.
    s = Seen::next(Some(s), 1000, 1, at(500));
    assert_eq!(s.rate, 2000.0);
    assert!((150.0..250.0).contains(&s.smoothed), "{s:?}");
    let after_burst = s.smoothed;
    s = Seen::next(Some(s), 1000, 1, at(1000));
    assert!(s.smoothed < after_burst && s.smoothed > 0.8 * after_burst);
    // A steady 400/s for 30 s: the smoothed rate gets there.
    let mut writes = 1000;
    for ms in (1500..=31_000).step_by(500) {
        writes += 200;
        s = Seen::next(Some(s), writes, 1, at(ms));
    }
    assert!((390.0..=410.0).contains(&s.smoothed), "{s:?}");
    assert!(s.settled());
    // New bounds (a split): this check's rate, and 5 s to settle again.
    s = Seen::next(Some(s), writes + 100, 2, at(31_500));
    assert_eq!((s.smoothed, s.settled()), (200.0, false));
    s = Seen::next(Some(s), writes + 200, 2, at(36_500));
    assert!(s.settled());
}

#[test]
fn an_unsettled_hottest_range_is_not_split_yet() {
    let mut rates = settled(&[(1, 900.0), (2, 10.0)]);
    rates[0].settled = false;
    assert_eq!(split_when_saturated(&rates, Some(3.0)), None);
}

#[test]
fn a_saturated_node_splits_only_a_range_that_carries_its_load() {
    // One hot range: split it.
    assert_eq!(
        split_when_saturated(&settled(&[(1, 900.0), (2, 10.0)]), None),
        Some(1)
    );
    // Several similar ranges: the hottest still carries a quarter.
    let four = [(1, 260.0), (2, 250.0), (3, 240.0), (4, 230.0)];
    assert_eq!(split_when_saturated(&settled(&four), None), Some(1));
    // Many similar ranges: none does, splitting would not help.
    let many: Vec<(u64, f64)> = (1..=8).map(|i| (i, 100.0 + i as f64)).collect();
    assert_eq!(split_when_saturated(&settled(&many), None), None);
    // Idle ranges never split, nor does a node leading nothing.
    assert_eq!(split_when_saturated(&settled(&[(1, 20.0)]), None), None);
    assert_eq!(split_when_saturated(&settled(&[]), None), None);
}

#[test]
fn a_range_smaller_than_half_a_fair_share_is_left_to_the_balancer() {
    // The node leads twice the mean (1960 against 980) in four ranges
    // of ~490: each is half the mean, still coarse enough to split.
    let four = [(1, 500.0), (2, 490.0), (3, 490.0), (4, 480.0)];
    assert_eq!(split_when_saturated(&settled(&four), Some(2.0)), Some(1));
    // At three times the mean each is two thirds of it: split.
    assert_eq!(split_when_saturated(&settled(&four), Some(3.0)), Some(1));
    // At 1.5 times the mean (mean ~1307) each is ~0.37 of it: moving
    // a leader away evens the node out, a split would not.
    assert_eq!(split_when_saturated(&settled(&four), Some(1.5)), None);
    // One range at three times the mean (the first split of a cluster).
    assert_eq!(
        split_when_saturated(&settled(&[(1, 900.0)]), Some(3.0)),
        Some(1)
    );
    // Nonsense from placement is ignored: the rule without it.
    assert_eq!(split_when_saturated(&settled(&four), Some(0.0)), Some(1));
    assert_eq!(
        split_when_saturated(&settled(&four), Some(f64::INFINITY)),
        Some(1)
    );
}

#[test]
fn a_saturated_node_splits_only_while_it_leads_more_than_its_share() {
    let share = LeadShare::default();
    assert!(share.splits_help(), "nothing heard yet: saturation decides");
    // One range on three nodes: its leader leads three times the mean.
    share.set(900.0, 300.0);
    assert!(share.splits_help());
    // Leaders even: another split would only add per-range work.
    share.set(310.0, 300.0);
    assert!(!share.splits_help());
    share.set(0.0, 300.0);
    assert!(!share.splits_help());
    // Nothing reported (a fresh placement), or nonsense: unknown again.
    share.set(0.0, 0.0);
    assert!(share.splits_help());
    share.set(f64::NAN, 300.0);
    assert!(share.splits_help());
    share.set(400.0, f64::INFINITY);
    assert!(share.splits_help());
}

#[test]
fn a_busy_raft_thread_saturates_a_node_with_cpus_to_spare() {
    // 8 CPUs, one of them the raft thread's, all of it.
    assert!(saturated_now(Some(0.13), Some(0.95)));
    assert!(saturated_now(Some(0.9), Some(0.2)));
    assert!(saturated_now(Some(0.9), None));
    assert!(saturated_now(None, Some(0.8)));
    assert!(!saturated_now(Some(0.5), Some(0.5)));
    assert!(!saturated_now(None, None));
}
