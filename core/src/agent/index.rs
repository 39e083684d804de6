//! What the agent keeps about all of its services so that an input costs what it changed,
//! not what the agent holds: which services and nodes the input touched (only those are
//! reconciled and published), every service's next deadline in time order, and what the
//! report needs (counts per phase, the services it lists).
//!
//! Derived from the services alone, so it is not part of a journal snapshot: an agent read
//! from one rebuilds it.

use super::service::Service;
use super::Agent;
use crate::published::{Phase, PhaseCounts};
use crate::time::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// What the index holds of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// When it needs a tick.
    pub deadline: Option<Timestamp>,
    /// When its backoff ends: from then on any input, not only a tick, starts it again.
    pub restart_at: Option<Timestamp>,
    /// Its phase, when the report counts it (it should run here, or still runs).
    pub counted: Option<Phase>,
    /// The report lists it: counted, and not running as it should.
    pub listed: bool,
    /// It runs under the `fence` policy.
    pub runs_fenced: bool,
    /// It is wanted here with this stored (not built-in) type, whose manifest is read.
    pub stored_type: Option<String>,
}

impl Entry {
    /// What of it the report shows beyond its own details.
    fn in_report(entry: Option<&Entry>) -> (Option<Phase>, bool) {
        entry.map_or((None, false), |e| (e.counted, e.listed))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Index {
    entries: BTreeMap<String, Entry>,
    deadlines: BTreeSet<(Timestamp, String)>,
    restarts: BTreeSet<(Timestamp, String)>,
    phases: PhaseCounts,
    listed: BTreeSet<String>,
    fenced_runners: BTreeSet<String>,
    /// Stored types, with the services wanted here that have them.
    types: BTreeMap<String, BTreeSet<String>>,
}

impl Index {
    /// Sets what is known of `name` (`None`: it is gone). True when the report may have
    /// to say something else: its counts, its list, or a listed service's details.
    /// Types the service stopped or started having are added to `types_touched`.
    pub(crate) fn put(
        &mut self,
        name: &str,
        entry: Option<Entry>,
        types_touched: &mut BTreeSet<String>,
    ) -> bool {
        let old = self.entries.get(name);
        let report_changed = Entry::in_report(old) != Entry::in_report(entry.as_ref())
            || old.is_some_and(|e| e.listed)
            || entry.as_ref().is_some_and(|e| e.listed);
        if old == entry.as_ref() {
            return report_changed;
        }
        if let Some(old) = self.entries.remove(name) {
            if let Some(at) = old.deadline {
                self.deadlines.remove(&(at, name.to_string()));
            }
            if let Some(at) = old.restart_at {
                self.restarts.remove(&(at, name.to_string()));
            }
            if let Some(phase) = old.counted {
                self.phases.remove(phase);
            }
            if old.listed {
                self.listed.remove(name);
            }
            if old.runs_fenced {
                self.fenced_runners.remove(name);
            }
            if let Some(t) = old.stored_type {
                if let Some(services) = self.types.get_mut(&t) {
                    services.remove(name);
                    if services.is_empty() {
                        self.types.remove(&t);
                    }
                }
                types_touched.insert(t);
            }
        }
        if let Some(new) = entry {
            if let Some(at) = new.deadline {
                self.deadlines.insert((at, name.to_string()));
            }
            if let Some(at) = new.restart_at {
                self.restarts.insert((at, name.to_string()));
            }
            if let Some(phase) = new.counted {
                self.phases.add(phase);
            }
            if new.listed {
                self.listed.insert(name.to_string());
            }
            if new.runs_fenced {
                self.fenced_runners.insert(name.to_string());
            }
            if let Some(t) = &new.stored_type {
                self.types
                    .entry(t.clone())
                    .or_default()
                    .insert(name.to_string());
                types_touched.insert(t.clone());
            }
            self.entries.insert(name.to_string(), new);
        }
        report_changed
    }

    /// The earliest deadline of any service.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The services whose deadline has come, by name.
    pub(crate) fn due(&self, now: Timestamp) -> BTreeSet<String> {
        Self::until(&self.deadlines, now)
    }

    /// The services whose backoff has ended, by name.
    pub(crate) fn due_restarts(&self, now: Timestamp) -> BTreeSet<String> {
        Self::until(&self.restarts, now)
    }

    fn until(times: &BTreeSet<(Timestamp, String)>, now: Timestamp) -> BTreeSet<String> {
        times
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, name)| name.clone())
            .collect()
    }

    pub(crate) fn phases(&self) -> PhaseCounts {
        self.phases
    }

    /// The services the report lists, by name.
    pub(crate) fn listed(&self) -> &BTreeSet<String> {
        &self.listed
    }

    /// The services that run under the `fence` policy, by name.
    pub(crate) fn fenced_runners(&self) -> &BTreeSet<String> {
        &self.fenced_runners
    }

    /// The services wanted here with the stored type `name`; `None` when there are none.
    pub(crate) fn services_of_type(&self, name: &str) -> Option<&BTreeSet<String>> {
        self.types.get(name)
    }

    /// The stored types wanted services have.
    pub(crate) fn stored_types(&self) -> impl Iterator<Item = &String> {
        self.types.keys()
    }
}

/// What the current input changed, to reconcile and publish only that.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dirty {
    /// Services to reconcile, re-index and publish (a name may be one that is gone).
    pub services: BTreeSet<String>,
    /// Ephemeral nodes that may have a request to send, by path.
    pub nodes: BTreeSet<String>,
    /// Tasks to reconcile and re-index.
    pub tasks: BTreeSet<super::tasks::TaskKey>,
    /// The report must be rendered again.
    pub report: bool,
    /// Stored types whose need may have changed: read or forget them.
    pub types: BTreeSet<String>,
    /// Services whose task bookkeeping went: one undeployed waited for it to be forgotten.
    pub untasked: BTreeSet<String>,
}

impl Agent {
    /// What the index holds of `service`, as it is now.
    pub(super) fn entry(&self, service: &Service) -> Entry {
        let counted =
            service.desired(self.machine(), false, false).is_some() || !service.is_quiet();
        // A fenced service's backoff is served once the session is back.
        let waits = self.fenced && service.fences() && service.is_quiet();
        let stored_type = service
            .desired(self.machine(), false, false)
            .map(|settings| settings.service_type.as_str())
            .filter(|t| !crate::plugin::builtin::is_builtin(t))
            .map(str::to_string);
        Entry {
            deadline: service.deadline().filter(|_| !waits),
            restart_at: service.restart_at().filter(|_| !waits),
            counted: counted.then(|| service.phase()),
            listed: counted && service.needs_attention(),
            runs_fenced: service.runs_fenced(),
            stored_type,
        }
    }

    /// Builds the index from the services, and notes every node and the report as
    /// possibly changed (an agent read from a snapshot; the checkers).
    pub(super) fn reindex(&mut self) {
        let mut index = Index::default();
        let mut types = BTreeSet::new();
        for service in self.services.values() {
            index.put(&service.name, Some(self.entry(service)), &mut types);
        }
        self.index = index;
        self.types.decode_kept();
        self.stalled = self
            .nodes
            .iter()
            .filter(|(_, node)| node.stalled)
            .map(|(path, _)| path.clone())
            .collect();
        self.dirty = Dirty {
            services: BTreeSet::new(),
            nodes: self.nodes.keys().cloned().collect(),
            tasks: BTreeSet::new(),
            report: true,
            types: BTreeSet::new(),
            untasked: BTreeSet::new(),
        };
        self.reindex_tasks();
        self.indexed = true;
    }

    /// An input that bears on every service: all are reconciled.
    pub(super) fn mark_all_services(&mut self) {
        self.dirty.services.extend(self.services.keys().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(deadline: Option<u64>, counted: Option<Phase>, listed: bool) -> Entry {
        Entry {
            deadline: deadline.map(Timestamp::from_millis),
            restart_at: None,
            counted,
            listed,
            runs_fenced: false,
            stored_type: None,
        }
    }

    impl Index {
        fn put_(&mut self, name: &str, entry: Option<Entry>) -> bool {
            self.put(name, entry, &mut BTreeSet::new())
        }
    }

    #[test]
    fn stored_types_follow_the_services_that_have_them() {
        let mut index = Index::default();
        let typed = |t: &str| Entry {
            stored_type: Some(t.to_string()),
            ..entry(None, None, false)
        };
        let mut touched = BTreeSet::new();
        index.put("a", Some(typed("greeter")), &mut touched);
        index.put("b", Some(typed("greeter")), &mut touched);
        assert_eq!(touched, ["greeter".to_string()].into());
        index.put("a", Some(typed("tool")), &mut touched);
        index.put("b", None, &mut touched);
        assert_eq!(index.services_of_type("greeter"), None);
        assert_eq!(
            index.services_of_type("tool"),
            Some(&["a".to_string()].into())
        );
        assert_eq!(touched, ["greeter".to_string(), "tool".to_string()].into());
    }

    #[test]
    fn deadlines_stay_exact_as_entries_change_and_go() {
        let mut index = Index::default();
        index.put_("a", Some(entry(Some(30), None, false)));
        index.put_("b", Some(entry(Some(10), None, false)));
        index.put_("c", Some(entry(None, None, false)));
        assert_eq!(index.next_deadline(), Some(Timestamp::from_millis(10)));
        index.put_("b", Some(entry(Some(40), None, false)));
        assert_eq!(index.next_deadline(), Some(Timestamp::from_millis(30)));
        assert_eq!(
            index.due(Timestamp::from_millis(40)),
            ["a".to_string(), "b".to_string()].into()
        );
        index.put_("a", None);
        index.put_("b", Some(entry(None, None, false)));
        assert_eq!(index.next_deadline(), None);
        assert!(index.due(Timestamp::from_millis(1_000_000)).is_empty());
    }

    #[test]
    fn counts_and_the_list_follow_the_entries_and_say_when_the_report_changes() {
        let mut index = Index::default();
        assert!(index.put_("a", Some(entry(None, Some(Phase::Starting), true))));
        assert!(index.put_("b", Some(entry(None, Some(Phase::Running), false))));
        // A listed service may have changed details: the report is rendered again.
        assert!(index.put_("a", Some(entry(None, Some(Phase::Starting), true))));
        // A service running as it should, unchanged: nothing to render.
        assert!(!index.put_("b", Some(entry(None, Some(Phase::Running), false))));
        assert!(!index.put_("c", Some(entry(Some(5), None, false))));
        assert!(index.put_("a", Some(entry(None, Some(Phase::Running), false))));
        assert_eq!(index.phases().running, 2);
        assert_eq!(index.phases().starting, 0);
        assert!(index.listed().is_empty());
        assert!(index.put_("b", None));
        assert_eq!(index.phases().running, 1);
    }
}
