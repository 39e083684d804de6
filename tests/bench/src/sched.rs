//! A process's CPU use counted per thread by the scheduler: run time in nanoseconds
//! (`/proc/<pid>/task/<tid>/schedstat`, first field) and context switches (voluntary +
//! involuntary, from each thread's `status`). Clock ticks (`utime`/`stime`) are sampled
//! on the timer tick and over-charge a process whose few wake-ups line up with it; the
//! scheduler's figures are exact, but a thread that exits takes its counters with it,
//! so a comparison of two samples says which threads came and went.

use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// One thread's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCounters {
    pub name: String,
    pub run_ns: u64,
    pub switches: u64,
}

/// Every thread of a process at one moment, and the process's tick-based CPU time.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub ticks: u64,
    pub threads: BTreeMap<u32, ThreadCounters>,
}

/// Run time on a CPU in nanoseconds: the first field of a `schedstat` file.
pub fn parse_schedstat(text: &str) -> Result<u64> {
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| anyhow!("schedstat {text:?}: no run time"))
}

/// Voluntary plus involuntary context switches, from a `status` file.
pub fn parse_switches(status: &str) -> Result<u64> {
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("status has no {key}"))
    };
    Ok(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// The counters of every thread of `pid`. A thread that exits while being read is left
/// out (it is gone either way).
pub fn sample(pid: u32) -> Result<Sample> {
    let ticks = crate::measure::cpu_ticks(pid)?;
    let dir = format!("/proc/{pid}/task");
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let read = |file: &str| std::fs::read_to_string(entry.path().join(file));
        let (Ok(schedstat), Ok(status), Ok(comm)) =
            (read("schedstat"), read("status"), read("comm"))
        else {
            continue;
        };
        let counters = ThreadCounters {
            name: comm.trim().to_string(),
            run_ns: parse_schedstat(&schedstat).with_context(|| format!("{dir}/{tid}"))?,
            switches: parse_switches(&status).with_context(|| format!("{dir}/{tid}"))?,
        };
        threads.insert(tid, counters);
    }
    Ok(Sample {
        at: Instant::now(),
        ticks,
        threads,
    })
}

impl Sample {
    /// Run time of every thread alive at the sample, in nanoseconds.
    pub fn run_ns(&self) -> u64 {
        self.threads.values().map(|t| t.run_ns).sum()
    }
}

/// What a process used between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub seconds: f64,
    /// Run time of the threads alive at the end (a thread born in between counts whole).
    pub run_ns: u64,
    pub switches: u64,
    /// utime + stime in clock ticks, the old measure (it keeps exited threads' time).
    pub ticks: u64,
    /// Per thread, by id: name, run time, switches.
    pub threads: BTreeMap<u32, ThreadCounters>,
    /// Threads that appeared or went in between: the run time of one that went is lost.
    pub started: BTreeSet<u32>,
    pub exited: BTreeSet<u32>,
}

impl Usage {
    pub fn between(before: &Sample, after: &Sample) -> Usage {
        let mut threads = BTreeMap::new();
        for (tid, now) in &after.threads {
            let (run0, sw0) = before
                .threads
                .get(tid)
                .map_or((0, 0), |b| (b.run_ns, b.switches));
            threads.insert(
                *tid,
                ThreadCounters {
                    name: now.name.clone(),
                    run_ns: now.run_ns.saturating_sub(run0),
                    switches: now.switches.saturating_sub(sw0),
                },
            );
        }
        let ids = |s: &Sample| s.threads.keys().copied().collect::<BTreeSet<u32>>();
        let (old, new) = (ids(before), ids(after));
        Usage {
            seconds: after.at.duration_since(before.at).as_secs_f64(),
            run_ns: threads.values().map(|t| t.run_ns).sum(),
            switches: threads.values().map(|t| t.switches).sum(),
            ticks: after.ticks.saturating_sub(before.ticks),
            threads,
            started: new.difference(&old).copied().collect(),
            exited: old.difference(&new).copied().collect(),
        }
    }

    /// Run time as a share of one CPU, in percent.
    pub fn cpu_percent(&self) -> f64 {
        self.run_ns as f64 / 1e9 / self.seconds * 100.0
    }

    /// The clock-tick figure of the same window, in percent.
    pub fn tick_percent(&self) -> f64 {
        self.ticks as f64 / crate::measure::ticks_per_second() as f64 / self.seconds * 100.0
    }

    pub fn switches_per_second(&self) -> f64 {
        self.switches as f64 / self.seconds
    }

    /// Empty when the same threads lived through the window, else e.g. "threads +1 -2".
    pub fn thread_change(&self) -> String {
        if self.started.is_empty() && self.exited.is_empty() {
            String::new()
        } else {
            format!("threads +{} -{}", self.started.len(), self.exited.len())
        }
    }

    /// One line per thread, busiest first: name, run time, switches per second.
    pub fn per_thread(&self) -> Vec<String> {
        let mut rows: Vec<(&u32, &ThreadCounters)> = self.threads.iter().collect();
        rows.sort_by_key(|(_, t)| std::cmp::Reverse(t.run_ns));
        rows.iter()
            .map(|(tid, t)| {
                format!(
                    "{tid:>8} {:<16} {:>9.2} ms {:>7.2} switches/s",
                    t.name,
                    t.run_ns as f64 / 1e6,
                    t.switches as f64 / self.seconds
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn schedstat_gives_the_first_field() {
        assert_eq!(
            parse_schedstat("10512345 3747278 11\n").expect("parse"),
            10_512_345
        );
        assert!(parse_schedstat("").is_err());
        assert!(parse_schedstat("x 1 2").is_err());
    }

    #[test]
    fn switches_add_voluntary_and_involuntary() {
        let status = "Name:\ttokio-runtime-w\nState:\tS (sleeping)\n\
                      voluntary_ctxt_switches:\t68\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(status).expect("parse"), 71);
        assert!(parse_switches("voluntary_ctxt_switches:\t68\n").is_err());
    }

    fn thread(name: &str, run_ns: u64, switches: u64) -> ThreadCounters {
        ThreadCounters {
            name: name.into(),
            run_ns,
            switches,
        }
    }

    #[test]
    fn usage_sums_threads_and_names_those_that_came_and_went() {
        let start = Instant::now();
        let before = Sample {
            at: start,
            ticks: 10,
            threads: BTreeMap::from([
                (1, thread("pop", 1_000, 5)),
                (2, thread("worker", 2_000, 7)),
                (3, thread("blocking", 9_000, 1)),
            ]),
        };
        let after = Sample {
            at: start + Duration::from_secs(2),
            ticks: 12,
            threads: BTreeMap::from([
                (1, thread("pop", 1_500, 6)),
                (2, thread("worker", 6_000, 10)),
                (4, thread("new", 500, 1)),
            ]),
        };
        let usage = Usage::between(&before, &after);
        assert_eq!(usage.run_ns, 500 + 4_000 + 500);
        assert_eq!(usage.switches, 1 + 3 + 1);
        assert_eq!(usage.ticks, 2);
        assert_eq!(usage.started, BTreeSet::from([4]));
        assert_eq!(usage.exited, BTreeSet::from([3]));
        assert_eq!(usage.thread_change(), "threads +1 -1");
        assert!((usage.cpu_percent() - 5_000.0 / 2e9 * 100.0).abs() < 1e-12);
        assert!((usage.switches_per_second() - 2.5).abs() < 1e-12);
    }

    #[test]
    fn this_process_is_sampled_per_thread() {
        let own = || {
            let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
            parse_schedstat(&text).expect("run time")
        };
        let before = sample(std::process::id()).expect("sample");
        // 5 ms of run time on this thread (however long that takes on a loaded machine),
        // so the sum must move by at least that.
        let start = own();
        while own() < start + 5_000_000 {
            std::hint::black_box(0);
        }
        let after = sample(std::process::id()).expect("sample");
        let usage = Usage::between(&before, &after);
        assert!(usage.run_ns >= 5_000_000, "{usage:?}");
        assert!(!usage.threads.is_empty());
    }
}
