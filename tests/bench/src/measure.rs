//! What every benchmark measures with: the monotonic clock the stamps use, the stamp
//! file, percentiles, and a process's CPU time and memory from /proc.

use anyhow::{anyhow, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds: the clock `pop-bench-stamp` writes.
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// One line of the stamp file: a service process that started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub pid: u32,
    pub at_ns: u128,
}

/// The file every service process appends its start to.
pub struct Stamps {
    pub path: PathBuf,
}

impl Stamps {
    pub fn new(dir: &Path) -> Stamps {
        Stamps {
            path: dir.join("stamps"),
        }
    }

    /// Every start so far, per service name, in order.
    pub fn read(&self) -> Result<BTreeMap<String, Vec<Stamp>>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut starts: BTreeMap<String, Vec<Stamp>> = BTreeMap::new();
        // A line being written may be incomplete: only whole lines count.
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut parts = line.split(' ');
            let (Some(name), Some(pid), Some(at)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(pid), Ok(at_ns)) = (pid.parse(), at.parse()) else {
                continue;
            };
            starts
                .entry(name.to_string())
                .or_default()
                .push(Stamp { pid, at_ns });
        }
        Ok(starts)
    }

    /// The latest start of `name`.
    pub fn latest(&self, name: &str) -> Result<Option<Stamp>> {
        Ok(self.read()?.get(name).and_then(|v| v.last().copied()))
    }

    /// Waits for a start of `name` by a process other than `old`.
    pub fn wait_new(&self, name: &str, old: Option<u32>, limit: Duration) -> Result<Stamp> {
        wait(&format!("a new process of {name}"), limit, || {
            Ok(self.latest(name)?.filter(|s| Some(s.pid) != old))
        })
    }

    /// Waits until `count` distinct services have started at least once; returns the
    /// latest first start among them.
    pub fn wait_all(&self, count: usize, limit: Duration) -> Result<u128> {
        wait(&format!("{count} services started"), limit, || {
            let starts = self.read()?;
            Ok((starts.len() >= count).then(|| {
                starts
                    .values()
                    .filter_map(|v| v.first().map(|s| s.at_ns))
                    .max()
                    .unwrap_or(0)
            }))
        })
    }
}

/// Kills every process that stamped into `stamps` and still runs the stamp program
/// (what a benchmark leaves behind when a supervisor is gone).
pub fn kill_stamped(stamps: &Stamps) {
    let Ok(starts) = stamps.read() else { return };
    for stamp in starts.values().flatten() {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", stamp.pid)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("pop-bench-stamp") {
            // SAFETY: kill with a pid and a signal number.
            unsafe { libc::kill(stamp.pid as i32, libc::SIGKILL) };
        }
    }
}

/// Polls `cond` every millisecond until it gives a value, or fails after `limit`.
pub fn wait<T>(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = cond()? {
            return Ok(v);
        }
        if Instant::now() > end {
            return Err(anyhow!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Latencies in milliseconds, summarised.
#[derive(Debug, Clone)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples_ms: &[f64]) -> Option<Summary> {
        if samples_ms.is_empty() {
            return None;
        }
        let mut s = samples_ms.to_vec();
        s.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let rank = |q: f64| {
            let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
            s[i - 1]
        };
        Some(Summary {
            count: s.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: s[s.len() - 1],
        })
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} / {} / {} / {} ms (n={})",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// A millisecond figure with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn ns_to_ms(ns: u128) -> f64 {
    ns as f64 / 1e6
}

/// CPU time (user + system, all threads) a process has used, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (in parentheses): utime and stime are 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf with a constant name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Resident memory of a process in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("/proc/{pid}/status has no VmRSS"))?;
    Ok(kb * 1024)
}

/// What `pid` used over `window` while nothing was asked of it (run time and context
/// switches of every thread, from the scheduler; the tick figure beside it), and its RSS
/// at the end.
pub fn idle_usage(pid: u32, window: Duration) -> Result<(crate::sched::Usage, u64)> {
    let before = crate::sched::sample(pid)?;
    std::thread::sleep(window);
    let after = crate::sched::sample(pid)?;
    Ok((
        crate::sched::Usage::between(&before, &after),
        rss_bytes(pid)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&samples).expect("samples");
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let few = Summary::of(&[3.0, 1.0, 2.0]).expect("samples");
        assert_eq!((few.p50, few.p99), (2.0, 3.0));
    }

    #[test]
    fn stamps_skip_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stamps = Stamps::new(dir.path());
        std::fs::write(&stamps.path, "a 10 5\nb 11 7\na 12 9\nb 1").expect("write");
        let read = stamps.read().expect("read");
        assert_eq!(read["a"].len(), 2);
        assert_eq!(read["b"], vec![Stamp { pid: 11, at_ns: 7 }]);
    }
}
