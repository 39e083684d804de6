//! Idle cost: with N services running and nothing changing, the CPU share and resident
//! memory of the agent (pop) and of supervisord, over a window of idleness; and for pop,
//! how long stopping the agent with all its services takes (SIGTERM, as `pop stop`
//! sends, until the agent has exited).

use crate::measure::{idle_usage, kill_stamped, Stamps};
use crate::popsys::{stamp_settings, Pop};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::Result;
use std::time::Duration;

/// Before measuring: what converging left behind (logs, journal, timers) is done.
const SETTLE: Duration = Duration::from_secs(3);

fn limit(count: usize) -> Duration {
    Duration::from_secs(60 + count as u64 / 10)
}

struct Idle {
    cpu_percent: f64,
    rss: u64,
    stop: Option<Duration>,
}

pub fn run(
    env: &Env,
    counts: Option<Vec<usize>>,
    seconds: Option<u64>,
    sup_max: usize,
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
    println!("| services | supervisord CPU | supervisord RSS | pop agent CPU | pop agent RSS | pop stop (all services) |");
    println!("|---|---|---|---|---|---|");
    for &count in &counts {
        let names: Vec<String> = (0..count).map(|i| format!("i{i}")).collect();
        let sup = if env.supervisord.is_some() && count <= sup_max {
            Some(supervisord_idle(env, &names, window))
        } else {
            None
        };
        let pop = pop_idle(env, &names, window);
        let (sup_cpu, sup_rss) = match sup {
            None => ("—".to_string(), "—".to_string()),
            Some(Ok(i)) => (cpu(i.cpu_percent), mb(i.rss)),
            Some(Err(e)) => (format!("failed: {e:#}"), "—".to_string()),
        };
        let (pop_cpu, pop_rss, stop) = match pop {
            Ok(i) => (
                cpu(i.cpu_percent),
                mb(i.rss),
                i.stop
                    .map_or("—".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            ),
            Err(e) => (format!("failed: {e:#}"), "—".into(), "—".into()),
        };
        println!("| {count} | {sup_cpu} | {sup_rss} | {pop_cpu} | {pop_rss} | {stop} |");
    }
    println!();
    Ok(())
}

fn cpu(percent: f64) -> String {
    format!("{percent:.2} %")
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
    let programs: Vec<Program> = names
        .iter()
        .map(|n| Program {
            name: n.clone(),
            argv: vec![
                env.stamp_exe.display().to_string(),
                stamps.path.display().to_string(),
                n.clone(),
            ],
        })
        .collect();
    let sup = Supervisord::start(install, dir.path(), &programs, true)?;
    let result = (|| {
        stamps.wait_all(names.len(), limit(names.len()))?;
        std::thread::sleep(SETTLE);
        let (cpu_percent, rss) = idle_usage(sup.pid(), window)?;
        Ok(Idle {
            cpu_percent,
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
        let (cpu_percent, rss) = idle_usage(agent, window)?;
        let stop = pop.stop_agent()?;
        Ok(Idle {
            cpu_percent,
            rss,
            stop: Some(stop),
        })
    })();
    drop(pop);
    kill_stamped(&stamps);
    result
}
