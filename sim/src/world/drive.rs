//! Driving one machine's agent as the production driver does: an input is journaled,
//! handled, its actions journaled, then each action carried out against the modelled
//! ZooKeeper and processes.

use super::{Event, Process, World, PROCESS_DELAY};
use pop_core::event::{Action, ExitStatus, Input};
use pop_core::journal::Record;
use pop_core::zk::SessionEvent;
use std::collections::BTreeMap;
use std::time::Duration;

impl World {
    fn perform(&mut self, machine: usize, action: Action) {
        self.trace
            .push(format!("{} m{machine} {action:?}", self.now));
        match action {
            Action::Zk { id, op } => {
                let session = self.machines[machine].session;
                let incarnation = self.machines[machine].incarnation;
                let jitter = Duration::from_micros(self.net.next_u64() % 3000);
                self.schedule(
                    self.now + self.latency(machine) + jitter,
                    Event::Request {
                        machine,
                        incarnation,
                        session,
                        id,
                        op,
                    },
                );
            }
            Action::Spawn {
                service,
                generation,
                launch,
                settings,
            } => {
                if self.process_rng.next_u64() % 1000 < self.process_faults.spawn_fail_per_mille {
                    self.coverage("spawn failure");
                    self.send_to_agent(
                        machine,
                        self.now + PROCESS_DELAY,
                        Input::SpawnFailed {
                            service,
                            generation,
                            error: "simulated: cannot exec".into(),
                        },
                    );
                    return;
                }
                self.check_backoff(machine, &service, &settings);
                self.check_launch(machine, &service, &settings, &launch);
                let ignores_term =
                    self.process_rng.next_u64() % 1000 < self.process_faults.ignore_term_per_mille;
                self.next_pid += 1;
                let pid = self.next_pid;
                let port = launch.probe.as_ref().map(|probe| {
                    if probe.port == 0 {
                        20_000 + (pid % 10_000) as u16
                    } else {
                        probe.port
                    }
                });
                self.machines[machine].processes.insert(
                    pid,
                    Process {
                        service: service.clone(),
                        generation,
                        pid,
                        launch: launch.clone(),
                        settings: *settings,
                        started_at: self.now,
                        port,
                        ignores_term,
                        stopping: false,
                    },
                );
                let at = self.now + PROCESS_DELAY;
                self.send_to_agent(
                    machine,
                    at,
                    Input::Spawned {
                        service: service.clone(),
                        generation,
                        pid,
                    },
                );
                if let Some(port) = port.filter(|_| !self.never_ready.contains(&service)) {
                    self.send_to_agent(
                        machine,
                        at + PROCESS_DELAY,
                        Input::Ready {
                            service,
                            generation,
                            port: Some(port),
                        },
                    );
                }
            }
            Action::Stop {
                service,
                generation,
                grace,
            } => {
                // The agent asked it to stop (perhaps after it had already crashed,
                // unknown to the agent): what follows is a planned start.
                self.last_crash.remove(&(machine, service.clone()));
                let m = &mut self.machines[machine];
                let stubborn: Vec<u32> = m
                    .processes
                    .values_mut()
                    .filter(|p| p.service == service && p.generation == generation)
                    .filter(|p| p.ignores_term)
                    .map(|p| {
                        p.stopping = true;
                        p.pid
                    })
                    .collect();
                if let Some(pid) = stubborn.first() {
                    // SIGTERM is ignored; SIGKILL ends it at the end of the grace.
                    self.coverage("stop of a process that ignores SIGTERM");
                    self.schedule(self.now + grace, Event::Kill { machine, pid: *pid });
                    return;
                }
                m.processes
                    .retain(|_, p| !(p.service == service && p.generation == generation));
                let status = ExitStatus {
                    code: None,
                    signal: Some(15),
                };
                self.report_exit(machine, service, generation, status);
            }
            Action::BuildEnvironment { service, spec, .. } => {
                self.build_environment(machine, service, &spec)
            }
            Action::RemoveEnvironments { service, keep } => {
                self.check_environment_removal(machine, &service, &keep);
                self.machines[machine]
                    .environments
                    .retain(|(s, h)| *s != service || keep.contains(h));
            }
            Action::NewSession => self.connect(machine),
            Action::RunTask {
                service,
                task,
                attempt,
                argv,
                ..
            } => self.run_task(machine, (service, task), attempt, &argv),
            Action::StopTask {
                service,
                task,
                attempt,
                ..
            } => self.stop_task(machine, (service, task), attempt),
            Action::Report(_) => {}
            Action::Exit => {
                self.agent_gone(machine);
                self.machines[machine].exited = true;
                if let Some(session) = self.machines[machine].session.take() {
                    self.end_session(session);
                }
            }
        }
    }

    pub(super) fn deliver(&mut self, machine: usize, input: Input) {
        if self.machines[machine].exited {
            return;
        }
        let incarnation = self.machines[machine].incarnation;
        if self.hold_if_paused(machine, incarnation, &input) {
            return;
        }
        // Like the driver's epochs: news of a session that is no longer the machine's
        // client never reaches the core.
        if let Input::Session(SessionEvent::Connected { session, .. }) = &input {
            if self.machines[machine].client != Some(*session) {
                return;
            }
        }
        self.trace
            .push(format!("{} m{machine} <- {input:?}", self.now));
        let now = self.now;
        let phases_before = if self.check_invariants {
            self.machines[machine].agent.service_phases()
        } else {
            BTreeMap::new()
        };
        let m = &mut self.machines[machine];
        if let Input::Session(event) = &input {
            m.session_lost_told = !matches!(event, SessionEvent::Connected { .. });
        }
        let journal = m.journals.last_mut();
        // Journaled as the production driver does: the input first, then the actions.
        if let Some(journal) = journal {
            journal.push(Record::Input {
                at: now,
                input: input.clone(),
            });
        }
        m.agent.handle(now, input);
        let actions: Vec<Action> = m.agent.drain_actions();
        m.tick_at = m.agent.poll_timeout();
        let pending = m.agent.pending_requests();
        self.load.set_pending(machine, pending);
        let m = &mut self.machines[machine];
        if let Some(journal) = m.journals.last_mut() {
            journal.push(Record::Actions {
                actions: actions.clone(),
            });
            // Rotate as the driver does at its size limit: the next file starts with a
            // snapshot, so replay is also checked from snapshots.
            if journal.len() >= self.journal_rotate_records {
                let snapshot = Record::Snapshot {
                    agent: Box::new(m.agent.clone()),
                };
                m.journals.push(vec![snapshot]);
            }
        }
        if self.check_invariants {
            self.check_bad_data_changes_nothing(machine, &actions, &phases_before);
            self.check_requests_only_when_connected(machine, &actions);
            self.check_bookkeeping(machine);
        }
        for action in actions {
            self.perform(machine, action);
        }
    }
}
