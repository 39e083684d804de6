//! `pop replay`: feeds an agent journal to a fresh core and checks that it emits exactly
//! the actions the live agent recorded. The core is a pure function of its inputs; this
//! is how that claim is checked on a real run, and how a decision is explained later.

use crate::output::print_json;
use crate::{context, Cli};
use anyhow::{bail, Context, Result};
use pop_core::journal::{replay, Step};
use pop_core::Timestamp;
use serde_json::json;
use std::path::Path;

pub fn run(cli: &Cli, journal: Option<&Path>, quiet: bool) -> Result<()> {
    let path = match journal {
        Some(path) => path.to_path_buf(),
        None => pop_io::journal::journal_path(&context::state_dir(cli)?),
    };
    let decoded = pop_io::journal::read(&path)?;
    let steps = replay(&decoded).with_context(|| format!("replaying {}", path.display()))?;
    let first_difference = steps.iter().position(|s| !s.matches());
    let actions: usize = steps.iter().map(|s| s.actions.len()).sum();
    let unrecorded = steps.iter().filter(|s| s.recorded.is_none()).count();
    if cli.json {
        print_json(&json!({
            "journal": path,
            "inputs": steps.len(),
            "actions": actions,
            "identical": first_difference.is_none(),
            "first_difference": first_difference.map(|i| difference_json(i, &steps[i])),
            "inputs_without_recorded_actions": unrecorded,
            "torn_tail_bytes": decoded.torn_tail,
        }))?;
    } else {
        let start = steps.first().map_or(Timestamp::default(), |s| s.at);
        if !quiet {
            for step in &steps {
                print_step(start, step);
            }
        }
        if let Some(bytes) = decoded.torn_tail {
            println!("ignored a torn last line ({bytes} bytes): the agent stopped mid-write");
        }
        if let Some(i) = first_difference {
            let step = &steps[i];
            println!("input #{} at {} differs:", i + 1, step.at);
            println!("  input:  {}", step.input);
            for action in step.recorded.iter().flatten() {
                println!("  live:   {action}");
            }
            for action in &step.actions {
                println!("  replay: {action}");
            }
        } else {
            println!(
                "{} inputs replayed, {actions} actions: identical to what the live agent did",
                steps.len()
            );
        }
    }
    if let Some(i) = first_difference {
        bail!(
            "the replayed core differs from the live agent at input #{} of {}",
            i + 1,
            path.display()
        );
    }
    Ok(())
}

fn print_step(start: Timestamp, step: &Step) {
    let offset = step.at.saturating_since(start).as_secs_f64();
    println!("{offset:>10.3}  <- {}", step.input);
    for action in &step.actions {
        println!("{:>10}  -> {action}", "");
    }
}

fn difference_json(index: usize, step: &Step) -> serde_json::Value {
    json!({
        "input_number": index + 1,
        "at": step.at,
        "input": step.input,
        "live": step.recorded,
        "replay": step.actions,
    })
}
