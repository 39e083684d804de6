//! What must hold of a world: convergence to what ZooKeeper says, and every agent's
//! journal replaying to the decisions it made.

use super::World;
use pop_core::launch::Launch;
use pop_core::paths;
use pop_core::settings::{parse_machines, Settings};
use std::collections::{BTreeMap, BTreeSet};

impl World {
    /// Replays every journal of every machine on a fresh core; the first difference.
    pub fn check_replay(&self) -> Result<(), String> {
        for m in &self.machines {
            for (n, records) in m.journals.iter().enumerate() {
                // Through the production encoding, so the JSON form is checked too.
                let text: String = records.iter().map(|r| r.to_line() + "\n").collect();
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

    /// What ZooKeeper says `machine` should run: service name -> settings.
    pub fn desired(&self, machine: &str) -> BTreeMap<String, Settings> {
        let mut out = BTreeMap::new();
        for name in self.zk.children(paths::SERVICES) {
            let machines = self
                .zk
                .get(&paths::service_machines(&name))
                .and_then(|n| parse_machines(&n.data).ok());
            let settings = self
                .zk
                .get(&paths::service_settings(&name))
                .and_then(|n| Settings::parse(&n.data).ok());
            if let (Some(machines), Some(settings)) = (machines, settings) {
                if machines.contains(machine) {
                    out.insert(name, settings);
                }
            }
        }
        out
    }

    /// Checks the converged state: each live machine runs exactly its desired services,
    /// once each, and ZooKeeper's ephemerals say so with the right pids.
    pub fn check_converged(&self) -> Result<(), String> {
        for m in self.machines.iter().filter(|m| !m.exited) {
            let wanted = self.desired(&m.id);
            let desired: BTreeSet<String> = wanted.keys().cloned().collect();
            let mut running = BTreeSet::new();
            for p in m.processes.values() {
                if !running.insert(p.service.clone()) {
                    return Err(format!("{}: {} runs twice", m.id, p.service));
                }
            }
            if running != desired {
                return Err(format!(
                    "{}: runs {running:?} but ZooKeeper wants {desired:?}",
                    m.id
                ));
            }
            for p in m.processes.values() {
                if let Some(settings) = wanted.get(&p.service) {
                    if p.launch != Launch::new(&p.service, &m.id, settings) {
                        return Err(format!(
                            "{}: {} runs with old settings {:?}",
                            m.id, p.service, p.launch
                        ));
                    }
                }
                let node = self.zk.get(&paths::machine_service(&m.id, &p.service));
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
                if self
                    .zk
                    .get(&paths::service_state(&p.service, &m.id))
                    .is_none()
                {
                    return Err(format!("{}: {} has no state node", m.id, p.service));
                }
            }
            if self.zk.get(&paths::agent(&m.id)).is_none() {
                return Err(format!("{}: no agent node", m.id));
            }
            for service in self.zk.children(&paths::machine(&m.id)) {
                if !running.contains(&service) {
                    return Err(format!(
                        "{}: node for {service} but it is not running",
                        m.id
                    ));
                }
            }
        }
        Ok(())
    }
}
