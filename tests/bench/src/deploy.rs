//! Deploy written → running and registered: N services exist, none deployed; all are
//! deployed at once (pop: every machines list written together; supervisord:
//! `supervisorctl start all`; the floor: one process forking them one after another), and
//! the clock runs until every one has started (its stamp) and, for pop, until every pid
//! node exists.

use crate::floor::Floor;
use crate::measure::{
    cpu_ticks, kill_stamped, monotonic_ns, ms, ns_to_ms, ticks_per_second, Stamps,
};
use crate::popsys::{stamp_settings, Pop};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::Result;
use std::time::Duration;

fn limit(count: usize) -> Duration {
    Duration::from_secs(60 + count as u64 / 10)
}

pub fn run(env: &Env, counts: Option<Vec<usize>>) -> Result<()> {
    let counts = counts.unwrap_or(if env.quick {
        vec![1, 20]
    } else {
        vec![1, 100, 1000]
    });
    println!("## Deploy written → all running (and registered)\n");
    println!("| services | fork/exec floor: all running | supervisord: all running | pop: all running | pop: all registered |");
    println!("|---|---|---|---|---|");
    let mut cpus = Vec::new();
    for &count in &counts {
        let names: Vec<String> = (0..count).map(|i| format!("d{i}")).collect();
        let floor = floor_time(env, &names)?;
        let sup = match &env.supervisord {
            Some(_) => format!("{} ms", ms(supervisord_time(env, &names)?)),
            None => "—".into(),
        };
        let (running, registered, cpu) = pop_times(env, &names)?;
        println!(
            "| {count} | {} ms | {sup} | {} ms | {} ms |",
            ms(floor),
            ms(running),
            ms(registered)
        );
        cpus.push((count, cpu));
    }
    println!();
    println!("CPU time used from the deploy until all were registered (10 ms ticks):\n");
    println!("| services | pop agent | its ZooKeeper server |");
    println!("|---|---|---|");
    for (count, cpu) in cpus {
        println!(
            "| {count} | {} ms | {} ms |",
            cpu.agent_ms, cpu.zookeeper_ms
        );
    }
    println!();
    Ok(())
}

fn floor_time(env: &Env, names: &[String]) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut floor = Floor::start(&env.bench_exe, &env.stamp_exe, &stamps.path, names)?;
    let start = floor.go()?;
    let done = stamps.wait_all(names.len(), limit(names.len()));
    drop(floor);
    kill_stamped(&stamps);
    Ok(ns_to_ms(done?.saturating_sub(start)))
}

fn supervisord_time(env: &Env, names: &[String]) -> Result<f64> {
    let Some(install) = &env.supervisord else {
        return Ok(f64::NAN);
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
    let sup = Supervisord::start(install, dir.path(), &programs, false)?;
    let start = monotonic_ns();
    let started = sup.ctl(&["start", "all"]);
    let done = started.and_then(|_| stamps.wait_all(names.len(), limit(names.len())));
    drop(sup);
    kill_stamped(&stamps);
    Ok(ns_to_ms(done?.saturating_sub(start)))
}

/// CPU time spent during a deploy, by the agent and by the ZooKeeper server.
struct DeployCpu {
    agent_ms: u64,
    zookeeper_ms: u64,
}

fn cpu_ms(pid: Option<u32>) -> u64 {
    pid.and_then(|p| cpu_ticks(p).ok())
        .map_or(0, |t| t * 1000 / ticks_per_second())
}

fn pop_times(env: &Env, names: &[String]) -> Result<(f64, f64, DeployCpu)> {
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut pop = Pop::new(&env.pop)?;
    let services: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), stamp_settings(&env.stamp_exe, &stamps.path, n)))
        .collect();
    pop.add_services(&services)?;
    pop.start_agent()?;
    // The agent reads every service it is told of before anything is deployed.
    pop.wait_settled(limit(names.len()))?;
    let result = (|| {
        let watch = pop.watch_registered(names.len())?;
        let (agent, zookeeper) = (pop.agent_pid(), pop.zookeeper_pid());
        let (agent_before, zookeeper_before) = (cpu_ms(agent), cpu_ms(zookeeper));
        let start = pop.deploy_all(names)?;
        let running = stamps.wait_all(names.len(), limit(names.len()))?;
        let registered = pop.wait_watch(watch, limit(names.len()))?;
        let cpu = DeployCpu {
            agent_ms: cpu_ms(agent).saturating_sub(agent_before),
            zookeeper_ms: cpu_ms(zookeeper).saturating_sub(zookeeper_before),
        };
        Ok((
            ns_to_ms(running.saturating_sub(start)),
            ns_to_ms(registered.saturating_sub(start)),
            cpu,
        ))
    })();
    drop(pop);
    kill_stamped(&stamps);
    result
}
