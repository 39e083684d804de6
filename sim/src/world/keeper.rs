//! The keeper in the simulated world: machines lists edited by hand (bypassing pop's
//! plans and the index they keep), what only the keeper may write, the bound within
//! which such an edit reaches the machine it names, and, at the end of a healed run,
//! the index equal to the lists.

use super::checks::OUT_OF_BAND_BOUND;
use super::World;
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::settings::{parse_machines, render_machines};
use pop_core::zk::SessionId;
use pop_core::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// Since when the keeper has held its term, and whose it is (a machine's index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Term {
    pub keeper: usize,
    pub since: Timestamp,
}

/// Edits by hand that named a machine, not yet taken on by its agent: (service,
/// machine index) -> when.
pub(crate) type ByHand = BTreeMap<(String, usize), Timestamp>;

impl World {
    /// Somebody writes a service's machines list with a ZooKeeper client, bypassing pop
    /// (and the index pop's plans keep with it): the keeper must index it.
    pub fn edit_list_by_hand(&mut self, service: &str, machines: &BTreeSet<String>) {
        let path = paths::service_machines(service);
        let before = self
            .zk
            .get(&path)
            .and_then(|n| parse_machines(&n.data).ok())
            .unwrap_or_default();
        self.coverage("machines list edited by hand");
        self.admin_put_unindexed(&path, &render_machines(machines));
        for m in machines.difference(&before) {
            if let Some(i) = self.machines.iter().position(|x| x.id == *m) {
                self.by_hand.insert((service.to_string(), i), self.now);
            }
        }
    }

    /// The keeper now: the machine whose live session owns `/pop/keeper`.
    fn keeper(&self) -> Option<usize> {
        let owner = self.zk.get(paths::KEEPER)?.ephemeral_owner;
        self.machines.iter().position(|m| {
            m.session
                .is_some_and(|s| s.0 == owner && self.zk.is_live(s))
        })
    }

    /// The keeper writes the index and claims its node; nothing else the agent writes is
    /// outside its own nodes. Only the keeper's session writes the index (a request of a
    /// session that has ended fails).
    pub(super) fn keeper_may_write(&self, session: Option<SessionId>, path: &str) -> bool {
        if path == paths::KEEPER {
            return true;
        }
        let index = path
            .strip_prefix(paths::ASSIGNMENTS)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| matches!(rest.split('/').count(), 1 | 2));
        let keeps = |s: SessionId| {
            !self.zk.is_live(s)
                || self
                    .zk
                    .get(paths::KEEPER)
                    .is_some_and(|node| node.ephemeral_owner == s.0)
        };
        index && session.is_none_or(keeps)
    }

    /// While a keeper is connected and healthy, an edit by hand that names a healthy
    /// machine is taken on by its agent (it has read the list naming it) within
    /// [`OUT_OF_BAND_BOUND`], counted from when the edit, the machine's health and the
    /// keeper's term all began.
    pub(super) fn check_out_of_band(&mut self, seen: &mut Vec<String>) {
        let keeper = self.keeper();
        self.term = match (keeper, self.term) {
            (Some(k), Some(term)) if term.keeper == k => Some(term),
            (Some(k), _) => Some(Term {
                keeper: k,
                since: self.now,
            }),
            (None, _) => None,
        };
        let keeper_from = self.term.and_then(|term| {
            let healthy = self.healthy_from.get(&term.keeper)?;
            Some((*healthy).max(term.since))
        });
        let edits: Vec<((String, usize), Timestamp)> =
            self.by_hand.iter().map(|(k, t)| (k.clone(), *t)).collect();
        for ((service, machine), at) in edits {
            let id = self.machines[machine].id.clone();
            let still_named = self
                .zk
                .get(&paths::service_machines(&service))
                .and_then(|n| parse_machines(&n.data).ok())
                .is_some_and(|list| list.contains(&id));
            let agent = &self.machines[machine].agent;
            if !still_named || agent.knows_deployed_here(&service) {
                self.by_hand.remove(&(service, machine));
                continue;
            }
            let not_before = match (keeper_from, self.healthy_from.get(&machine)) {
                (Some(k), Some(m)) => Some(k.max(*m).max(at)),
                _ => None,
            };
            self.bounded(
                format!("{id}: listed for {service} by hand, but its agent has not taken it on"),
                OUT_OF_BAND_BOUND,
                not_before,
                seen,
            );
        }
    }

    /// After a healed run: a keeper holds its term, and an entry `/assignments/<m>/<s>`
    /// exists iff `<s>`'s machines list names `<m>`.
    pub fn check_index(&self) -> Result<(), String> {
        if self.keeper().is_none() {
            return Err("no keeper".to_string());
        }
        let mut lists: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for service in self.zk.children(paths::SERVICES) {
            if ServiceName::new(&service).is_err() {
                continue;
            }
            let Some(list) = self
                .zk
                .get(&paths::service_machines(&service))
                .and_then(|n| parse_machines(&n.data).ok())
            else {
                continue;
            };
            for m in list.iter().filter(|m| MachineId::new(m).is_ok()) {
                if self.zk.get(&paths::assignment(m, &service)).is_none() {
                    return Err(format!(
                        "the machines list of {service} names {m}, but {} is missing",
                        paths::assignment(m, &service)
                    ));
                }
            }
            lists.insert(service, list);
        }
        for m in self.zk.children(paths::ASSIGNMENTS) {
            for service in self.zk.children(&paths::assignments(&m)) {
                if !lists.get(&service).is_some_and(|list| list.contains(&m)) {
                    return Err(format!(
                        "{} exists, but no machines list of {service} names {m}",
                        paths::assignment(&m, &service)
                    ));
                }
            }
        }
        Ok(())
    }
}
