//! `pop-bench`: pop's benchmarks, each side by side in the same run with its anchors
//! (the fork/exec floor, supervisord), printing Markdown tables. Numbers, not pass/fail:
//! the harness fails only when something does not work at all. `--quick` runs every
//! benchmark small, to prove the harness works (CI does).
//!
//! Build pop first: `cargo build --release -p pop-cli`, then
//! `cargo run --release -p pop-bench -- <benchmark>` (see BENCHMARKS.md).

mod deploy;
mod env;
mod fleet;
mod floor;
mod idle;
mod measure;
mod popsys;
mod restart;
mod schedstat;
mod set;
mod sim;
mod supervisord;
mod zkstat;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(
    name = "pop-bench",
    about = "pop's benchmarks beside supervisord and the fork/exec floor"
)]
struct Args {
    /// The pop binary under test (a release build).
    #[arg(long, default_value = "target/release/pop")]
    pop: PathBuf,
    /// Small sizes and few repetitions: proves the harness works, numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Leave supervisord out (it is installed from PyPI into target/bench/).
    #[arg(long)]
    no_supervisord: bool,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Crash (SIGKILL after a healthy run) → new process running, and its pid registered.
    Restart {
        /// How many kills per system.
        #[arg(long)]
        kills: Option<usize>,
    },
    /// Deploy written → all services running and registered, for several counts.
    Deploy {
        /// Service counts (default 1,100,1000).
        #[arg(long, value_delimiter = ',')]
        counts: Option<Vec<usize>>,
    },
    /// Idle CPU and RSS with services running, and the time `pop stop` takes.
    Idle {
        /// Service counts (default 0,200,1000,10000).
        #[arg(long, value_delimiter = ',')]
        counts: Option<Vec<usize>>,
        /// Seconds of idleness measured per count.
        #[arg(long)]
        seconds: Option<u64>,
        /// The largest count supervisord is run with.
        #[arg(long, default_value = "1000")]
        supervisord_max: usize,
    },
    /// Settings changed → restarted with them.
    Set {
        #[arg(long)]
        changes: Option<usize>,
    },
    /// The simulator's speed: simulated events and seconds per wall second.
    Sim {
        #[arg(long)]
        seeds: Option<u64>,
    },
    /// Building a Python environment with one local wheel: uv against venv + pip.
    Env {
        /// How many builds per installer.
        #[arg(long)]
        builds: Option<usize>,
    },
    /// ZooKeeper's cost per change with N real agents against a 3-node ensemble:
    /// packets per `pop set` and per new service, watches, and the resync peak after
    /// the whole ensemble restarts.
    Fleet {
        /// Agent counts (default 10,30).
        #[arg(long, value_delimiter = ',')]
        agents: Option<Vec<usize>>,
        /// Services, spread one machine each (default 120).
        #[arg(long)]
        services: Option<usize>,
        /// Changes measured of each kind (default 8).
        #[arg(long)]
        changes: Option<usize>,
        /// Simulated fleets, MACHINESxSERVICES (default 10x120,30x120,100x1000).
        #[arg(long, value_delimiter = ',')]
        sim: Option<Vec<String>>,
    },
    /// Every benchmark above, with its defaults.
    All,
    /// (internal) The fork/exec floor supervisor: STAMP FILE NAME...
    #[command(hide = true)]
    Floor {
        stamp: String,
        file: String,
        names: Vec<String>,
    },
}

/// What every benchmark needs.
pub struct Env {
    pub quick: bool,
    pub pop: PathBuf,
    pub bench_exe: PathBuf,
    pub stamp_exe: PathBuf,
    pub supervisord: Option<supervisord::Install>,
}

impl Env {
    fn new(args: &Args) -> Result<Env> {
        let pop = std::fs::canonicalize(&args.pop).with_context(|| {
            format!(
                "{}: build it first (cargo build --release -p pop-cli)",
                args.pop.display()
            )
        })?;
        let bench_exe = std::env::current_exe().context("finding pop-bench")?;
        let stamp_exe = bench_exe.with_file_name("pop-bench-stamp");
        if !stamp_exe.exists() {
            bail!(
                "{} is missing: build the whole pop-bench package",
                stamp_exe.display()
            );
        }
        let supervisord = if args.no_supervisord {
            None
        } else {
            let cache = Path::new("target/bench");
            Some(supervisord::Install::ensure(cache)?)
        };
        Ok(Env {
            quick: args.quick,
            pop,
            bench_exe,
            stamp_exe,
            supervisord,
        })
    }
}

fn header(env: &Env) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let anchor = env
        .supervisord
        .as_ref()
        .and_then(|s| s.version().ok())
        .map_or("not run".to_string(), |v| format!("supervisord {v}"));
    format!(
        "machine: {cpu}, {cores} cores, Linux {}; pop {commit}; anchor: {anchor}{}",
        kernel.trim(),
        if env.quick {
            "; QUICK MODE (rough numbers)"
        } else {
            ""
        }
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Bench::Floor { stamp, file, names } = &args.bench {
        return floor::supervise(stamp, file, names);
    }
    let env = Env::new(&args)?;
    println!("{}\n", header(&env));
    match &args.bench {
        Bench::Restart { kills } => restart::run(&env, *kills)?,
        Bench::Deploy { counts } => deploy::run(&env, counts.clone())?,
        Bench::Idle {
            counts,
            seconds,
            supervisord_max,
        } => idle::run(&env, counts.clone(), *seconds, *supervisord_max)?,
        Bench::Set { changes } => set::run(&env, *changes)?,
        Bench::Sim { seeds } => sim::run(&env, *seeds)?,
        Bench::Env { builds } => env::run(&env, *builds)?,
        Bench::Fleet {
            agents,
            services,
            changes,
            sim,
        } => fleet::run(&env, agents.clone(), *services, *changes, sim.clone())?,
        Bench::All => {
            restart::run(&env, None)?;
            deploy::run(&env, None)?;
            idle::run(&env, None, None, 1000)?;
            set::run(&env, None)?;
            sim::run(&env, None)?;
            fleet::run(&env, None, None, None, None)?;
            // Last: its builder's supervisor reaps every child of this process.
            env::run(&env, None)?;
        }
        Bench::Floor { .. } => {}
    }
    Ok(())
}
