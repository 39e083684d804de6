//! What ZooKeeper wants of every machine, read once: each service's machines list and
//! settings are parsed a single time and filed under the machines they name, so the
//! convergence check costs services + machines × their own services, not machines ×
//! services parses (30 million documents per check for 1,000 machines × 10,000
//! services in fleet mode).

use super::launches::Target;
use super::World;
use pop_core::launch::Launch;
use pop_core::paths;
use pop_core::plugin::builtin;
use pop_core::settings::{parse_machines, Settings};
use std::collections::{BTreeMap, BTreeSet};

/// Every service's nodes, parsed once.
pub(super) struct Wanted {
    /// Services whose list or settings hold garbage: their target is unknown everywhere.
    garbled: BTreeSet<String>,
    /// By machine id: the services whose list names it, with their settings.
    named: BTreeMap<String, Vec<(String, Settings)>>,
}

/// What one machine should run, as far as the world can tell.
pub(super) struct MachineTargets {
    /// Service name -> the launch.
    pub desired: BTreeMap<String, Launch>,
    /// Services whose target cannot be told (see [`Target::Unknown`]).
    pub unknown: BTreeSet<String>,
    /// The stored (not built-in) types of the services its list names.
    pub stored_types: BTreeSet<String>,
}

impl World {
    /// Reads every service once (see [`Wanted`]); as [`World::target`] reads each.
    pub(super) fn wanted(&self) -> Wanted {
        let mut wanted = Wanted {
            garbled: BTreeSet::new(),
            named: BTreeMap::new(),
        };
        for service in self.zk.children(paths::SERVICES) {
            let machines = self
                .zk
                .get(&paths::service_machines(&service))
                .map(|n| parse_machines(&n.data));
            let settings = self
                .zk
                .get(&paths::service_settings(&service))
                .map(|n| Settings::parse(&n.data));
            match (machines, settings) {
                (Some(Err(_)), _) | (_, Some(Err(_))) => {
                    wanted.garbled.insert(service);
                }
                (Some(Ok(list)), Some(Ok(settings))) => {
                    for machine in list {
                        wanted
                            .named
                            .entry(machine)
                            .or_default()
                            .push((service.clone(), settings.clone()));
                    }
                }
                (None, _) | (_, None) => {}
            }
        }
        wanted
    }

    /// What the machine with index `machine` should run, from `wanted`.
    pub(super) fn machine_targets(&self, wanted: &Wanted, machine: usize) -> MachineTargets {
        let mut targets = MachineTargets {
            desired: BTreeMap::new(),
            unknown: wanted.garbled.clone(),
            stored_types: BTreeSet::new(),
        };
        let named = wanted.named.get(&self.machines[machine].id);
        for (service, settings) in named.into_iter().flatten() {
            let t = settings.service_type.as_str();
            if !builtin::is_builtin(t) {
                targets.stored_types.insert(t.to_string());
            }
            match self.target_here(service, settings, machine) {
                Target::Run(_, launch) => {
                    targets.desired.insert(service.clone(), *launch);
                }
                Target::Unknown => {
                    targets.unknown.insert(service.clone());
                }
                Target::NotHere => {}
            }
        }
        targets
    }

    /// What ZooKeeper says the machine with index `machine` should run: service name ->
    /// the launch; services whose target cannot be told are left out.
    pub fn desired(&self, machine: usize) -> BTreeMap<String, Launch> {
        self.machine_targets(&self.wanted(), machine).desired
    }
}
