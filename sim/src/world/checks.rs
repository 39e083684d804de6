//! What must hold of a world: convergence to what ZooKeeper says, and every agent's
//! journal replaying to the decisions it made.

use super::{World, SESSION_TIMEOUT};
use crate::invariants::{self, Bounds, Finding, MachineView, ProcessView};
use pop_core::event::{Action, Report};
use pop_core::launch::Launch;
use pop_core::paths;
use pop_core::plugin::builtin;
use pop_core::settings::Settings;
use pop_core::zk::{SessionId, ZkOp};
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A node of a process that is gone (or of an agent's old session) may linger until the
/// session it belongs to expires: at worst the client gives up at 1.5 T and the server
/// expires the session T later, plus a second to act.
pub const STALE_NODE_BOUND: Duration =
    Duration::from_millis(SESSION_TIMEOUT.as_millis() as u64 * 5 / 2 + 1000);
/// A healthy machine (connected, not frozen) stops or reconfigures a process within this
/// long of ZooKeeper saying so: the longest stop grace in the simulation (2 s), plus
/// the time to read the change.
pub const REACT_BOUND: Duration = Duration::from_secs(4);
/// While a keeper is connected, a machines list edited by hand (bypassing pop and the
/// index its plans keep) is taken on by a healthy machine it names within this long:
/// the keeper's read of the list and write of the entry, the machine's reads of its index
/// and the list, with a failed request's retry (0.5-1 s, jittered) for each. Counted once
/// the keeper and the machine are healthy and the keeper's term has begun (after a
/// keeper's session is lost, the next is elected within the session timeout).
pub const OUT_OF_BAND_BOUND: Duration = Duration::from_secs(3);
/// Reads one agent may have outstanding: the core's cap (the rest wait in its queue).
pub const MAX_PENDING_READS: usize = pop_core::MAX_OUTSTANDING_READS;
/// Requests one agent may have outstanding: the reads under the cap, and a write per
/// ephemeral for a handful of services.
pub const MAX_PENDING: usize = MAX_PENDING_READS + 32;

impl World {
    fn healthy(&self, machine: usize) -> bool {
        let m = &self.machines[machine];
        // The reaction bounds are for a normal network: a slow link stops their clock.
        !m.exited
            && m.net.extra_latency.is_zero()
            && m.net.down_since.is_none()
            && m.net.paused_since.is_none()
            && m.session.is_some_and(|s| self.zk.is_live(s))
    }

    /// Notes that `condition` holds now; a violation once it has held for `bound`,
    /// counted from `not_before` at the earliest (when the machine could act again).
    pub(super) fn bounded(
        &mut self,
        condition: String,
        bound: Duration,
        not_before: Option<Timestamp>,
        seen: &mut Vec<String>,
    ) {
        let now = self.now;
        if let Err(violation) = self
            .pending_since
            .holds(now, condition, bound, not_before, seen)
        {
            self.violate(violation);
        }
    }

    fn apply(&mut self, findings: Vec<Finding>, seen: &mut Vec<String>) {
        for finding in findings {
            match finding {
                Finding::Violation(what) => self.violate(what),
                Finding::Bounded {
                    condition,
                    bound,
                    not_before,
                } => self.bounded(condition, bound, not_before, seen),
            }
        }
    }

    /// The machine with index `machine` as the invariants see it.
    fn view(&self, machine: usize, healthy_since: Option<Timestamp>) -> MachineView<'_> {
        let mut view = self.place(machine);
        view.processes = self.machines[machine]
            .processes
            .values()
            .map(|p| ProcessView {
                service: &p.service,
                pid: p.pid,
                launch: &p.launch,
                stopping: p.stopping,
            })
            .collect();
        view.healthy_since = healthy_since;
        view
    }

    /// Safety, after every event: the shared invariants (see [`crate::invariants`]) and
    /// what only the world can see (the agent's requests, environments on disk, edits by
    /// hand). See the constants for the bounds.
    pub(crate) fn check_safety(&mut self) {
        let mut seen = Vec::new();
        let bounds = Bounds {
            stale_node: STALE_NODE_BOUND,
            react: REACT_BOUND,
        };
        for machine in 0..self.machines.len() {
            let id = self.machines[machine].id.clone();
            // Since when the machine has been able to act (connected, not frozen).
            let healthy = if self.healthy(machine) {
                Some(*self.healthy_from.entry(machine).or_insert(self.now))
            } else {
                self.healthy_from.remove(&machine);
                None
            };
            let view = self.view(machine, healthy);
            let duplicates = invariants::duplicate_processes(&view);
            let nodes =
                invariants::published_nodes(&self.zk, &view, &bounds, Some(Timestamp::default()));
            let running = invariants::running_processes(&self.zk, &view, &bounds);
            drop(view);
            self.apply(duplicates, &mut seen);
            let agent = &self.machines[machine].agent;
            let (pending, reads) = (agent.pending_requests(), agent.reads_in_flight());
            if reads > MAX_PENDING_READS {
                self.violate(format!(
                    "{id}: {reads} reads outstanding, over the cap of {MAX_PENDING_READS}"
                ));
            }
            if pending > MAX_PENDING {
                self.violate(format!("{id}: {pending} requests outstanding"));
            }
            self.apply(nodes, &mut seen);
            // Every process runs from an environment that is there.
            for p in self.machines[machine].processes.values() {
                if let Some(env) = World::environment_of(&p.launch, &p.service) {
                    if !self.machines[machine].environments.contains(&env) {
                        let what = format!(
                            "{id}: {} pid {} runs from environment {} that is not there",
                            p.service, p.pid, env.1
                        );
                        self.violate(what);
                        return;
                    }
                }
            }
            self.apply(running, &mut seen);
        }
        self.check_out_of_band(&mut seen);
        self.pending_since.retain_seen(&seen);
    }

    /// A spawn carries what the settings make with the built-in type or a manifest stored
    /// for their type at some time: a service whose type was never valid is never
    /// started, and one with a Python environment only from one built on the machine.
    pub(super) fn check_launch(
        &mut self,
        machine: usize,
        service: &str,
        settings: &Settings,
        launch: &Launch,
    ) {
        if !self.check_invariants {
            return;
        }
        if !self.launch_from_a_valid_manifest(machine, service, settings, launch) {
            let id = self.machines[machine].id.clone();
            self.violate(format!(
                "{id}: {service} started with a launch no valid manifest and built environment make: {launch:?}"
            ));
        }
        if builtin::get(settings.service_type.as_str()).is_none() {
            self.coverage("stored type started");
        }
        if launch.env.contains_key("VIRTUAL_ENV") {
            self.coverage("service started from its environment");
        }
    }

    /// Environments go only when nothing runs from them.
    pub(super) fn check_environment_removal(
        &mut self,
        machine: usize,
        service: &str,
        keep: &[String],
    ) {
        let running: Vec<(u32, String)> = self.machines[machine]
            .processes
            .values()
            .filter_map(|p| {
                let (s, hash) = World::environment_of(&p.launch, &p.service)?;
                (s == service && !keep.contains(&hash)).then_some((p.pid, hash))
            })
            .collect();
        if let Some((pid, hash)) = running.first() {
            let id = self.machines[machine].id.clone();
            self.violate(format!(
                "{id}: removed environment {hash} of {service} while pid {pid} runs from it"
            ));
        }
    }

    /// Garbage starts or stops nothing: an input that made the agent report bad data at
    /// a service's node brings no spawn or stop of that service, nor bad data at a
    /// type's node of a service of that type.
    pub(super) fn check_bad_data_changes_nothing(
        &mut self,
        machine: usize,
        actions: &[Action],
        phases_before: &BTreeMap<String, String>,
    ) {
        for action in actions {
            let Action::Report(Report::BadData { path, .. }) = action else {
                continue;
            };
            let services: Vec<String> = if let Some(service) = path
                .strip_prefix(paths::SERVICES)
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.split('/').next())
            {
                vec![service.to_string()]
            } else if let Some(name) = path
                .strip_prefix(paths::PLUGINS)
                .and_then(|r| r.strip_prefix('/'))
            {
                self.coverage("bad data at a stored type");
                self.services_of_type(name)
            } else {
                continue;
            };
            for service in services {
                // A restart that was due anyway (its backoff ran out) is not the bad data's.
                let due = phases_before.get(&service).is_some_and(|p| p == "backoff");
                let acted = actions.iter().any(|a| match a {
                    Action::Spawn { service: s, .. } => *s == service && !due,
                    Action::Stop { service: s, .. } => *s == service,
                    _ => false,
                });
                if acted {
                    let id = self.machines[machine].id.clone();
                    self.violate(format!(
                        "{id}: bad data at {path} started or stopped {service}"
                    ));
                }
            }
        }
    }

    /// The agent reconciles and publishes only what an input changed: doing everything
    /// again would do nothing more (see `Agent::audit`).
    pub(super) fn check_bookkeeping(&mut self, machine: usize) {
        if let Err(problem) = self.machines[machine].agent.audit() {
            let id = self.machines[machine].id.clone();
            self.violate(format!("{id}: {problem}"));
        }
    }

    /// Nothing is sent while the session is lost: after the driver said disconnected or
    /// expired, requests wait until it says connected again (they would only fail, or
    /// pile up in the client, and be replayed into a changed world).
    pub(super) fn check_requests_only_when_connected(
        &mut self,
        machine: usize,
        actions: &[Action],
    ) {
        if self.machines[machine].session_lost_told {
            if let Some(Action::Zk { op, .. }) =
                actions.iter().find(|a| matches!(a, Action::Zk { .. }))
            {
                let id = self.machines[machine].id.clone();
                self.violate(format!(
                    "{id}: sent {op:?} after being told the session was lost"
                ));
            }
        }
    }

    /// Restarts keep to the backoff policy: after a quick crash (a run shorter than
    /// `healthy_after`), the same settings are not started again within the initial
    /// backoff delay.
    pub(super) fn check_backoff(&mut self, machine: usize, service: &str, settings: &Settings) {
        let Some((at, ran, old)) = self.last_crash.remove(&(machine, service.to_string())) else {
            return;
        };
        let policy = pop_core::backoff::Backoff::default();
        // The agent hears of an exit a moment after it happens and may count the run
        // from a moment later: runs this close to healthy are not judged.
        const BOUNDARY: Duration = Duration::from_millis(10);
        let after = self.now.saturating_since(at);
        if self.check_invariants
            && ran + BOUNDARY < policy.healthy_after
            && *settings == old
            && after < policy.initial
        {
            let id = self.machines[machine].id.clone();
            self.violate(format!(
                "{id}: {service} restarted {after:?} after a quick crash (backoff starts at {:?})",
                policy.initial
            ));
        }
    }

    /// Liveness: every agent has a live session and watches its index.
    pub fn check_live_sessions(&self) -> Result<(), String> {
        for (index, m) in self.machines.iter().enumerate().filter(|(_, m)| !m.exited) {
            invariants::live_session(&self.zk, &self.place(index))?;
            let index = paths::assignments(&m.id);
            if !m.agent.is_watching(&index) {
                return Err(format!("{}: not watching {index}", m.id));
            }
        }
        Ok(())
    }

    pub fn any_phase(&self, service: &str, phase: &str) -> bool {
        self.machines.iter().any(|m| {
            m.agent
                .service_phases()
                .get(service)
                .is_some_and(|p| p == phase)
        })
    }

    pub fn note_coverage(&mut self, situation: &'static str) {
        self.coverage(situation);
    }

    pub fn coverage_if_down(&mut self, situation: &'static str, machine: &str) {
        if let Some(i) = self.machines.iter().position(|m| m.id == machine) {
            if self.machines[i].net.down_since.is_some() {
                self.coverage(situation);
            }
        }
    }

    /// Records the first violation; later ones follow from it more often than not.    /// Records the first violation; later ones follow from it more often than not.
    pub(crate) fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.trace.push(format!("{} VIOLATION {what}", self.now));
            self.violation = Some(what);
        }
    }

    /// An agent writes only its own nodes: its machine's pid nodes, its state nodes, its
    /// report, its index entries; as the keeper, its claim and any machine's index.
    pub(super) fn check_own_write(
        &mut self,
        machine: usize,
        session: Option<SessionId>,
        op: &ZkOp,
    ) {
        let id = self.machines[machine].id.clone();
        let path = match op {
            ZkOp::Create { path, .. }
            | ZkOp::SetData { path, .. }
            | ZkOp::Delete { path, .. }
            | ZkOp::SetAcl { path, .. } => path,
            ZkOp::GetData { .. }
            | ZkOp::GetChildren { .. }
            | ZkOp::Check { .. }
            | ZkOp::WatchTree { .. } => return,
            ZkOp::Multi { ops } => {
                for op in ops {
                    self.check_own_write(machine, session, op);
                }
                return;
            }
        };
        let own_result = matches!(
            pop_core::paths::Watched::parse(path),
            Some(pop_core::paths::Watched::TaskResult { machine, .. }) if machine == id
        ) && matches!(
            op,
            ZkOp::SetData {
                version: Some(_),
                ..
            }
        );
        // Its index (and `/assignments`, missing in an open namespace) and its entries.
        let own_index = *path == paths::ASSIGNMENTS
            || *path == paths::assignments(&id)
            || paths::parent(path) == Some(paths::assignments(&id).as_str());
        let own = own_index
            || *path == paths::machine(&id)
            || paths::parent(path) == Some(paths::machine(&id).as_str())
            || *path == paths::agent(&id)
            || path.ends_with(&format!("/state/{id}")) && path.starts_with(paths::SERVICES)
            || own_result
            || self.keeper_may_write(session, path);
        if !own {
            self.violate(format!("{id} writes a node that is not its own: {op:?}"));
        }
    }

    /// Replays every journal of every machine on a fresh core; the first difference.
    pub fn check_replay(&self) -> Result<(), String> {
        for m in &self.machines {
            for (n, records) in m.journals.iter().enumerate() {
                // Through the production encoding, so the JSON form is checked too.
                let mut text: String = records.iter().map(|r| r.to_line() + "\n").collect();
                if m.torn_journals.contains(&n) && records.len() > 1 {
                    // Cut the last line in half, as a kill mid-write would.
                    let last = text[..text.len() - 1].rfind('\n').map_or(0, |i| i + 1);
                    let cut = last + (text.len() - last) / 2;
                    let cut = (0..=cut)
                        .rev()
                        .find(|i| text.is_char_boundary(*i))
                        .unwrap_or(0);
                    text.truncate(cut);
                }
                let journal = pop_core::journal::decode(&text)
                    .map_err(|e| format!("{} journal {n}: {e}", m.id))?;
                let steps = pop_core::journal::replay(&journal)
                    .map_err(|e| format!("{} journal {n}: {e}", m.id))?;
                if let Some(i) = steps.iter().position(|s| !s.matches()) {
                    return Err(format!(
                        "{} journal {n}: input #{} replays differently: {:?}",
                        m.id,
                        i + 1,
                        steps[i]
                    ));
                }
            }
        }
        Ok(())
    }

    /// The services whose settings name the type `name`.
    fn services_of_type(&self, name: &str) -> Vec<String> {
        self.zk
            .children(paths::SERVICES)
            .into_iter()
            .filter(|s| {
                self.zk
                    .get(&paths::service_settings(s))
                    .and_then(|n| Settings::parse(&n.data).ok())
                    .is_some_and(|settings| settings.service_type.as_str() == name)
            })
            .collect()
    }

    /// Checks the converged state: each live machine runs exactly its desired services,
    /// once each, as their settings and types launch them, and ZooKeeper's ephemerals say
    /// so with the right pids; it reads and watches exactly the stored types its services
    /// have.
    pub fn check_converged(&self) -> Result<(), String> {
        let everything = self.wanted();
        for (index, m) in self.machines.iter().enumerate().filter(|(_, m)| !m.exited) {
            let targets = self.machine_targets(&everything, index);
            let (wanted, unknown, types) = (targets.desired, targets.unknown, targets.stored_types);
            let read: BTreeSet<String> = m.agent.stored_types().into_iter().collect();
            if read != types {
                return Err(format!(
                    "{}: reads the stored types {read:?}, its services have {types:?}",
                    m.id
                ));
            }
            for t in &types {
                if self.zk.get(&paths::plugin(t)).is_some()
                    && !m.agent.is_watching(&paths::plugin(t))
                {
                    return Err(format!("{}: does not watch {}", m.id, paths::plugin(t)));
                }
            }
            invariants::converged_to(&self.zk, &self.view(index, None), &wanted, &unknown)?;
        }
        Ok(())
    }
}
