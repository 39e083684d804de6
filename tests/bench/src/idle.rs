//! Idle cost: with N services running and nothing changing, the CPU share and resident
//! memory of the agent (pop) and of supervisord, over a window of idleness; and for pop,
//! how long stopping the agent with all its services takes (SIGTERM, as `pop stop`
//! sends, until the agent has exited).
//!
//! CPU is the scheduler's run time summed over every thread (`sched`); the clock-tick
//! figure (utime + stime, what this benchmark printed before) stands beside it, because
//! ticks over-charge a process whose rare wake-ups line up with the timer tick. When
//! threads came or went during the window the cell says so: an exited thread's run
//! time is not in the sum.

use crate::measure::{idle_usage, kill_stamped, Stamps};
use crate::popsys::{stamp_settings, Pop};
use crate::sched::{self, Usage};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::Result;
use std::time::Duration;

/// Before measuring: what converging left behind (logs, journal, timers) is done.
const SETTLE: Duration = Duration::from_secs(3);
/// And the set of threads has stayed the same this long (tokio keeps an idle blocking
/// thread for 10 s), so no thread exits during the window taking its run time with it;
/// at most `THREADS_LIMIT`, then measured anyway (the cell says threads changed).
const THREADS_STEADY: Duration = Duration::from_secs(11);
const THREADS_LIMIT: Duration = Duration::from_secs(60);

/// Waits until `pid`'s threads have been the same for `THREADS_STEADY`.
fn settle_threads(pid: u32) -> Result<()> {
    let end = std::time::Instant::now() + THREADS_LIMIT;
    let mut threads = sched::sample(pid)?.threads.into_keys().collect::<Vec<_>>();
    let mut since = std::time::Instant::now();
    while since.elapsed() < THREADS_STEADY && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        let now = sched::sample(pid)?.threads.into_keys().collect::<Vec<_>>();
        if now != threads {
            threads = now;
            since = std::time::Instant::now();
        }
    }
    Ok(())
}

fn limit(count: usize) -> Duration {
    Duration::from_secs(60 + count as u64 / 10)
}

struct Idle {
    usage: Usage,
    rss: u64,
    stop: Option<Duration>,
}

pub fn run(
    env: &Env,
    counts: Option<Vec<usize>>,
    seconds: Option<u64>,
    sup_max: usize,
    per_thread: bool,
) -> Result<()> {
    let counts = counts.unwrap_or(if env.quick {
        vec![0, 20]
    } else {
        vec![0, 200, 1000, 10_000]
    });
    let window = Duration::from_secs(seconds.unwrap_or(if env.quick { 3 } else { 60 }));
    println!(
        "## Idle with N services ({}s window each)\n",
        window.as_secs()
    );
    println!("| services | supervisord CPU sched / ticks | supervisord switches/s | supervisord RSS | pop agent CPU sched / ticks | pop agent switches/s | pop agent RSS | pop stop (all services) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut threads = Vec::new();
    for &count in &counts {
        let names: Vec<String> = (0..count).map(|i| format!("i{i}")).collect();
        let sup = if env.supervisord.is_some() && count <= sup_max {
            Some(supervisord_idle(env, &names, window))
        } else {
            None
        };
        let pop = pop_idle(env, &names, window);
        let (sup_cpu, sup_switches, sup_rss) = match &sup {
            None => ("—".to_string(), "—".to_string(), "—".to_string()),
            Some(Ok(i)) => (cpu(&i.usage), switches(&i.usage), mb(i.rss)),
            Some(Err(e)) => (format!("failed: {e:#}"), "—".into(), "—".into()),
        };
        let (pop_cpu, pop_switches, pop_rss, stop) = match &pop {
            Ok(i) => (
                cpu(&i.usage),
                switches(&i.usage),
                mb(i.rss),
                i.stop
                    .map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            ),
            Err(e) => (format!("failed: {e:#}"), "—".into(), "—".into(), "—".into()),
        };
        println!("| {count} | {sup_cpu} | {sup_switches} | {sup_rss} | {pop_cpu} | {pop_switches} | {pop_rss} | {stop} |");
        for (system, idle) in [("supervisord", sup.as_ref()), ("pop agent", Some(&pop))] {
            if let Some(Ok(i)) = idle {
                threads.push((format!("{system}, {count} services"), i.usage.per_thread()));
            }
        }
    }
    println!();
    if per_thread {
        println!("Per thread over the window (tid, name, run time, switches/s):\n");
        println!("```");
        for (what, lines) in threads {
            println!("{what}:");
            for line in lines {
                println!("  {line}");
            }
        }
        println!("```\n");
    }
    Ok(())
}

/// The scheduler's figure, the tick figure beside it, and any change of threads.
fn cpu(usage: &Usage) -> String {
    let change = usage.thread_change();
    format!(
        "{:.3} % / {:.2} %{}",
        usage.cpu_percent(),
        usage.tick_percent(),
        if change.is_empty() {
            String::new()
        } else {
            format!(" ({change})")
        }
    )
}

fn switches(usage: &Usage) -> String {
    format!("{:.1}", usage.switches_per_second())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn supervisord_idle(env: &Env, names: &[String], window: Duration) -> Result<Idle> {
    let Some(install) = &env.supervisord else {
        anyhow::bail!("supervisord is not installed");
    };
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let programs = Program::stamping(&env.stamp_exe, &stamps.path, names);
    let sup = Supervisord::start(install, dir.path(), &programs, true)?;
    let result = (|| {
        stamps.wait_all(names.len(), limit(names.len()))?;
        std::thread::sleep(SETTLE);
        settle_threads(sup.pid())?;
        let (usage, rss) = idle_usage(sup.pid(), window)?;
        Ok(Idle {
            usage,
            rss,
            stop: None,
        })
    })();
    drop(sup);
    kill_stamped(&stamps);
    result
}

fn pop_idle(env: &Env, names: &[String], window: Duration) -> Result<Idle> {
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut pop = Pop::new(&env.pop)?;
    let services: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), stamp_settings(&env.stamp_exe, &stamps.path, n)))
        .collect();
    let result = (|| {
        pop.add_services(&services)?;
        let agent = pop.start_agent()?;
        if !names.is_empty() {
            let watch = pop.watch_registered(names.len())?;
            pop.deploy_all(names)?;
            pop.wait_watch(watch, limit(names.len()))?;
        }
        std::thread::sleep(SETTLE);
        settle_threads(agent)?;
        let (usage, rss) = idle_usage(agent, window)?;
        let stop = pop.stop_agent()?;
        Ok(Idle {
            usage,
            rss,
            stop: Some(stop),
        })
    })();
    drop(pop);
    kill_stamped(&stamps);
    result
}
