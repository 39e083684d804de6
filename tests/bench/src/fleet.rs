//! Fleet cost: what one change costs ZooKeeper with N real agents (one machine id and
//! state directory each, all on this host) against a 3-node ensemble, with the services
//! spread one machine each. Per agent count:
//!
//! - packets per `pop set` of one service, and per new service (`pop add` + `pop deploy`
//!   on one machine): the ensemble's client packets (`mntr` received + sent, summed over
//!   the servers) over a fixed window from the command to the end of the window, minus
//!   the packets of an idle window of the same length (the agents' pings), averaged;
//! - watches held (`wchs`, summed) and per agent;
//! - resync: every server killed at once and started again; `mntr` sampled every
//!   100 ms gives the peak outstanding requests and packets per window on any server,
//!   and the time from the restart until every agent is back (connected, its agent node
//!   there, nothing outstanding).
//!
//! The services are written with pop's own commands, so the same benchmark measures
//! whatever layout the pop under test keeps.

use crate::measure::{kill_stamped, wait, Stamps};
use crate::zkstat::{self, Mntr};
use crate::Env;
use anyhow::{bail, Context, Result};
use pop_tests::Ensemble;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const LIMIT: Duration = Duration::from_secs(120);
const SAMPLE: Duration = Duration::from_millis(100);
const SERVERS: usize = 3;

/// What one agent count measured.
struct Row {
    agents: usize,
    services: usize,
    idle_per_window: f64,
    per_set: f64,
    per_new_service: f64,
    watches: i64,
    restart: Resync,
    expiry: Resync,
}

/// The load of a resync, on the busiest server, and how long until every agent was back.
#[derive(Debug, Default)]
struct Resync {
    peak_outstanding: i64,
    peak_packets: i64,
    back_after: Duration,
}

impl Resync {
    fn cells(&self) -> [String; 3] {
        [
            self.peak_outstanding.to_string(),
            self.peak_packets.to_string(),
            format!("{:.2} s", self.back_after.as_secs_f64()),
        ]
    }
}

pub fn run(
    env: &Env,
    agents: Option<Vec<usize>>,
    services: Option<usize>,
    changes: Option<usize>,
    simulated: Option<Vec<String>>,
) -> Result<()> {
    let counts = agents.unwrap_or(if env.quick { vec![3] } else { vec![10, 30] });
    let services = services.unwrap_or(if env.quick { 6 } else { 120 });
    let changes = changes.unwrap_or(if env.quick { 2 } else { 8 });
    let window = if env.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(3)
    };
    println!(
        "## Fleet: ZooKeeper cost per change ({services} services, one machine each; \
         {changes} changes; {SERVERS}-node ensemble; {window:?} windows)\n"
    );
    let mut rows = Vec::new();
    for &n in &counts {
        if n == 0 {
            bail!("--agents: every count must be at least 1");
        }
        rows.push(measure(env, n, services, changes, window)?);
    }
    print_table(&rows);
    println!(
        "\npkts: client packets over all servers, idle pings subtracted. restart: every \
         server killed and started at once; expiry: every agent's session expired at once \
         (agents frozen past the timeout, then thawed). outstanding, pkts/100ms: peaks on \
         any one server; back: until every agent is connected and registered and nothing \
         is outstanding.\n"
    );
    simulate(env, simulated, changes)
}

/// The same costs in the simulator (`pop sim --fleet`), for fleets of `MxS` (machines
/// × services) too large for this host.
fn simulate(env: &Env, sizes: Option<Vec<String>>, changes: usize) -> Result<()> {
    let sizes = sizes.unwrap_or_else(|| {
        let default: &[&str] = if env.quick {
            &["10x120"]
        } else {
            &["10x120", "30x120", "100x1000"]
        };
        default.iter().map(|s| s.to_string()).collect()
    });
    println!("## Fleet in the simulator: ops at the one modelled server\n");
    let header = [
        "machines",
        "services",
        "ops per set",
        "ops per new service",
        "watches",
        "watches/agent",
        "expiry: outstanding",
        "req/100ms",
        "requests",
        "back",
        "wall",
    ];
    let mut rows = Vec::new();
    for size in &sizes {
        let (machines, services) = size
            .split_once('x')
            .and_then(|(m, s)| Some((m.parse().ok()?, s.parse().ok()?)))
            .with_context(|| {
                format!("--sim {size:?}: expected MACHINESxSERVICES, e.g. 1000x10000")
            })?;
        let options = pop_sim::fleet::FleetOptions {
            machines,
            services,
            changes,
            seed: 15,
        };
        let r = pop_sim::fleet::run(&options).map_err(anyhow::Error::msg)?;
        rows.push(vec![
            r.machines.to_string(),
            r.services.to_string(),
            format!("{:.1}", r.ops_per_set),
            format!("{:.1}", r.ops_per_new_service),
            r.watches.to_string(),
            format!("{:.1}", r.watches_per_agent()),
            r.resync_peak_outstanding.to_string(),
            r.resync_peak_requests_per_window.to_string(),
            r.resync_requests.to_string(),
            format!("{:.2} s", r.resync_time.as_secs_f64()),
            format!("{:.1} s", r.wall.as_secs_f64()),
        ]);
    }
    aligned(&header, &rows);
    println!(
        "\nops: agents' requests and watch notifications; expiry: every session expired at \
         once, peaks over all agents (simulated time).\n"
    );
    Ok(())
}

fn print_table(rows: &[Row]) {
    let header = [
        "agents",
        "services",
        "idle pkts/window",
        "pkts per set",
        "pkts per new service",
        "watches",
        "watches/agent",
        "restart: outstanding",
        "pkts/100ms",
        "back",
        "expiry: outstanding",
        "pkts/100ms",
        "back",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = vec![
                r.agents.to_string(),
                r.services.to_string(),
                format!("{:.1}", r.idle_per_window),
                format!("{:.1}", r.per_set),
                format!("{:.1}", r.per_new_service),
                r.watches.to_string(),
                format!("{:.1}", r.watches as f64 / r.agents as f64),
            ];
            cells.extend(r.restart.cells());
            cells.extend(r.expiry.cells());
            cells
        })
        .collect();
    aligned(&header, &cells);
}

/// A plain table, columns right-aligned.
fn aligned(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|c| c.get(i).map(String::len))
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for c in rows {
        line(c.iter().map(String::as_str).collect());
    }
}

/// An ensemble, `pop init`, the services and `n` agents running them.
struct Fleet<'a> {
    env: &'a Env,
    ensemble: Ensemble,
    dir: TempDir,
    stamps: Stamps,
    machines: Vec<String>,
    agents: Vec<Child>,
}

fn measure(env: &Env, n: usize, services: usize, changes: usize, window: Duration) -> Result<Row> {
    let ensemble = Ensemble::start(SERVERS).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir().context("temp dir")?;
    let stamps = Stamps::new(dir.path());
    let mut fleet = Fleet {
        env,
        ensemble,
        stamps,
        machines: (0..n).map(|i| format!("fleet-{i}")).collect(),
        dir,
        agents: Vec::new(),
    };
    let result = fleet.measure(services, changes, window);
    fleet.stop_agents();
    kill_stamped(&fleet.stamps);
    result
}

impl Fleet<'_> {
    fn servers(&self) -> Vec<SocketAddr> {
        (0..self.ensemble.len())
            .map(|i| self.ensemble.client_addr(i))
            .collect()
    }

    fn state_dir(&self, machine: &str) -> std::path::PathBuf {
        self.dir.path().join(machine)
    }

    /// `pop <args>` as `machine`.
    fn pop(&self, machine: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.env.pop);
        cmd.args(args)
            .env("POP_HOST", self.ensemble.hosts())
            .env("POP_MACHINE_ID", machine)
            .env("POP_STATE_DIR", self.state_dir(machine))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn cli(&self, args: &[&str]) -> Result<()> {
        let out = self
            .pop("fleet-admin", args)
            .output()
            .with_context(|| format!("running pop {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "pop {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// `pop add` + `pop deploy` of a stamp service on `machine`.
    fn add_service(&self, name: &str, machine: &str) -> Result<()> {
        let command = format!(
            "command=exec {} {} {name}",
            self.env.stamp_exe.display(),
            self.stamps.path.display()
        );
        self.cli(&[
            "add",
            "command",
            "--name",
            name,
            "--set",
            &command,
            "--set",
            "start_seconds=0",
            "--set",
            "stop_timeout=1",
        ])?;
        self.cli(&["deploy", name, "--machine", machine])
    }

    fn start_agents(&mut self) -> Result<()> {
        for machine in self.machines.clone() {
            let state = self.state_dir(&machine);
            std::fs::create_dir_all(&state)?;
            let log = std::fs::File::create(state.join("agent.out"))?;
            let child = self
                .pop(&machine, &["fg"])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting pop fg")?;
            self.agents.push(child);
        }
        Ok(())
    }

    fn stop_agents(&mut self) {
        for child in &self.agents {
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for mut child in self.agents.drain(..) {
            let _ = wait("an agent to exit", Duration::from_secs(30), || {
                Ok(child.try_wait()?.map(|_| ()))
            });
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn check_agents_alive(&mut self) -> Result<()> {
        for (i, child) in self.agents.iter_mut().enumerate() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(
                    self.dir.path().join(&self.machines[i]).join("agent.out"),
                )
                .unwrap_or_default();
                bail!("agent {} exited ({status}):\n{log}", self.machines[i]);
            }
        }
        Ok(())
    }

    /// Packets over the ensemble in `window` starting now, after `f` ran.
    fn packets_over(&self, window: Duration, f: impl FnOnce() -> Result<()>) -> Result<i64> {
        let servers = self.servers();
        let start = Instant::now();
        let before = zkstat::packets(&servers);
        f()?;
        let left = window.saturating_sub(start.elapsed());
        if left.is_zero() {
            eprintln!("note: a change took longer than the {window:?} window");
        }
        std::thread::sleep(left);
        Ok(zkstat::packets(&servers) - before)
    }

    /// Waits until two windows in a row carry about the same packets: the agents have
    /// read what they were told of and only ping.
    fn wait_quiet(&self, window: Duration) -> Result<()> {
        let mut last = self.packets_over(window, || Ok(()))?;
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            let now = self.packets_over(window, || Ok(()))?;
            if (now - last).abs() <= 4 + last / 10 {
                return Ok(());
            }
            last = now;
        }
        eprintln!("note: the fleet never went quiet; measuring anyway");
        Ok(())
    }

    fn measure(&mut self, services: usize, changes: usize, window: Duration) -> Result<Row> {
        let n = self.machines.len();
        self.cli(&["init"])?;
        let names: Vec<String> = (0..services).map(|i| format!("svc-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            self.add_service(name, &self.machines[i % n])?;
        }
        self.start_agents()?;
        self.stamps
            .wait_all(services, LIMIT)
            .context("every service running")?;
        self.check_agents_alive()?;
        self.wait_quiet(window)?;
        let idle_windows = 3;
        let mut idle = 0;
        for _ in 0..idle_windows {
            idle += self.packets_over(window, || Ok(()))?;
        }
        let idle = idle as f64 / idle_windows as f64;

        let mut per_set = 0.0;
        for change in 0..changes {
            let name = &names[(change * 7) % services];
            let old = self.stamps.wait_new(name, None, LIMIT)?;
            let stamps = &self.stamps;
            let packets = self.packets_over(window, || {
                self.cli(&["set", name, &format!("env={{\"V\":\"{change}\"}}")])?;
                stamps.wait_new(name, Some(old.pid), LIMIT).map(|_| ())
            })?;
            per_set += packets as f64 - idle;
        }
        let per_set = per_set / changes as f64;

        let mut per_new = 0.0;
        for added in 0..changes {
            let name = format!("new-{added}");
            let machine = self.machines[(added * 3) % n].clone();
            let stamps = &self.stamps;
            let packets = self.packets_over(window, || {
                self.add_service(&name, &machine)?;
                stamps.wait_new(&name, None, LIMIT).map(|_| ())
            })?;
            per_new += packets as f64 - idle;
        }
        let per_new = per_new / changes as f64;
        self.check_agents_alive()?;
        self.wait_quiet(window)?;
        let watches = zkstat::watches(&self.servers())?;
        let restart = self.restart_ensemble()?;
        self.wait_quiet(window)?;
        let expiry = self.expire_all()?;
        Ok(Row {
            agents: n,
            services,
            idle_per_window: idle,
            per_set,
            per_new_service: per_new,
            watches,
            restart,
            expiry,
        })
    }

    /// Kills every server at once and starts them again (sessions survive: the servers
    /// restore them, and the agents reconnect and re-arm their watches).
    fn restart_ensemble(&mut self) -> Result<Resync> {
        let servers = self.servers();
        for i in 0..servers.len() {
            self.ensemble.kill(i);
        }
        let start = Instant::now();
        for i in 0..servers.len() {
            self.ensemble.start_node(i).map_err(anyhow::Error::msg)?;
        }
        // A restarted server counts from zero.
        self.sample_until_back(start, vec![Some(0); servers.len()])
    }

    /// Every agent's session expires at once: the agents are frozen (SIGSTOP) until the
    /// servers have dropped their sessions, then thawed together; each opens a new
    /// session and reads everything again.
    fn expire_all(&mut self) -> Result<Resync> {
        for child in &self.agents {
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
        }
        let gone = wait("every agent's session to expire", LIMIT, || {
            Ok(self.live_agents().is_empty().then_some(()))
        });
        let start = Instant::now();
        for child in &self.agents {
            // SAFETY: kill with our child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        gone?;
        let servers = self.servers();
        let last = servers
            .iter()
            .map(|a| Mntr::read(*a).ok().map(|m| m.packets()))
            .collect();
        self.sample_until_back(start, last)
    }

    /// Samples `mntr` every 100 ms until every agent is back: its report node there,
    /// every agent connected, nothing outstanding. The peaks are those of any one server.
    fn sample_until_back(&mut self, start: Instant, mut last: Vec<Option<i64>>) -> Result<Resync> {
        let servers = self.servers();
        let mut resync = Resync::default();
        let end = start + LIMIT;
        loop {
            let sampled = Instant::now();
            let mut connections = 0;
            let mut outstanding = 0;
            for (i, addr) in servers.iter().enumerate() {
                let Ok(m) = Mntr::read(*addr) else {
                    last[i] = None;
                    continue;
                };
                resync.peak_outstanding = resync.peak_outstanding.max(m.outstanding());
                if let Some(before) = last[i] {
                    resync.peak_packets = resync.peak_packets.max(m.packets() - before);
                }
                last[i] = Some(m.packets());
                connections += m.connections();
                outstanding += m.outstanding();
            }
            if connections >= self.machines.len() as i64
                && outstanding == 0
                && self.live_agents().len() == self.machines.len()
            {
                resync.back_after = start.elapsed();
                return Ok(resync);
            }
            if Instant::now() > end {
                bail!("the agents were not all back within {LIMIT:?}");
            }
            self.check_agents_alive()?;
            std::thread::sleep(SAMPLE.saturating_sub(sampled.elapsed()));
        }
    }

    /// The fleet's machines whose agent `pop machines` calls live (its report node is
    /// there).
    fn live_agents(&self) -> Vec<String> {
        let Ok(out) = self.pop("fleet-admin", &["--json", "machines"]).output() else {
            return Vec::new();
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return Vec::new();
        };
        value["machines"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|m| m["agent_live"].as_bool() == Some(true))
            .filter_map(|m| m["machine"].as_str())
            .filter(|m| self.machines.iter().any(|ours| ours == m))
            .map(str::to_string)
            .collect()
    }
}
