//! A cluster under madsim: a ZooKeeper node and one node per machine running its agent,
//! which talk over madsim's simulated TCP. Faults go through madsim itself (kill,
//! restart, a crash aimed at a journal write, clogged links); checks read what the cluster
//! published (the ZooKeeper tree, the process tables, the journals).

use crate::agent::{agent_main, OP_TIMEOUT};
use crate::contract;
use crate::digest::Digest;
use crate::disk::CRASH;
use crate::invariants::{self, Invariants, SAMPLE};
use crate::machine::Machine;
use crate::zk_server::{zk_main, SharedServer};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use pop_core::journal::{decode, replay};
use pop_core::names::MachineId;
use pop_core::paths;
use pop_core::settings::Settings;
use pop_core::zk::SessionId;
use pop_core::Timestamp;
use pop_io::clock::SystemClock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Once};
use std::time::Duration;

pub struct SimMachine {
    pub machine: Arc<Machine>,
    pub node: NodeHandle,
}

pub struct Cluster {
    pub zk: SharedServer,
    pub zk_node: NodeHandle,
    pub machines: Vec<SimMachine>,
    handle: Handle,
    /// The faults injected, with their virtual time: part of the digest.
    trace: Vec<String>,
    started: tokio::time::Instant,
    /// Machines whose agent the harness killed and has not restarted.
    killed: BTreeSet<String>,
    /// Machines whose agent is paused (SIGSTOP).
    paused: BTreeSet<String>,
    /// Machines cut off both ways, and those whose sends are cut.
    cut_off: BTreeSet<String>,
    cut_out: BTreeSet<String>,
    /// Until when a healed link may still hold back bytes: madsim retries a clogged
    /// link's bytes with a backoff of up to 10 s.
    settles_at: BTreeMap<String, tokio::time::Instant>,
    zk_down: bool,
    /// Since when ZooKeeper has been up (and able to expire sessions).
    zk_up_since: Timestamp,
    invariants: Invariants,
}

/// How long after a link heals its held bytes may still arrive (madsim's backoff cap).
const LINK_SETTLES: Duration = Duration::from_secs(10);

impl Cluster {
    /// Starts the server and one agent node per machine id.
    pub fn start(ids: &[&str]) -> Self {
        quiet_crashes();
        let handle = Handle::current();
        let zk = SharedServer::default();
        {
            let mut server = zk.lock();
            for path in paths::NAMESPACE {
                server.put(path, b"");
            }
        }
        let server = zk.clone();
        let zk_node = handle
            .create_node()
            .name("zk")
            .ip("10.0.0.1".parse().expect("an address"))
            .init(move || zk_main(server.clone()))
            .build();
        let machines = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let machine = Arc::new(Machine::new(
                    MachineId::new(id).expect("a valid machine id"),
                ));
                let m = Arc::clone(&machine);
                let node = handle
                    .create_node()
                    .name(format!("agent-{id}"))
                    .ip(format!("10.0.1.{}", i + 1).parse().expect("an address"))
                    .restart_on_panic_matching(CRASH)
                    .init(move || agent_main(Arc::clone(&m)))
                    .build();
                SimMachine { machine, node }
            })
            .collect();
        Cluster {
            zk,
            zk_node,
            machines,
            handle,
            trace: Vec::new(),
            started: tokio::time::Instant::now(),
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            cut_off: BTreeSet::new(),
            cut_out: BTreeSet::new(),
            settles_at: BTreeMap::new(),
            zk_down: false,
            zk_up_since: Timestamp::default(),
            invariants: Invariants::default(),
        }
    }

    /// Virtual time since the cluster started, as the checks count it.
    fn now(&self) -> Timestamp {
        Timestamp(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn settling(&mut self, id: &str) {
        let at = tokio::time::Instant::now() + LINK_SETTLES;
        self.settles_at.insert(id.to_string(), at);
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed();
        self.trace.push(format!("{at:?} {what}"));
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    pub fn machine(&self, id: &str) -> &SimMachine {
        self.machines
            .iter()
            .find(|m| m.machine.id.as_str() == id)
            .expect("a machine of the cluster")
    }

    /// SIGKILL of the agent: its tasks go, its processes and disk stay.
    pub fn kill(&mut self, id: &str) {
        let machine = self.machine(id);
        self.handle.kill(machine.node.id());
        machine.machine.agent_killed();
        self.killed.insert(id.to_string());
        // A kill ends a pause too (SIGKILL of a stopped process).
        if self.paused.remove(id) {
            self.machine(id).machine.resumed(SystemClock::new().now());
        }
        self.note(format!("kill {id}"));
    }

    /// Starts the agent again (after a kill): a new incarnation that adopts.
    pub fn restart(&mut self, id: &str) {
        let node = self.machine(id).node.id();
        self.handle.restart(node);
        self.killed.remove(id);
        self.note(format!("restart {id}"));
    }

    /// Whether `id`'s agent's client is connected to its session now.
    pub fn connected(&self, id: &str) -> bool {
        self.machine(id).machine.connected_session().is_some()
    }

    pub fn is_killed(&self, id: &str) -> bool {
        self.killed.contains(id)
    }

    pub fn zk_down(&self) -> bool {
        self.zk_down
    }

    /// Ends every fault: links open, killed agents and ZooKeeper started again, a crash
    /// not yet happened called off.
    pub fn heal(&mut self) {
        let net = NetSim::current();
        let ids: Vec<String> = self
            .machines
            .iter()
            .map(|m| m.machine.id.to_string())
            .collect();
        for id in &ids {
            let node = self.machine(id).node.id();
            net.unclog_node(node);
            if self.cut_off.remove(id) | self.cut_out.remove(id) {
                self.settling(id);
            }
            self.machine(id).machine.disk().cancel_crash();
            if self.is_killed(id) {
                self.restart(id);
            }
            if self.paused.contains(id) {
                self.resume(id);
            }
        }
        if self.zk_down {
            self.restart_zk();
        }
        self.note("heal".into());
    }

    /// Cuts the machine off the network both ways (its connections hold their bytes).
    pub fn clog(&mut self, id: &str) {
        NetSim::current().clog_node(self.machine(id).node.id());
        self.cut_off.insert(id.to_string());
        self.note(format!("clog {id}"));
    }

    pub fn unclog(&mut self, id: &str) {
        NetSim::current().unclog_node(self.machine(id).node.id());
        if self.cut_off.remove(id) | self.cut_out.remove(id) {
            self.settling(id);
        }
        self.note(format!("unclog {id}"));
    }

    /// Cuts what the machine sends: the server's frames still reach it (a one-way
    /// partition), so it hears of changes and asks about them, unanswered.
    pub fn clog_out(&mut self, id: &str) {
        NetSim::current().clog_node_out(self.machine(id).node.id());
        self.cut_out.insert(id.to_string());
        self.note(format!("clog {id} out"));
    }

    pub fn unclog_out(&mut self, id: &str) {
        NetSim::current().unclog_node_out(self.machine(id).node.id());
        if self.cut_out.remove(id) {
            self.settling(id);
        }
        self.note(format!("unclog {id} out"));
    }

    /// Freezes the agent (SIGSTOP): its tasks and timers stop, its client sends no
    /// pings, so the server expires its session; its processes run on.
    pub fn pause(&mut self, id: &str) {
        self.handle.pause(self.machine(id).node.id());
        self.paused.insert(id.to_string());
        self.note(format!("pause {id}"));
    }

    /// Thaws a paused agent (SIGCONT): its client finds its connection closed.
    pub fn resume(&mut self, id: &str) {
        self.handle.resume(self.machine(id).node.id());
        self.paused.remove(id);
        // On the agents' clock (std's, simulated): the contract checks excuse the pause.
        self.machine(id).machine.resumed(SystemClock::new().now());
        self.note(format!("resume {id}"));
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.paused.contains(id)
    }

    /// Kills the ZooKeeper node: every connection ends; the state stays.
    pub fn kill_zk(&mut self) {
        self.handle.kill(self.zk_node.id());
        self.zk_down = true;
        self.note("kill zk".into());
    }

    pub fn restart_zk(&mut self) {
        self.handle.restart(self.zk_node.id());
        self.zk_down = false;
        self.zk_up_since = self.now();
        self.note("restart zk".into());
    }

    /// The agent dies tearing its journal write after the next `writes` whole ones;
    /// madsim restarts its node 1-10 s later.
    pub fn crash_at_write(&mut self, id: &str, writes: u32) {
        self.machine(id).machine.disk().crash_after(writes);
        self.note(format!("crash {id} after {writes} writes"));
    }

    /// Writes a service as `pop deploy` would.
    pub fn deploy(&mut self, service: &str, settings: &str, on: &[&str]) {
        let machines = format!(
            "[{}]",
            on.iter()
                .map(|m| format!("\"{m}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut server = self.zk.lock();
        server.put(&paths::service(service), b"");
        server.put(&paths::service_settings(service), settings.as_bytes());
        server.put(&paths::service_state_dir(service), b"");
        server.put(&paths::service_machines(service), machines.as_bytes());
        drop(server);
        self.note(format!("deploy {service} {settings} on {machines}"));
    }

    /// `service` runs once on each of `on`, with its current settings, and each
    /// machine's agent is connected and published the pid in a node of its session,
    /// which the server holds live. The pids, by machine.
    pub fn converged(&self, service: &str, on: &[&str]) -> Result<BTreeMap<String, u32>, String> {
        let server = self.zk.lock();
        let data = server
            .model
            .get(&paths::service_settings(service))
            .map(|n| n.data.clone())
            .ok_or_else(|| format!("{service} is not deployed"))?;
        let wanted = Settings::parse(&data).map_err(|e| format!("{service}: {e}"))?;
        let mut pids = BTreeMap::new();
        for id in on {
            let table = self.machine(id).machine.processes();
            let running: Vec<_> = table
                .iter()
                .filter(|((s, _), _)| s == service)
                .map(|(_, p)| p)
                .collect();
            let [process] = running.as_slice() else {
                return Err(format!("{id}: {} processes of {service}", running.len()));
            };
            if process.settings != wanted {
                return Err(format!("{id}: {service} runs older settings"));
            }
            let node = server
                .model
                .get(&paths::machine_service(id, service))
                .ok_or_else(|| format!("{id}: {service} not published"))?;
            if node.data != process.pid.to_string().as_bytes() {
                return Err(format!(
                    "{id}: {service} published as {:?}, runs as {}",
                    String::from_utf8_lossy(&node.data),
                    process.pid
                ));
            }
            let Some(session) = self.machine(id).machine.connected_session() else {
                return Err(format!("{id}: its agent is not connected"));
            };
            if session != SessionId(node.ephemeral_owner) {
                return Err(format!("{id}: {service} published by another session"));
            }
            if !server.model.is_live(SessionId(node.ephemeral_owner)) {
                return Err(format!("{id}: {service} published by a dead session"));
            }
            pids.insert(id.to_string(), process.pid);
        }
        Ok(pids)
    }

    /// Waits (in virtual time) until `check` passes; panics with its last word if not
    /// within `within`.
    /// Checks the invariants every [`SAMPLE`] meanwhile.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        check: impl Fn(&Self) -> Result<T, String>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.check_safety();
            let last = match check(self) {
                Ok(value) => return value,
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{what}: not within {within:?}: {last}\nfaults: {:?}",
                    self.trace
                );
            }
            tokio::time::sleep(SAMPLE).await;
        }
    }

    /// Lets `time` pass (virtual), checking the invariants every [`SAMPLE`].
    pub async fn run_for(&mut self, time: Duration) {
        let until = tokio::time::Instant::now() + time;
        loop {
            self.check_safety();
            let now = tokio::time::Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep(SAMPLE.min(until - now)).await;
        }
    }

    /// The pure simulator's safety invariants (`pop_sim::invariants`) on what the
    /// cluster publishes now; panics at the first violation.
    pub fn check_safety(&mut self) {
        let now = self.now();
        let instant = tokio::time::Instant::now();
        let unhindered: Vec<bool> = self
            .machines
            .iter()
            .map(|m| {
                let id = m.machine.id.as_str();
                !self.zk_down
                    && !self.killed.contains(id)
                    && !self.paused.contains(id)
                    && !self.cut_off.contains(id)
                    && !self.cut_out.contains(id)
                    && self.settles_at.get(id).is_none_or(|at| instant >= *at)
            })
            .collect();
        let machines: Vec<&Machine> = self.machines.iter().map(|m| &*m.machine).collect();
        let nodes_from = (!self.zk_down).then_some(self.zk_up_since);
        let server = self.zk.lock();
        self.invariants
            .check_safety(now, &server.model, &machines, &unhindered, nodes_from);
        drop(server);
        if let Some(violation) = &self.invariants.violation {
            panic!(
                "invariant: {violation}\nat {:?}; faults: {:?}",
                self.started.elapsed(),
                self.trace
            );
        }
    }

    /// Liveness, after healing: the pure simulator's convergence on every machine (see
    /// [`invariants::check_converged`]).
    pub fn check_converged(&self) -> Result<(), String> {
        let machines: Vec<&Machine> = self.machines.iter().map(|m| &*m.machine).collect();
        invariants::check_converged(&self.zk.lock().model, &machines)
    }

    /// Every journal file of every machine decodes and replays to the actions recorded
    /// (a torn last line only where a crash was aimed). The number of files.
    pub fn replay_journals(&self) -> Result<usize, String> {
        let mut count = 0;
        for m in &self.machines {
            let disk = m.machine.disk();
            for (n, file) in disk.files().iter().enumerate() {
                let name = format!(
                    "{} file {n} (incarnation {})",
                    m.machine.id, file.incarnation
                );
                let text = String::from_utf8_lossy(&file.bytes);
                let journal = decode(&text).map_err(|e| format!("{name}: {e}"))?;
                // The agent died writing its first line: nothing to replay.
                if journal.records.is_empty() && journal.torn_tail.is_some() {
                    count += 1;
                    continue;
                }
                let steps = replay(&journal).map_err(|e| format!("{name}: {e}"))?;
                if let Some(step) = steps.iter().find(|s| !s.matches()) {
                    return Err(format!(
                        "{name}: at {:?} {:?} the replay gave {:?}, the agent {:?}",
                        step.at, step.input, step.actions, step.recorded
                    ));
                }
                count += 1;
            }
        }
        Ok(count)
    }

    /// The driver's contract with the core (see [`crate::contract`]), on every machine.
    pub fn check_contracts(&self) -> Result<(), String> {
        for m in &self.machines {
            let files = m.machine.disk().files().to_vec();
            contract::check_requests(&files, OP_TIMEOUT, &m.machine.resumes())
                .and_then(|()| contract::check_effects(&files, &m.machine.effects()))
                .map_err(|e| format!("{}: {e}", m.machine.id))?;
        }
        Ok(())
    }

    /// A service's process on `id` dies of itself (the agent is told, as by SIGCHLD).
    pub fn process_dies(&mut self, id: &str, service: &str) {
        let died = self.machine(id).machine.process_dies(service);
        self.note(format!("{service} on {id} dies ({died})"));
    }

    /// The server expires the session of `id`'s agent (as when it misses its pings).
    pub fn expire(&mut self, id: &str) {
        let session = self.machine(id).machine.session().map(|(s, _)| s);
        if let Some(session) = session {
            self.zk.lock().expire(session);
        }
        self.note(format!("expire {id}'s session {session:?}"));
    }

    /// The files whose last line is torn.
    pub fn torn_journals(&self) -> usize {
        self.machines
            .iter()
            .map(|m| {
                let disk = m.machine.disk();
                disk.files()
                    .iter()
                    .filter(|f| {
                        decode(&String::from_utf8_lossy(&f.bytes))
                            .is_ok_and(|j| j.torn_tail.is_some())
                    })
                    .count()
            })
            .sum()
    }

    /// Everything a run leaves, hashed: journals, the ZooKeeper tree, the fault trace.
    pub fn digest(&self) -> u64 {
        let mut digest = Digest::default();
        for m in &self.machines {
            for file in m.machine.disk().files() {
                digest.add(&file.bytes);
            }
        }
        let server = self.zk.lock();
        for (path, node) in server.model.paths() {
            digest.add(path.as_bytes());
            digest.add(&node.data);
            digest.add(&node.ephemeral_owner.to_le_bytes());
        }
        for line in &self.trace {
            digest.add(line.as_bytes());
        }
        digest.value()
    }
}

/// A crash aimed at a journal write is a panic by design: not worth a backtrace. Any
/// other panic is reported as usual.
fn quiet_crashes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied());
            if message != Some(CRASH) {
                default(info);
            }
        }));
    });
}
