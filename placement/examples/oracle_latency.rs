//! Oracle latency as a node or router sees it: sequential `Alloc` calls
//! through the leader-following placement client, p50/p90/p99 in µs.
//!
//! `cargo run -p strata-placement --release --example oracle_latency -- ADDR[,ADDR...] [CALLS]`

use std::time::{Duration, Instant};

use strata_proto::strata::AllocRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addrs = args
        .next()
        .expect("usage: oracle_latency ADDR[,ADDR...] [CALLS]");
    let calls: usize = args.next().map_or(5000, |n| n.parse().expect("CALLS"));
    let mut c = strata_proto::oracle::placement_client(&addrs).expect("address");
    for count in [1u64, 0] {
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls.min(1_000_000) {
            let t = Instant::now();
            c.alloc(AllocRequest { count }).await.expect("alloc");
            lat.push(t.elapsed());
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "alloc({count}) x{}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs",
            lat.len(),
            us(p(0.5)),
            us(p(0.9)),
            us(p(0.99))
        );
    }
}
