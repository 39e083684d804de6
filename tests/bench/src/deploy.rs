//! Deploy written → running and registered: N services exist, none deployed; all are
//! deployed at once (pop: every machines list written together; supervisord:
//! `supervisorctl start all`; the floor: one process forking them one after another), and
//! the clock runs until every one has started (its stamp) and, for pop, until every pid
//! node exists. pop is measured against a cold ZooKeeper and a warm one (see `Server`).

use crate::floor::Floor;
use crate::measure::{kill_stamped, monotonic_ns, ms, ns_to_ms, Stamps};
use crate::popsys::{stamp_settings, Pop};
use crate::supervisord::{Program, Supervisord};
use crate::zkstat::received_by_session;
use crate::Env;
use anyhow::{anyhow, Result};
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
    println!(
        "pop against a cold ZooKeeper (a fresh server, its JVM compiling during the deploy) \
         and a warm one (the same deploy of other services done and removed first on the \
         same server and agent, as a long-running server is).\n"
    );
    println!("| services | fork/exec floor: all running | supervisord: all running | pop, cold ZooKeeper: all running / registered | pop, warm ZooKeeper: all running / registered |");
    println!("|---|---|---|---|---|");
    let mut costs = Vec::new();
    for &count in &counts {
        let names: Vec<String> = (0..count).map(|i| format!("d{i}")).collect();
        let floor = floor_time(env, &names)?;
        let sup = match &env.supervisord {
            Some(_) => format!("{} ms", ms(supervisord_time(env, &names)?)),
            None => "—".into(),
        };
        let cold = pop_deploy(env, &names, Server::Cold)?;
        let warm = pop_deploy(env, &names, Server::Warm)?;
        println!(
            "| {count} | {} ms | {sup} | {} / {} ms | {} / {} ms |",
            ms(floor),
            ms(cold.running_ms),
            ms(cold.registered_ms),
            ms(warm.running_ms),
            ms(warm.registered_ms),
        );
        costs.push((count, "cold", cold));
        costs.push((count, "warm", warm));
    }
    println!();
    println!(
        "What the deploy cost: CPU run time of every thread from the write until all were \
         registered (`/proc/<pid>/task/*/schedstat`), and the agent's requests from the \
         write until it went quiet (packets its connection sent the server, `cons`; \
         pings included, about one per 2 s):\n"
    );
    println!(
        "| services | ZooKeeper | pop agent CPU | ZooKeeper CPU | agent requests | per service |"
    );
    println!("|---|---|---|---|---|---|");
    for (count, server, cost) in costs {
        println!(
            "| {count} | {server} | {:.0} ms | {:.0} ms | {} | {:.1} |",
            cost.agent_cpu_ms,
            cost.zookeeper_cpu_ms,
            cost.requests,
            cost.requests as f64 / count.max(1) as f64
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
    let programs = Program::stamping(&env.stamp_exe, &stamps.path, names);
    let sup = Supervisord::start(install, dir.path(), &programs, false)?;
    let start = monotonic_ns();
    let started = sup.ctl(&["start", "all"]);
    let done = started.and_then(|_| stamps.wait_all(names.len(), limit(names.len())));
    drop(sup);
    kill_stamped(&stamps);
    Ok(ns_to_ms(done?.saturating_sub(start)))
}

/// The ZooKeeper server a deploy is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Fresh: its JVM has done nothing but the agent's start and the services' adding.
    Cold,
    /// The same deploy (of other services, then removed) done first on it.
    Warm,
}

/// One measured deploy: times from the write, and what it cost.
struct Deployed {
    running_ms: f64,
    registered_ms: f64,
    agent_cpu_ms: f64,
    zookeeper_cpu_ms: f64,
    /// Packets the server received from the agent, from the deploy until it was quiet.
    requests: i64,
}

fn cpu_ms(pid: Option<u32>) -> Result<f64> {
    let pid = pid.ok_or_else(|| anyhow!("no process to measure"))?;
    Ok(crate::sched::sample(pid)?.run_ns() as f64 / 1e6)
}

/// Packets the server has received from the agent (every session but the benchmark's).
fn agent_packets(pop: &Pop) -> Result<i64> {
    let own = pop.own_session();
    Ok(received_by_session(pop.zookeeper_addr())?
        .into_iter()
        .filter(|(session, _)| *session != own)
        .map(|(_, received)| received)
        .sum())
}

/// Adds `names` (stamp services writing to `stamps`), waits for the agent to go quiet,
/// deploys them all at once and waits until every one runs and is registered.
fn deploy(env: &Env, pop: &Pop, names: &[String], stamps: &Stamps) -> Result<Deployed> {
    let services: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), stamp_settings(&env.stamp_exe, &stamps.path, n)))
        .collect();
    pop.add_services(&services)?;
    // The agent reads every service it is told of before anything is deployed.
    pop.wait_settled(limit(names.len()))?;
    let watch = pop.watch_registered(names.len())?;
    let (agent, zookeeper) = (pop.agent_pid(), pop.zookeeper_pid());
    let (agent_before, zookeeper_before) = (cpu_ms(agent)?, cpu_ms(zookeeper)?);
    let packets_before = agent_packets(pop)?;
    let start = pop.deploy_all(names)?;
    let running = stamps.wait_all(names.len(), limit(names.len()))?;
    let registered = pop.wait_watch(watch, limit(names.len()))?;
    let (agent_cpu_ms, zookeeper_cpu_ms) = (
        cpu_ms(agent)? - agent_before,
        cpu_ms(zookeeper)? - zookeeper_before,
    );
    // Its last requests (the watches on the nodes it created) go out after the last
    // registration: counted once it is quiet.
    pop.wait_settled(limit(names.len()))?;
    Ok(Deployed {
        running_ms: ns_to_ms(running.saturating_sub(start)),
        registered_ms: ns_to_ms(registered.saturating_sub(start)),
        agent_cpu_ms,
        zookeeper_cpu_ms,
        requests: agent_packets(pop)? - packets_before,
    })
}

/// The deploy of `names` by pop against a cold or a warm ZooKeeper. Warm: the same
/// number of other services is deployed, undeployed, and removed first, on the same
/// server and agent; then `names` is measured exactly as against a cold server.
fn pop_deploy(env: &Env, names: &[String], server: Server) -> Result<Deployed> {
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let warmup_dir = tempfile::tempdir()?;
    let warmup_stamps = Stamps::new(warmup_dir.path());
    let mut pop = Pop::new(&env.pop)?;
    pop.start_agent()?;
    let result = (|| {
        if server == Server::Warm {
            let warmup: Vec<String> = (0..names.len()).map(|i| format!("w{i}")).collect();
            deploy(env, &pop, &warmup, &warmup_stamps)?;
            pop.undeploy_all(&warmup)?;
            pop.wait_unregistered(limit(warmup.len()))?;
            pop.remove_services(&warmup, limit(warmup.len()))?;
        }
        deploy(env, &pop, names, &stamps)
    })();
    drop(pop);
    kill_stamped(&warmup_stamps);
    kill_stamped(&stamps);
    result
}
