//! A seeded run of the whole world: a chaos phase where an operator changes things and
//! faults are injected at random times, then a healed phase where every machine must
//! converge and stay quiet. Safety is checked after every event (`World::check_safety`).
//!
//! One u64 seed decides everything; sub-seeds for the world, the operator and the fault
//! schedule are derived from it, and so are the options (how many machines and services,
//! how often each fault happens), which `Options` prints.

mod operator;

use crate::world::{ProcessFaults, World};
use operator::Operator;
use pop_core::backoff::SeededRng;
use pop_core::Timestamp;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The relative weight of each kind of chaos step (0 = never), drawn per seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultWeights {
    pub operator: u64,
    pub partition: u64,
    pub one_way_partition: u64,
    pub slow_link: u64,
    pub pause: u64,
    pub agent_crash: u64,
    pub agent_upgrade: u64,
    pub failover: u64,
    pub expiry: u64,
    pub service_crash: u64,
    /// An operator's own connection is cut for a while.
    pub operator_cut: u64,
}

impl FaultWeights {
    /// Each kind of step with its weight, in the order `chaos_step` numbers them.
    fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("operator", self.operator),
            ("partition", self.partition),
            ("one_way", self.one_way_partition),
            ("slow", self.slow_link),
            ("pause", self.pause),
            ("agent_crash", self.agent_crash),
            ("upgrade", self.agent_upgrade),
            ("failover", self.failover),
            ("expiry", self.expiry),
            ("service_crash", self.service_crash),
            ("operator_cut", self.operator_cut),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    pub machines: usize,
    pub services: usize,
    /// Length of the chaos phase (simulated).
    pub chaos: Duration,
    /// Mean time between chaos steps.
    pub step_mean: Duration,
    pub weights: FaultWeights,
    pub process_faults: ProcessFaults,
    /// Operators' requests and replies lost at random, in thousandths.
    pub operator_loss_per_mille: u64,
    /// The namespace is secured: admin and per-machine credentials, ACLs on every node.
    pub secured: bool,
}

/// A sub-seed for one subsystem, so adding draws to one does not shift the others.
pub fn sub_seed(seed: u64, subsystem: &str) -> u64 {
    let mut h = SeededRng::new(seed).next_u64();
    for b in subsystem.bytes() {
        h = SeededRng::new(h ^ u64::from(b)).next_u64();
    }
    h
}

/// Parses a seed: decimal, `0x` hex, or a hex commit hash (its first 16 digits).
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("seed {text:?}: {e}"));
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    if t.len() >= 7 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        let digits = &t[..t.len().min(16)];
        return u64::from_str_radix(digits, 16).map_err(|e| format!("seed {text:?}: {e}"));
    }
    Err(format!(
        "seed {text:?}: expected a number, 0x-hex, or a commit hash"
    ))
}

impl Options {
    /// Everything derived from the seed; `machines` and `chaos` override the drawn ones.
    pub fn from_seed(seed: u64, machines: Option<usize>, chaos: Option<Duration>) -> Options {
        let mut rng = SeededRng::new(sub_seed(seed, "options"));
        let mut pick = |n: u64| rng.next_u64() % n;
        // Each fault is off for some seeds, so runs differ in kind, not only in timing.
        let mut weight = |max: u64| {
            if pick(4) == 0 {
                0
            } else {
                1 + pick(max)
            }
        };
        let weights = FaultWeights {
            operator: 10 + weight(20),
            partition: weight(4),
            one_way_partition: weight(3),
            slow_link: weight(3),
            pause: weight(3),
            agent_crash: weight(3),
            agent_upgrade: weight(2),
            failover: weight(2),
            expiry: weight(2),
            service_crash: weight(6),
            operator_cut: weight(2),
        };
        let mut rng = SeededRng::new(sub_seed(seed, "shape"));
        let mut pick = |n: u64| rng.next_u64() % n;
        Options {
            seed,
            machines: machines.unwrap_or(1 + pick(5) as usize).clamp(1, 7),
            services: 1 + pick(4) as usize,
            chaos: chaos.unwrap_or(Duration::from_secs(120)),
            step_mean: Duration::from_millis(300 + pick(1500)),
            weights,
            process_faults: ProcessFaults {
                spawn_fail_per_mille: pick(3) * 20,
                ignore_term_per_mille: pick(3) * 100,
            },
            operator_loss_per_mille: pick(4) * 50,
            // Its own draw, so the other options of a seed stay as they were.
            secured: SeededRng::new(sub_seed(seed, "security"))
                .next_u64()
                .is_multiple_of(2),
        }
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights: Vec<String> = self
            .weights
            .named()
            .iter()
            .map(|(name, w)| format!("{name}={w}"))
            .collect();
        write!(
            f,
            "seed={:#x} machines={} services={} chaos={:?} step_mean={:?} weights({}) \
             spawn_fail={}/1000 ignore_term={}/1000 operator_loss={}/1000 secured={}",
            self.seed,
            self.machines,
            self.services,
            self.chaos,
            self.step_mean,
            weights.join(" "),
            self.process_faults.spawn_fail_per_mille,
            self.process_faults.ignore_term_per_mille,
            self.operator_loss_per_mille,
            self.secured,
        )
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub options: Options,
    /// The first violation (safety during the run, liveness at its end), if any.
    pub failure: Option<String>,
    pub events: u64,
    pub simulated: Duration,
    pub coverage: BTreeMap<&'static str, u64>,
    pub trace: Vec<String>,
}

/// How long the healed phase may take before liveness must hold: the longest backoff
/// (60 s) plus time to notice and act.
pub const HEAL: Duration = Duration::from_secs(90);
/// After convergence, nothing may happen for this long (no flapping).
pub const QUIET: Duration = Duration::from_secs(30);

enum Ending {
    Heal(usize),
    Resume(usize),
    Fast(usize),
}

fn end(world: &mut World, ending: Ending) {
    match ending {
        Ending::Heal(m) => world.heal(m),
        Ending::Resume(m) => world.resume(m),
        Ending::Fast(m) => world.set_extra_latency(m, Duration::ZERO),
    }
}

pub fn run(options: &Options) -> Outcome {
    let ids: Vec<String> = (1..=options.machines).map(|i| format!("m{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let world_seed = sub_seed(options.seed, "world");
    let mut world = if options.secured {
        World::new_secured(&id_refs, world_seed)
    } else {
        World::new(&id_refs, world_seed)
    };
    world.process_faults = options.process_faults;
    world.operator_loss_per_mille = options.operator_loss_per_mille;
    world.check_invariants = true;
    // The stored type whose tasks the operators run.
    world.admin_put(
        &pop_core::paths::plugin("job"),
        crate::world::JOB.as_bytes(),
    );
    let start = world.now;
    let mut operator = Operator::new(sub_seed(options.seed, "operator"), options, &ids);
    let mut rng = SeededRng::new(sub_seed(options.seed, "faults"));
    let chaos_end = start + options.chaos;
    let mut endings: Vec<(Timestamp, Ending)> = Vec::new();
    let mean = options.step_mean.as_millis().max(1) as u64;
    let mut next_step = start;
    while world.violation.is_none() {
        next_step = next_step + Duration::from_millis(rng.next_u64() % (2 * mean));
        if next_step > chaos_end {
            break;
        }
        // Faults whose time is up end first.
        endings.sort_by_key(|(t, _)| *t);
        while endings.first().is_some_and(|(t, _)| *t <= next_step) {
            let (t, ending) = endings.remove(0);
            world.run_until(t);
            end(&mut world, ending);
        }
        world.run_until(next_step);
        if world.violation.is_some() {
            break;
        }
        chaos_step(&mut world, &mut operator, &mut rng, options, &mut endings);
    }
    // Heal: every fault ends, the operator repairs what it broke, liveness must follow.
    if world.violation.is_none() {
        endings.sort_by_key(|(t, _)| *t);
        for (t, ending) in std::mem::take(&mut endings) {
            world.run_until(t.max(world.now));
            end(&mut world, ending);
        }
        finish_commands(&mut world);
    }
    if world.violation.is_none() {
        operator.repair(&mut world);
        world.trace.push(format!("{} healed phase", world.now));
        world.run_for(HEAL);
    }
    let mut failure = world.violation.clone();
    if failure.is_none() {
        failure = world
            .check_converged()
            .and_then(|()| world.check_live_sessions())
            .and_then(|()| world.check_tasks_final())
            .and_then(|()| world.check_index())
            .err()
            .map(|e| format!("liveness, {HEAL:?} after healing: {e}"));
    }
    if failure.is_none() {
        let from = world.trace.len();
        world.run_for(QUIET);
        let busy: Vec<&String> = world.trace[from..]
            .iter()
            .filter(|l| is_activity(l))
            .collect();
        if let Some(first) = busy.first() {
            failure = Some(format!(
                "not quiet after converging: {} actions in {QUIET:?}, first: {first}",
                busy.len()
            ));
        }
    }
    if failure.is_none() {
        failure = world.check_replay().err();
    }
    Outcome {
        options: options.clone(),
        failure,
        events: world.events_handled,
        simulated: world.now.saturating_since(start),
        coverage: world.coverage.clone(),
        trace: std::mem::take(&mut world.trace),
    }
}

/// How long commands still running at the end of the chaos phase may take: a removal's
/// patience, with time for every retry.
pub const COMMANDS_END: Duration = Duration::from_secs(120);

/// Lets the operators' commands run to their end; one that does not is a violation.
fn finish_commands(world: &mut World) {
    let deadline = world.now + COMMANDS_END;
    while !world.terminals_idle() && world.violation.is_none() && world.now < deadline {
        world.run_for(Duration::from_millis(100));
    }
    if !world.terminals_idle() && world.violation.is_none() {
        world.violate(format!(
            "liveness: an operator's command still runs {COMMANDS_END:?} after the faults ended"
        ));
    }
}

/// A trace line that changes something: a spawn, a stop or a ZooKeeper write.
fn is_activity(line: &str) -> bool {
    line.contains(" Spawn {")
        || line.contains(" Stop {")
        || line.contains("op: Create")
        || line.contains("op: SetData")
        || line.contains("op: Delete")
}

fn chaos_step(
    world: &mut World,
    operator: &mut Operator,
    rng: &mut SeededRng,
    options: &Options,
    endings: &mut Vec<(Timestamp, Ending)>,
) {
    let table = options.weights.named();
    let total: u64 = table.iter().map(|(_, w)| w).sum();
    let mut roll = rng.next_u64() % total.max(1);
    let mut kind = 0;
    for (i, (_, weight)) in table.iter().enumerate() {
        if roll < *weight {
            kind = i;
            break;
        }
        roll -= weight;
    }
    let machine = (rng.next_u64() % options.machines as u64) as usize;
    // Cuts and pauses last from a blip to well past the session timeout (4 s).
    let outage = Duration::from_millis(50 + rng.next_u64() % 12_000);
    match kind {
        0 => operator.step(world),
        1 | 2 => {
            if !world.is_down(machine) {
                let (to, from) = if kind == 1 {
                    (true, true)
                } else if rng.next_u64().is_multiple_of(2) {
                    (true, false)
                } else {
                    (false, true)
                };
                world.partition(machine, to, from, false);
                endings.push((world.now + outage, Ending::Heal(machine)));
            }
        }
        3 => {
            let extra = Duration::from_millis(20 + rng.next_u64() % 800);
            world.set_extra_latency(machine, extra);
            endings.push((world.now + outage, Ending::Fast(machine)));
        }
        4 => {
            if !world.is_paused(machine) {
                world.pause(machine);
                endings.push((world.now + outage, Ending::Resume(machine)));
            }
        }
        5 => world.crash_agent(machine),
        6 => world.upgrade_agent(machine),
        7 => {
            let downtime = Duration::from_millis(100 + rng.next_u64() % 1500);
            world.failover(downtime);
        }
        8 => world.expire_session(machine),
        10 => {
            let terminal = (rng.next_u64() % crate::world::TERMINALS as u64) as usize;
            let (to, from) = match rng.next_u64() % 3 {
                0 => (true, true),
                1 => (true, false),
                _ => (false, true),
            };
            world.cut_terminal(terminal, to, from, world.now + outage);
        }
        _ => {
            let services: Vec<String> = world.machines[machine]
                .processes
                .values()
                .map(|p| p.service.clone())
                .collect();
            if !services.is_empty() {
                let service = services[(rng.next_u64() % services.len() as u64) as usize].clone();
                let code = (rng.next_u64() % 3) as i32;
                world.crash(
                    machine,
                    &service,
                    pop_core::event::ExitStatus {
                        code: Some(code),
                        signal: None,
                    },
                );
            }
        }
    }
}

/// Runs one seed, turning a panic (of the core, or the world's livelock check) into a
/// failure of that seed rather than of the whole batch.
pub fn run_catching(options: &Options) -> Outcome {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| run(options));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        let first_line = message.lines().next().unwrap_or("").to_string();
        Outcome {
            options: options.clone(),
            failure: Some(format!("panic: {first_line}")),
            events: 0,
            simulated: Duration::ZERO,
            coverage: BTreeMap::new(),
            trace: message.lines().map(str::to_string).collect(),
        }
    })
}
