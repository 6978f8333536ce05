//! Latency recording and the figures of a summary.
//!
//! Every request's latency goes into an HDR histogram (nanoseconds, 3 significant
//! digits: any figure read from it is within 0.1 % of the true value). Count, fastest,
//! slowest, average and standard deviation are kept exactly on the side (Welford), so
//! they are the figures etcd's `benchmark` prints for the same samples; percentiles and
//! the response-time histogram come from the HDR histogram with etcd's definitions:
//!
//! - percentile p of n sorted samples is the sample at 0-based rank
//!   `ceil(p·(n+1)/100) − 1`, clamped to `[0, n−1]`;
//! - the response-time histogram has 11 bounds: `fastest + i·(slowest−fastest)/10` for
//!   i in 0..10, then `slowest`; a sample counts in the first bucket whose bound is ≥ it.
//!
//! Each client records into its own `Recorder`; they are merged once at the end, so
//! recording costs no lock.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The percentiles of etcd's "Latency distribution".
pub const PCTLS: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Quantiles (in percent) kept in the JSON for latency CDF plots.
fn cdf_points() -> Vec<f64> {
    let mut v: Vec<f64> = (0..=100).map(|p| p as f64).collect();
    v.extend([99.5, 99.9, 99.95, 99.99]);
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// Mean and sum of squared deviations, mergeable (Chan et al.).
#[derive(Clone, Copy, Debug, Default)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    pub fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.mean += d * o.n as f64 / n as f64;
        self.m2 += o.m2 + d * d * self.n as f64 * o.n as f64 / n as f64;
        self.n = n;
    }

    /// Population standard deviation (as etcd's report).
    pub fn stddev(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

fn new_hist(sigfig: u8) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(sigfig).expect("valid sigfig");
    h.auto(true);
    h
}

/// One second of a run (by completion time).
#[derive(Clone)]
struct Second {
    requests: u64,
    errors: u64,
    moments: Moments,
    max_ns: u64,
    hist: Histogram<u64>,
}

impl Second {
    fn new() -> Second {
        Second {
            requests: 0,
            errors: 0,
            moments: Moments::default(),
            max_ns: 0,
            hist: new_hist(2),
        }
    }
}

/// Latencies and errors of one kind of request.
#[derive(Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    moments: Moments,
    min_ns: u64,
    max_ns: u64,
    errors: BTreeMap<String, u64>,
    series: Vec<Second>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            hist: new_hist(3),
            moments: Moments::default(),
            min_ns: u64::MAX,
            max_ns: 0,
            errors: BTreeMap::new(),
            series: Vec::new(),
        }
    }

    fn second(&mut self, at: Duration) -> &mut Second {
        let s = at.as_secs() as usize;
        while self.series.len() <= s {
            self.series.push(Second::new());
        }
        &mut self.series[s]
    }

    /// Records a successful request of latency `lat` that completed `at` after the
    /// start of the run.
    pub fn record(&mut self, lat: Duration, at: Duration) {
        let ns = (lat.as_nanos().min(u64::MAX as u128) as u64).max(1);
        self.hist.record(ns).expect("auto-resizing histogram");
        self.moments.add(ns as f64 / 1e9);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        let sec = self.second(at);
        sec.requests += 1;
        sec.moments.add(ns as f64 / 1e9);
        sec.max_ns = sec.max_ns.max(ns);
        let _ = sec.hist.record(ns);
    }

    /// Records a failed request.
    pub fn record_error(&mut self, err: &str, at: Duration) {
        *self.errors.entry(err.to_string()).or_default() += 1;
        self.second(at).errors += 1;
    }

    pub fn merge(&mut self, o: &Recorder) {
        self.hist.add(&o.hist).expect("auto-resizing histogram");
        self.moments.merge(&o.moments);
        self.min_ns = self.min_ns.min(o.min_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
        for (e, n) in &o.errors {
            *self.errors.entry(e.clone()).or_default() += n;
        }
        for (i, s) in o.series.iter().enumerate() {
            while self.series.len() <= i {
                self.series.push(Second::new());
            }
            let d = &mut self.series[i];
            d.requests += s.requests;
            d.errors += s.errors;
            d.moments.merge(&s.moments);
            d.max_ns = d.max_ns.max(s.max_ns);
            let _ = d.hist.add(&s.hist);
        }
    }

    /// Successful requests.
    pub fn count(&self) -> u64 {
        self.moments.n
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The sample at 0-based `rank` of the sorted samples, in nanoseconds (within the
    /// histogram's precision, clamped to the exact fastest/slowest).
    pub fn value_at_rank(&self, rank: u64) -> u64 {
        let n = self.count();
        if n == 0 {
            return 0;
        }
        let rank = rank.min(n - 1);
        let mut seen = 0u64;
        for v in self.hist.iter_recorded() {
            seen += v.count_at_value();
            if seen > rank {
                let x = self.hist.highest_equivalent(v.value_iterated_to());
                return x.clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// etcd's percentile: sample at rank `ceil(p·(n+1)/100) − 1`, in seconds.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let idx = (p * (n as f64 + 1.0) / 100.0).ceil() as i64 - 1;
        let idx = idx.clamp(0, n as i64 - 1) as u64;
        self.value_at_rank(idx) as f64 / 1e9
    }

    /// etcd's 11-bucket response time histogram: (upper bound in seconds, count).
    pub fn etcd_histogram(&self) -> Vec<(f64, u64)> {
        let n = self.count();
        if n == 0 {
            return Vec::new();
        }
        let (fast, slow) = (self.min_ns as f64 / 1e9, self.max_ns as f64 / 1e9);
        const BC: usize = 10;
        let bs = (slow - fast) / BC as f64;
        let mut bounds: Vec<f64> = (0..BC).map(|i| fast + bs * i as f64).collect();
        bounds.push(slow);
        let mut counts = vec![0u64; BC + 1];
        for v in self.hist.iter_recorded() {
            // The exact fastest/slowest when this HDR bucket holds them (etcd puts the
            // fastest sample in the first bucket, the slowest in the last).
            let raw = v.value_iterated_to();
            let ns = if self.hist.lowest_equivalent(raw) <= self.min_ns {
                self.min_ns
            } else if self.hist.highest_equivalent(raw) >= self.max_ns {
                self.max_ns
            } else {
                self.hist
                    .median_equivalent(raw)
                    .clamp(self.min_ns, self.max_ns)
            };
            let x = ns as f64 / 1e9;
            counts[bucket_of(&bounds, x)] += v.count_at_value();
        }
        bounds.into_iter().zip(counts).collect()
    }

    /// Summarises the recorded requests of a phase that lasted `wall`.
    pub fn summary(&self, name: &str, wall: Duration, expected: u64) -> Summary {
        let n = self.count();
        let total_secs = wall.as_secs_f64();
        let percentiles = PCTLS
            .iter()
            .map(|&p| Percentile {
                percentile: p,
                secs: self.percentile(p),
            })
            .collect();
        let cdf = if n == 0 {
            Vec::new()
        } else {
            cdf_points()
                .into_iter()
                .map(|q| {
                    let rank = ((q / 100.0) * n as f64).ceil() as u64;
                    Percentile {
                        percentile: q,
                        secs: self.value_at_rank(rank.saturating_sub(1)) as f64 / 1e9,
                    }
                })
                .collect()
        };
        let series = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| SecondSummary {
                second: i as u64,
                requests: s.requests,
                errors: s.errors,
                average_ms: s.moments.mean * 1e3,
                p50_ms: q_ms(&s.hist, 50.0),
                p90_ms: q_ms(&s.hist, 90.0),
                p99_ms: q_ms(&s.hist, 99.0),
                max_ms: s.max_ns as f64 / 1e6,
            })
            .collect();
        Summary {
            name: name.to_string(),
            expected_requests: expected,
            requests: n,
            errors: self.error_count(),
            error_distribution: self.errors.clone(),
            total_secs,
            slowest_secs: if n == 0 {
                0.0
            } else {
                self.max_ns as f64 / 1e9
            },
            fastest_secs: if n == 0 {
                0.0
            } else {
                self.min_ns as f64 / 1e9
            },
            average_secs: self.moments.mean,
            stddev_secs: self.moments.stddev(),
            requests_per_sec: if total_secs > 0.0 {
                n as f64 / total_secs
            } else {
                0.0
            },
            histogram: self
                .etcd_histogram()
                .into_iter()
                .map(|(le_secs, count)| Bucket { le_secs, count })
                .collect(),
            percentiles,
            cdf,
            series,
        }
    }
}

fn q_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q / 100.0) as f64 / 1e6
    }
}

/// Index of the first bound ≥ x (the last bucket if none).
pub fn bucket_of(bounds: &[f64], x: f64) -> usize {
    bounds
        .iter()
        .position(|&b| x <= b)
        .unwrap_or(bounds.len() - 1)
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Percentile {
    pub percentile: f64,
    pub secs: f64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Bucket {
    pub le_secs: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SecondSummary {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub average_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Every figure of one phase of a run (the JSON's `results[i]`).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Summary {
    pub name: String,
    /// How many requests the workload asked for (successes + errors should match).
    pub expected_requests: u64,
    /// Successful requests (the ones the latency figures describe).
    pub requests: u64,
    pub errors: u64,
    pub error_distribution: BTreeMap<String, u64>,
    pub total_secs: f64,
    pub slowest_secs: f64,
    pub fastest_secs: f64,
    pub average_secs: f64,
    pub stddev_secs: f64,
    pub requests_per_sec: f64,
    pub histogram: Vec<Bucket>,
    pub percentiles: Vec<Percentile>,
    /// Latency at quantiles 0..100 % (plus 99.5, 99.9, 99.95, 99.99), for CDF plots.
    pub cdf: Vec<Percentile>,
    /// Per second of the run, by completion time.
    pub series: Vec<SecondSummary>,
}

impl Summary {
    pub fn pctl(&self, p: f64) -> f64 {
        self.percentiles
            .iter()
            .find(|x| (x.percentile - p).abs() < 1e-9)
            .map(|x| x.secs)
            .unwrap_or(0.0)
    }

    /// etcd `benchmark`'s text report (precision `%4.4f`).
    pub fn etcd_text(&self) -> String {
        let mut s = String::new();
        if self.requests > 0 {
            s += "\nSummary:\n";
            s += &format!("  Total:\t{:.4} secs.\n", self.total_secs);
            s += &format!("  Slowest:\t{:.4} secs.\n", self.slowest_secs);
            s += &format!("  Fastest:\t{:.4} secs.\n", self.fastest_secs);
            s += &format!("  Average:\t{:.4} secs.\n", self.average_secs);
            s += &format!("  Stddev:\t{:.4} secs.\n", self.stddev_secs);
            s += &format!("  Requests/sec:\t{:.4}\n", self.requests_per_sec);
            s += "\nResponse time histogram:\n";
            let max = self.histogram.iter().map(|b| b.count).max().unwrap_or(0);
            for b in &self.histogram {
                let bar = (b.count * 40).checked_div(max).unwrap_or(0);
                s += &format!(
                    "  {:.4} [{}]\t|{}\n",
                    b.le_secs,
                    b.count,
                    "∎".repeat(bar as usize)
                );
            }
            s += "\nLatency distribution:\n";
            for p in &self.percentiles {
                if p.secs > 0.0 {
                    s += &format!("  {}% in {:.4} secs.\n", p.percentile, p.secs);
                }
            }
        }
        if !self.error_distribution.is_empty() {
            s += "\nError distribution:\n";
            for (e, n) in &self.error_distribution {
                s += &format!("  [{n}]\t{e}\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1e3)
    }

    /// etcd's definitions on an exact sorted vector.
    fn exact_pctl(sorted: &[f64], p: f64) -> f64 {
        let n = sorted.len();
        let idx = ((p * (n as f64 + 1.0) / 100.0).ceil() as i64 - 1).clamp(0, n as i64 - 1);
        sorted[idx as usize]
    }

    fn sample(n: usize, seed: u64) -> Vec<f64> {
        // Deterministic, skewed latencies in seconds: 50 µs .. ~2 s.
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x % 1_000_000) as f64 / 1_000_000.0;
                50e-6 * (1.0 + (u * 10.0).exp())
            })
            .collect()
    }

    fn record_all(lats: &[f64]) -> Recorder {
        let mut r = Recorder::new();
        for (i, &l) in lats.iter().enumerate() {
            r.record(Duration::from_secs_f64(l), Duration::from_millis(i as u64));
        }
        r
    }

    #[test]
    fn exact_moments_and_extremes() {
        let lats = sample(10_000, 7);
        let r = record_all(&lats);
        let s = r.summary("t", Duration::from_secs(2), 10_000);
        let n = lats.len() as f64;
        let mean = lats.iter().sum::<f64>() / n;
        let sd = (lats.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert_eq!(s.requests, 10_000);
        assert!((s.average_secs - mean).abs() < 1e-9 * mean.max(1.0));
        assert!(
            (s.stddev_secs - sd).abs() / sd < 1e-6,
            "{} vs {sd}",
            s.stddev_secs
        );
        let min = lats.iter().cloned().fold(f64::MAX, f64::min);
        let max = lats.iter().cloned().fold(0.0, f64::max);
        assert!((s.fastest_secs - min).abs() < 2e-9);
        assert!((s.slowest_secs - max).abs() < 2e-9);
        assert!((s.requests_per_sec - 5000.0).abs() < 1e-6);
    }

    #[test]
    fn percentiles_match_etcd_definition_within_hdr_precision() {
        for (n, seed) in [(1usize, 1u64), (2, 2), (7, 3), (100, 4), (12_345, 5)] {
            let mut lats = sample(n, seed);
            let r = record_all(&lats);
            lats.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for &p in &PCTLS {
                let want = exact_pctl(&lats, p);
                let got = r.percentile(p);
                assert!(
                    (got - want).abs() <= want * 0.001 + 1e-9,
                    "n={n} p={p}: got {got} want {want}"
                );
            }
            let s = r.summary("t", Duration::from_secs(1), n as u64);
            for w in s.percentiles.windows(2) {
                assert!(w[0].secs <= w[1].secs);
            }
            for w in s.cdf.windows(2) {
                assert!(w[0].secs <= w[1].secs);
            }
            assert!(s.percentiles.last().unwrap().secs <= s.slowest_secs);
            assert!(s.percentiles[0].secs >= s.fastest_secs);
        }
    }

    #[test]
    fn histogram_buckets_like_etcd() {
        // 1..=10 ms plus one at 100 ms: bounds 1, 10.9, 20.8, ..., 100 ms.
        let mut r = Recorder::new();
        for i in 1..=10 {
            r.record(ms(i as f64), Duration::ZERO);
        }
        r.record(ms(100.0), Duration::ZERO);
        let h = r.etcd_histogram();
        assert_eq!(h.len(), 11);
        assert!((h[0].0 - 0.001).abs() < 1e-12);
        assert!((h[10].0 - 0.1).abs() < 1e-12);
        let counts: Vec<u64> = h.iter().map(|b| b.1).collect();
        assert_eq!(counts, vec![1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        // Against a brute-force etcd histogram on a larger sample.
        let mut lats = sample(5000, 11);
        let r = record_all(&lats);
        lats.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let h = r.etcd_histogram();
        let bounds: Vec<f64> = h.iter().map(|b| b.0).collect();
        let mut want = vec![0u64; 11];
        for &l in &lats {
            want[bucket_of(&bounds, l)] += 1;
        }
        let got: Vec<u64> = h.iter().map(|b| b.1).collect();
        assert_eq!(got.iter().sum::<u64>(), 5000);
        // HDR rounding may move a sample lying within 0.1 % of a bound.
        let moved: u64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .sum::<u64>()
            / 2;
        assert!(moved <= 5, "got {got:?} want {want:?}");
    }

    #[test]
    fn single_sample_and_empty() {
        let mut r = Recorder::new();
        assert_eq!(r.percentile(50.0), 0.0);
        assert!(r.etcd_histogram().is_empty());
        let s = r.summary("e", Duration::from_secs(1), 0);
        assert_eq!(s.requests, 0);
        assert_eq!(s.etcd_text(), "");
        r.record(ms(3.0), Duration::ZERO);
        for p in PCTLS {
            assert!((r.percentile(p) - 0.003).abs() < 1e-9);
        }
        let h = r.etcd_histogram();
        assert_eq!(h.iter().map(|b| b.1).sum::<u64>(), 1);
        assert_eq!(h[0].1, 1);
    }

    #[test]
    fn merge_equals_recording_together() {
        let lats = sample(3000, 99);
        let all = record_all(&lats);
        let mut a = record_all(&lats[..1000]);
        let b = record_all(&lats[1000..]);
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        assert!((a.moments.mean - all.moments.mean).abs() < 1e-12);
        assert!((a.moments.stddev() - all.moments.stddev()).abs() < 1e-9);
        for p in PCTLS {
            assert_eq!(a.percentile(p), all.percentile(p));
        }
    }

    #[test]
    fn errors_and_series() {
        let mut r = Recorder::new();
        r.record(ms(1.0), Duration::from_millis(100));
        r.record(ms(2.0), Duration::from_millis(1500));
        r.record(ms(4.0), Duration::from_millis(1600));
        r.record_error("boom", Duration::from_millis(2500));
        r.record_error("boom", Duration::from_millis(2600));
        let s = r.summary("x", Duration::from_secs(3), 5);
        assert_eq!(s.requests, 3);
        assert_eq!(s.errors, 2);
        assert_eq!(s.error_distribution["boom"], 2);
        let reqs: Vec<u64> = s.series.iter().map(|x| x.requests).collect();
        assert_eq!(reqs, vec![1, 2, 0]);
        assert_eq!(s.series[2].errors, 2);
        assert!((s.series[1].average_ms - 3.0).abs() < 1e-9);
        assert!((s.series[1].max_ms - 4.0).abs() < 1e-9);
        let text = s.etcd_text();
        assert!(text.contains("Requests/sec:\t1.0000"), "{text}");
        assert!(text.contains("Error distribution:\n  [2]\tboom"), "{text}");
        assert!(text.contains("  99.9% in "), "{text}");
    }
}
