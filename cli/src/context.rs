//! Resolving the global options: machine id, state directory, logging.

use crate::Cli;
use anyhow::{Context, Result};
use pop_core::names::MachineId;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr (the agent's log file with `pop fg --log-file`). The agent logs at info by default; one-shot commands only warn,
/// so their output stays the answer.
pub fn init_logging(verbose: u8, agent: bool) {
    let default = match verbose {
        0 if agent => "info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::agent_log::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn machine_id(cli: &Cli) -> Result<MachineId> {
    let id = pop_io::machine_id::detect(cli.machine_id.as_deref())?;
    MachineId::new(&id).context("invalid --machine-id")
}

pub fn state_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(dir) = &cli.state_dir {
        return Ok(dir.clone());
    }
    let machine = machine_id(cli)?;
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .context("cannot find a state directory: HOME is not set; pass --state-dir")?;
            PathBuf::from(home).join(".local").join("state")
        }
    };
    Ok(base.join("pop").join(machine.as_str()))
}
