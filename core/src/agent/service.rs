//! One service on this machine: what ZooKeeper says about it and what its process is doing.

use super::readiness::{Due, Readiness};
use super::target::{Listing, Target};
use crate::backoff::{Backoff, SeededRng};
use crate::event::{Action, ExitStatus, Report};
use crate::launch::Launch;
use crate::published::{Phase, ServiceReport, StateNode, CRASH_LOOP_FAILURES};
use crate::settings::{RestartPolicy, SessionLoss, Settings};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// Where actions go, plus what transitions need besides the service itself.
pub(crate) struct Outbox<'a> {
    pub actions: &'a mut VecDeque<Action>,
    pub rng: &'a mut SeededRng,
    pub backoff: &'a Backoff,
    pub now: Timestamp,
    /// While fencing, stops must finish before the session can expire.
    pub stop_grace_cap: Option<Duration>,
}

/// What a run is started with: the settings, and the process the type's manifest makes
/// of them. A change of either starts the next generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunSpec {
    pub settings: Arc<Settings>,
    /// `None`: adopted from an agent that did not record it (before plugins), taken to
    /// be what these settings launch now.
    pub launch: Option<Arc<Launch>>,
    /// The hash of the Python environment it runs from, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl RunSpec {
    /// A run started with `self` is what `wanted` asks for.
    pub(crate) fn fits(&self, wanted: &RunSpec) -> bool {
        self.settings == wanted.settings
            && self
                .launch
                .as_ref()
                .is_none_or(|launch| Some(launch) == wanted.launch.as_ref())
    }

    /// It is ready once its probe finds it listening (else after `start_seconds`).
    fn probed(&self) -> bool {
        match &self.launch {
            Some(launch) => launch.probe.is_some(),
            None => self.settings.port.is_some(),
        }
    }
}

/// What the target asks of a service's process on this machine.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Desired {
    /// Not to run here (not now: shutting down, fenced).
    Stopped,
    Run(RunSpec),
    /// To run, but what to launch cannot be had yet: its type, a setting its command
    /// needs, its environment. What runs keeps running and nothing new starts; a run
    /// that failed is started again as it was only when `restart_last` (its type is
    /// known; without it, nothing of it is started).
    Held {
        reason: String,
        restart_last: bool,
    },
}

/// The Python environments of a service on this machine (see [`crate::environment`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Environments {
    /// Built and complete, as the driver said in this agent's life, by spec hash.
    pub built: BTreeSet<String>,
    /// The build in flight, by spec hash (one at a time).
    pub building: Option<String>,
    /// The last build failed: it is tried again at `retry_at`, or at once for another spec.
    pub failed: Option<FailedBuild>,
    /// The environment the newest run was started from: the others can go.
    pub in_use: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FailedBuild {
    pub hash: String,
    pub error: String,
    pub retry_at: Timestamp,
}

impl Environments {
    fn is_empty(&self) -> bool {
        *self == Environments::default()
    }
}

/// A failed environment build is tried again after this long (a changed spec at once).
pub(crate) const ENVIRONMENT_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Run {
    Idle,
    /// Waiting out a crash-loop delay before starting `spec` again.
    Backoff {
        until: Timestamp,
        spec: RunSpec,
    },
    /// Exited and the restart policy says to leave it; a change starts it again.
    Finished {
        spec: RunSpec,
    },
    Starting {
        generation: u64,
        spec: RunSpec,
        /// Stop as soon as the pid is known (it stopped being desired meanwhile).
        stop_requested: bool,
    },
    Running {
        generation: u64,
        pid: u32,
        started_at: Timestamp,
        spec: RunSpec,
        readiness: Readiness,
    },
    Stopping {
        generation: u64,
        pid: u32,
        then: AfterStop,
    },
}

/// What follows a stop once the process is gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum AfterStop {
    /// Whatever the target says then (the stop was wanted: a change, an undeploy, a
    /// shutdown, fencing).
    FollowTarget,
    /// The run failed (it never became ready): back off, then start `spec` again.
    Restart { spec: RunSpec },
}

/// Who decides what happens to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Moved towards what ZooKeeper wants, as far as this agent knows it.
    FollowsTarget,
    /// Adopted from an earlier agent: left alone until this agent has read what
    /// ZooKeeper wants, so it is not stopped merely because nothing is known yet.
    AwaitingTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Service {
    pub name: String,
    pub target: Target,
    pub control: Control,
    pub run: Run,
    pub generation: u64,
    pub restarts: u32,
    pub quick_failures: u32,
    pub last_exit: Option<ExitStatus>,
    /// The last run was stopped for not becoming ready within this time; cleared once
    /// a run is ready.
    pub not_ready_within: Option<Duration>,
    /// Why what the target asks cannot be launched (see [`Desired::Held`]).
    #[serde(default)]
    pub held: Option<String>,
    /// Why the last start failed (the program could not be run as asked: an unknown
    /// `user`, a missing program); cleared by the next start that succeeds.
    #[serde(default)]
    pub start_failure: Option<String>,
    #[serde(default)]
    pub environments: Environments,
}

/// How a run that ended on its own counts for the crash-loop backoff.
enum RunEnd {
    /// It ran at least `healthy_after`: the failure count starts again.
    Healthy,
    /// It ended (or failed) too soon.
    Quick,
}

impl RunEnd {
    fn after(started_at: Timestamp, out: &Outbox<'_>) -> RunEnd {
        if out.now.saturating_since(started_at) >= out.backoff.healthy_after {
            RunEnd::Healthy
        } else {
            RunEnd::Quick
        }
    }
}

impl Service {
    pub(crate) fn new(name: String, listing: Listing) -> Self {
        Service {
            name,
            target: Target::new(listing),
            control: Control::FollowsTarget,
            run: Run::Idle,
            generation: 0,
            restarts: 0,
            quick_failures: 0,
            last_exit: None,
            not_ready_within: None,
            held: None,
            start_failure: None,
            environments: Environments::default(),
        }
    }

    /// The settings this machine should be running, if any.
    /// `fenced`: the session has been lost long enough that `fence` services must be down.
    pub(crate) fn desired(
        &self,
        machine: &str,
        shutting_down: bool,
        fenced: bool,
    ) -> Option<&Arc<Settings>> {
        if shutting_down || !self.target.listing.is_indexed() {
            return None;
        }
        let machines = self.target.machines.value()?;
        if !machines.contains(machine) {
            return None;
        }
        self.target
            .settings
            .value()
            .filter(|s| !(fenced && s.session_loss == SessionLoss::Fence))
    }

    /// Whether the wanted settings ask for fencing.
    pub(crate) fn fences(&self) -> bool {
        self.target
            .settings
            .value()
            .is_some_and(|s| s.session_loss == SessionLoss::Fence)
    }

    /// Whether this service runs under the `fence` policy right now.
    pub(crate) fn runs_fenced(&self) -> bool {
        matches!(&self.run, Run::Starting { spec, .. } | Run::Running { spec, .. }
            if spec.settings.session_loss == SessionLoss::Fence)
    }

    /// Takes over a process an earlier agent started. Of two adopted generations of one
    /// service (the earlier agent died mid-restart) the newer stays and the older stops.
    pub(crate) fn adopt(
        &mut self,
        generation: u64,
        pid: u32,
        started_at: Timestamp,
        port: Option<u16>,
        spec: RunSpec,
        out: &mut Outbox<'_>,
    ) {
        let grace = spec.settings.stop_timeout;
        if self.current_generation().is_some_and(|g| g > generation) {
            out.actions.push_back(Action::Stop {
                service: self.name.clone(),
                generation,
                grace,
            });
            return;
        }
        if let Run::Starting {
            generation: starting,
            spec: starting_spec,
            ..
        } = &self.run
        {
            // A start of ours is in flight (adoption normally comes before any): stop it
            // now, or it would run on, forgotten, beside the adopted process.
            out.actions.push_back(Action::Stop {
                service: self.name.clone(),
                generation: *starting,
                grace: starting_spec.settings.stop_timeout,
            });
        }
        self.stop(out);
        self.generation = self.generation.max(generation);
        self.control = Control::AwaitingTarget;
        self.not_ready_within = None;
        self.run = Run::Running {
            generation,
            pid,
            started_at,
            spec,
            readiness: Readiness::Ready { port },
        };
        out.actions.push_back(Action::Report(Report::Adopted {
            service: self.name.clone(),
            pid,
        }));
    }

    /// No process and none wanted: the entry can go once the service is unlisted.
    pub(crate) fn is_quiet(&self) -> bool {
        matches!(
            self.run,
            Run::Idle | Run::Backoff { .. } | Run::Finished { .. }
        )
    }

    /// Moves the process towards `desired`.
    pub(crate) fn reconcile(&mut self, desired: Desired, out: &mut Outbox<'_>) {
        if self.control == Control::AwaitingTarget {
            // A running adopted process, or one that exited since (its backoff, or its
            // `restart: never`, is honoured once the target is known; see `deadline`),
            // waits for the target.
            if !self.target.is_known()
                && matches!(
                    self.run,
                    Run::Running { .. } | Run::Backoff { .. } | Run::Finished { .. }
                )
            {
                return;
            }
            self.control = Control::FollowsTarget;
        }
        let desired = match desired {
            Desired::Stopped => {
                self.hold(None, out);
                // A failed build is not retried for a service not wanted now.
                self.environments.failed = None;
                None
            }
            Desired::Run(spec) => {
                self.hold(None, out);
                Some(spec)
            }
            Desired::Held {
                reason,
                restart_last,
            } => {
                self.hold(Some(reason), out);
                self.keep_what_runs(restart_last, out);
                return;
            }
        };
        match (&mut self.run, desired) {
            (Run::Idle, Some(spec)) => self.spawn(spec, out),
            (Run::Finished { spec: done }, Some(spec)) => {
                if !done.fits(&spec) {
                    self.spawn(spec, out);
                }
            }
            (
                Run::Backoff {
                    until,
                    spec: failed,
                },
                Some(spec),
            ) => {
                // A change may be the fix: try it at once, with a fresh count.
                if !failed.fits(&spec) {
                    self.quick_failures = 0;
                    self.spawn(spec, out);
                } else if out.now >= *until {
                    self.spawn(spec, out);
                }
            }
            (Run::Backoff { .. } | Run::Finished { .. }, None) => self.run = Run::Idle,
            (Run::Starting { stop_requested, .. }, None) => *stop_requested = true,
            (
                Run::Starting {
                    spec: running,
                    stop_requested,
                    ..
                },
                Some(spec),
            ) => *stop_requested = !running.fits(&spec),
            (Run::Running { spec: running, .. }, Some(spec)) => {
                if !running.fits(&spec) {
                    if planted!(SpawnBeforeStopped) {
                        self.spawn(spec, out);
                    } else {
                        self.stop(out);
                    }
                } else if running.launch.is_none() {
                    // Adopted without a record of its launch: it fits, so this is it.
                    running.launch = spec.launch;
                }
            }
            (Run::Running { .. }, None) => {
                if !planted!(SkipStopOnUndeploy) {
                    self.stop(out)
                }
            }
            (Run::Idle, None) | (Run::Stopping { .. }, _) => {}
        }
    }

    /// A task that succeeded asks for a new generation (`restart_after`): a running
    /// process is stopped, and reconciling starts the next one. One still starting
    /// started after the task anyway.
    pub(crate) fn restart(&mut self, out: &mut Outbox<'_>) {
        if matches!(self.run, Run::Running { .. }) {
            self.stop(out);
        }
    }

    /// Notes why the service cannot be launched as wanted (`None`: it can), and says so
    /// when that is news.
    fn hold(&mut self, reason: Option<String>, out: &mut Outbox<'_>) {
        if self.held == reason {
            return;
        }
        if let Some(reason) = &reason {
            out.actions.push_back(Action::Report(Report::Waiting {
                service: self.name.clone(),
                reason: reason.clone(),
            }));
        }
        self.held = reason;
    }

    /// What the target wants cannot be launched: what runs keeps running; a run waiting
    /// out its backoff is started again as it was, when that is allowed.
    fn keep_what_runs(&mut self, restart_last: bool, out: &mut Outbox<'_>) {
        match &mut self.run {
            Run::Starting { stop_requested, .. } => *stop_requested = false,
            Run::Backoff { until, spec } if out.now >= *until => {
                if restart_last {
                    let spec = spec.clone();
                    self.spawn(spec, out);
                } else {
                    self.run = Run::Idle;
                }
            }
            _ => {}
        }
    }

    /// Starts the next generation with `spec`; one without a launch (adopted without a
    /// record of it) cannot be started again and leaves the service idle.
    fn spawn(&mut self, spec: RunSpec, out: &mut Outbox<'_>) {
        let Some(launch) = spec.launch.clone() else {
            self.run = Run::Idle;
            return;
        };
        if let Some(hash) = &spec.environment {
            let envs = &mut self.environments;
            if envs.in_use.as_ref() != Some(hash) {
                // Nothing runs from the others now (the last run has stopped).
                let mut keep: Vec<String> = std::iter::once(hash.clone())
                    .chain(envs.building.clone())
                    .collect();
                keep.dedup();
                envs.built.retain(|h| keep.contains(h));
                envs.in_use = Some(hash.clone());
                out.actions.push_back(Action::RemoveEnvironments {
                    service: self.name.clone(),
                    keep,
                });
            }
        }
        self.generation = self.generation.saturating_add(1);
        out.actions.push_back(Action::Spawn {
            service: self.name.clone(),
            generation: self.generation,
            launch: Launch::clone(&launch),
            settings: Box::new(Settings::clone(&spec.settings)),
        });
        self.run = Run::Starting {
            generation: self.generation,
            spec,
            stop_requested: false,
        };
    }

    fn stop(&mut self, out: &mut Outbox<'_>) {
        self.stop_then(AfterStop::FollowTarget, out);
    }

    fn stop_then(&mut self, then: AfterStop, out: &mut Outbox<'_>) {
        if let Run::Running {
            generation,
            pid,
            spec,
            ..
        } = &self.run
        {
            let timeout = spec.settings.stop_timeout;
            let grace = out.stop_grace_cap.map_or(timeout, |cap| timeout.min(cap));
            out.actions.push_back(Action::Stop {
                service: self.name.clone(),
                generation: *generation,
                grace,
            });
            self.run = Run::Stopping {
                generation: *generation,
                pid: *pid,
                then,
            };
        }
    }

    fn current_generation(&self) -> Option<u64> {
        match &self.run {
            Run::Starting { generation, .. }
            | Run::Running { generation, .. }
            | Run::Stopping { generation, .. } => Some(*generation),
            _ => None,
        }
    }

    pub(crate) fn on_spawned(&mut self, generation: u64, pid: u32, out: &mut Outbox<'_>) {
        let Run::Starting {
            generation: g,
            spec,
            stop_requested,
        } = &self.run
        else {
            return;
        };
        if *g != generation {
            return;
        }
        let readiness = Readiness::at_start(spec.probed(), &spec.settings, out.now);
        let stop_requested = *stop_requested;
        self.start_failure = None;
        self.run = Run::Running {
            generation,
            pid,
            started_at: out.now,
            spec: spec.clone(),
            readiness,
        };
        out.actions.push_back(Action::Report(Report::Started {
            service: self.name.clone(),
            pid,
        }));
        if stop_requested {
            self.stop(out);
        }
    }

    pub(crate) fn on_spawn_failed(&mut self, generation: u64, error: String, out: &mut Outbox<'_>) {
        if self.current_generation() != Some(generation) {
            return;
        }
        self.start_failure = Some(format!("cannot start: {error}"));
        out.actions.push_back(Action::Report(Report::SpawnFailed {
            service: self.name.clone(),
            error,
        }));
        if let Run::Starting { spec, .. } = &self.run {
            let spec = spec.clone();
            let end = RunEnd::after(out.now, out);
            self.schedule_restart(end, spec, out);
        }
    }

    pub(crate) fn on_ready(&mut self, generation: u64, port: Option<u16>) {
        if let Run::Running {
            generation: g,
            readiness,
            ..
        } = &mut self.run
        {
            if *g == generation {
                *readiness = Readiness::Ready { port };
                self.not_ready_within = None;
            }
        }
    }

    /// Marks services without a port ready once `start_seconds` have passed, and fails
    /// those with a port that are not ready by their `ready_timeout`.
    pub(crate) fn on_tick(&mut self, out: &mut Outbox<'_>) {
        let Run::Running {
            readiness, spec, ..
        } = &mut self.run
        else {
            return;
        };
        match readiness.on_tick(out.now) {
            Due::Nothing => {}
            Due::Ready => self.not_ready_within = None,
            Due::Failed => {
                let spec = spec.clone();
                let settings = &spec.settings;
                out.actions.push_back(Action::Report(Report::NotReady {
                    service: self.name.clone(),
                    port: settings.port.unwrap_or(0),
                    waited: settings.ready_timeout,
                }));
                self.not_ready_within = Some(settings.ready_timeout);
                self.stop_then(AfterStop::Restart { spec }, out);
            }
        }
    }

    pub(crate) fn on_exited(&mut self, generation: u64, status: ExitStatus, out: &mut Outbox<'_>) {
        if self.current_generation() != Some(generation) {
            return;
        }
        self.last_exit = Some(status);
        out.actions.push_back(Action::Report(Report::Exited {
            service: self.name.clone(),
            status,
        }));
        match std::mem::replace(&mut self.run, Run::Idle) {
            // Asked to stop: the caller reconciles and starts it again if still wanted.
            Run::Stopping {
                then: AfterStop::FollowTarget,
                ..
            } => {}
            // However long it ran, a run that never became ready was a quick failure.
            Run::Stopping {
                then: AfterStop::Restart { spec },
                ..
            } => {
                self.restarts = self.restarts.saturating_add(1);
                self.schedule_restart(RunEnd::Quick, spec, out);
            }
            Run::Running {
                started_at, spec, ..
            } => {
                let restart = match spec.settings.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Never => false,
                };
                if restart {
                    self.restarts = self.restarts.saturating_add(1);
                    let end = RunEnd::after(started_at, out);
                    self.schedule_restart(end, spec, out);
                } else {
                    self.run = Run::Finished { spec };
                }
            }
            // Exited before the spawn was acknowledged: a spawn that failed late.
            Run::Starting { spec, .. } => {
                let end = RunEnd::after(out.now, out);
                self.schedule_restart(end, spec, out);
            }
            other => self.run = other,
        }
    }

    /// After an unplanned end of a run: restart at once after a healthy run, else back
    /// off exponentially.
    fn schedule_restart(&mut self, end: RunEnd, spec: RunSpec, out: &mut Outbox<'_>) {
        match end {
            RunEnd::Healthy => self.quick_failures = 0,
            RunEnd::Quick => self.quick_failures = self.quick_failures.saturating_add(1),
        }
        let mut delay = out.backoff.delay(self.quick_failures, out.rng);
        if planted!(RestartWithoutBackoff) {
            delay = std::time::Duration::ZERO;
        }
        if self.quick_failures >= CRASH_LOOP_FAILURES {
            out.actions.push_back(Action::Report(Report::CrashLoop {
                service: self.name.clone(),
                failures: self.quick_failures,
                delay,
            }));
        }
        self.run = Run::Backoff {
            until: out.now + delay,
            spec,
        };
    }

    /// The driver finished building one of the service's environments.
    pub(crate) fn on_environment_built(
        &mut self,
        hash: String,
        result: Result<(), String>,
        out: &mut Outbox<'_>,
    ) {
        let envs = &mut self.environments;
        let ours = envs.building.as_ref() == Some(&hash);
        match result {
            Ok(()) => {
                if ours {
                    envs.building = None;
                }
                if envs.failed.as_ref().is_some_and(|f| f.hash == hash) {
                    envs.failed = None;
                }
                envs.built.insert(hash.clone());
                out.actions
                    .push_back(Action::Report(Report::EnvironmentReady {
                        service: self.name.clone(),
                        spec_hash: hash,
                    }));
            }
            // Only the build it asked for (a late report of an older one says nothing).
            Err(error) if ours => {
                envs.building = None;
                envs.failed = Some(FailedBuild {
                    hash: hash.clone(),
                    error: error.clone(),
                    retry_at: out.now + ENVIRONMENT_RETRY,
                });
                out.actions
                    .push_back(Action::Report(Report::EnvironmentFailed {
                        service: self.name.clone(),
                        spec_hash: hash,
                        error,
                    }));
            }
            Err(_) => {}
        }
    }

    /// Whether anything of its environments is left to remove once it is forgotten.
    pub(crate) fn has_environments(&self) -> bool {
        !self.environments.is_empty()
    }

    /// The earliest time this service needs a tick.
    pub(crate) fn deadline(&self) -> Option<Timestamp> {
        if self.control == Control::AwaitingTarget {
            return None; // nothing to do until the target is read
        }
        let run = match &self.run {
            Run::Backoff { until, .. } => Some(*until),
            Run::Running { readiness, .. } => readiness.deadline(),
            _ => None,
        };
        run.into_iter().chain(self.retry_build_at()).min()
    }

    /// When its backoff ends, or a failed build is tried again, if it waits for either
    /// (a deadline that any input serves).
    pub(crate) fn restart_at(&self) -> Option<Timestamp> {
        if self.control == Control::AwaitingTarget {
            return None;
        }
        let backoff = match &self.run {
            Run::Backoff { until, .. } => Some(*until),
            _ => None,
        };
        backoff.into_iter().chain(self.retry_build_at()).min()
    }

    fn retry_build_at(&self) -> Option<Timestamp> {
        self.environments.failed.as_ref().map(|f| f.retry_at)
    }

    /// The pid to publish, once the service is ready.
    pub(crate) fn ready_pid(&self) -> Option<u32> {
        match &self.run {
            Run::Running {
                readiness: Readiness::Ready { .. },
                pid,
                ..
            } => Some(*pid),
            _ => None,
        }
    }

    /// The state node, once ready.
    pub(crate) fn state_node(&self, machine: &str, hostname: &str) -> Option<StateNode> {
        let Run::Running {
            readiness: Readiness::Ready { port },
            pid,
            started_at,
            spec,
            generation,
        } = &self.run
        else {
            return None;
        };
        let host = match spec.settings.host.as_str() {
            "" | "0.0.0.0" | "::" => hostname,
            specific => specific,
        };
        Some(StateNode {
            machine: machine.to_string(),
            host: host.to_string(),
            last_exit: self.last_exit.map(|s| s.to_string()),
            port: *port,
            pid: *pid,
            started_at: started_at.as_secs_f64(),
            generation: *generation,
            restarts: self.restarts,
        })
    }

    /// What the process is doing, as reported.
    pub(crate) fn phase(&self) -> Phase {
        match &self.run {
            Run::Idle if self.held.is_some() => Phase::Waiting,
            Run::Idle => Phase::Stopped,
            Run::Backoff { .. } => Phase::Backoff,
            Run::Finished { .. } => Phase::Exited,
            Run::Starting { .. } => Phase::Starting,
            Run::Running {
                readiness: Readiness::Ready { .. },
                ..
            } => Phase::Running,
            Run::Running { .. } => Phase::Starting,
            Run::Stopping { .. } => Phase::Stopping,
        }
    }

    /// Not running as it should: the agent report lists it (see
    /// [`crate::published::AgentReport::services`]).
    pub(crate) fn needs_attention(&self) -> bool {
        self.phase() != Phase::Running
            || self.quick_failures >= CRASH_LOOP_FAILURES
            || self.not_ready_within.is_some()
            || self.held.is_some()
            || self.start_failure.is_some()
    }

    /// This service's entry in the agent report.
    pub(crate) fn report(&self) -> ServiceReport {
        let (pid, since) = match &self.run {
            Run::Running {
                pid, started_at, ..
            } => (Some(*pid), Some(started_at.as_secs_f64())),
            Run::Stopping { pid, .. } => (Some(*pid), None),
            _ => (None, None),
        };
        let next_start_at = match &self.run {
            Run::Backoff { until, .. } => Some(until.as_secs_f64()),
            _ => None,
        };
        ServiceReport {
            generation: self.generation,
            last_exit: self.last_exit.map(|s| s.to_string()),
            next_start_at,
            phase: self.phase(),
            pid,
            quick_failures: self.quick_failures,
            restarts: self.restarts,
            since,
            not_ready_within: self.not_ready_within.map(|d| d.as_secs_f64()),
            problem: self.held.clone().or_else(|| self.start_failure.clone()),
        }
    }
}
