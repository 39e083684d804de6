//! The pure simulator's invariants (`pop_sim::invariants`, the same functions its world
//! checks after every event) on what the madsim cluster published: the ZooKeeper
//! model's tree, each machine's process table, and the session its agent's client holds.
//! The harness samples them every [`SAMPLE`] of virtual time; the bounds are the pure
//! simulator's reasoning redone for the simulated client's timing (zk_client.rs).

use crate::agent::{POP, SESSION_TIMEOUT, STATE_DIR};
use crate::machine::{Machine, ProcessTable};
use crate::zk_server::TICK;
use pop_core::launch::Host;
use pop_core::zk::SessionId;
use pop_core::Timestamp;
use pop_sim::invariants::{self, Bounds, Finding, MachineView, Pending, ProcessView};
use pop_sim::zk_model::ZkModel;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often the harness checks (conditions are seen up to this late).
pub const SAMPLE: Duration = Duration::from_millis(100);

/// A node of a gone process or an old session may linger until that session expires: at
/// worst the client gives up at 7/5 T plus one connection attempt (8 ticks of T/20) and
/// the server expires the session T later, at a tick boundary; plus a second to act and
/// a sample. (The pure simulator's client gives up at 1.5 T: there, 2.5 T + 1 s.)
pub fn bounds() -> Bounds {
    let t = SESSION_TIMEOUT;
    Bounds {
        stale_node: t * 7 / 5 + t * 8 / 20 + t + TICK + Duration::from_secs(1) + SAMPLE,
        // As the pure simulator's (its longest stop grace, 2 s, is longer than any
        // here), plus a sample.
        react: pop_sim::world::REACT_BOUND + SAMPLE,
    }
}

/// The checker's memory between samples, and the first violation.
#[derive(Debug, Default)]
pub struct Invariants {
    pending: Pending,
    healthy_from: BTreeMap<String, Timestamp>,
    pub violation: Option<String>,
}

/// A machine's view from its table (which the view borrows).
fn view<'a>(
    machine: &'a Machine,
    table: &'a ProcessTable,
    no_environments: &'a BTreeSet<(String, String)>,
    session: Option<SessionId>,
    healthy_since: Option<Timestamp>,
) -> MachineView<'a> {
    MachineView {
        id: machine.id.as_str(),
        host: Host {
            machine: machine.id.to_string(),
            pop: POP.into(),
            state_dir: STATE_DIR.into(),
        },
        // The simulated OS builds no environment: a service needing one is Unknown.
        environments: no_environments,
        processes: table
            .iter()
            .map(|((service, _), p)| ProcessView {
                service,
                pid: p.pid,
                launch: &p.launch,
                stopping: false,
            })
            .collect(),
        session,
        healthy_since,
    }
}

impl Invariants {
    /// One sample at `now`: safety over every machine. `unhindered` is by machine, in
    /// order: not killed, paused nor cut off, ZooKeeper up, links settled;
    /// `nodes_from` is when ZooKeeper last came up (None while it is down: no session
    /// can expire, so lingering nodes are not counted against anyone).
    pub fn check_safety(
        &mut self,
        now: Timestamp,
        zk: &ZkModel,
        machines: &[&Machine],
        unhindered: &[bool],
        nodes_from: Option<Timestamp>,
    ) {
        if self.violation.is_some() {
            return;
        }
        let bounds = bounds();
        let none = BTreeSet::new();
        let mut seen = Vec::new();
        let mut findings = Vec::new();
        for (machine, unhindered) in machines.iter().zip(unhindered) {
            let id = machine.id.to_string();
            let session = machine.agent_session();
            let connected = machine.connected_session().is_some_and(|s| zk.is_live(s));
            let healthy_since = if *unhindered && connected {
                Some(*self.healthy_from.entry(id).or_insert(now))
            } else {
                self.healthy_from.remove(&id);
                None
            };
            let table = machine.processes();
            let view = view(machine, &table, &none, session, healthy_since);
            findings.extend(invariants::duplicate_processes(&view));
            findings.extend(invariants::published_nodes(zk, &view, &bounds, nodes_from));
            findings.extend(invariants::running_processes(zk, &view, &bounds));
        }
        for finding in findings {
            let result = match finding {
                Finding::Violation(what) => Err(what),
                Finding::Bounded {
                    condition,
                    bound,
                    not_before,
                } => self
                    .pending
                    .holds(now, condition, bound, not_before, &mut seen),
            };
            if let Err(what) = result {
                self.violation.get_or_insert(what);
            }
        }
        self.pending.retain_seen(&seen);
    }
}

/// Liveness, once healed and settled: every machine's agent holds a live session and
/// its machine runs what ZooKeeper wants, registered (the pure simulator's
/// `check_live_sessions` and `check_converged`, less what only an in-process agent can
/// show: its watches and the stored types it reads).
pub fn check_converged(zk: &ZkModel, machines: &[&Machine]) -> Result<(), String> {
    let none = BTreeSet::new();
    for machine in machines {
        let table = machine.processes();
        let session = machine.connected_session();
        let view = view(machine, &table, &none, session, None);
        invariants::live_session(zk, &view)?;
        invariants::converged(zk, &view)?;
    }
    Ok(())
}
