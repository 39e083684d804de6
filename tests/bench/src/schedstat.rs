//! CPU time from the scheduler's own accounting: the first field of
//! `/proc/<pid>/task/<tid>/schedstat` is the nanoseconds a thread has run, exact where
//! utime+stime (clock ticks, sampled at the tick) over- or under-charges short bursts.
//! A process's time is the sum over its threads alive at the reading (a thread that
//! exits between two readings takes its time with it: the agent's and the JVM's
//! threads live as long as they do).

use anyhow::{Context, Result};

/// Nanoseconds the threads of `pid` have run.
pub fn run_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread that exited since the listing has nothing to add.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += parse(&text).with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(total)
}

/// `<run ns> <wait ns> <timeslices>`: the run time.
fn parse(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_field_is_the_run_time() {
        assert_eq!(parse("10512345 2000 17\n"), Some(10_512_345));
        assert_eq!(parse(""), None);
    }

    #[test]
    fn this_process_has_run() {
        let ns = run_ns(std::process::id()).expect("schedstat of this process");
        assert!(ns > 0);
    }
}
