//! `pop zk start|stop|status`: a local standalone ZooKeeper from the Debian package, with
//! its data under the state directory, for a single machine that needs nothing else.

use crate::context;
use crate::Cli;
use anyhow::{Context, Result};
use clap::Subcommand;
use pop_zkserver::{ClientAuth, ServerTls, ZkServerConfig};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ZkAction {
    /// Start ZooKeeper in the background.
    Start {
        /// Client port on 127.0.0.1.
        #[arg(long, default_value_t = 2181)]
        port: u16,
        /// ZooKeeper's tick in milliseconds (sessions may last 2 to 20 ticks).
        #[arg(long, default_value_t = 2000)]
        tick_ms: u32,
        /// Refuse every request of a client that has not authenticated with a digest
        /// credential (`--auth`, `POP_AUTH`, a credentials file): anonymous clients can
        /// read nothing, not even what an ACL leaves open.
        #[arg(long)]
        require_auth: bool,
        /// Also open a secure client port (TLS) on 127.0.0.1 with mutual TLS: clients
        /// need --tls-ca and a certificate signed by a CA of --tls-trust-store.
        #[arg(long, requires_all = ["tls_key_store", "tls_trust_store"])]
        tls_port: Option<u16>,
        /// PEM: the server's private key (unencrypted PKCS#8) followed by its
        /// certificate chain.
        #[arg(long, value_name = "FILE", requires = "tls_port")]
        tls_key_store: Option<PathBuf>,
        /// PEM: the CA certificates a client's certificate must chain to.
        #[arg(long, value_name = "FILE", requires = "tls_port")]
        tls_trust_store: Option<PathBuf>,
    },
    /// Stop the local ZooKeeper.
    Stop,
    /// Show whether the local ZooKeeper runs, and its mode.
    Status,
}

/// ZooKeeper reads the stores itself, after it has started: check them now, by an
/// absolute path (it runs in its data directory).
fn readable(path: &std::path::Path) -> Result<PathBuf> {
    std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn zk_dir(cli: &Cli) -> Result<PathBuf> {
    Ok(context::state_dir(cli)?.join("zookeeper"))
}

pub fn run(cli: &Cli, action: &ZkAction) -> Result<()> {
    let dir = zk_dir(cli)?;
    let pid_file = dir.join("zookeeper.pid");
    match action {
        ZkAction::Start {
            port,
            tick_ms,
            require_auth,
            tls_port,
            tls_key_store,
            tls_trust_store,
        } => {
            std::fs::create_dir_all(&dir)?;
            let tls = match (tls_port, tls_key_store, tls_trust_store) {
                (Some(port), Some(key_store), Some(trust_store)) => Some(ServerTls {
                    port: *port,
                    key_store: readable(key_store)?,
                    trust_store: readable(trust_store)?,
                    client_auth: ClientAuth::Need,
                }),
                // clap requires all three together.
                _ => None,
            };
            let config = ZkServerConfig {
                port: *port,
                data_dir: dir.join("data"),
                tick_ms: *tick_ms,
                log_file: Some(dir.join("zookeeper.log")),
                require_auth: *require_auth,
                tls,
                ..ZkServerConfig::default()
            };
            let status = pop_zkserver::start_daemon(&config, &pid_file)?;
            println!(
                "ZooKeeper started on 127.0.0.1:{} (pid {}){}{}; data in {}",
                status.port.unwrap_or(*port),
                status.pid.unwrap_or(0),
                if *require_auth {
                    ", authentication required"
                } else {
                    ""
                },
                tls_port.map_or(String::new(), |p| format!(
                    ", TLS (client certificates required) on 127.0.0.1:{p}"
                )),
                config.data_dir.display()
            );
        }
        ZkAction::Stop => {
            pop_zkserver::stop_daemon(&pid_file)?;
            println!("ZooKeeper stopped");
        }
        ZkAction::Status => {
            let status = pop_zkserver::daemon_status(&pid_file)?;
            if cli.json {
                crate::output::print_json(&status)?;
            } else {
                println!("{status}");
            }
        }
    }
    Ok(())
}
