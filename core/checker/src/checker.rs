//! The core over arbitrary input sequences, checked after every input against the world
//! the inputs describe: the properties that must hold whatever ZooKeeper, the network and
//! the processes do, in any order.

use crate::steps::{Step, TimedStep};
use crate::world::{config, Live, SessionView, World, MACHINE};
use pop_core::agent::Agent;
use pop_core::backoff::Backoff;
use pop_core::environment::{env_dir, python_environment, EnvironmentSpec};
use pop_core::event::{Action, Input};
use pop_core::journal::{decode, replay, Record};
use pop_core::launch::{self, Launch};
use pop_core::paths::{self, Watched};
use pop_core::plugin::{builtin, Environment, Manifest};
use pop_core::published::{parse_pid, StateNode};
use pop_core::settings::{SessionLoss, Settings};
use pop_core::time::Timestamp;
use pop_core::zk::{CreateMode, RequestId, SessionEvent, ZkOp};
use std::fmt;
use std::time::Duration;

/// A property that failed, with the input that broke it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub input_number: usize,
    pub input: String,
    pub problem: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "after input #{} ({}): {}",
            self.input_number, self.input, self.problem
        )
    }
}

impl std::error::Error for Violation {}

/// How far a checked sequence got, to show generated inputs reach deep states.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub inputs: usize,
    pub requests: usize,
    pub spawns: usize,
    pub stops: usize,
    /// Spawns of services whose type is stored in `/plugins`.
    pub stored_type_spawns: usize,
    /// Environment builds asked for.
    pub builds: usize,
    /// Spawns of services with a Python environment.
    pub environment_spawns: usize,
}

/// Runs an agent and checks every batch of actions against the world its inputs describe.
pub struct Checker {
    pub(crate) agent: Agent,
    records: Vec<Record>,
    pub(crate) now: Timestamp,
    inputs: usize,
    pub(crate) world: World,
    exited: bool,
    summary: Summary,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new()
    }
}

/// What an input changed about the session, for the checks that follow from it.
struct SessionChange {
    new_session: bool,
    expired_before: bool,
}

impl Checker {
    pub fn new() -> Checker {
        Checker {
            agent: Agent::new(config()),
            records: vec![Record::Start { config: config() }],
            now: Timestamp::from_millis(1_000_000),
            inputs: 0,
            world: World::new(),
            exited: false,
            summary: Summary::default(),
        }
    }

    /// True once the agent has exited: the driver feeds it nothing more.
    pub fn exited(&self) -> bool {
        self.exited
    }

    pub fn advance(&mut self, by: Duration) {
        self.now = self.now + by;
    }

    /// Serializes and restores the agent, as a journal snapshot does; the restored one
    /// must act exactly like the original (the final replay from the start checks it).
    pub fn snapshot(&mut self) -> Result<(), Violation> {
        let json = serde_json::to_string(&self.agent).map_err(|e| self.violation("snapshot", e))?;
        let restored: Agent =
            serde_json::from_str(&json).map_err(|e| self.violation("snapshot", e))?;
        let again = serde_json::to_string(&restored).map_err(|e| self.violation("snapshot", e))?;
        if again != json {
            return Err(self.violation("snapshot", "a restored agent serializes differently"));
        }
        self.agent = restored;
        Ok(())
    }

    fn violation(&self, input: &str, problem: impl fmt::Display) -> Violation {
        Violation {
            input_number: self.inputs,
            input: input.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Delivers one input at the current time and checks what the agent does.
    pub fn feed(&mut self, input: Input) -> Result<(), Violation> {
        if self.exited {
            return Ok(());
        }
        self.inputs += 1;
        self.summary.inputs += 1;
        let described = format!("{input:?}");
        let at = self.now;
        self.records.push(Record::Input {
            at,
            input: input.clone(),
        });
        let change = self.session_change(&input);
        self.world.learn(at, &input);
        self.agent.handle(at, input.clone());
        let actions = self.agent.drain_actions();
        let checked = self
            .check(&actions)
            .and_then(|()| self.check_batch(&input, &change, &actions))
            // The O(change) bookkeeping: doing everything again would do nothing more.
            .and_then(|()| self.agent.audit());
        self.records.push(Record::Actions { actions });
        checked.map_err(|problem| self.violation(&described, problem))?;
        // Nothing new happened: a tick before any deadline must do nothing.
        if !self.exited && self.agent.poll_timeout().is_none_or(|t| t > at) {
            self.records.push(Record::Input {
                at,
                input: Input::Tick,
            });
            self.agent.handle(at, Input::Tick);
            let again = self.agent.drain_actions();
            let idle = again.is_empty();
            self.records.push(Record::Actions { actions: again });
            if !idle {
                return Err(self.violation(&described, "a tick with nothing due acted"));
            }
        }
        Ok(())
    }

    fn session_change(&self, input: &Input) -> SessionChange {
        let new_session = match input {
            Input::Session(SessionEvent::Connected { session, .. }) => !matches!(
                self.world.session,
                SessionView::Connected(s) | SessionView::Disconnected(s) if s == *session
            ),
            _ => false,
        };
        SessionChange {
            new_session,
            expired_before: self.world.session == SessionView::Expired,
        }
    }

    /// The properties of each action on its own.
    fn check(&mut self, actions: &[Action]) -> Result<(), String> {
        for (i, action) in actions.iter().enumerate() {
            if self.exited {
                return Err(format!("acted after exiting: {action:?}"));
            }
            match action {
                Action::Zk { id, op } => {
                    self.summary.requests += 1;
                    self.check_request(*id, op)?
                }
                Action::Spawn {
                    service,
                    generation,
                    settings,
                    launch,
                } => {
                    self.summary.spawns += 1;
                    self.check_launch(service, settings, launch)?;
                    self.check_spawn(service, *generation, settings, launch)?
                }
                Action::BuildEnvironment { service, spec, dir } => {
                    self.summary.builds += 1;
                    self.check_build(service, spec, dir)?
                }
                Action::RemoveEnvironments { service, keep } => {
                    self.check_removal(service, keep)?
                }
                Action::Stop {
                    service,
                    generation,
                    ..
                } => {
                    self.summary.stops += 1;
                    let key = (service.clone(), *generation);
                    if !self.world.known.contains(&key) {
                        return Err(format!("stopped a process it never had: {action:?}"));
                    }
                    if let Some(live) = self.world.live.get_mut(&key) {
                        live.stopping = true;
                    }
                }
                Action::NewSession => {
                    if self.world.session != SessionView::Expired {
                        return Err(format!("a new session while {:?}", self.world.session));
                    }
                }
                Action::Exit => {
                    if i + 1 != actions.len() {
                        return Err("actions after Exit".into());
                    }
                    self.exited = true;
                }
                // Tasks are the simulator's to check (the steps never issue one).
                Action::RunTask { .. } | Action::StopTask { .. } | Action::Report(_) => {}
            }
        }
        Ok(())
    }

    /// The properties of the whole batch an input caused.
    fn check_batch(
        &self,
        input: &Input,
        change: &SessionChange,
        actions: &[Action],
    ) -> Result<(), String> {
        let connected = matches!(self.world.session, SessionView::Connected(_));
        if self.exited {
            return Ok(());
        }
        // A resync does not flood the server: at most the cap of reads outstanding.
        let cap = pop_core::MAX_OUTSTANDING_READS;
        let reads = self
            .world
            .outstanding
            .values()
            .filter(|op| matches!(op, ZkOp::GetData { .. } | ZkOp::GetChildren { .. }))
            .count();
        if reads > cap {
            return Err(format!("{reads} reads outstanding, over the cap of {cap}"));
        }
        // A watch fired: the node is read again, with a new watch (a service's list or
        // settings only while the service is in the index as the agent last read it: a
        // watch left on one that left fires once more, and is not read); only with the
        // cap of reads outstanding may that read wait its turn.
        if let Input::Watch(event) = input {
            let followed = match Watched::parse(&event.path) {
                Some(Watched::Machines(s) | Watched::Settings(s)) => self
                    .world
                    .indexed
                    .as_ref()
                    .is_some_and(|(_, names)| names.contains(&s)),
                // Every agent's, read by the keeper; this agent reads its index instead.
                Some(Watched::ServiceList) | None => false,
                Some(_) => true,
            };
            if connected && followed {
                let rearmed = actions.iter().any(|a| match a {
                    Action::Zk {
                        op:
                            ZkOp::GetData { path, watch: true }
                            | ZkOp::GetChildren { path, watch: true },
                        ..
                    } => *path == event.path,
                    _ => false,
                });
                if !rearmed && reads < cap {
                    return Err(format!("{} fired and was not watched again", event.path));
                }
            }
        }
        // A new session owns none of the old one's ephemerals: the agent node is made anew.
        if change.new_session && !self.world.shutting_down {
            let agent_node = paths::agent(MACHINE);
            let created = actions.iter().any(|a| {
                matches!(a, Action::Zk { op: ZkOp::Create { path, .. }, .. } if *path == agent_node)
            });
            if !created {
                return Err("a new session without creating the agent node".into());
            }
        }
        if !change.expired_before
            && self.world.session == SessionView::Expired
            && !actions.contains(&Action::NewSession)
        {
            return Err("the session expired and no new one was asked for".into());
        }
        // Told to shut down, or fenced: what must not run is being stopped.
        let fenced = self.world.fenced(self.now);
        let must_stop = |live: &Live| {
            self.world.shutting_down || (fenced && live.settings.session_loss == SessionLoss::Fence)
        };
        if let Some(((service, generation), _)) = self
            .world
            .live
            .iter()
            .find(|(_, live)| live.started_at.is_some() && !live.stopping && must_stop(live))
        {
            return Err(format!(
                "{service}#{generation} runs on, though {}",
                if self.world.shutting_down {
                    "shutting down"
                } else {
                    "fenced"
                }
            ));
        }
        Ok(())
    }

    fn check_request(&mut self, id: RequestId, op: &ZkOp) -> Result<(), String> {
        if !matches!(self.world.session, SessionView::Connected(_)) {
            return Err(format!("a request while {:?}: {op:?}", self.world.session));
        }
        if !self.world.used_ids.insert(id) {
            return Err(format!("request id {id:?} used twice"));
        }
        self.world.outstanding.insert(id, op.clone());
        let path = op.path();
        if !paths::NAMESPACE
            .iter()
            .any(|top| path == *top || path.starts_with(&format!("{top}/")))
        {
            return Err(format!("a request outside the namespace: {op:?}"));
        }
        let (data, mode) = match op {
            ZkOp::GetData { .. } | ZkOp::GetChildren { .. } => return Ok(()),
            ZkOp::Delete { .. } => (None, None),
            ZkOp::SetData { data, .. } => (Some(data), None),
            ZkOp::Create { data, mode, .. } => (Some(data), Some(*mode)),
            ZkOp::Multi { .. } => return Err(format!("the agent sent a multi: {op:?}")),
            ZkOp::SetAcl { .. } => return Err(format!("the agent set an ACL: {op:?}")),
            ZkOp::Check { .. } => return Err(format!("the agent sent a check: {op:?}")),
            // Only on its own machine's directory, whose pid nodes it watches so.
            ZkOp::WatchTree { .. } if path == paths::machine(MACHINE) => return Ok(()),
            ZkOp::WatchTree { .. } => return Err(format!("a tree watch elsewhere: {op:?}")),
        };
        // As the keeper: its claim, with its machine id, goes with its session; the
        // index's directories and entries are persistent and empty.
        if path == paths::KEEPER {
            return match (op, data) {
                (ZkOp::Create { .. }, Some(d)) if d.as_slice() == MACHINE.as_bytes() => {
                    match mode {
                        Some(CreateMode::Ephemeral) => Ok(()),
                        _ => Err(format!("created {path} as {mode:?}")),
                    }
                }
                _ => Err(format!(
                    "the keeper's node written other than by its claim: {op:?}"
                )),
            };
        }
        // `/assignments` itself too: missing in an open namespace made before the index.
        let index_node = path == paths::ASSIGNMENTS
            || path
                .strip_prefix(paths::ASSIGNMENTS)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| matches!(rest.split('/').count(), 1 | 2));
        if index_node {
            return match (op, data) {
                (ZkOp::Delete { .. }, _) => Ok(()),
                (ZkOp::Create { .. }, Some(d))
                    if d.is_empty() && mode == Some(CreateMode::Persistent) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "an index node written other than created empty or deleted: {op:?}"
                )),
            };
        }
        // This machine's own directory is persistent; everything else it writes goes with
        // its session.
        let own_directory = path == paths::machine(MACHINE);
        let expected_mode = if own_directory {
            CreateMode::Persistent
        } else {
            CreateMode::Ephemeral
        };
        if mode.is_some_and(|m| m != expected_mode) {
            return Err(format!("created {path} as {mode:?}"));
        }
        if own_directory || path == paths::agent(MACHINE) {
            return Ok(());
        }
        let own_pid_node = path
            .strip_prefix(&format!("{}/", paths::machine(MACHINE)))
            .map(str::to_string);
        if let Some(service) = own_pid_node {
            // A pid node holds the pid of a process this agent was told of.
            return match data.map(|d| parse_pid(d).ok()) {
                None => Ok(()),
                Some(Some(pid)) if self.known_pid(&service, pid) => Ok(()),
                Some(_) => Err(format!("published a pid it was never given: {op:?}")),
            };
        }
        let own_task_result = path.starts_with("/services/")
            && path.ends_with(&format!("/{MACHINE}"))
            && path.split('/').nth(3) == Some("tasks")
            && path.matches('/').count() == 5;
        if own_task_result {
            // Only its own result, only ever set (pop run creates it), by version.
            return match op {
                ZkOp::SetData {
                    version: Some(_), ..
                } => Ok(()),
                _ => Err(format!(
                    "a task result written other than by version: {op:?}"
                )),
            };
        }
        let own_state = path.starts_with("/services/")
            && path.ends_with(&format!("/state/{MACHINE}"))
            && path.matches('/').count() == 4;
        if !own_state {
            return Err(format!("wrote a node that is not this machine's: {op:?}"));
        }
        if let Some(data) = data {
            let service = path.split('/').nth(2).unwrap_or_default();
            match StateNode::parse(data) {
                Ok(state)
                    if state.machine == MACHINE
                        && self.known_pid(service, state.pid)
                        && self
                            .world
                            .known
                            .contains(&(service.to_string(), state.generation)) => {}
                Ok(state) => return Err(format!("a state node that is not true: {state:?}")),
                Err(e) => return Err(format!("a state node pop cannot read back ({e}): {op:?}")),
            }
        }
        Ok(())
    }

    fn known_pid(&self, service: &str, pid: u32) -> bool {
        self.world
            .pids
            .get(service)
            .is_some_and(|p| p.contains(&pid))
    }

    /// The manifests the agent may have resolved `settings`' type to: the built-in one,
    /// or any it read valid from `/plugins/<type>`.
    fn manifests_for(&self, settings: &Settings) -> Vec<&Manifest> {
        let name = settings.service_type.as_str();
        match builtin::get(name) {
            Some(manifest) => vec![manifest],
            None => self
                .world
                .manifests_read
                .get(name)
                .map(|read| read.iter().collect())
                .unwrap_or_default(),
        }
    }

    /// A spawn carries the launch its settings and a manifest the agent read make, and a
    /// service with a Python environment starts only from one reported built.
    fn check_launch(
        &mut self,
        service: &str,
        settings: &Settings,
        launch: &Launch,
    ) -> Result<(), String> {
        let host = config().host();
        let mut python_built = false;
        let rendered = self.manifests_for(settings).into_iter().any(|manifest| {
            let python = match manifest.environment {
                Environment::None => None,
                Environment::Python => {
                    let Ok(spec) = EnvironmentSpec::from_settings(settings) else {
                        return false;
                    };
                    let hash = spec.hash();
                    if !self
                        .world
                        .built
                        .contains(&(service.to_string(), hash.clone()))
                    {
                        return false;
                    }
                    python_built = true;
                    Some(python_environment(&env_dir(
                        &host.state_dir,
                        service,
                        &hash,
                    )))
                }
            };
            launch::render(service, &host, settings, manifest, python.as_ref()).as_ref()
                == Ok(launch)
        });
        if !rendered {
            return Err(format!(
                "spawned {service} with a launch not made from its settings and a manifest it \
                 read (or before its environment was built): {launch:?}"
            ));
        }
        if builtin::get(settings.service_type.as_str()).is_none() {
            self.summary.stored_type_spawns += 1;
        }
        if python_built {
            self.summary.environment_spawns += 1;
        }
        Ok(())
    }

    /// A build is of the environment a Python service's settings ask for, at its place,
    /// one at a time per service, and never while shutting down.
    fn check_build(
        &mut self,
        service: &str,
        spec: &EnvironmentSpec,
        dir: &str,
    ) -> Result<(), String> {
        if self.world.shutting_down {
            return Err(format!(
                "built an environment of {service} while shutting down"
            ));
        }
        if !self.world.listed.contains(service) || !self.world.listed_here.contains(service) {
            return Err(format!(
                "built an environment of {service}, which no reply indexed or listed (for this machine)"
            ));
        }
        let asked = self.world.settings_read.get(service).is_some_and(|read| {
            read.iter().any(|settings| {
                EnvironmentSpec::from_settings(settings).as_ref() == Ok(spec)
                    && self
                        .manifests_for(settings)
                        .iter()
                        .any(|m| m.environment == Environment::Python)
            })
        });
        if !asked {
            return Err(format!(
                "built an environment of {service} no settings it read ask for: {spec:?}"
            ));
        }
        let hash = spec.hash();
        if dir != env_dir(&config().state_dir, service, &hash) {
            return Err(format!("built the environment of {service} at {dir}"));
        }
        if self.world.builds.keys().any(|(s, _)| s == service) {
            return Err(format!("a second build of {service} while one runs"));
        }
        let key = (service.to_string(), hash);
        if self.world.built.contains(&key) {
            return Err(format!("built {key:?} again, though it was built"));
        }
        self.world.builds.insert(key, spec.clone());
        Ok(())
    }

    /// Environments are removed only when nothing runs from them and none is being
    /// built there.
    fn check_removal(&mut self, service: &str, keep: &[String]) -> Result<(), String> {
        let state_dir = config().state_dir;
        for ((s, generation), live) in &self.world.live {
            let env = live
                .launch
                .as_ref()
                .and_then(|l| l.env.get("VIRTUAL_ENV"))
                .filter(|_| s == service);
            if let Some(env) = env {
                if !keep.iter().any(|h| *env == env_dir(&state_dir, service, h)) {
                    return Err(format!(
                        "removed the environment {env} {service}#{generation} runs from"
                    ));
                }
            }
        }
        if let Some((_, hash)) = self
            .world
            .builds
            .keys()
            .find(|(s, h)| s == service && !keep.contains(h))
        {
            return Err(format!(
                "removed the environment {hash} of {service} while it is built"
            ));
        }
        self.world
            .built
            .retain(|(s, h)| s != service || keep.contains(h));
        Ok(())
    }

    fn check_spawn(
        &mut self,
        service: &str,
        generation: u64,
        settings: &Settings,
        launch: &Launch,
    ) -> Result<(), String> {
        let world = &self.world;
        if world.shutting_down {
            return Err(format!("spawned {service} while shutting down"));
        }
        if !world.listed.contains(service) || !world.listed_here.contains(service) {
            return Err(format!(
                "spawned {service}, which no reply indexed or listed (for this machine)"
            ));
        }
        if !world
            .settings_read
            .get(service)
            .is_some_and(|read| read.contains(settings))
        {
            return Err(format!(
                "spawned {service} with settings it never read: {settings:?}"
            ));
        }
        if settings.session_loss == SessionLoss::Fence && world.fenced(self.now) {
            return Err(format!(
                "spawned fence service {service} with the session lost since {:?}",
                world.lost_since
            ));
        }
        if let Some(((_, running), _)) = world
            .live
            .iter()
            .find(|((s, _), live)| s == service && !live.stopping)
        {
            return Err(format!(
                "spawned {service} generation {generation} while generation {running} runs"
            ));
        }
        if world
            .known
            .iter()
            .any(|(s, g)| s == service && *g >= generation)
        {
            return Err(format!(
                "spawned {service} generation {generation}, not newer than all before"
            ));
        }
        if let Some(end) = world.quick_ends.get(service) {
            let wait = Backoff::default().initial;
            if end.settings == *settings && self.now < end.at + wait {
                return Err(format!(
                    "restarted {service} {:?} after a quick end, before the backoff ({wait:?})",
                    self.now.saturating_since(end.at)
                ));
            }
        }
        let key = (service.to_string(), generation);
        self.world.quick_ends.remove(service);
        self.world.known.insert(key.clone());
        let live = Live {
            settings: settings.clone(),
            launch: Some(launch.clone()),
            started_at: None,
            stopping: false,
        };
        self.world.live.insert(key, live);
        Ok(())
    }

    /// Event sourcing: a fresh core fed the recorded inputs emits the recorded actions.
    pub fn finish(self) -> Result<Summary, Violation> {
        let text: String = self.records.iter().map(|r| r.to_line() + "\n").collect();
        let fail = |problem: String| Violation {
            input_number: self.inputs,
            input: "replay".into(),
            problem,
        };
        let journal = decode(&text).map_err(|e| fail(e.to_string()))?;
        let steps = replay(&journal).map_err(|e| fail(e.to_string()))?;
        match steps.iter().position(|s| !s.matches()) {
            None => Ok(self.summary),
            Some(i) => Err(fail(format!(
                "replayed input #{} gives other actions: {:?}",
                i + 1,
                steps[i]
            ))),
        }
    }
}

/// Runs fuzzer steps through a [`Checker`].
pub fn check_steps(steps: &[TimedStep]) -> Result<Summary, Violation> {
    let mut checker = Checker::new();
    for TimedStep { advance_ms, step } in steps {
        if checker.exited() {
            break;
        }
        checker.advance(Duration::from_millis(u64::from(*advance_ms)));
        if let Step::Snapshot = step {
            checker.snapshot()?;
        } else if let Some(input) = checker.resolve(step) {
            checker.feed(input)?;
        }
    }
    checker.finish()
}

/// Runs concrete inputs, each after its delay, through a [`Checker`].
pub fn check_inputs(inputs: Vec<(Duration, Input)>) -> Result<Summary, Violation> {
    let mut checker = Checker::new();
    for (delay, input) in inputs {
        if checker.exited() {
            break;
        }
        checker.advance(delay);
        checker.feed(input)?;
    }
    checker.finish()
}
