//! The operators: `pop init`, `add`, `deploy`, `undeploy`, `set`, `remove`, `plugin add`,
//! `plugin remove` and `run --detach`, at random, each run as the CLI's own plan on a
//! terminal of the world (see `world::admin`), with two terminals sometimes racing the
//! same command; and somebody writing garbage into a service's or a type's node with a
//! ZooKeeper client, bypassing pop (or a task with a result placeholder for a machine it
//! does not target), or a machines list edited by hand (which the keeper must index).
//! Settings and machine lists come from the same pure functions the
//! CLI uses (default settings per type, `KEY=VALUE` parsing). Services are of the
//! built-in types `command`, `echo` and `python` (with packages, some of which cannot be
//! built), of the stored type `tool` (a copy of `command`, in versions that launch alike
//! or not), and of the stored type `job` ([`JOB`]), whose tasks succeed, fail or hang as
//! their argument says.

use super::Options;
use crate::world::{tool_manifest, Command, World, BROKEN_PACKAGE, JOB, TOOL};
use pop_core::assignment::parse_assignment;
use pop_core::backoff::SeededRng;
use pop_core::names::{MachineId, PluginName, ServiceName, TaskName};
use pop_core::paths;
use pop_core::plan::{MachinesChange, RunRequest};
use pop_core::plugin::{builtin, Environment};
use pop_core::settings::{parse_machines, render_machines, Settings};
use pop_core::task::{TaskId, TaskKind, TaskRequest, TaskResult};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::Duration;

pub(super) struct Operator {
    rng: SeededRng,
    /// Draws for edits of machines lists by hand, apart from `rng`, so the commands of
    /// a seed are drawn as before.
    hand: SeededRng,
    services: Vec<ServiceName>,
    machines: Vec<MachineId>,
    version: u64,
}

impl Operator {
    pub fn new(seed: u64, options: &Options, machines: &[String]) -> Operator {
        Operator {
            rng: SeededRng::new(seed),
            hand: SeededRng::new(seed ^ 0x6279_2068_616e_6421),
            services: (1..=options.services)
                .filter_map(|i| ServiceName::new(&format!("s{i}")).ok())
                .collect(),
            machines: machines
                .iter()
                .filter_map(|m| MachineId::new(m).ok())
                .collect(),
            version: 0,
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn any_machine(&mut self) -> MachineId {
        let i = self.pick(self.machines.len());
        self.machines[i].clone()
    }

    fn exists(world: &World, service: &ServiceName) -> bool {
        world.zk.get(&paths::service(service.as_str())).is_some()
    }

    fn machines_of(world: &World, service: &ServiceName) -> Option<BTreeSet<String>> {
        let node = world.zk.get(&paths::service_machines(service.as_str()))?;
        parse_machines(&node.data).ok()
    }

    pub fn step(&mut self, world: &mut World) {
        let idle = world.idle_terminals();
        if idle.is_empty() {
            world.trace.push(format!("{} operators busy", world.now));
            return;
        }
        let terminal = idle[self.pick(idle.len())];
        let command = match self.pick(80) {
            0 => Command::Init { force: true },
            1 => Command::Init { force: false },
            2..=7 => match self.plugin_command(world) {
                Some(command) => command,
                None => return,
            },
            _ => {
                let i = self.pick(self.services.len());
                let service = self.services[i].clone();
                if !Self::exists(world, &service) {
                    self.add(&service)
                } else {
                    match self.command_on(world, &service) {
                        Some(command) => command,
                        None => return,
                    }
                }
            }
        };
        world.run_command(terminal, command.clone());
        // Now and then another operator does the same at the same moment.
        if self.pick(4) == 0 {
            if let Some(&other) = world.idle_terminals().first() {
                let twin = self.twin(world, command);
                world.run_command(other, twin);
            }
        }
    }

    fn settings_valid(world: &World, service: &ServiceName) -> bool {
        world
            .zk
            .get(&paths::service_settings(service.as_str()))
            .is_some_and(|n| Settings::parse(&n.data).is_ok())
    }

    fn is_job_service(world: &World, service: &ServiceName) -> bool {
        world
            .zk
            .get(&paths::service_settings(service.as_str()))
            .is_some_and(|n| is_job(&n.data))
    }

    /// A command on an existing service, or `None` after a write by hand.
    fn command_on(&mut self, world: &mut World, service: &ServiceName) -> Option<Command> {
        let name = service.clone();
        let s = service.as_str();
        let garbage =
            Self::machines_of(world, service).is_none() || !Self::settings_valid(world, service);
        if garbage && self.pick(2) == 0 {
            // pop refuses to overwrite what it cannot read: somebody fixes it by hand.
            let list = BTreeSet::from([self.any_machine().to_string()]);
            self.fix_by_hand(world, service, Some(list));
            return None;
        }
        // Tasks are often run where they can be: seeds must show rolling ones.
        if Self::is_job_service(world, service) && self.pick(2) == 0 {
            return Some(self.run(world, service));
        }
        if self.pick(12) == 0 {
            self.task_by_hand(world, service);
            return None;
        }
        Some(match self.pick(10) {
            0..=2 => {
                let list = Self::machines_of(world, service).unwrap_or_default();
                let m = self.any_machine();
                let change = if list.contains(m.as_str()) {
                    world
                        .coverage_if_down("undeploy while the machine is disconnected", m.as_str());
                    MachinesChange::Undeploy
                } else {
                    MachinesChange::Deploy
                };
                Command::Machines {
                    name,
                    change,
                    machines: vec![m],
                }
            }
            3..=5 => {
                if world.any_phase(s, "backoff") {
                    world.note_coverage("settings change during a crash-loop backoff");
                }
                if Self::is_python_service(world, service) && self.pick(3) == 0 {
                    return Some(self.install(service));
                }
                self.set(service)
            }
            6 => Command::Remove {
                name,
                force: self.pick(3) != 0,
            },
            7 => {
                world.admin_set_if_exists(&paths::service_settings(s), b"{\"type\": garbage");
                return None;
            }
            8 => {
                // Half the time a valid edit, which the keeper must index; else garbage.
                match Self::machines_of(world, service) {
                    Some(list) if self.hand.next_u64().is_multiple_of(2) => {
                        self.edit_by_hand(world, s, list)
                    }
                    _ => world.admin_set_if_exists(&paths::service_machines(s), b"[\"m1\", 7"),
                }
                return None;
            }
            _ => Command::Machines {
                name,
                change: MachinesChange::Deploy,
                machines: self.machines.clone(),
            },
        })
    }

    /// The same command by another operator: another machine, another setting.
    fn twin(&mut self, world: &mut World, command: Command) -> Command {
        match command {
            Command::Machines { name, change, .. } => {
                let m = self.any_machine();
                if change == MachinesChange::Undeploy {
                    world
                        .coverage_if_down("undeploy while the machine is disconnected", m.as_str());
                }
                Command::Machines {
                    name,
                    change,
                    machines: vec![m],
                }
            }
            Command::Set { name, .. } => self.set(&name),
            // The same task again, typed at the same moment: another id.
            Command::Run { name, request, .. } => Command::Run {
                name,
                request,
                nonce: (self.rng.next_u64() & 0xffff) as u16,
            },
            other => other,
        }
    }

    /// `pop plugin add|remove` of the type `tool`, or garbage written into its node.
    fn plugin_command(&mut self, world: &mut World) -> Option<Command> {
        Some(match self.pick(6) {
            0..=2 => {
                let version = self.pick(3) as u8;
                Command::PluginAdd {
                    text: tool_manifest(version),
                    replace: self.pick(4) != 0,
                }
            }
            3 => Command::PluginRemove {
                name: PluginName::new(TOOL).ok()?,
                force: self.pick(2) == 0,
            },
            4 => {
                world.admin_put(&pop_core::paths::plugin(TOOL), b"name = \"tool\"\n[run");
                return None;
            }
            _ => {
                // Valid TOML, but named after another node.
                let text = tool_manifest(0).replace("name = \"tool\"", "name = \"other\"");
                world.admin_set_if_exists(&pop_core::paths::plugin(TOOL), text.as_bytes());
                return None;
            }
        })
    }

    fn settings(&mut self, service: &ServiceName) -> (String, Map<String, Value>) {
        let defaults = |name: &str, port: Option<u16>| {
            builtin::get(name)
                .map(|m| m.default_settings(port))
                .unwrap_or_default()
        };
        let (service_type, mut settings) = match self.pick(8) {
            0 | 1 => ("echo".to_string(), defaults("echo", Some(0))),
            2 => {
                let mut s = defaults("python", None);
                s.insert("module".into(), Value::from("app"));
                s.insert("packages".into(), serde_json::json!(["pkg==1"]));
                ("python".to_string(), s)
            }
            3 => {
                let mut s = defaults("command", None);
                s.insert("type".into(), Value::from(TOOL));
                s.insert("command".into(), Value::from(format!("serve {service}")));
                (TOOL.to_string(), s)
            }
            4 | 5 => {
                let mut s = job_defaults();
                s.insert("command".into(), Value::from(format!("serve {service}")));
                ("job".to_string(), s)
            }
            _ => {
                let mut s = defaults("command", None);
                s.insert("command".into(), Value::from(format!("serve {service}")));
                ("command".to_string(), s)
            }
        };
        settings.insert("stop_timeout".into(), Value::from(1 + self.pick(2)));
        settings.insert("start_seconds".into(), Value::from(0.2));
        if self.pick(3) == 0 {
            settings.insert("session_loss".into(), Value::from("fence"));
        }
        (service_type, settings)
    }

    fn add(&mut self, service: &ServiceName) -> Command {
        let (service_type, settings) = self.settings(service);
        Command::Add {
            name: service.clone(),
            service_type,
            settings,
        }
    }

    /// `pop set` with one KEY=VALUE.
    fn set(&mut self, service: &ServiceName) -> Command {
        self.version += 1;
        let assignment = match self.pick(4) {
            // Meaningful for python services only; others keep it as their own setting.
            3 => match self.pick(4) {
                0 => format!("packages=[\"{BROKEN_PACKAGE}\"]"),
                _ => format!("packages=[\"pkg=={}\"]", self.version),
            },
            0 => format!("env={{\"V\":\"{}\"}}", self.version),
            1 => format!(
                "session_loss={}",
                if self.pick(2) == 0 {
                    "fence"
                } else {
                    "keep-running"
                }
            ),
            _ => format!("stop_timeout={}", 1 + self.pick(2)),
        };
        Command::Set {
            name: service.clone(),
            assignments: parse_assignment(&assignment).into_iter().collect(),
            unset: Vec::new(),
        }
    }

    fn is_python_service(world: &World, service: &ServiceName) -> bool {
        world
            .zk
            .get(&paths::service_settings(service.as_str()))
            .and_then(|n| Settings::parse(&n.data).ok())
            .is_some_and(|s| s.service_type.as_str() == "python")
    }

    /// `pop run --detach <service> install <requirement>`: a new version, or one that
    /// cannot be built, with a timeout short enough to end within the healed phase.
    fn install(&mut self, service: &ServiceName) -> Command {
        self.version += 1;
        let requirement = match self.pick(4) {
            0 => BROKEN_PACKAGE.to_string(),
            _ => format!("pkg=={}", self.version),
        };
        Command::Run {
            name: service.clone(),
            request: RunRequest {
                task: "install".to_string(),
                args: vec![requirement],
                machines: Vec::new(),
                rolling: false,
                timeout: Some(Duration::from_secs(2 + self.pick(8) as u64)),
                expire: None,
                author: "operator@sim".to_string(),
            },
            nonce: (self.rng.next_u64() & 0xffff) as u16,
        }
    }

    /// `pop run --detach` of one of `job`'s tasks: on some of the machines the service
    /// is deployed on (in a random order) or all of them, rolling or not, with a
    /// timeout short enough for a hanging task to end within the healed phase, and
    /// sometimes an expiry short enough to pass while a target is cut off.
    fn run(&mut self, world: &World, service: &ServiceName) -> Command {
        let deployed: Vec<MachineId> = Self::machines_of(world, service)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| MachineId::new(m).ok())
            .collect();
        let mut machines = Vec::new();
        if self.pick(2) == 0 {
            let mut pool = deployed;
            // Now and then a machine it is not deployed on: refused.
            if self.pick(8) == 0 {
                pool.push(self.any_machine());
            }
            while !pool.is_empty() && (machines.is_empty() || self.pick(3) != 0) {
                let i = self.pick(pool.len());
                let m = pool.remove(i);
                if !machines.contains(&m) {
                    machines.push(m);
                }
            }
        }
        let arg = match self.pick(6) {
            0 => "fail",
            1 => "hang",
            _ => "ok",
        };
        let task = if self.pick(3) == 0 { "deploy" } else { "work" };
        let expire = match self.pick(4) {
            0 => Some(Duration::from_secs(3 + self.pick(30) as u64)),
            _ => None,
        };
        Command::Run {
            name: service.clone(),
            request: RunRequest {
                task: task.to_string(),
                args: vec![arg.to_string()],
                machines,
                rolling: self.pick(2) == 0,
                timeout: Some(Duration::from_secs(1 + self.pick(8) as u64)),
                expire,
                author: "operator@sim".to_string(),
            },
            nonce: (self.rng.next_u64() & 0xffff) as u16,
        }
    }

    /// With a ZooKeeper client, bypassing pop: a task of `job` whose request targets one
    /// machine the service is deployed on, with a pending result for every one of them
    /// (an agent must run it on the target only).
    fn task_by_hand(&mut self, world: &mut World, service: &ServiceName) {
        let s = service.as_str();
        let deployed: Vec<MachineId> = Self::machines_of(world, service)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| MachineId::new(m).ok())
            .collect();
        if deployed.len() < 2 {
            return;
        }
        let target = deployed[self.pick(deployed.len())].clone();
        let now = world.now.as_secs_f64();
        let request = TaskRequest {
            kind: TaskKind::Command,
            task: match TaskName::new("work") {
                Ok(name) => name,
                Err(_) => return,
            },
            args: vec!["ok".to_string()],
            machines: vec![target],
            rolling: false,
            author: "script@sim".to_string(),
            created_at: now,
            expires_at: now + 3600.0,
            timeout_s: 5.0,
            command: vec!["work".to_string(), "{args}".to_string()],
            environment: Environment::None,
            restart_after: false,
        };
        let id = TaskId::new(world.now, (self.rng.next_u64() & 0xffff) as u16);
        if world.zk.get(&paths::task(s, id.as_str())).is_some() {
            return;
        }
        world.note_coverage("task written by hand with an untargeted placeholder");
        world
            .issued
            .insert((s.to_string(), id.clone()), request.clone());
        world.admin_put(&paths::task(s, id.as_str()), &request.render());
        for m in &deployed {
            let path = paths::task_result(s, id.as_str(), m.as_str());
            world.admin_put(&path, &TaskResult::pending().render());
        }
    }

    /// With a ZooKeeper client, bypassing pop and its index: one machine added to the
    /// list or taken out.
    fn edit_by_hand(&mut self, world: &mut World, service: &str, mut list: BTreeSet<String>) {
        let i = (self.hand.next_u64() % self.machines.len().max(1) as u64) as usize;
        if let Some(m) = self.machines.get(i).map(MachineId::to_string) {
            if !list.remove(&m) {
                list.insert(m);
            }
            world.edit_list_by_hand(service, &list);
        }
    }

    /// With a ZooKeeper client: invalid or missing settings and machines list (`list`,
    /// or none) replaced by valid data, a missing state directory created.
    fn fix_by_hand(
        &mut self,
        world: &mut World,
        service: &ServiceName,
        list: Option<BTreeSet<String>>,
    ) {
        let s = service.as_str();
        if Self::machines_of(world, service).is_none() {
            let list = list.unwrap_or_default();
            world.admin_put(&paths::service_machines(s), &render_machines(&list));
        }
        if !Self::settings_valid(world, service) {
            let (_, settings) = self.settings(service);
            let data = serde_json::to_vec(&Value::Object(settings)).unwrap_or_default();
            world.admin_put(&paths::service_settings(s), &data);
        }
        // Packages no environment can be built with are replaced by buildable ones.
        let broken = world
            .zk
            .get(&paths::service_settings(s))
            .and_then(|n| serde_json::from_slice::<Map<String, Value>>(&n.data).ok())
            .filter(|map| {
                map.get("packages")
                    .and_then(Value::as_array)
                    .is_some_and(|list| list.iter().any(|p| p == BROKEN_PACKAGE))
            });
        if let Some(mut map) = broken {
            map.insert("packages".into(), serde_json::json!(["pkg==1"]));
            let data = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
            world.admin_put(&paths::service_settings(s), &data);
        }
        if world.zk.get(&paths::service_state_dir(s)).is_none() {
            world.admin_put(&paths::service_state_dir(s), b"");
        }
    }

    /// Before the healed phase, by hand: garbage is replaced by valid data and
    /// half-removed services are completed (the agents keep their last good view until
    /// then, which the convergence check cannot know).
    pub fn repair(&mut self, world: &mut World) {
        if world.zk.get(paths::POP).is_none() {
            world.admin_put(paths::POP, b"{\"layout\":1}");
        }
        if world.zk.get(&paths::plugin("job")).is_none() {
            world.admin_put(&paths::plugin("job"), JOB.as_bytes());
        }
        // The stored type as its last `pop plugin add` left it, or as first added.
        let tool = paths::plugin(TOOL);
        let usable = world
            .zk
            .get(&tool)
            .is_some_and(|n| pop_core::plugin::decode_stored(TOOL, &n.data).is_ok());
        if !usable {
            world.admin_put(&tool, tool_manifest(0).as_bytes());
        }
        for service in self.services.clone() {
            if Self::exists(world, &service) {
                self.fix_by_hand(world, &service, None);
            }
        }
        // Writes by hand bypass the plans' ACLs: set every one again.
        world.repair_acls();
    }
}

/// Whether settings data is a JSON object of the stored type `job`.
fn is_job(data: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<Value>(data),
        Ok(Value::Object(map)) if map.get("type") == Some(&Value::from("job"))
    )
}

/// The settings `pop add job` writes before the `--set`s.
fn job_defaults() -> Map<String, Value> {
    pop_core::plugin::Manifest::parse("job", JOB)
        .map(|m| m.default_settings(None))
        .unwrap_or_default()
}
