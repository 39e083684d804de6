//! `pop run <service> <task> [args...]`: one multi creates the request and a pending
//! result for every target machine (and the tasks container of a service from before
//! tasks), so agents never see a task without its placeholders; then, in steps of its
//! own, the oldest tasks of the service beyond the last [`KEEP_TASKS`] are deleted.
//!
//! The task is checked before anything is written: the service's type (built in, or
//! read from `/plugins`) must offer it, its command must render with the service's
//! settings, and every target must be a machine the service is deployed on. The
//! request carries the task's definition as the manifest had it then.

use super::engine::{exactly, Decision, Engine, Got, Refused, Steps};
use super::plugins::{resolve, type_reads};
use super::{children, get, require_service, Feedback, Outcome, Plan, PlanError, Step};
use crate::access::Access;
use crate::assignment::render_settings;
use crate::environment::EnvironmentSpec;
use crate::names::{MachineId, PluginName, ServiceName, TaskName};
use crate::paths;
use crate::plugin::{self, Environment, PythonEnvironment, Variables};
use crate::settings::parse_machines;
use crate::task::{
    TaskId, TaskKind, TaskRequest, TaskResult, DEFAULT_EXPIRY, DEFAULT_TIMEOUT, KEEP_TASKS,
    MAX_DURATION,
};
use crate::time::Timestamp;
use crate::zk::{CreateMode, ZkError, ZkOp, ZkReply};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// What `pop run` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub task: String,
    pub args: Vec<String>,
    /// `--machine`, in order; none: every machine the service is deployed on.
    pub machines: Vec<MachineId>,
    pub rolling: bool,
    /// `--timeout`; none: the manifest's, else [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// `--expire`; none: [`DEFAULT_EXPIRY`].
    pub expire: Option<Duration>,
    /// `user@host`.
    pub author: String,
}

/// Issues the task, then prunes old ones.
pub struct Run {
    issue: Engine<Issuing>,
    prune: Option<Engine<Pruning>>,
    issued: Option<Outcome>,
}

struct Issuing {
    at: String,
    name: String,
    id: TaskId,
    task: TaskName,
    request: RunRequest,
    created: Timestamp,
    /// The service's type, once its settings were read (its reads come next).
    service_type: Option<PluginName>,
    /// The request last sent, and the requirements it added to `packages`.
    written: Option<(TaskRequest, Vec<String>)>,
    /// A write was sent whose outcome is unknown.
    in_doubt: bool,
    /// The ACLs of what it creates.
    access: Access,
}

fn bad(reason: String) -> PlanError {
    PlanError::BadTaskArguments { reason }
}

fn check_duration(option: &str, d: Option<Duration>) -> Result<(), PlanError> {
    match d {
        Some(d) if d.is_zero() => Err(bad(format!("{option} must be longer than 0"))),
        Some(d) if d > MAX_DURATION => Err(bad(format!(
            "{option} is at most {}h",
            MAX_DURATION.as_secs() / 3600
        ))),
        _ => Ok(()),
    }
}

impl Run {
    /// Refuses what is wrong before anything is read. `created` and `nonce` (random)
    /// make the task's id.
    pub fn new(
        at: &str,
        service: &ServiceName,
        request: RunRequest,
        created: Timestamp,
        nonce: u16,
    ) -> Result<Run, PlanError> {
        let task = TaskName::new(&request.task).map_err(|e| bad(e.to_string()))?;
        for (i, machine) in request.machines.iter().enumerate() {
            if request.machines[..i].contains(machine) {
                return Err(bad(format!("--machine {machine} is given twice")));
            }
        }
        if let Some(arg) = request.args.iter().find(|a| a.contains('\0')) {
            return Err(bad(format!("argument {arg:?} holds a NUL character")));
        }
        check_duration("--timeout", request.timeout)?;
        check_duration("--expire", request.expire)?;
        Ok(Run {
            issue: Engine::new(Issuing {
                at: at.to_string(),
                name: service.to_string(),
                id: TaskId::new(created, nonce),
                task,
                request,
                created,
                service_type: None,
                written: None,
                in_doubt: false,
                access: Access::Open,
            }),
            prune: None,
            issued: None,
        })
    }

    /// What it creates gets the ACLs `access` gives their paths (open by default).
    pub fn with_access(mut self, access: Access) -> Run {
        self.issue.steps.access = access;
        self
    }

    /// The id the task gets.
    pub fn id(&self) -> &TaskId {
        &self.issue.steps.id
    }

    fn finish(&mut self, pruned: Result<usize, PlanError>) -> Result<Outcome, PlanError> {
        let mut outcome = self.issued.take().ok_or(PlanError::Misfed {
            expected: "a task issued before pruning",
            got: "none",
        })?;
        if let Outcome::TaskIssued {
            pruned: count,
            prune_error,
            ..
        } = &mut outcome
        {
            match pruned {
                Ok(n) => *count = n,
                Err(e) => *prune_error = Some(e.to_string()),
            }
        }
        Ok(outcome)
    }

    fn prune_step(&mut self, step: Step<usize>) -> Step {
        match step {
            Step::Do(request) => Step::Do(request),
            Step::Done(result) => Step::Done(self.finish(result)),
        }
    }
}

impl Plan for Run {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step {
        if let Some(prune) = self.prune.as_mut() {
            let step = prune.next(now, feedback);
            return self.prune_step(step);
        }
        match self.issue.next(now, feedback) {
            Step::Done(Ok(outcome)) => {
                // Issued: a failure to prune does not undo that, it is only told.
                self.issued = Some(outcome);
                let steps = &self.issue.steps;
                let mut prune = Engine::new(Pruning {
                    service: steps.name.clone(),
                    keep: steps.id.clone(),
                    pruned: 0,
                    victim: None,
                });
                let step = prune.next(now, Feedback::Start);
                self.prune = Some(prune);
                self.prune_step(step)
            }
            other => other,
        }
    }
}

/// A persistent node with the ACL `access` gives its path.
fn create(access: &Access, path: String, data: Vec<u8>) -> ZkOp {
    ZkOp::Create {
        acl: access.acl(&path, &BTreeSet::new()),
        path,
        data,
        mode: CreateMode::Persistent,
    }
}

/// The settings node's data as an object.
fn settings_map(path: &str, got: &Got) -> Result<Map<String, Value>, PlanError> {
    let Some(data) = got.data() else {
        return Err(PlanError::NodeMissing {
            path: path.to_string(),
        });
    };
    match serde_json::from_slice(data) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(PlanError::NotAnObject {
            path: path.to_string(),
        }),
    }
}

impl Issuing {
    fn issued(&self, (request, added): &(TaskRequest, Vec<String>)) -> Outcome {
        Outcome::TaskIssued {
            service: self.name.clone(),
            task: request.task.to_string(),
            id: self.id.to_string(),
            machines: request.machines.iter().map(|m| m.to_string()).collect(),
            rolling: request.rolling,
            added: added.clone(),
            pruned: 0,
            prune_error: None,
        }
    }

    fn plan(&mut self, mut got: Vec<Got>) -> Result<Decision<Outcome>, PlanError> {
        let type_got = got.split_off(got.len().min(6));
        let [pop, service, settings, machines, container, node] = exactly(got)?;
        require_service(&self.at, &self.name, &pop, &service)?;
        if let Got::Data { data, .. } = &node {
            // Our multi is all or nothing: our request there means it took effect.
            return match self.written.as_ref() {
                Some(written) if self.in_doubt && *data == written.0.render() => {
                    Ok(Decision::Done(Ok(self.issued(written))))
                }
                _ => Err(PlanError::TaskIdTaken {
                    id: self.id.to_string(),
                }),
            };
        }
        let settings_path = paths::service_settings(&self.name);
        let settings_version = match &settings {
            Got::Data { stat, .. } => Some(stat.version),
            _ => None,
        };
        let settings = settings_map(&settings_path, &settings)?;
        let type_name = settings
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let service_type = PluginName::new(type_name).map_err(PlanError::InvalidTypeName)?;
        if self.service_type.as_ref() != Some(&service_type) {
            // Read its manifest along with the rest.
            self.service_type = Some(service_type);
            return Ok(Decision::Look);
        }
        let manifest = resolve(&service_type, &type_got)?;
        let python = manifest.environment == Environment::Python;
        let definition = match (
            manifest.tasks.get(&self.task),
            TaskKind::builtin(self.task.as_str()),
        ) {
            (Some(task), _) => Definition::Command(task),
            (None, Some(kind)) if python => Definition::Builtin(kind),
            (None, Some(_)) => {
                return Err(PlanError::NoPythonEnvironment {
                    service: self.name.clone(),
                    service_type: service_type.to_string(),
                    task: self.task.to_string(),
                })
            }
            (None, None) => {
                let mut known: Vec<String> = manifest.tasks.keys().map(|t| t.to_string()).collect();
                if python {
                    known.extend(["install".to_string(), "packages".to_string()]);
                    known.sort();
                }
                return Err(PlanError::UnknownTask {
                    service: self.name.clone(),
                    service_type: service_type.to_string(),
                    task: self.task.to_string(),
                    known,
                });
            }
        };
        // Installing changes the service's settings: checked as `pop set` checks them.
        let mut settings_write = None;
        let mut added = Vec::new();
        match definition {
            Definition::Command(task) => {
                // What would run must render: the machine's own values are stand-ins here.
                let variables = Variables {
                    machine: "machine".into(),
                    service: self.name.clone(),
                    state_dir: "state".into(),
                    pop: "pop".into(),
                    python: python.then(|| PythonEnvironment {
                        env_dir: "env".into(),
                        python: "env/bin/python".into(),
                    }),
                };
                plugin::render(
                    &task.command,
                    &plugin::effective(&settings),
                    &variables,
                    &self.request.args,
                )
                .map_err(|error| PlanError::TaskUnrenderable {
                    service: self.name.clone(),
                    task: self.task.to_string(),
                    error,
                })?;
            }
            Definition::Builtin(TaskKind::Packages) => {
                if !self.request.args.is_empty() {
                    return Err(bad("packages takes no arguments".into()));
                }
            }
            Definition::Builtin(TaskKind::Install) => {
                let (edited, new) = self.with_requirements(&settings)?;
                manifest
                    .check_settings(&edited)
                    .map_err(|error| PlanError::InvalidSettings {
                        name: self.name.clone(),
                        error,
                        hint: "",
                    })?;
                if !new.is_empty() {
                    let version = settings_version.ok_or_else(|| PlanError::NodeMissing {
                        path: settings_path.clone(),
                    })?;
                    settings_write = Some(ZkOp::SetData {
                        path: settings_path.clone(),
                        data: render_settings(edited),
                        version: Some(version),
                    });
                }
                added = new;
            }
            Definition::Builtin(TaskKind::Command) => {}
        }
        let machines_path = paths::service_machines(&self.name);
        let (deployed, machines_version) = match &machines {
            Got::Data { data, stat } => (
                parse_machines(data).map_err(|error| PlanError::InvalidMachines {
                    path: machines_path.clone(),
                    error,
                })?,
                stat.version,
            ),
            _ => {
                return Err(PlanError::NodeMissing {
                    path: machines_path,
                })
            }
        };
        if deployed.is_empty() {
            return Err(PlanError::DeployedNowhere {
                name: self.name.clone(),
            });
        }
        let targets = if self.request.machines.is_empty() {
            deployed
                .iter()
                .filter_map(|m| MachineId::new(m).ok())
                .collect()
        } else {
            if let Some(m) = self
                .request
                .machines
                .iter()
                .find(|m| !deployed.contains(m.as_str()))
            {
                return Err(PlanError::NotDeployedOn {
                    name: self.name.clone(),
                    machine: m.to_string(),
                    deployed: deployed.iter().cloned().collect(),
                });
            }
            self.request.machines.clone()
        };
        let (kind, command, restart_after, task_timeout) = match definition {
            Definition::Command(task) => (
                TaskKind::Command,
                task.command.iter().map(|t| t.text().to_string()).collect(),
                task.restart_after,
                task.timeout,
            ),
            Definition::Builtin(kind) => (kind, Vec::new(), false, None),
        };
        let timeout = self
            .request
            .timeout
            .or(task_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        let expire = self.request.expire.unwrap_or(DEFAULT_EXPIRY);
        let request = TaskRequest {
            task: self.task.clone(),
            kind,
            args: self.request.args.clone(),
            machines: targets,
            rolling: self.request.rolling,
            author: self.request.author.clone(),
            created_at: self.created.as_secs_f64(),
            expires_at: (self.created + expire).as_secs_f64(),
            timeout_s: timeout.as_secs_f64(),
            command,
            environment: manifest.environment,
            restart_after,
        };
        let task_path = paths::task(&self.name, self.id.as_str());
        // The settings first: the agents that see the task see its packages too.
        let mut ops: Vec<ZkOp> = settings_write.into_iter().collect();
        // The targets are the list as read: a deploy or undeploy since makes the multi
        // fail, and the plan reads again, rather than naming a machine that left.
        ops.push(ZkOp::Check {
            path: machines_path,
            version: machines_version,
        });
        if !container.exists() {
            ops.push(create(
                &self.access,
                paths::service_tasks(&self.name),
                Vec::new(),
            ));
        }
        ops.push(create(&self.access, task_path.clone(), request.render()));
        for machine in &request.machines {
            let path = paths::task_result(&self.name, self.id.as_str(), machine.as_str());
            ops.push(create(&self.access, path, TaskResult::pending().render()));
        }
        self.written = Some((request, added));
        Ok(Decision::Write(ZkOp::Multi { ops }))
    }

    /// The settings with the requirements of `install` added to `packages` (those not
    /// there already, in the order given), and which were added. Refused, naming the
    /// requirement, where `pop set` would refuse it, or with none given; and with
    /// `--machine` or `--rolling`: `packages` is one setting for every machine.
    fn with_requirements(
        &self,
        settings: &Map<String, Value>,
    ) -> Result<(Map<String, Value>, Vec<String>), PlanError> {
        let name = &self.name;
        if self.request.args.is_empty() {
            return Err(bad(format!(
                "install needs one or more requirements, e.g. `pop run {name} install 'requests==2.31.0' ./wheels/app-1.0-py3-none-any.whl`"
            )));
        }
        if self.request.rolling || !self.request.machines.is_empty() {
            return Err(bad(format!(
                "install adds to the packages of {name}, which every machine it is deployed on builds: --machine and --rolling do not apply"
            )));
        }
        let invalid = |error: crate::environment::SpecError| PlanError::InvalidSettings {
            name: name.clone(),
            error: error.into(),
            hint: "",
        };
        // Settings whose packages are no list are mended with `pop set`, not added to.
        EnvironmentSpec::from_values(settings).map_err(invalid)?;
        let mut packages = match settings.get("packages") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        let mut added = Vec::new();
        for requirement in &self.request.args {
            let requirement = requirement.trim().to_string();
            let value = Value::String(requirement.clone());
            let there = packages
                .iter()
                .any(|p| p.as_str().map(str::trim) == Some(requirement.as_str()));
            if !there {
                packages.push(value);
                added.push(requirement);
            }
        }
        let mut edited = settings.clone();
        edited.insert("packages".into(), Value::Array(packages));
        EnvironmentSpec::from_values(&edited).map_err(invalid)?;
        Ok((edited, added))
    }
}

/// What the task is: a command of the manifest, or built into Python types.
enum Definition<'a> {
    Command(&'a plugin::Task),
    Builtin(TaskKind),
}

impl Steps for Issuing {
    type Done = Outcome;

    fn reads(&self) -> Vec<ZkOp> {
        let mut reads = vec![
            get(paths::POP),
            get(paths::service(&self.name)),
            get(paths::service_settings(&self.name)),
            get(paths::service_machines(&self.name)),
            get(paths::service_tasks(&self.name)),
            get(paths::task(&self.name, self.id.as_str())),
        ];
        if let Some(service_type) = &self.service_type {
            reads.extend(type_reads(service_type));
        }
        reads
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<Outcome> {
        self.plan(got).unwrap_or_else(|e| Decision::Done(Err(e)))
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<Outcome, PlanError>> {
        let written = self.written.as_ref()?;
        Some(Ok(self.issued(written)))
    }

    fn in_doubt(&mut self) {
        self.in_doubt = true;
    }
}

/// Deletes the oldest tasks of the service beyond the last [`KEEP_TASKS`], one multi
/// per task (its results, then it). Counts what it deleted.
struct Pruning {
    service: String,
    /// The task just issued: never deleted.
    keep: TaskId,
    pruned: usize,
    /// The task being deleted, once its results are to be read.
    victim: Option<TaskId>,
}

impl Steps for Pruning {
    type Done = usize;

    fn reads(&self) -> Vec<ZkOp> {
        match &self.victim {
            None => vec![children(paths::service_tasks(&self.service))],
            Some(id) => vec![children(paths::task(&self.service, id.as_str()))],
        }
    }

    fn decide(&mut self, _now: Timestamp, got: Vec<Got>) -> Decision<usize> {
        let [got] = match exactly(got) {
            Ok(got) => got,
            Err(e) => return Decision::Done(Err(e)),
        };
        match self.victim.take() {
            None => {
                // Only names pop gives tasks: anything else there is not ours to delete.
                let mut ids: Vec<TaskId> = match got {
                    Got::Children(names) => {
                        names.iter().filter_map(|n| TaskId::parse(n).ok()).collect()
                    }
                    _ => Vec::new(),
                };
                ids.sort();
                if ids.len() <= KEEP_TASKS {
                    return Decision::Done(Ok(self.pruned));
                }
                match ids.into_iter().find(|id| *id != self.keep) {
                    Some(oldest) => {
                        self.victim = Some(oldest);
                        Decision::Look
                    }
                    None => Decision::Done(Ok(self.pruned)),
                }
            }
            Some(id) => {
                let path = paths::task(&self.service, id.as_str());
                let Got::Children(results) = got else {
                    // Gone meanwhile (pruned by another `pop run`).
                    return Decision::Look;
                };
                let mut ops: Vec<ZkOp> = results
                    .iter()
                    .map(|m| ZkOp::Delete {
                        path: format!("{path}/{m}"),
                        version: None,
                    })
                    .collect();
                ops.push(ZkOp::Delete {
                    path,
                    version: None,
                });
                self.victim = Some(id);
                Decision::Write(ZkOp::Multi { ops })
            }
        }
    }

    fn written(&mut self, _reply: &ZkReply) -> Option<Result<usize, PlanError>> {
        self.victim = None;
        self.pruned += 1;
        None
    }

    fn refused(&mut self, _now: Timestamp, path: &str, error: &ZkError) -> Refused<usize> {
        // Deleted by another `pop run` meanwhile, or changed: look again.
        self.victim = None;
        super::engine::refused_by_default(path, error)
    }

    fn in_doubt(&mut self) {
        self.victim = None;
    }
}

#[cfg(test)]
mod tests;
