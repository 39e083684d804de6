//! The `pop` command-line tool.

mod admin;
mod agent;
mod agent_log;
mod auth;
mod commands;
mod context;
mod duration;
mod echo;
mod logs;
mod manual;
mod output;
mod pidfile;
mod replay;
mod sim;
mod zkcmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pop",
    version,
    about = "Runs services on many machines and keeps them at their target state, with ZooKeeper as the source of truth."
)]
pub struct Cli {
    /// ZooKeeper connection string: host:port[,host:port...][/chroot].
    #[arg(
        long,
        global = true,
        env = "POP_HOST",
        default_value = "localhost:2181"
    )]
    pub host: String,
    /// This machine's id (default: /etc/pop/machine-id, else /etc/machine-id, else
    /// /var/lib/dbus/machine-id: the same for every user).
    #[arg(long, global = true, env = "POP_MACHINE_ID")]
    pub machine_id: Option<String>,
    /// Where the agent keeps logs, pid file and service working directories
    /// (default: $XDG_STATE_HOME/pop/<machine-id>, or ~/.local/state/pop/<machine-id>).
    #[arg(long, global = true, env = "POP_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Print data as JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Authenticate to ZooKeeper (digest scheme) as USER:PASSWORD: the admin's for the
    /// commands that change pop's namespace, the machine's (from `pop machine add`) for
    /// the agent. Default: the user's credentials file ($XDG_CONFIG_HOME/pop/credentials,
    /// mode 0600), or for the agent <state dir>/credential. Prefer POP_AUTH or the file:
    /// other users can see a command line.
    #[arg(
        long,
        global = true,
        env = "POP_AUTH",
        hide_env_values = true,
        value_name = "USER:PASSWORD"
    )]
    pub auth: Option<auth::Secret>,
    /// Connect to ZooKeeper over TLS (its secureClientPort), trusting the CA
    /// certificates in this PEM file. Every server of --host must then be a TLS port.
    #[arg(long, global = true, env = "POP_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that requires one
    /// (`ssl.clientAuth=need`); with --tls-key and --tls-ca.
    #[arg(
        long,
        global = true,
        env = "POP_TLS_CERT",
        value_name = "FILE",
        requires_all = ["tls_key", "tls_ca"]
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "POP_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create pop's namespace in ZooKeeper (--force resets an existing one).
    Init {
        #[arg(long)]
        force: bool,
        /// Secure the namespace: only this digest identity may change it, anonymous
        /// clients can read nothing but /pop, each machine gets its own credential
        /// (`pop machine add`). Prefer it in POP_ADMIN_IDENTITY: others see command lines.
        #[arg(
            long,
            env = "POP_ADMIN_IDENTITY",
            hide_env_values = true,
            value_name = "USER:PASSWORD"
        )]
        admin_identity: Option<auth::Secret>,
    },
    /// Add a service of a type (built in: command, echo, http, python; or a stored
    /// plugin's) with the type's default settings.
    Add {
        /// The service type.
        service_type: String,
        /// Service name (default: the type's name).
        #[arg(long)]
        name: Option<String>,
        /// Port to listen on (0: any free port).
        #[arg(long)]
        port: Option<u16>,
        /// Extra settings, KEY=VALUE (VALUE is JSON if it parses, else a string).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Show services: where they should run, where they run, pids, uptime, restarts, problems.
    Status { service: Option<String> },
    /// List known machines and whether their agent is live.
    Machines,
    /// Register or remove a machine's credential (a secured namespace's admin only).
    Machine {
        #[command(subcommand)]
        action: commands::MachineAction,
    },
    /// Start the agent for this machine in the background.
    Start,
    /// Run the agent in the foreground.
    Fg {
        /// Write the agent's output to FILE instead, rotated by size (SIGHUP reopens it).
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
    },
    /// Stop this machine's agent and its services.
    Stop {
        /// Stop only the agent (e.g. to upgrade it); the next agent adopts the services.
        #[arg(long)]
        keep_services: bool,
    },
    /// Run a service on machines (default: this machine).
    Deploy {
        service: String,
        #[arg(long = "machine", value_name = "ID")]
        machines: Vec<String>,
    },
    /// Stop running a service on machines (default: this machine).
    Undeploy {
        service: String,
        #[arg(long = "machine", value_name = "ID")]
        machines: Vec<String>,
    },
    /// Change settings (restarts the service everywhere it runs).
    Set {
        service: String,
        #[arg(value_name = "KEY=VALUE", required_unless_present = "unset")]
        assignments: Vec<String>,
        /// Remove a setting.
        #[arg(long, value_name = "KEY")]
        unset: Vec<String>,
    },
    /// Remove a service (--force even if it is deployed).
    Remove {
        service: String,
        #[arg(long)]
        force: bool,
    },
    /// Run a task of a service's type on the machines it is deployed on, wait for them
    /// and show each machine's result (exit status 1 unless all succeeded).
    Run(commands::tasks::RunArgs),
    /// List a service's recent tasks with each machine's result.
    Tasks { service: String },
    /// Manage service types: plugins stored in ZooKeeper, and the built-in ones.
    Plugin {
        #[command(subcommand)]
        action: commands::plugin::PluginAction,
    },
    /// Print everything pop keeps in ZooKeeper.
    Dump {
        #[arg(long, value_enum, default_value = "yaml")]
        format: output::DumpFormat,
    },
    /// Show a service's output on this machine.
    Logs {
        service: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// How many lines of the end to show.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
    },
    /// Feed an agent journal to a fresh core and check it decides exactly as the live
    /// agent did (default: this machine's current journal).
    Replay {
        journal: Option<PathBuf>,
        /// Print only the summary (and any difference).
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run the deterministic simulator: the real core on simulated machines, ZooKeeper
    /// and network, with faults from one seed, checking safety and liveness.
    Sim(sim::SimArgs),
    /// Run a local standalone ZooKeeper for a single machine.
    Zk {
        #[command(subcommand)]
        action: zkcmd::ZkAction,
    },
    /// Print a shell completion script, e.g. `pop completions bash > /etc/bash_completion.d/pop`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page pop(1) as roff, e.g. `pop man | man -l -`.
    Man {
        /// Instead write pop.1 and a page per command (pop-status.1, ...) into DIR.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// The built-in TCP echo server behind the `echo` service type.
    #[command(hide = true)]
    EchoServer {
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

/// Runs the command line; prints errors as one line and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read now; gone from the environment before any thread or child process starts,
    // so services never inherit a credential (`pop start` hands the agent its own).
    std::env::remove_var("POP_AUTH");
    std::env::remove_var("POP_ADMIN_IDENTITY");
    // Before logging starts, so log lines go to the file, without terminal colours.
    if let Command::Fg {
        log_file: Some(path),
    } = &cli.command
    {
        let installed =
            agent_log::LogLimits::from_env().and_then(|limits| agent_log::install(path, limits));
        if let Err(e) = installed {
            eprintln!("pop: error: {}", output::one_line(&e));
            return ExitCode::FAILURE;
        }
    }
    context::init_logging(cli.verbose, matches!(cli.command, Command::Fg { .. }));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop: error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    match &cli.command {
        Command::Start => agent::start(&cli),
        Command::Fg { .. } => agent_runtime()?.block_on(agent::foreground(&cli)),
        Command::Stop { keep_services } => agent::stop(&cli, *keep_services),
        Command::Sim(args) => sim::run(&cli, args),
        Command::Replay { journal, quiet } => replay::run(&cli, journal.as_deref(), *quiet),
        Command::Logs {
            service,
            follow,
            lines,
        } => logs::show(&cli, service, *follow, *lines),
        Command::Zk { action } => zkcmd::run(&cli, action),
        Command::Completions { shell } => manual::completions(*shell),
        Command::Man { dir } => manual::man(dir.as_deref()),
        Command::EchoServer { host, port } => runtime()?.block_on(echo::serve(host, *port)),
        _ => runtime()?.block_on(commands::run(&cli)),
    }
}

/// The agent's runtime: one thread. Its event loop is one task that everything else
/// feeds, so a second worker adds no throughput; it added wake-ups (a worker that gets
/// a task wakes its idle sibling to look for more, about once per ZooKeeper client
/// tick) and a thread hop between a process's exit and the loop that restarts it.
/// Blocking work goes to the blocking pool (`spawn_blocking`), whose threads are named
/// so they are not taken for workers.
fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .thread_name(AGENT_BLOCKING_THREAD)
        .enable_all()
        .build()
}

/// The name of the agent's blocking-pool threads.
const AGENT_BLOCKING_THREAD: &str = "pop-blocking";
