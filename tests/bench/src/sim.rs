//! The simulator's speed: seeded chaos runs (the same as `pop sim`) at 3 and 7 machines,
//! in simulated events and simulated seconds per wall-clock second.

use crate::Env;
use anyhow::{bail, Result};
use pop_sim::chaos::{run_catching, Options};
use std::time::{Duration, Instant};

pub fn run(env: &Env, seeds: Option<u64>) -> Result<()> {
    let seeds = seeds.unwrap_or(if env.quick { 2 } else { 20 });
    println!("## Simulator speed ({seeds} seeds each, chaos phase from the seed)\n");
    println!("| machines | events | simulated | wall | events / s | simulated s / wall s |");
    println!("|---|---|---|---|---|---|");
    for machines in [3, 7] {
        let (mut events, mut simulated) = (0u64, Duration::ZERO);
        let start = Instant::now();
        for seed in 0..seeds {
            let outcome = run_catching(&Options::from_seed(seed, Some(machines), None));
            if let Some(failure) = outcome.failure {
                bail!("pop sim --seed {seed} --machines {machines} failed: {failure}");
            }
            events += outcome.events;
            simulated += outcome.simulated;
        }
        let wall = start.elapsed().as_secs_f64();
        println!(
            "| {machines} | {events} | {:.0} s | {wall:.2} s | {:.0} | {:.0} |",
            simulated.as_secs_f64(),
            events as f64 / wall,
            simulated.as_secs_f64() / wall
        );
    }
    println!();
    Ok(())
}
