//! Settings changed → restarted with them. pop: the settings node written (the bytes
//! `pop set` writes, by our own client) until the new process runs and until its pid is
//! registered; and the whole `pop set` command line. supervisord: its equivalent, the
//! configuration edited and `supervisorctl update` run, until the new process runs.

use crate::measure::{kill_stamped, monotonic_ns, ns_to_ms, Stamps, Summary};
use crate::popsys::{stamp_settings, Pop};
use crate::supervisord::{Program, Supervisord};
use crate::Env;
use anyhow::{anyhow, Result};
use pop_core::assignment::{edit_settings, parse_assignment};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);
const NAME: &str = "web";

pub fn run(env: &Env, changes: Option<usize>) -> Result<()> {
    let changes = changes.unwrap_or(if env.quick { 3 } else { 30 });
    println!("## Settings changed → restarted with them ({changes} changes each)\n");
    println!("| system | how | new process running p50 / p90 / p99 / max | pid registered p50 / p90 / p99 / max |");
    println!("|---|---|---|---|");
    if env.supervisord.is_some() {
        let running = supervisord_set(env, changes)?;
        row(
            "supervisord",
            "edit config + `supervisorctl update`",
            &running,
            &[],
        );
    }
    let (direct, direct_registered, cli) = pop_set(env, changes)?;
    row("pop", "settings node written", &direct, &direct_registered);
    row("pop", "`pop set` command", &cli, &[]);
    println!();
    Ok(())
}

fn row(system: &str, how: &str, running: &[f64], registered: &[f64]) {
    let show = |v: &[f64]| Summary::of(v).map_or("—".to_string(), |s| s.to_string());
    println!(
        "| {system} | {how} | {} | {} |",
        show(running),
        show(registered)
    );
}

fn supervisord_set(env: &Env, changes: usize) -> Result<Vec<f64>> {
    let Some(install) = &env.supervisord else {
        return Ok(Vec::new());
    };
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let program = |version: usize| Program {
        name: NAME.into(),
        // A changed command line is a changed program: `update` restarts it.
        argv: vec![
            env.stamp_exe.display().to_string(),
            stamps.path.display().to_string(),
            NAME.into(),
            format!("v{version}"),
        ],
    };
    let sup = Supervisord::start(install, dir.path(), &[program(0)], true)?;
    let result = (|| {
        let mut samples = Vec::new();
        for version in 1..=changes {
            let old = stamps.wait_new(NAME, None, LIMIT)?;
            let start = monotonic_ns();
            sup.reconfigure(dir.path(), &[program(version)])?;
            let new = stamps.wait_new(NAME, Some(old.pid), LIMIT)?;
            samples.push(ns_to_ms(new.at_ns.saturating_sub(start)));
        }
        Ok(samples)
    })();
    drop(sup);
    kill_stamped(&stamps);
    result
}

type PopSamples = (Vec<f64>, Vec<f64>, Vec<f64>);

fn pop_set(env: &Env, changes: usize) -> Result<PopSamples> {
    let dir = tempfile::tempdir()?;
    let stamps = Stamps::new(dir.path());
    let mut pop = Pop::new(&env.pop)?;
    let mut settings = stamp_settings(&env.stamp_exe, &stamps.path, NAME);
    let result = (|| {
        pop.add_services(&[(NAME.to_string(), settings.clone())])?;
        pop.start_agent()?;
        pop.deploy_all(&[NAME.to_string()])?;
        let (mut direct, mut registered, mut cli) = (Vec::new(), Vec::new(), Vec::new());
        for version in 1..=changes {
            let old = stamps.wait_new(NAME, None, LIMIT)?;
            let assignment = parse_assignment(&format!("env={{\"V\":\"{version}\"}}"))?;
            settings = edit_settings(&settings, &[assignment], &[])
                .map_err(|e| anyhow!("editing settings: {e:?}"))?
                .unwrap_or(settings);
            let watch = pop.watch_pid_change(NAME, old.pid)?;
            let start = pop.write_settings(NAME, &settings)?;
            let new = stamps.wait_new(NAME, Some(old.pid), LIMIT)?;
            direct.push(ns_to_ms(new.at_ns.saturating_sub(start)));
            registered.push(ns_to_ms(
                pop.wait_watch(watch, LIMIT)?.saturating_sub(start),
            ));
        }
        for version in 1..=changes {
            let old = stamps.wait_new(NAME, None, LIMIT)?;
            let start = monotonic_ns();
            pop.cli(&["set", NAME, &format!("env={{\"C\":\"{version}\"}}")])?;
            let new = stamps.wait_new(NAME, Some(old.pid), LIMIT)?;
            cli.push(ns_to_ms(new.at_ns.saturating_sub(start)));
        }
        Ok((direct, registered, cli))
    })();
    drop(pop);
    kill_stamped(&stamps);
    result
}
