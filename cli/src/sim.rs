//! `pop sim`: the deterministic simulator from the command line. One seed gives one
//! run; a range gives a batch with one line per failing seed and how to reproduce it.

use crate::output::{print_json, table};
use crate::Cli;
use anyhow::{anyhow, bail, Context, Result};
use pop_sim::chaos::{parse_seed, run_catching, Options, Outcome};
use pop_sim::fleet::FleetOptions;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The seed: a number, 0x-hex, or a commit hash (default: from the clock, printed).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<String>,
    /// A batch of seeds, A..B (B excluded).
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Machines (1-7; default: drawn from the seed). With --fleet: any number
    /// (default 100).
    #[arg(long)]
    machines: Option<usize>,
    /// Fleet mode: no chaos; services spread one machine each, and what changes and a
    /// mass session expiry cost the ZooKeeper model (ops per change, watches, resync peak).
    #[arg(long, conflicts_with_all = ["seeds", "duration", "trace"])]
    fleet: bool,
    /// With --fleet: services (default 1000).
    #[arg(long, requires = "fleet")]
    services: Option<usize>,
    /// With --fleet: changes measured of each kind (default 8).
    #[arg(long, requires = "fleet")]
    changes: Option<usize>,
    /// Length of the chaos phase in simulated time, e.g. 120s, 10m (default 120s).
    #[arg(long)]
    duration: Option<String>,
    /// Print the whole trace of a single run.
    #[arg(long)]
    trace: bool,
    /// Where failing runs write their trace (default: the current directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    trace_dir: PathBuf,
}

fn parse_range(text: &str) -> Result<(u64, u64)> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| anyhow!("--seeds {text:?}: expected A..B"))?;
    let a = parse_seed(a).map_err(|e| anyhow!(e))?;
    let b = parse_seed(b).map_err(|e| anyhow!(e))?;
    if b <= a {
        bail!("--seeds {text:?}: the range is empty");
    }
    Ok((a, b))
}

fn reproduce(args: &SimArgs, seed: u64) -> String {
    let mut cmd = format!("pop sim --seed {seed:#x}");
    if let Some(m) = args.machines {
        cmd.push_str(&format!(" --machines {m}"));
    }
    if let Some(d) = &args.duration {
        cmd.push_str(&format!(" --duration {d}"));
    }
    cmd
}

fn write_trace(args: &SimArgs, outcome: &Outcome) -> Result<PathBuf> {
    let path = args
        .trace_dir
        .join(format!("pop-sim-{:#x}.trace", outcome.options.seed));
    let mut text = format!("# {}\n", outcome.options);
    for line in &outcome.trace {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn run(cli: &Cli, args: &SimArgs) -> Result<()> {
    if args.fleet {
        return fleet(cli, args);
    }
    let chaos = args
        .duration
        .as_deref()
        .map(crate::duration::parse)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    if let Some(m) = args.machines {
        if !(1..=7).contains(&m) {
            bail!("--machines {m}: from 1 to 7");
        }
    }
    let (from, to) = match (&args.seeds, &args.seed) {
        (Some(range), _) => parse_range(range)?,
        (None, Some(seed)) => {
            let s = parse_seed(seed).map_err(|e| anyhow!(e))?;
            (s, s + 1)
        }
        (None, None) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            (now, now + 1)
        }
    };
    let single = to - from == 1;
    let started = Instant::now();
    let (mut events, mut simulated) = (0u64, Duration::ZERO);
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for seed in from..to {
        let options = Options::from_seed(seed, args.machines, chaos);
        if single && !cli.json {
            println!("{options}");
        }
        let outcome = run_catching(&options);
        events += outcome.events;
        simulated += outcome.simulated;
        for (k, v) in &outcome.coverage {
            *coverage.entry(k).or_default() += v;
        }
        if single && args.trace {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        if let Some(failure) = &outcome.failure {
            let trace = write_trace(args, &outcome)?;
            if !cli.json {
                println!(
                    "FAIL seed {seed:#x}: {failure}\n     reproduce: {}\n     trace: {}",
                    reproduce(args, seed),
                    trace.display()
                );
            }
            failures.push(json!({
                "seed": format!("{seed:#x}"),
                "failure": failure,
                "reproduce": reproduce(args, seed),
                "trace": trace,
            }));
        }
    }
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    if cli.json {
        print_json(&json!({
            "seeds": to - from,
            "failures": failures,
            "events": events,
            "simulated_seconds": simulated.as_secs_f64(),
            "wall_seconds": wall,
            "events_per_second": events as f64 / wall,
            "simulated_seconds_per_second": simulated.as_secs_f64() / wall,
            "coverage": coverage,
        }))?;
    } else {
        println!(
            "{} seed(s), {} failed; {events} events, {:.0} s simulated in {wall:.1} s \
             ({:.0} events/s, {:.0} simulated s/s)",
            to - from,
            failures.len(),
            simulated.as_secs_f64(),
            events as f64 / wall,
            simulated.as_secs_f64() / wall
        );
        let rows: Vec<Vec<String>> = coverage
            .iter()
            .map(|(k, v)| vec![k.to_string(), v.to_string()])
            .collect();
        print!("{}", table(&["SITUATION", "TIMES"], &rows));
    }
    if !failures.is_empty() {
        bail!("{} of {} seeds failed", failures.len(), to - from);
    }
    Ok(())
}

/// `pop sim --fleet`: one fleet run, as a table (or JSON).
fn fleet(cli: &Cli, args: &SimArgs) -> Result<()> {
    let seed = match &args.seed {
        Some(seed) => parse_seed(seed).map_err(|e| anyhow!(e))?,
        None => 0,
    };
    let options = FleetOptions {
        machines: args.machines.unwrap_or(100),
        services: args.services.unwrap_or(1000),
        changes: args.changes.unwrap_or(8),
        seed,
    };
    let r = pop_sim::fleet::run(&options).map_err(|e| anyhow!("pop sim --fleet: {e}"))?;
    if cli.json {
        return print_json(&json!({
            "machines": r.machines,
            "services": r.services,
            "ops_per_set": r.ops_per_set,
            "ops_per_new_service": r.ops_per_new_service,
            "watches": r.watches,
            "watches_per_agent": r.watches_per_agent(),
            "resync_peak_outstanding": r.resync_peak_outstanding,
            "resync_peak_requests_per_100ms": r.resync_peak_requests_per_window,
            "resync_requests": r.resync_requests,
            "resync_seconds": r.resync_time.as_secs_f64(),
            "wall_seconds": r.wall.as_secs_f64(),
        }));
    }
    let row = vec![
        r.machines.to_string(),
        r.services.to_string(),
        format!("{:.1}", r.ops_per_set),
        format!("{:.1}", r.ops_per_new_service),
        r.watches.to_string(),
        format!("{:.1}", r.watches_per_agent()),
        r.resync_peak_outstanding.to_string(),
        r.resync_peak_requests_per_window.to_string(),
        format!("{:.2} s", r.resync_time.as_secs_f64()),
        format!("{:.1} s", r.wall.as_secs_f64()),
    ];
    print!(
        "{}",
        table(
            &[
                "MACHINES",
                "SERVICES",
                "OPS/SET",
                "OPS/NEW SERVICE",
                "WATCHES",
                "WATCHES/AGENT",
                "RESYNC PEAK OUTSTANDING",
                "RESYNC PEAK REQ/100MS",
                "RESYNC",
                "WALL",
            ],
            &[row]
        )
    );
    println!(
        "ops: agents' requests and watch notifications at the one modelled server; resync: \
         every session expired at once, until every agent was back (simulated time)"
    );
    Ok(())
}
