//! A shared rate limiter with a burst of one, as etcd's tool uses
//! (`rate.NewLimiter(rate.Limit(r), 1)`): request k of the run may start no earlier
//! than `max(arrival, previous slot + 1/r)`. Time spent waiting is not counted in the
//! request's latency (as in etcd, which reads the clock after `limit.Wait`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    interval: Duration,
    /// Earliest instant the next request may start.
    next: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// `per_sec` must be positive and finite.
    pub fn new(per_sec: f64) -> RateLimiter {
        assert!(
            per_sec > 0.0 && per_sec.is_finite(),
            "rate must be positive"
        );
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / per_sec),
            next: Mutex::new(None),
        }
    }

    /// `Some(limiter)` for a positive rate, `None` (unlimited) for 0.
    pub fn optional(per_sec: f64) -> Option<RateLimiter> {
        (per_sec > 0.0).then(|| RateLimiter::new(per_sec))
    }

    /// Reserves the next slot for a request arriving at `now`; returns when it may start.
    pub fn reserve(&self, now: Instant) -> Instant {
        let mut g = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let at = match *g {
            Some(n) if n > now => n,
            _ => now,
        };
        *g = Some(at + self.interval);
        at
    }

    /// Waits for the next slot.
    pub async fn acquire(&self) {
        let at = self.reserve(Instant::now());
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_interval() {
        let l = RateLimiter::new(100.0);
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..10).map(|_| l.reserve(t0)).collect();
        for (k, s) in slots.iter().enumerate() {
            assert_eq!(*s - t0, Duration::from_millis(10) * k as u32);
        }
    }

    #[test]
    fn no_burst_after_idle() {
        let l = RateLimiter::new(10.0);
        let t0 = Instant::now();
        assert_eq!(l.reserve(t0), t0);
        // Idle for 5 s: the next request starts at once, the one after waits 100 ms.
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(l.reserve(t1), t1);
        assert_eq!(l.reserve(t1), t1 + Duration::from_millis(100));
    }

    #[test]
    fn optional_zero_is_unlimited() {
        assert!(RateLimiter::optional(0.0).is_none());
        assert!(RateLimiter::optional(5.0).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_limiter_paces_concurrent_clients() {
        let l = std::sync::Arc::new(RateLimiter::new(200.0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    l.acquire().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // 40 requests at 200/s: the last may start at 39 × 5 ms = 195 ms.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
}
