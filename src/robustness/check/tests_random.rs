//! Property-style tests: random correct sequential histories from the reference
//! builder pass, and one mutated response breaks them; and the checker's speed on a
//! history the size of a long run.

use super::check;
use super::testkit::{cmp, del_req, put_req, range_req, Hist};
use super::tests::{assert_clean, kinds};
use crate::robustness::history::{
    CompareResult as R, CompareTarget as T, History, RangeReq, Request, ResponseBody, TxnOp,
};

/// A small deterministic generator (no external crate).
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn random_history(seed: u64) -> History {
    let mut g = Rng(seed * 2654435761 + 1);
    let mut b = Hist::new();
    b.watch("", "\0").prev_kv = true;
    b.watch("k1", "k3");
    let mut lease = 0;
    for i in 0..200 {
        let c = g.next(4) as u32;
        let k = format!("k{}", g.next(5));
        let v = format!("v{i}");
        match g.next(10) {
            0 | 1 => drop(b.put(c, &k, &v)),
            2 => drop(b.del(c, &k, if g.next(2) == 0 { "" } else { "k3" })),
            3 => drop(b.get(c, &k)),
            4 => drop(b.read(
                c,
                RangeReq {
                    limit: g.next(3) as i64,
                    ..range_req("", "\0")
                },
            )),
            5 => drop(b.txn(
                c,
                vec![cmp(&k, T::Version(g.next(3) as i64), R::Equal)],
                vec![
                    TxnOp::Put(put_req(&k, &v)),
                    TxnOp::Range(range_req("k0", "k9")),
                ],
                vec![
                    TxnOp::Delete(del_req(&k, "")),
                    TxnOp::Range(range_req(&k, "")),
                ],
            )),
            6 => drop(b.unknown(c, Request::Put(put_req(&k, &v)), g.next(2) == 0)),
            7 if lease == 0 => lease = b.grant(c),
            7 => drop(b.put_lease(c, &k, &v, lease)),
            8 if lease != 0 => {
                b.revoke(c, lease);
                lease = 0;
            }
            _ => {
                let at = if b.rev() > 0 {
                    1 + g.next(b.rev() as u64) as i64
                } else {
                    0
                };
                b.read(
                    c,
                    RangeReq {
                        revision: at,
                        ..range_req("k0", "k9")
                    },
                );
            }
        }
    }
    b.final_read();
    b.build()
}

#[test]
fn random_correct_histories_pass_and_mutations_fail() {
    for seed in 0..40 {
        let h = random_history(seed);
        let v = check(&h);
        assert!(v.is_empty(), "seed {seed}: {}", super::summary(&v));
        // A read showing a value it never had.
        let mut m = h.clone();
        let hit = m
            .ops
            .iter_mut()
            .find_map(|op| match op.resp.as_mut().map(|r| &mut r.body) {
                Ok(ResponseBody::Range(r)) if !r.kvs.is_empty() => Some(r),
                _ => None,
            });
        if let Some(r) = hit {
            r.kvs[0].version += 1;
            assert!(!check(&m).is_empty(), "seed {seed}: mutated read passed");
        }
        // A watcher missing one response.
        let mut m = h.clone();
        let st = &mut m.watches[0].streams[0];
        if st.responses.len() > 3 {
            st.responses.remove(2);
            assert!(
                kinds(&m).contains(&"watch.reliable".to_string()),
                "seed {seed}"
            );
        }
    }
}

/// A big history: `n` ops over 2000 keys, one watcher on everything.
fn big_history(n: usize) -> History {
    let mut g = Rng(12345);
    let mut b = Hist::new();
    b.lean = true;
    b.watch("", "\0").prev_kv = true;
    for i in 0..n {
        let c = g.next(50) as u32;
        let k = format!("k/{:04}", g.next(2000));
        match g.next(10) {
            0..=3 => drop(b.put(c, &k, &format!("v{i}"))),
            4 => drop(b.del(c, &k, "")),
            5 => drop(b.unknown(
                c,
                Request::Put(put_req(&k, &format!("v{i}"))),
                g.next(2) == 0,
            )),
            6 => drop(b.read(
                c,
                RangeReq {
                    limit: 10,
                    ..range_req("k/01", "k/02")
                },
            )),
            _ => drop(b.get(c, &k)),
        }
    }
    b.final_read();
    b.build()
}

#[test]
fn big_history_is_fast() {
    let h = big_history(20_000);
    let t = std::time::Instant::now();
    assert_clean(&h);
    eprintln!("checked {} ops in {:?}", h.ops.len(), t.elapsed());
}

/// A history the size of a long run checks clean (and in about a second).
#[test]
fn big_history_100k() {
    let h = big_history(100_000);
    let t = std::time::Instant::now();
    assert_clean(&h);
    eprintln!("checked {} ops in {:?}", h.ops.len(), t.elapsed());
}
