//! What the agent writes about itself and its services: a pid node and a state node per
//! ready service, and its report. Only what an input changed is rendered again, and a
//! node is written only when what it should hold differs from what it holds.

use super::ephemeral::EphemeralNode;
use super::service::Control;
use super::target::Listing;
use super::{Agent, Pending};
use crate::event::Action;
use crate::paths::{self, Watched};
use crate::published::{render_pid, AgentReport, ServiceReport, REPORT_LIMIT};
use crate::time::Timestamp;

impl Agent {
    /// After `name` was reconciled: forget it if it is not deployed here and has
    /// nothing running, then index it and set what its nodes should hold.
    pub(super) fn settle(&mut self, name: &str) {
        // An adopted one stays until the index is read, with its generation and backoff;
        // one no longer deployed here until its tasks here are done: they run to their
        // end (a list gone is no proof the service is: it may be written again, and a
        // task stopped for it would run twice).
        let gone = self.services.get(name).is_some_and(|s| {
            s.target.listing == Listing::Gone
                && s.is_quiet()
                && s.control != Control::AwaitingTarget
                && !self.tasks.keeps(name)
        });
        // Nothing of it runs any more, nor will: its environments go with it.
        let removed = gone.then(|| self.services.remove(name)).flatten();
        if removed.is_some() {
            // Not followed any more: what was wrong with its nodes is no concern here.
            let prefix = format!("{}/", paths::service(name));
            let stale: Vec<String> = self
                .problems
                .keys()
                .filter(|path| path.starts_with(&prefix))
                .cloned()
                .collect();
            for path in stale {
                self.clear_problem(&path);
            }
        }
        if removed.is_some_and(|s| s.has_environments()) {
            self.actions.push_back(Action::RemoveEnvironments {
                service: name.to_string(),
                keep: Vec::new(),
            });
        }
        let machine = self.config.machine.as_str();
        let (entry, pid, state) = match self.services.get(name) {
            Some(service) => (
                Some(self.entry(service)),
                service.ready_pid().map(render_pid),
                service
                    .state_node(machine, &self.config.hostname)
                    .map(|s| s.render()),
            ),
            None => {
                self.newest_read
                    .remove(&Watched::Machines(name.to_string()).path());
                self.newest_read
                    .remove(&Watched::Settings(name.to_string()).path());
                (None, None, None)
            }
        };
        let pid_path = paths::machine_service(machine, name);
        let state_path = paths::service_state(name, machine);
        if self.index.put(name, entry, &mut self.dirty.types) {
            self.dirty.report = true;
        }
        self.want(pid_path, pid);
        self.want(state_path, state);
    }

    /// Sets what the node at `path` should hold (`None`: it should not exist).
    fn want(&mut self, path: String, data: Option<Vec<u8>>) {
        match self.nodes.get_mut(&path) {
            Some(node) => node.want(data),
            // Nothing wanted and nothing tracked: nothing to do (no blind deletes).
            None if data.is_none() => return,
            None => {
                let mut node = EphemeralNode::new(path.clone());
                node.want(data);
                self.nodes.insert(path.clone(), node);
            }
        }
        self.dirty.nodes.insert(path);
    }

    /// Renders the report if it may have changed, and sends what the changed nodes need.
    pub(super) fn publish(&mut self) {
        if self.session_id().is_none() {
            return; // the nodes (and the report) stay noted until the session is back
        }
        // Rendered only when it can be sent: while a request for the node is out, what
        // it should hold is not looked at, and many inputs may change it meanwhile.
        let path = paths::agent(self.machine());
        let ready = self.nodes.get(&path).is_none_or(EphemeralNode::is_idle);
        if self.dirty.report && ready {
            self.dirty.report = false;
            let report = (!self.shutting_down).then(|| self.report().render());
            self.want(path, report);
        }
        let acl = self.config.access.own_node();
        for path in std::mem::take(&mut self.dirty.nodes) {
            let covered = self.covered(&path);
            let Some(node) = self.nodes.get_mut(&path) else {
                continue;
            };
            let next = node.next(&acl, covered);
            if node.settled_absent() {
                self.nodes.remove(&path);
            }
            if let Some((step, op)) = next {
                self.send(op, Pending::Ephemeral { path, step });
            }
        }
    }

    /// The agent's own node: who it is, its services counted by phase, and those that are
    /// not running as they should.
    pub(crate) fn report(&self) -> AgentReport {
        let listed = self.index.listed();
        let services = listed
            .iter()
            .take(REPORT_LIMIT)
            .filter_map(|name| Some((name.clone(), self.services.get(name)?.report())))
            .collect();
        let problems = self
            .problems
            .iter()
            .take(REPORT_LIMIT)
            .map(|(path, problem)| (path.clone(), problem.clone()))
            .collect();
        let omitted = |n: usize| u32::try_from(n.saturating_sub(REPORT_LIMIT)).unwrap_or(u32::MAX);
        AgentReport {
            containment: self.config.containment.clone(),
            hostname: self.config.hostname.clone(),
            machine: self.machine().to_string(),
            phases: self.index.phases(),
            pid: self.config.agent_pid,
            problems,
            problems_omitted: omitted(self.problems.len()),
            services,
            services_omitted: omitted(listed.len()),
            started_at: self.started_at.map(Timestamp::as_secs_f64),
            version: self.config.version.clone(),
        }
    }

    /// For tests: what the agent knows of one service, listed in its report or not.
    pub fn service_report(&self, name: &str) -> Option<ServiceReport> {
        self.services.get(name).map(|s| s.report())
    }

    /// For the checkers: whether the bookkeeping that lets an input cost only what it
    /// changed is exact. Reconciling and publishing every service, node and the report
    /// again must do nothing and change nothing, and the index must be the one rebuilding
    /// it gives. Costs as much as the agent holds; call it between inputs.
    pub fn audit(&self) -> Result<(), String> {
        if self.exited || !self.indexed {
            return Ok(());
        }
        let index_reads = self
            .pending
            .values()
            .chain(self.queued_reads.iter().map(|(_, pending)| pending))
            .filter(|p| matches!(p, Pending::Read(Watched::Assignments(_))))
            .count();
        if index_reads != self.own_index_reads as usize {
            return Err(format!(
                "counts {} reads of its index out, but {index_reads} are",
                self.own_index_reads
            ));
        }
        let mut full = self.clone();
        full.actions.clear();
        full.reindex();
        if full.index != self.index {
            return Err(format!(
                "the index is not what the services make of it: kept {:?}, rebuilt {:?}",
                self.index, full.index
            ));
        }
        if full.task_index != self.task_index {
            return Err(format!(
                "the task index is not what the tasks make of it: kept {:?}, rebuilt {:?}",
                self.task_index, full.task_index
            ));
        }
        let needed: Vec<&String> = self.index.stored_types().collect();
        let read: Vec<&String> = self.types.names().collect();
        if needed != read {
            return Err(format!(
                "reads the stored types {read:?}, but the wanted services have {needed:?}"
            ));
        }
        full.mark_all_services();
        full.mark_all_tasks();
        full.converge();
        if !full.actions.is_empty() {
            return Err(format!(
                "reconciling everything again would do more: {:?}",
                full.actions
            ));
        }
        if full.tasks != self.tasks {
            return Err(format!(
                "reconciling everything again changes the agent's tasks: {}",
                self.tasks.first_difference(&full.tasks)
            ));
        }
        // Without actions, this is all reconciling and publishing can change.
        let changed = [
            (full.services != self.services, "services"),
            (full.nodes != self.nodes, "nodes"),
            (full.newest_read != self.newest_read, "reads"),
            (full.fenced != self.fenced, "fencing"),
            (full.exited != self.exited, "exit"),
        ];
        match changed.iter().find(|(differs, _)| *differs) {
            Some((_, what)) => Err(format!(
                "reconciling everything again changes the agent's {what}"
            )),
            None => Ok(()),
        }
    }
}
