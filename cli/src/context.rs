//! Resolving the global options: machine id, state directory, logging.

use crate::Cli;
use anyhow::{Context, Result};
use pop_core::names::MachineId;
use pop_io::tls::{ClientIdentity, TlsConfig, TlsFiles};
use pop_io::zk::ZkConfig;
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

/// The TLS files of `--tls-ca`, `--tls-cert` and `--tls-key`, if TLS is asked for.
pub fn tls_files(cli: &Cli) -> Option<TlsFiles> {
    let ca = cli.tls_ca.clone()?;
    let identity = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(ClientIdentity {
            cert: cert.clone(),
            key: key.clone(),
        }),
        // clap requires both and --tls-ca when either is given.
        _ => None,
    };
    Some(TlsFiles { ca, identity })
}

/// How every connection pop makes reaches ZooKeeper: `--host`, and TLS if asked for
/// (the files read and checked here, so a bad one fails before anything is done).
pub fn zk_config(cli: &Cli) -> Result<ZkConfig> {
    let mut config = ZkConfig::new(&cli.host);
    if let Some(files) = tls_files(cli) {
        config.tls = Some(TlsConfig::load(&files)?);
    }
    Ok(config)
}

pub fn machine_id(cli: &Cli) -> Result<MachineId> {
    let id = pop_io::machine_id::detect(cli.machine_id.as_deref())?;
    MachineId::new(&id).context("invalid --machine-id")
}

pub fn state_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(dir) = &cli.state_dir {
        return Ok(dir.clone());
    }
    default_state_dir(machine_id(cli)?.as_str())
}

fn default_state_dir(machine: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME")
                .context("cannot find a state directory: HOME is not set; pass --state-dir")?;
            PathBuf::from(home).join(".local").join("state")
        }
    };
    Ok(base.join("pop").join(machine))
}

/// Before ids had to agree across users, an agent run as root took the hardware UUID as
/// the machine's id. If one did here (its default state directory is left), the agent
/// now runs under another id and the services deployed to the old one do not run:
/// says so, and how to keep the old id.
pub fn machine_id_changed(cli: &Cli, machine: &MachineId) -> Option<String> {
    if cli.machine_id.is_some() || std::path::Path::new(pop_io::machine_id::PINNED).exists() {
        return None;
    }
    let uuid = pop_io::machine_id::hardware_uuid()?;
    let used = default_state_dir(&uuid).ok()?;
    (uuid != machine.as_str() && used.is_dir()).then(|| {
        format!(
            "this machine was known to pop as {uuid} (its hardware UUID, {} shows an agent ran under it) and is now {machine}, the id every user gets; services deployed to {uuid} do not run here any more. To keep the old id: echo {uuid} > {}, then restart the agent",
            used.display(),
            pop_io::machine_id::PINNED
        )
    })
}
