//! Starting a generation: its containment (a cgroup left by an earlier run of the same
//! generation is reclaimed on the blocking pool first), log, process, run record and
//! task, then `Spawned`; or `SpawnFailed`, with what was made removed. A one-off (a
//! task) has its own output files instead of the log, and no run record.

use std::io;
use std::sync::Arc;

use super::stop::StopReceiver;
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use super::adopt::ExitFuture;
use super::containment::scan::Scanner;
use super::containment::{Backend, Group};
use super::instance::{Instance, Phase, Table};
use super::launch::{self, Output};
use super::logs::{log_path, Logs, SharedLog};
use super::record::{self, RecordDraft};
use super::watch::Watcher;
use super::{
    io_err, ContainmentKind, OutputFiles, ProcessSpec, SuperviseError, SupervisorConfig,
    SupervisorEvent,
};

/// What spawning needs, shared with the blocking pool for the rare spawn that has to
/// wait (a cgroup an earlier run left behind).
pub(crate) struct Shared {
    pub config: SupervisorConfig,
    pub kind: ContainmentKind,
    pub backend: Backend,
    pub events: UnboundedSender<SupervisorEvent>,
    pub table: Arc<Table>,
    pub logs: Logs,
    pub watcher: Arc<Watcher>,
    pub scanner: Arc<Scanner>,
}

impl Shared {
    /// Starts a generation; the outcome arrives as `Spawned` or `SpawnFailed`.
    pub fn spawn(this: &Arc<Self>, spec: ProcessSpec) {
        let (service, generation) = (spec.service.clone(), spec.generation);
        if let Err(e) = Self::try_spawn(this, spec) {
            this.spawn_failed(service, generation, e);
        }
    }

    fn spawn_failed(&self, service: String, generation: u64, error: SuperviseError) {
        warn!(%service, generation, %error, "spawn failed");
        let _ = self.events.send(SupervisorEvent::SpawnFailed {
            service,
            generation,
            error: error.to_string(),
        });
    }

    fn try_spawn(this: &Arc<Self>, spec: ProcessSpec) -> Result<(), SuperviseError> {
        if spec.argv.is_empty() {
            return Err(SuperviseError::EmptyArgv);
        }
        let key = (spec.service.clone(), spec.generation);
        let Some(stop_rx) = this.table.register(key.clone(), Phase::Starting) else {
            return Err(SuperviseError::AlreadyRunning {
                service: key.0,
                generation: key.1,
            });
        };
        let token = format!(
            "{}/{}/{}",
            this.config.machine_id, spec.service, spec.generation
        );
        match this
            .backend
            .new_group(&spec.service, spec.generation, &token)
        {
            Ok(group) => {
                this.start(spec, token, group, stop_rx);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let shared = Arc::clone(this);
                tokio::task::spawn_blocking(move || {
                    match shared
                        .backend
                        .reclaim_group(&spec.service, spec.generation, &token)
                    {
                        Ok(group) => shared.start(spec, token, group, stop_rx),
                        Err(e) => {
                            shared.table.remove(&key);
                            let e = io_err("cannot reclaim the cgroup of an earlier run")(e);
                            shared.spawn_failed(key.0, key.1, e);
                        }
                    }
                });
                Ok(())
            }
            Err(e) => {
                this.table.remove(&key);
                Err(io_err("cannot create containment")(e))
            }
        }
    }

    /// Launches the generation in its new containment and starts its task; reports
    /// `Spawned` or `SpawnFailed`. The generation is in the table as `Starting`.
    fn start(&self, spec: ProcessSpec, token: String, group: Group, stop_rx: StopReceiver) {
        let key = (spec.service.clone(), spec.generation);
        let group = Arc::new(group);
        if let Some(files) = spec.output.clone() {
            self.start_one_off(spec, &files, token, group, stop_rx);
            return;
        }
        let log = match self.logs.get_or_open(&spec.service) {
            Ok(log) => log,
            Err(e) => {
                let path = log_path(&self.config.state_dir, &spec.service);
                self.abandon(
                    key,
                    group,
                    None,
                    io_err(format!("cannot open {}", path.display()))(e),
                );
                return;
            }
        };
        let started_at_ms = record::now_ms();
        let output = Output::Log(&log);
        let (pid, exit) = match launch::launch(
            &spec,
            &token,
            &group,
            output,
            started_at_ms,
            &self.config.state_dir,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.abandon(key, group, Some(log), e);
                return;
            }
        };
        group.set_main(pid);
        let exit_grace = spec.exit_grace.unwrap_or(self.config.exit_grace);
        // Before `Spawned`: a generation reported running can always be adopted.
        let record = RecordDraft {
            path: record::record_path(
                &self.config.state_dir.join("run"),
                &spec.service,
                spec.generation,
            ),
            service: spec.service.clone(),
            generation: spec.generation,
            pid,
            token,
            containment: group.record_containment(pid),
            started_at_ms,
            exit_grace_ms: u64::try_from(exit_grace.as_millis()).unwrap_or(u64::MAX),
            note: spec.note,
        }
        .write()
        .map(Arc::new);
        // The driver reports the start; the details are for debugging.
        debug!(service = %spec.service, generation = spec.generation, pid, argv = ?spec.argv, containment = %group.describe(), "spawned");
        let instance = Instance {
            log: Some(log),
            record,
            exit_grace,
            probe: spec.probe,
            ..self.instance(spec.service, spec.generation, pid, group)
        };
        self.run(instance, exit, stop_rx);
    }

    /// A started generation's instance, without log, record or probe, with the
    /// configured exit grace.
    fn instance(&self, service: String, generation: u64, pid: u32, group: Arc<Group>) -> Instance {
        Instance {
            service,
            generation,
            pid,
            group,
            log: None,
            record: None,
            events: self.events.clone(),
            table: Arc::clone(&self.table),
            watcher: Arc::clone(&self.watcher),
            scanner: Arc::clone(&self.scanner),
            exit_grace: self.config.exit_grace,
            probe: None,
        }
    }

    /// Reports `Spawned` and supervises the instance until it exits.
    fn run(&self, instance: Instance, exit: ExitFuture, stop_rx: StopReceiver) {
        let _ = self.events.send(SupervisorEvent::Spawned {
            service: instance.service.clone(),
            generation: instance.generation,
            pid: instance.pid,
        });
        instance.start(exit, stop_rx);
    }

    /// Launches a one-off (see [`ProcessSpec::output`]) in its new containment: output
    /// to its files, no log, no run record (so a later agent kills it rather than
    /// adopting it); reports `Spawned` or `SpawnFailed` and then `Exited` like any
    /// generation, and is stopped with its whole tree the same way.
    fn start_one_off(
        &self,
        spec: ProcessSpec,
        files: &OutputFiles,
        token: String,
        group: Arc<Group>,
        stop_rx: StopReceiver,
    ) {
        let key = (spec.service.clone(), spec.generation);
        let output = Output::Files(files);
        let (pid, exit) = match launch::launch(
            &spec,
            &token,
            &group,
            output,
            record::now_ms(),
            &self.config.state_dir,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.abandon(key, group, None, e);
                return;
            }
        };
        group.set_main(pid);
        debug!(service = %spec.service, generation = spec.generation, pid, argv = ?spec.argv, containment = %group.describe(), "spawned a one-off");
        let instance = Instance {
            exit_grace: spec.exit_grace.unwrap_or(self.config.exit_grace),
            ..self.instance(spec.service, spec.generation, pid, group)
        };
        self.run(instance, exit, stop_rx);
    }

    /// A generation that did not start: marks its log, reports `SpawnFailed`, and
    /// removes its containment on the blocking pool (its failed child may still be
    /// exiting) before it leaves the table.
    fn abandon(
        &self,
        key: (String, u64),
        group: Arc<Group>,
        log: Option<SharedLog>,
        error: SuperviseError,
    ) {
        if let Some(log) = &log {
            log.marker(&format!("generation {} failed to start: {error}", key.1));
        }
        self.table.set_phase(&key, Phase::CleaningUp);
        self.spawn_failed(key.0.clone(), key.1, error);
        let table = Arc::clone(&self.table);
        tokio::task::spawn_blocking(move || {
            group.remove();
            drop(log);
            table.remove(&key);
        });
    }
}
