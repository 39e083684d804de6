//! The cluster's invariants over a view of it: what ZooKeeper holds and what each
//! machine runs, nothing of how it got there. The pure world checks them after every
//! event (world/checks.rs); sim/madsim (pop-madsim) checks them on what the production
//! driver published, so both layers hold the cluster to the same rules.

use pop_core::environment::{env_dir, python_environment, EnvironmentSpec};
use pop_core::launch::{self, Host, Launch};
use pop_core::paths;
use pop_core::plugin::{builtin, decode_stored, Environment, Manifest};
use pop_core::settings::{parse_machines, Settings};
use pop_core::zk::SessionId;
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::zk_model::ZkModel;

/// How long a condition of each kind may hold (the layers derive them from their own
/// session timeouts and client timing).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A pid or state node that tells no truth (a gone process's, an old session's).
    pub stale_node: Duration,
    /// A healthy machine running what ZooKeeper does not want, or not registering what
    /// it runs as wanted (plus the service's start time).
    pub react: Duration,
}

/// A process running on a machine.
#[derive(Debug, Clone, Copy)]
pub struct ProcessView<'a> {
    pub service: &'a str,
    pub pid: u32,
    pub launch: &'a Launch,
    /// Asked to stop (it may linger until its grace ends).
    pub stopping: bool,
}

/// One machine as the checks see it.
#[derive(Debug, Clone)]
pub struct MachineView<'a> {
    pub id: &'a str,
    /// What its agent renders launches with.
    pub host: Host,
    /// Python environments on its disk: (service, spec hash).
    pub environments: &'a BTreeSet<(String, String)>,
    pub processes: Vec<ProcessView<'a>>,
    /// The session of its agent's client.
    pub session: Option<SessionId>,
    /// Since when it has been able to act (connected, not frozen); None while it cannot.
    pub healthy_since: Option<Timestamp>,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Must never hold.
    Violation(String),
    /// May hold for at most `bound`, counted from `not_before` at the earliest (None:
    /// the machine cannot act, so the clock does not run).
    Bounded {
        condition: String,
        bound: Duration,
        not_before: Option<Timestamp>,
    },
}

/// Conditions that may hold for a bounded time, with since when they have held.
#[derive(Debug, Default)]
pub struct Pending {
    since: BTreeMap<String, Timestamp>,
}

impl Pending {
    /// Notes that `condition` holds at `now` (and in `seen`); the violation once it has
    /// held for over `bound`, counted from `not_before` at the earliest.
    pub fn holds(
        &mut self,
        now: Timestamp,
        condition: String,
        bound: Duration,
        not_before: Option<Timestamp>,
        seen: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(not_before) = not_before else {
            // The machine cannot act: the clock has not started.
            self.since.insert(condition.clone(), now);
            seen.push(condition);
            return Ok(());
        };
        let since = *self.since.entry(condition.clone()).or_insert(now);
        let since = since.max(not_before);
        seen.push(condition.clone());
        if now.saturating_since(since) > bound {
            return Err(format!("for over {bound:?}: {condition}"));
        }
        Ok(())
    }

    /// Forgets the conditions not seen in the last round of checks.
    pub fn retain_seen(&mut self, seen: &[String]) {
        self.since.retain(|k, _| seen.contains(k));
    }
}

/// What ZooKeeper wants of a service on a machine, as far as a checker can tell.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Its nodes hold garbage, its type is not usable now, or its environment cannot be
    /// had: the agent rightly keeps what it has.
    Unknown,
    NotHere,
    /// To run with these settings, launched so.
    Run(Box<Settings>, Box<Launch>),
}

/// The manifest of type `name` as ZooKeeper holds it now, if it is usable.
pub fn manifest_now(zk: &ZkModel, name: &str) -> Option<Manifest> {
    if let Some(manifest) = builtin::get(name) {
        return Some(manifest.clone());
    }
    let node = zk.get(&paths::plugin(name))?;
    decode_stored(name, &node.data).ok()
}

/// The launch of `service` with `settings` and `manifest` on a machine, if its
/// environment (when it needs one) is among `environments`.
pub fn launch_of(
    host: &Host,
    environments: &BTreeSet<(String, String)>,
    service: &str,
    settings: &Settings,
    manifest: &Manifest,
) -> Option<Launch> {
    let python = match manifest.environment {
        Environment::None => None,
        Environment::Python => {
            let hash = EnvironmentSpec::from_settings(settings).ok()?.hash();
            if !environments.contains(&(service.to_string(), hash.clone())) {
                return None;
            }
            Some(python_environment(&env_dir(
                &host.state_dir,
                service,
                &hash,
            )))
        }
    };
    launch::render(service, host, settings, manifest, python.as_ref()).ok()
}

/// What ZooKeeper wants of `service` on the machine `m`.
pub fn target(zk: &ZkModel, m: &MachineView, service: &str) -> Target {
    if zk.get(&paths::service(service)).is_none() {
        return Target::NotHere;
    }
    let machines = zk
        .get(&paths::service_machines(service))
        .map(|n| parse_machines(&n.data));
    let settings = zk
        .get(&paths::service_settings(service))
        .map(|n| Settings::parse(&n.data));
    let settings = match (machines, settings) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return Target::Unknown,
        (Some(Ok(list)), Some(Ok(settings))) if list.contains(m.id) => settings,
        (Some(Ok(_)), Some(Ok(_))) | (None, _) | (_, None) => return Target::NotHere,
    };
    target_here(zk, m, service, &settings)
}

/// What `service` with `settings` is to run as on `m`, a machine its list names.
pub fn target_here(zk: &ZkModel, m: &MachineView, service: &str, settings: &Settings) -> Target {
    let Some(manifest) = manifest_now(zk, settings.service_type.as_str()) else {
        return Target::Unknown;
    };
    match launch_of(&m.host, m.environments, service, settings, &manifest) {
        Some(launch) => Target::Run(Box::new(settings.clone()), Box::new(launch)),
        None => Target::Unknown,
    }
}

/// The pids running on `m`, by service (orphans included).
pub fn per_service(m: &MachineView) -> BTreeMap<String, Vec<u32>> {
    let mut per_service: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for p in &m.processes {
        per_service
            .entry(p.service.to_string())
            .or_default()
            .push(p.pid);
    }
    per_service
}

/// At most one live process per service, orphans included.
pub fn duplicate_processes(m: &MachineView) -> Vec<Finding> {
    per_service(m)
        .iter()
        .filter(|(_, pids)| pids.len() > 1)
        .map(|(service, pids)| {
            Finding::Violation(format!(
                "{}: {service} runs {} times: {pids:?}",
                m.id,
                pids.len()
            ))
        })
        .collect()
}

/// Pid and state nodes tell the truth, and belong to the agent's session; counted from
/// `nodes_from`: since when ZooKeeper could expire sessions, which is when lingering
/// nodes go (None while it cannot: the clock does not run).
pub fn published_nodes(
    zk: &ZkModel,
    m: &MachineView,
    bounds: &Bounds,
    nodes_from: Option<Timestamp>,
) -> Vec<Finding> {
    let id = m.id;
    let per_service = per_service(m);
    let session = m.session.map(|s| s.0);
    let mut found = Vec::new();
    for service in zk.children(&paths::machine(id)) {
        let Some(node) = zk.get(&paths::machine_service(id, &service)) else {
            continue;
        };
        let pid = String::from_utf8_lossy(&node.data).to_string();
        let live = per_service
            .get(&service)
            .is_some_and(|pids| pids.iter().any(|p| p.to_string() == pid));
        let owned = Some(node.ephemeral_owner) == session;
        if !(live && owned) {
            found.push(Finding::Bounded {
                condition: format!("{id}: pid node of {service} says {pid} (live: {live}, owned by the agent's session: {owned})"),
                bound: bounds.stale_node,
                not_before: nodes_from,
            });
        }
    }
    for service in zk.children(paths::SERVICES) {
        let state = paths::service_state(&service, id);
        if zk.get(&state).is_some() && !per_service.contains_key(&service) {
            found.push(Finding::Bounded {
                condition: format!("{id}: state node of {service} but it does not run"),
                bound: bounds.stale_node,
                not_before: nodes_from,
            });
        }
    }
    found
}

/// Nothing runs that ZooKeeper does not want here, nor with old settings or an old
/// manifest; what runs as wanted is registered, by the agent's session.
pub fn running_processes(zk: &ZkModel, m: &MachineView, bounds: &Bounds) -> Vec<Finding> {
    let id = m.id;
    let session = m.session.map(|s| s.0);
    let mut found = Vec::new();
    for p in m.processes.iter().filter(|p| !p.stopping) {
        let service = p.service;
        match target(zk, m, service) {
            Target::Unknown => {}
            Target::NotHere => found.push(Finding::Bounded {
                condition: format!("{id}: {service} runs but ZooKeeper does not want it here"),
                bound: bounds.react,
                not_before: m.healthy_since,
            }),
            Target::Run(settings, wanted) => {
                if *p.launch != *wanted {
                    found.push(Finding::Bounded {
                        condition: format!("{id}: {service} runs with old settings"),
                        bound: bounds.react,
                        not_before: m.healthy_since,
                    });
                } else {
                    let node = zk.get(&paths::machine_service(id, service));
                    let registered = node.is_some_and(|n| {
                        n.data == p.pid.to_string().into_bytes()
                            && Some(n.ephemeral_owner) == session
                    });
                    if !registered {
                        found.push(Finding::Bounded {
                            condition: format!(
                                "{id}: {service} runs as pid {} but is not registered",
                                p.pid
                            ),
                            bound: bounds.react + settings.start_seconds,
                            not_before: m.healthy_since,
                        });
                    }
                }
            }
        }
    }
    found
}

/// What ZooKeeper says `m` should run: service name -> the launch; services whose
/// target cannot be told are left out (see [`unknown`]).
pub fn desired(zk: &ZkModel, m: &MachineView) -> BTreeMap<String, Launch> {
    let mut out = BTreeMap::new();
    for name in zk.children(paths::SERVICES) {
        if let Target::Run(_, launch) = target(zk, m, &name) {
            out.insert(name, *launch);
        }
    }
    out
}

/// The services whose target on `m` cannot be told (see [`Target::Unknown`]).
pub fn unknown(zk: &ZkModel, m: &MachineView) -> BTreeSet<String> {
    zk.children(paths::SERVICES)
        .into_iter()
        .filter(|name| target(zk, m, name) == Target::Unknown)
        .collect()
}

/// Liveness, once settled: `m` runs exactly its desired services, once each, as their
/// settings and types launch them, and ZooKeeper's ephemerals say so with the right
/// pids, in its agent's session, next to a state node and its agent node.
pub fn converged(zk: &ZkModel, m: &MachineView) -> Result<(), String> {
    converged_to(zk, m, &desired(zk, m), &unknown(zk, m))
}

/// [`converged`], with what `m` should run (`wanted`, and the services whose target
/// cannot be told) worked out by the caller: a fleet computes them for every machine
/// from one reading of the services rather than machines × services.
pub fn converged_to(
    zk: &ZkModel,
    m: &MachineView,
    wanted: &BTreeMap<String, Launch>,
    unknown: &BTreeSet<String>,
) -> Result<(), String> {
    let desired: BTreeSet<String> = wanted.keys().cloned().collect();
    let mut running = BTreeSet::new();
    for p in &m.processes {
        if !running.insert(p.service.to_string()) {
            return Err(format!("{}: {} runs twice", m.id, p.service));
        }
    }
    let known: BTreeSet<String> = running.difference(unknown).cloned().collect();
    if known != desired {
        return Err(format!(
            "{}: runs {running:?} but ZooKeeper wants {desired:?}",
            m.id
        ));
    }
    for p in &m.processes {
        if let Some(launch) = wanted.get(p.service) {
            if p.launch != launch {
                return Err(format!(
                    "{}: {} runs with old settings {:?}",
                    m.id, p.service, p.launch
                ));
            }
        }
        let node = zk.get(&paths::machine_service(m.id, p.service));
        let owner = node.map(|n| n.ephemeral_owner);
        if owner != m.session.map(|s| s.0) {
            return Err(format!(
                "{}: the node of {} is owned by session {owner:?}, not the agent's {:?}",
                m.id, p.service, m.session
            ));
        }
        let pid = node.map(|n| String::from_utf8_lossy(&n.data).to_string());
        if pid != Some(p.pid.to_string()) {
            return Err(format!(
                "{}: {} runs as pid {} but its node says {pid:?}",
                m.id, p.service, p.pid
            ));
        }
        if zk.get(&paths::service_state(p.service, m.id)).is_none() {
            return Err(format!("{}: {} has no state node", m.id, p.service));
        }
    }
    if zk.get(&paths::agent(m.id)).is_none() {
        return Err(format!("{}: no agent node", m.id));
    }
    for service in zk.children(&paths::machine(m.id)) {
        if !running.contains(&service) {
            return Err(format!(
                "{}: node for {service} but it is not running",
                m.id
            ));
        }
    }
    Ok(())
}

/// Liveness: the agent of `m` has a session ZooKeeper holds live.
pub fn live_session(zk: &ZkModel, m: &MachineView) -> Result<(), String> {
    if m.session.is_some_and(|s| zk.is_live(s)) {
        Ok(())
    } else {
        Err(format!("{}: no live session", m.id))
    }
}
