//! How much of the CPU it may use this process is using, and how much of
//! one CPU the raft thread is: the signals the split checker reads to tell a
//! saturated leader from a merely busy one.
//!
//! The limit is the process's cgroup CPU quota (cgroup v2 `cpu.max`, or v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`), re-read at every sample (a
//! process may be moved into a cgroup after it started), else the number of
//! CPUs. Usage is `utime + stime` from `/proc/self/stat`. Linux only; where
//! either cannot be read, [`CpuGauge::sample`] says nothing (no load split by
//! saturation, the fixed `--range-split-write-rate` still applies).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Clock ticks per second of `/proc/self/stat` (`USER_HZ`, 100 on every
/// Linux ABI Strata builds for).
const USER_HZ: f64 = 100.0;

#[derive(Default)]
pub struct CpuGauge {
    last: Option<(Instant, f64)>,
}

impl CpuGauge {
    /// The share of its CPU limit this process used since the last call
    /// (1.0 = all of it), or `None` on the first call or when unreadable.
    pub fn sample(&mut self) -> Option<f64> {
        let used = process_cpu_secs()?;
        share_since(&mut self.last, Instant::now(), used, cpu_limit())
    }
}

/// The CPU seconds `used` by `now` since the sample in `last` (which `now`
/// replaces), as a share of `limit` CPUs; `None` on the first sample.
fn share_since(
    last: &mut Option<(Instant, f64)>,
    now: Instant,
    used: f64,
    limit: f64,
) -> Option<f64> {
    let (then, used_then) = last.replace((now, used))?;
    let wall = now.saturating_duration_since(then).as_secs_f64();
    (wall > 0.0 && limit > 0.0).then(|| (used - used_then).max(0.0) / wall / limit)
}

/// A thread's CPU seconds as it last published them (`/proc/thread-self`
/// names the reading thread only, so the thread measured publishes).
#[derive(Clone, Debug, Default)]
pub struct ThreadCpu(Arc<AtomicU64>);

impl ThreadCpu {
    /// Called on the thread measured: publishes its CPU time so far.
    pub fn publish(&self) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok();
        if let Some(secs) = stat.as_deref().and_then(parse_stat_cpu) {
            self.0.store(secs.to_bits(), Ordering::Relaxed);
        }
    }

    fn secs(&self) -> Option<f64> {
        let bits = self.0.load(Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }
}

/// How much of one CPU a thread used between samples: a node whose raft
/// thread is busy all the time is saturated however many CPUs it has (one
/// thread runs every range's raft work).
#[derive(Debug)]
pub struct ThreadGauge {
    cpu: ThreadCpu,
    last: Option<(Instant, f64)>,
}

impl ThreadGauge {
    pub fn new(cpu: ThreadCpu) -> Self {
        Self { cpu, last: None }
    }

    /// The share of one CPU the thread used since the last call (1.0 = all
    /// of it), or `None` on the first call or before it published.
    pub fn sample(&mut self) -> Option<f64> {
        self.sample_at(Instant::now())
    }

    fn sample_at(&mut self, now: Instant) -> Option<f64> {
        let used = self.cpu.secs()?;
        share_since(&mut self.last, now, used, 1.0)
    }
}

/// CPU seconds this process has used (user + system).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_cpu(&stat)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in seconds.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn parse_stat_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace().skip(11); // field 3 is the first here
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / USER_HZ)
}

/// CPUs this process may use: its cgroup's quota, else every CPU.
pub fn cpu_limit() -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    quota(&cgroups, Path::new("/sys/fs/cgroup")).map_or(cpus, |q| q.min(cpus))
}

/// The CPU quota (in CPUs) of the cgroup a `/proc/self/cgroup` text names,
/// under the cgroup filesystem mounted at `root`.
fn quota(cgroups: &str, root: &Path) -> Option<f64> {
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: "0::/path", quota in cpu.max as "QUOTA PERIOD" or "max PERIOD".
            let text = std::fs::read_to_string(root.join(rel).join("cpu.max")).unwrap_or_default();
            let mut it = text.split_ascii_whitespace();
            if let Some(r) = it.next().zip(it.next()).and_then(|(q, p)| ratio(q, p)) {
                return Some(r);
            }
            continue; // no quota here; a v1 line may still have one
        }
        if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                let dir: PathBuf = root.join(mount).join(rel);
                let q = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"));
                let p = std::fs::read_to_string(dir.join("cpu.cfs_period_us"));
                if let (Ok(q), Ok(p)) = (q, p) {
                    return ratio(q.trim(), p.trim());
                }
            }
        }
    }
    None
}

/// `quota / period`, or `None` for no quota ("max", or v1's -1).
fn ratio(quota: &str, period: &str) -> Option<f64> {
    let q: f64 = quota.parse().ok().filter(|q: &f64| *q > 0.0)?;
    let p: f64 = period.parse().ok().filter(|p: &f64| *p > 0.0)?;
    Some(q / p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
    }

    #[test]
    fn quotas_from_cgroup_v1_and_v2() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("bench/node-1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.max"), "15000 100000\n").unwrap();
        assert_eq!(quota("0::/bench/node-1\n", root.path()), Some(0.15));
        std::fs::write(v2.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(quota("0::/bench/node-1\n", root.path()), None);

        let v1 = root.path().join("cpu,cpuacct/bench/node-2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpu.cfs_quota_us"), "30000\n").unwrap();
        std::fs::write(v1.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let text = "12:memory:/x\n4:cpu,cpuacct:/bench/node-2\n";
        assert_eq!(quota(text, root.path()), Some(0.3));
        std::fs::write(v1.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(quota(text, root.path()), None);
        assert_eq!(quota("", root.path()), None);
    }

    #[test]
    fn a_threads_published_cpu_time_is_a_share_of_one_cpu() {
        let cpu = ThreadCpu::default();
        let mut g = ThreadGauge::new(cpu.clone());
        assert_eq!(g.sample(), None, "nothing published");
        let t = Instant::now();
        cpu.0.store(2.0f64.to_bits(), Ordering::Relaxed);
        assert_eq!(g.sample_at(t), None, "first sample");
        cpu.0.store(2.4f64.to_bits(), Ordering::Relaxed);
        let share = g
            .sample_at(t + std::time::Duration::from_millis(500))
            .unwrap();
        assert!((share - 0.8).abs() < 1e-9, "{share}");
        // A published time that went backwards (it never does) reads as idle.
        cpu.0.store(1.0f64.to_bits(), Ordering::Relaxed);
        assert_eq!(
            g.sample_at(t + std::time::Duration::from_secs(1)),
            Some(0.0)
        );
        assert_eq!(g.sample_at(t + std::time::Duration::from_secs(1)), None);
        // A real thread: what it publishes grows as it spins (bounded in
        // time: a loaded machine may give it little CPU), and is its own
        // time, within the process's.
        let cpu = ThreadCpu::default();
        let c = cpu.clone();
        let grew = std::thread::spawn(move || {
            c.publish();
            let Some(start) = c.secs() else {
                return None; // no /proc here
            };
            let began = Instant::now();
            let mut x = 0u64;
            while began.elapsed().as_secs() < 20 {
                for _ in 0..100_000 {
                    x = x.wrapping_mul(31).wrapping_add(7);
                }
                c.publish();
                if c.secs().is_some_and(|s| s >= start + 0.05) {
                    break;
                }
            }
            std::hint::black_box(x);
            Some(c.secs().unwrap_or(0.0) - start)
        })
        .join()
        .unwrap();
        if let Some(grew) = grew {
            assert!(grew >= 0.05, "a spinning thread published {grew} s more");
            let process = process_cpu_secs().unwrap();
            assert!(
                cpu.secs().unwrap() <= process,
                "{:?} > {process}",
                cpu.secs()
            );
        }
    }

    #[test]
    fn a_busy_loop_shows_as_usage() {
        let mut g = CpuGauge::default();
        if g.sample().is_none() && process_cpu_secs().is_none() {
            return; // no /proc here
        }
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed().as_millis() < 300 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = g.sample().expect("second sample");
        // One thread spinning: at least a sliver of the limit, whatever the
        // machine's other load (a figure, not a timing assertion).
        assert!(used > 0.0, "{used}");
    }
}
