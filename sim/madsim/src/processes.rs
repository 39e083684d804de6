//! The process port of an agent incarnation: processes start and stop at once, in its
//! machine's table, which outlives the agent; the next agent adopts what is there.

use crate::machine::{EffectKind, Machine, Process};
use pop_core::environment::EnvironmentSpec;
use pop_core::event::{ExitStatus, Input};
use pop_core::launch::Launch;
use pop_core::settings::Settings;
use pop_core::task::TaskId;
use pop_io::clock::SystemClock;
use pop_io::driver::ports::{ProcessPort, TaskLaunch};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct SimProcesses {
    pub(crate) machine: Arc<Machine>,
    pub(crate) events: mpsc::UnboundedSender<Input>,
    pub(crate) clock: SystemClock,
}

impl SimProcesses {
    fn send(&self, input: Input) {
        // The agent is gone (killed): the process goes on, its event is lost, as a
        // child's SIGCHLD to a dead parent.
        let _ = self.events.send(input);
    }

    /// Ends a process (SIGTERM, at once), reporting its exit.
    fn kill(&self, service: &str, generation: u64) {
        let removed = self
            .machine
            .with_processes(|table, _| table.remove(&(service.to_string(), generation)));
        if removed.is_some() {
            self.send(Input::Exited {
                service: service.to_string(),
                generation,
                status: ExitStatus {
                    code: None,
                    signal: Some(15),
                },
            });
        }
    }
}

impl ProcessPort for SimProcesses {
    fn containment(&self) -> String {
        "madsim".into()
    }

    /// Every process in the table, oldest generation first (as the supervisor gives them).
    fn take_adopted(&mut self) -> Vec<Input> {
        let mut running: Vec<((String, u64), Process)> =
            self.machine.processes().into_iter().collect();
        running.sort_by_key(|((_, generation), _)| *generation);
        running
            .into_iter()
            .map(|((service, generation), p)| Input::Adopted {
                service,
                generation,
                pid: p.pid,
                started_at: p.started_at,
                port: p.port,
                settings: p.settings,
                launch: Some(Box::new(p.launch)),
            })
            .collect()
    }

    fn spawn(&mut self, service: &str, generation: u64, launch: Launch, settings: &Settings) {
        self.machine.effect(EffectKind::Spawn, service, generation);
        let port = launch.probe.as_ref().map(|probe| probe.port.max(1));
        let started_at = self.clock.now();
        let pid = self.machine.with_processes(|table, next_pid| {
            *next_pid += 1;
            table.insert(
                (service.to_string(), generation),
                Process {
                    pid: *next_pid,
                    started_at,
                    port,
                    settings: settings.clone(),
                    launch,
                },
            );
            *next_pid
        });
        self.send(Input::Spawned {
            service: service.to_string(),
            generation,
            pid,
        });
        if port.is_some() {
            self.send(Input::Ready {
                service: service.to_string(),
                generation,
                port,
            });
        }
    }

    fn stop(&mut self, service: &str, generation: u64, _grace: Duration) {
        self.machine.effect(EffectKind::Stop, service, generation);
        self.kill(service, generation);
    }

    /// Tasks succeed at once, with no output.
    fn run_task(&mut self, launch: TaskLaunch) {
        let pid = self.machine.with_processes(|_, next_pid| {
            *next_pid += 1;
            *next_pid
        });
        let (service, task, attempt) = (launch.service, launch.task, launch.attempt);
        self.send(Input::TaskStarted {
            service: service.clone(),
            task: task.clone(),
            attempt,
            pid,
        });
        self.send(Input::TaskExited {
            service,
            task,
            attempt,
            status: ExitStatus {
                code: Some(0),
                signal: None,
            },
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        });
    }

    fn stop_task(&mut self, _service: &str, _task: &TaskId, _attempt: u32, _grace: Duration) {}

    fn build_environment(&mut self, service: &str, spec: EnvironmentSpec, _dir: &str) {
        self.send(Input::EnvironmentBuilt {
            service: service.to_string(),
            spec_hash: spec.hash(),
            result: Ok(()),
        });
    }

    fn remove_environments(&mut self, _service: &str, _keep: Vec<String>) {}

    fn stop_builds(&mut self) {}

    async fn shutdown(&mut self, _grace: Duration) {
        let all: Vec<(String, u64)> = self.machine.processes().into_keys().collect();
        // Not an action of a step (a second stop request): no effect to check.
        for (service, generation) in all {
            self.kill(&service, generation);
        }
    }

    /// The processes stay in the machine's table for the next agent.
    fn detach(self) {}
}
