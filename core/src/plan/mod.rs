//! The operator's commands (`pop init`, `add`, `deploy`/`undeploy`, `set`, `remove`,
//! `plugin add`/`remove`) as pure plans. A plan says what to read, what to write (one op or one all-or-nothing
//! multi, with version checks), when to wait, and how it ended: an [`Outcome`] the CLI
//! prints or a [`PlanError`] naming the problem. The CLI runs plans against ZooKeeper;
//! the simulator's operator runs the same plans against its model, with faults, so the
//! orderings the commands rely on are simulated too.
//!
//! Retries are decided here, not by whoever runs the plan: a version conflict, or a node
//! created or deleted by someone else meanwhile, means read again and plan again; a write
//! whose outcome is unknown (lost connection, timeout) means read again and decide whether
//! it took effect. Both are bounded, and waits are deadlines computed from the `now` each
//! step is given, so every plan ends.

mod acls;
mod add;
mod assignments;
mod engine;
mod init;
mod machines;
mod plugins;
mod remove;
mod run;
mod set;
#[cfg(test)]
mod testing;

pub use acls::{MachineRegistration, SettingsAcl, SyncAcls};
pub use add::{Add, AddRequest};
pub use init::Init;
pub use machines::{ChangeMachines, MachinesChange};
pub use plugins::{PluginAdd, PluginRemove};
pub use remove::Remove;
pub use run::{Run, RunRequest};
pub use set::Set;

use crate::names::{MachineId, NameError};
use crate::plugin::{ManifestError, RenderError, SettingsError};
use crate::settings::DataError;
use crate::time::Timestamp;
use crate::zk::{ZkError, ZkOp, ZkReply};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// Version conflicts (and nodes appearing or vanishing under a plan) tolerated before it
/// gives up: others writing the same node this often means something is wrong.
pub const MAX_CONFLICTS: u32 = 100;
/// Requests with an unknown outcome (lost connection, timeout) tolerated per plan.
pub const MAX_FAILURES: u32 = 4;
/// The pause before reading again after a request failed that way.
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What a plan wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Read these nodes (`GetData`/`GetChildren`, no watch), in order; answer with one
    /// reply each, in the same order, as [`Feedback::Read`].
    Read(Vec<ZkOp>),
    /// Send this write (one op, or a `ZkOp::Multi`); answer with [`Feedback::Wrote`].
    Write(ZkOp),
    /// Send nothing until this time; then answer [`Feedback::Woke`].
    Wait(Timestamp),
}

/// What the last request brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feedback {
    /// The first call: nothing was asked yet.
    Start,
    Read(Vec<ZkReply>),
    Wrote(ZkReply),
    Woke,
}

impl Feedback {
    fn name(&self) -> &'static str {
        match self {
            Feedback::Start => "the start",
            Feedback::Read(_) => "read replies",
            Feedback::Wrote(_) => "a write reply",
            Feedback::Woke => "a wake-up",
        }
    }
}

/// A plan's answer: do this, or it is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T = Outcome> {
    Do(Request),
    Done(Result<T, PlanError>),
}

/// A command as a state machine. Call `next` with [`Feedback::Start`], perform the
/// request it returns, call `next` with what came back, until it is [`Step::Done`].
pub trait Plan {
    fn next(&mut self, now: Timestamp, feedback: Feedback) -> Step;
}

/// How a command ended well; `Display` is what `pop` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Initialised {
        at: String,
        reset: bool,
    },
    Added {
        name: String,
        service_type: String,
        settings: Map<String, Value>,
    },
    /// The list changed (or, after a write in doubt, is now as asked).
    MachinesChanged {
        name: String,
        change: MachinesChange,
        machines: Vec<MachineId>,
        now: BTreeSet<String>,
    },
    MachinesUnchanged {
        name: String,
        now: BTreeSet<String>,
    },
    SettingsUpdated {
        name: String,
    },
    SettingsUnchanged {
        name: String,
    },
    Removed {
        name: String,
    },
    PluginAdded {
        name: String,
        /// It replaced a different manifest of the same name.
        replaced: bool,
    },
    PluginUnchanged {
        name: String,
    },
    PluginRemoved {
        name: String,
        /// Services still of its type (`--force`).
        still_used_by: Vec<String>,
    },
    /// `pop run`: the request and its placeholders are written.
    TaskIssued {
        service: String,
        task: String,
        id: String,
        machines: Vec<String>,
        rolling: bool,
        /// `install`: the requirements it added to the service's `packages` (those not
        /// there already).
        added: Vec<String>,
        /// Old tasks deleted after it.
        pruned: usize,
        /// Why deleting old tasks failed (the task is issued all the same).
        prune_error: Option<String>,
    },
    /// ACLs were set on this many nodes, for these registered machines.
    AclsSet {
        nodes: usize,
        machines: Vec<String>,
    },
    MachineRegistered {
        machine: String,
        /// It was removed from the registry rather than added.
        removed: bool,
        /// Nodes whose ACL was set afterwards.
        nodes: usize,
    },
}

fn list_or_nowhere(machines: &BTreeSet<String>) -> String {
    if machines.is_empty() {
        "nowhere".to_string()
    } else {
        machines.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Initialised { at, reset } => {
                let reset = if *reset { " (reset)" } else { "" };
                write!(f, "initialised pop at {at}{reset}")
            }
            Outcome::Added {
                name,
                service_type,
                settings,
            } => write!(
                f,
                "added {name} ({service_type}): {}",
                Value::Object(settings.clone())
            ),
            Outcome::MachinesChanged {
                name,
                change,
                machines,
                now,
            } => {
                let given: Vec<&str> = machines.iter().map(MachineId::as_str).collect();
                write!(
                    f,
                    "{change} {name} on {}; it now runs on: {}",
                    given.join(", "),
                    list_or_nowhere(now)
                )
            }
            Outcome::MachinesUnchanged { name, now } => {
                write!(f, "nothing to do: {name} runs on: {}", list_or_nowhere(now))
            }
            Outcome::SettingsUpdated { name } => {
                write!(
                    f,
                    "updated settings of {name}; it restarts wherever it runs"
                )
            }
            Outcome::SettingsUnchanged { name } => {
                write!(f, "nothing to do: settings of {name} are already so")
            }
            Outcome::Removed { name } => write!(f, "removed {name}"),
            Outcome::PluginAdded {
                name,
                replaced: false,
            } => write!(f, "added plugin {name}"),
            Outcome::PluginAdded {
                name,
                replaced: true,
            } => write!(f, "replaced plugin {name}"),
            Outcome::PluginUnchanged { name } => {
                write!(f, "nothing to do: plugin {name} is stored as given already")
            }
            Outcome::PluginRemoved {
                name,
                still_used_by,
            } => {
                write!(f, "removed plugin {name}")?;
                if !still_used_by.is_empty() {
                    write!(
                        f,
                        "; services still of its type: {}",
                        still_used_by.join(", ")
                    )?;
                }
                Ok(())
            }
            Outcome::TaskIssued {
                service,
                task,
                id,
                machines,
                rolling,
                added,
                pruned,
                prune_error,
            } => {
                write!(
                    f,
                    "issued task {task} of {service} as {id} on {}",
                    machines.join(", ")
                )?;
                if !added.is_empty() {
                    write!(f, "; added to its packages: {}", added.join(" "))?;
                }
                if *rolling {
                    f.write_str(", one machine at a time")?;
                }
                if *pruned > 0 {
                    write!(f, "; deleted {pruned} old tasks")?;
                }
                if let Some(error) = prune_error {
                    write!(f, "; could not delete old tasks: {error}")?;
                }
                Ok(())
            }
            Outcome::AclsSet { nodes, machines } => write!(
                f,
                "set the ACLs of {nodes} nodes (registered machines: {})",
                if machines.is_empty() {
                    "none".to_string()
                } else {
                    machines.join(", ")
                }
            ),
            Outcome::MachineRegistered {
                machine,
                removed: false,
                nodes,
            } => write!(f, "added machine {machine}; set the ACLs of {nodes} nodes"),
            Outcome::MachineRegistered {
                machine,
                removed: true,
                nodes,
            } => write!(
                f,
                "removed machine {machine}: its credential is refused now; set the ACLs of {nodes} nodes"
            ),
        }
    }
}

/// Which kind of request failed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    Reading,
    Writing,
}

impl fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Doing::Reading => "reading",
            Doing::Writing => "writing",
        })
    }
}

/// How a command ended badly. Refusals (see [`PlanError::is_refusal`]) name something
/// about the data; the rest say ZooKeeper could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("no pop namespace in ZooKeeper at {at}: run `pop init` first")]
    NamespaceMissing { at: String },
    #[error("pop is already initialised at {at} ({services} services); `pop init --force` resets it, deleting every service")]
    AlreadyInitialised { at: String, services: usize },
    #[error("no service named \"{name}\" (see `pop status`)")]
    NoSuchService { name: String },
    #[error("a service named \"{name}\" exists already (`pop remove {name}` first, or pick another --name)")]
    ExistsAlready { name: String },
    #[error("invalid settings for {name}: {error}{hint}")]
    InvalidSettings {
        name: String,
        error: SettingsError,
        hint: &'static str,
    },
    #[error("unknown service type \"{name}\" (known types: {})", known.join(", "))]
    UnknownType { name: String, known: Vec<String> },
    #[error("unknown service type: {0}")]
    InvalidTypeName(NameError),
    /// A manifest given to `pop plugin add`.
    #[error("{0}")]
    InvalidManifest(ManifestError),
    /// A manifest stored in ZooKeeper by someone else.
    #[error("{error}; replace it with `pop plugin add --replace <file>`")]
    StoredPluginInvalid { path: String, error: ManifestError },
    #[error("\"{name}\" is a type built into pop; give the plugin another name")]
    BuiltinName { name: String },
    #[error("\"{name}\" is built into pop and cannot be removed")]
    BuiltinCannotGo { name: String },
    #[error("another plugin named \"{name}\" is stored already (see `pop plugin show {name}`); `pop plugin add --replace` replaces it")]
    PluginExists { name: String },
    #[error("no plugin named \"{name}\" (see `pop plugin list`)")]
    NoSuchPlugin { name: String },
    #[error("plugin {name} is the type of {} {}; remove them first or use `pop plugin remove {name} --force`", if services.len() == 1 { "service" } else { "services" }, services.join(", "))]
    PluginInUse { name: String, services: Vec<String> },
    #[error("{path} does not exist")]
    NodeMissing { path: String },
    #[error("{}", unknown_task(service, service_type, task, known))]
    UnknownTask {
        service: String,
        service_type: String,
        task: String,
        known: Vec<String>,
    },
    #[error("bad arguments: {reason}")]
    BadTaskArguments { reason: String },
    #[error("{task} is a task of types with a Python environment; {service} is of type {service_type}, which has none")]
    NoPythonEnvironment {
        service: String,
        service_type: String,
        task: String,
    },
    #[error("task {task} of {service} cannot run with its settings: {error}")]
    TaskUnrenderable {
        service: String,
        task: String,
        error: RenderError,
    },
    #[error("{name} is deployed nowhere: `pop deploy {name} --machine ID` first")]
    DeployedNowhere { name: String },
    #[error("{name} is not deployed on {machine} (it is deployed on: {})", deployed.join(", "))]
    NotDeployedOn {
        name: String,
        machine: String,
        deployed: Vec<String>,
    },
    #[error("a task with id {id} exists already; run the command again")]
    TaskIdTaken { id: String },
    #[error("{path} holds an invalid machines list ({error}); fix it with a ZooKeeper client, pop will not overwrite it")]
    InvalidMachines { path: String, error: DataError },
    #[error("{path} holds an invalid machines list ({error}), so agents may still run {name}; use `pop remove {name} --force`")]
    MachinesUnreadable {
        path: String,
        name: String,
        error: DataError,
    },
    #[error(
        "{path} is not a JSON object; fix it with a ZooKeeper client, pop will not overwrite it"
    )]
    NotAnObject { path: String },
    #[error("{name} is deployed on {}; `pop undeploy` it first or use `pop remove {name} --force`", machines.join(", "))]
    Deployed { name: String, machines: Vec<String> },
    #[error(
        "deleting {path}: children keep appearing for {waited:?} (an agent still publishing?)"
    )]
    ChildrenKeepAppearing { path: String, waited: Duration },
    #[error("writing {path}: still conflicting after {attempts} attempts")]
    StillConflicting { path: String, attempts: u32 },
    #[error("{doing} {path}: {error}; gave up after {attempts} attempts{}", if *write_in_doubt { " (the last write may or may not have taken effect: see `pop status`)" } else { "" })]
    GaveUp {
        doing: Doing,
        path: String,
        error: ZkError,
        attempts: u32,
        /// A write's outcome was unknown and nothing could be read since.
        write_in_doubt: bool,
    },
    #[error("{doing} {path}: {error}")]
    Zk {
        doing: Doing,
        path: String,
        error: ZkError,
    },
    /// An ACL refused a request (NoAuth): the credential in use may not do it.
    #[error("ZooKeeper refused {doing} {path}: not authorised by its ACL")]
    NotAuthorised { doing: Doing, path: String },
    #[error(
        "{path} is not a machine's digest id; `pop machine remove` and add that machine again"
    )]
    BadRegistryEntry { path: String },
    #[error("machine {machine} is registered already; `pop machine remove {machine}` first to give it a new credential")]
    MachineRegistered { machine: String },
    #[error("no machine {machine} is registered (`pop machine add {machine}` registers it)")]
    MachineNotRegistered { machine: String },
    #[error("\"{machine}\" is the admin's user name; a machine cannot have it (nor the admin a registered machine's)")]
    MachineIsAdmin { machine: String },
    #[error("the namespace at {at} is not secured: `pop init --admin-identity USER:PASSWORD --force` secures it")]
    NotSecured { at: String },
    /// Whoever runs the plan answered a request with the wrong kind of feedback.
    #[error("the plan got {got} while it waited for {expected}")]
    Misfed {
        expected: &'static str,
        got: &'static str,
    },
}

impl PlanError {
    /// True when the command refused because of what it found, rather than failing to
    /// talk to ZooKeeper or giving up on a race.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            PlanError::ChildrenKeepAppearing { .. }
                | PlanError::StillConflicting { .. }
                | PlanError::GaveUp { .. }
                | PlanError::Zk { .. }
                | PlanError::NotAuthorised { .. }
                | PlanError::Misfed { .. }
        )
    }
}

fn unknown_task(service: &str, service_type: &str, task: &str, known: &[String]) -> String {
    let offered = if known.is_empty() {
        format!("type {service_type} has no tasks")
    } else {
        format!("its type {service_type} has: {}", known.join(", "))
    };
    format!("no task \"{task}\" for {service} ({offered})")
}

fn get(path: impl Into<String>) -> ZkOp {
    ZkOp::GetData {
        path: path.into(),
        watch: false,
    }
}

fn children(path: impl Into<String>) -> ZkOp {
    ZkOp::GetChildren {
        path: path.into(),
        watch: false,
    }
}

/// Fails unless the namespace's marker node was found.
fn require_namespace(at: &str, pop: &engine::Got) -> Result<(), PlanError> {
    if pop.exists() {
        Ok(())
    } else {
        Err(PlanError::NamespaceMissing { at: at.to_string() })
    }
}

/// Fails unless the namespace and the service were found.
fn require_service(
    at: &str,
    name: &str,
    pop: &engine::Got,
    service: &engine::Got,
) -> Result<(), PlanError> {
    require_namespace(at, pop)?;
    if service.exists() {
        Ok(())
    } else {
        Err(PlanError::NoSuchService {
            name: name.to_string(),
        })
    }
}
