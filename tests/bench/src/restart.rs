//! Crash → restarted: SIGKILL a service's process after a healthy run and time until its
//! next process has started (its own stamp) and, for pop, until its pid node holds the
//! new pid (a watch armed before the kill). Several services are killed in turn, one kill
//! a second, so each has run longer than pop's healthy threshold (10 s) when killed and
//! is restarted at once rather than after a backoff.

use crate::floor::Floor;
use crate::measure::{kill_stamped, monotonic_ns, ns_to_ms, Stamps, Summary};
use crate::popsys::{stamp_settings, Pop};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::Result;
use std::time::{Duration, Instant};

/// Longer than pop's healthy threshold: a crash after this restarts at once.
const HEALTHY: Duration = Duration::from_millis(10_500);
const SPACING: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_secs(30);

fn names() -> Vec<String> {
    let n = (HEALTHY.as_millis() / SPACING.as_millis()) as usize + 1;
    (0..n).map(|i| format!("crash{i}")).collect()
}

/// Kills services in turn; for each kill, the time until the new process ran (and,
/// through `registered`, until it was registered).
fn kill_in_turn<'p>(
    stamps: &Stamps,
    names: &[String],
    kills: usize,
    mut registered: impl FnMut(&str, u32) -> Result<Registered<'p>>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    stamps.wait_all(names.len(), LIMIT)?;
    std::thread::sleep(HEALTHY);
    let (mut running, mut published) = (Vec::new(), Vec::new());
    let mut last = Instant::now();
    for k in 0..kills {
        let name = &names[k % names.len()];
        let old = stamps.wait_new(name, None, LIMIT)?;
        std::thread::sleep(SPACING.saturating_sub(last.elapsed()));
        let wait_registered = registered(name, old.pid)?;
        last = Instant::now();
        let killed_at = monotonic_ns();
        // SAFETY: kill with a pid and a signal number.
        unsafe { libc::kill(old.pid as i32, libc::SIGKILL) };
        let new = stamps.wait_new(name, Some(old.pid), LIMIT)?;
        running.push(ns_to_ms(new.at_ns.saturating_sub(killed_at)));
        if let Ok(at) = wait_registered() {
            published.push(ns_to_ms(at.saturating_sub(killed_at)));
        }
    }
    Ok((running, published))
}

type Registered<'p> = Box<dyn FnOnce() -> Result<u128> + 'p>;

fn no_registration(_: &str, _: u32) -> Result<Registered<'static>> {
    Ok(Box::new(|| Err(anyhow::anyhow!("not registered"))))
}

pub fn run(env: &Env, kills: Option<usize>) -> Result<()> {
    let kills = kills.unwrap_or(if env.quick { 4 } else { 30 });
    let names = names();
    println!("## Crash → restarted (SIGKILL after a healthy run; {kills} kills each)\n");
    println!("| system | new process running p50 / p90 / p99 / max | pid registered p50 / p90 / p99 / max |");
    println!("|---|---|---|");

    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut floor = Floor::start(&env.bench_exe, &env.stamp_exe, &stamps.path, &names)?;
    floor.go()?;
    let result = kill_in_turn(&stamps, &names, kills, no_registration);
    drop(floor);
    kill_stamped(&stamps);
    let (running, _) = result?;
    row("fork/exec floor", &running, &[]);

    if let Some(install) = &env.supervisord {
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
        let result = kill_in_turn(&stamps, &names, kills, no_registration);
        drop(sup);
        kill_stamped(&stamps);
        let (running, _) = result?;
        row("supervisord", &running, &[]);
    }

    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut pop = Pop::new(&env.pop)?;
    let services: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), stamp_settings(&env.stamp_exe, &stamps.path, n)))
        .collect();
    pop.add_services(&services)?;
    pop.start_agent()?;
    pop.deploy_all(&names)?;
    let result = kill_in_turn(&stamps, &names, kills, |name, old| {
        let handle = pop.watch_pid_change(name, old)?;
        let pop = &pop;
        Ok(Box::new(move || pop.wait_watch(handle, LIMIT)))
    });
    drop(pop);
    kill_stamped(&stamps);
    let (running, published) = result?;
    row("pop", &running, &published);
    println!();
    Ok(())
}

fn row(system: &str, running: &[f64], published: &[f64]) {
    let show = |v: &[f64]| Summary::of(v).map_or("—".to_string(), |s| s.to_string());
    println!("| {system} | {} | {} |", show(running), show(published));
}
