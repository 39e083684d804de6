//! The operator: `pop add`, `deploy`, `undeploy`, `set`, `remove`, and somebody writing
//! garbage into a service's nodes, at random. Settings and machine lists are made by the
//! same pure functions the CLI uses (default settings per type, `KEY=VALUE` parsing,
//! machine list rendering).

use super::Options;
use crate::world::World;
use pop_core::assignment::parse_assignment;
use pop_core::backoff::SeededRng;
use pop_core::paths;
use pop_core::settings::{parse_machines, render_machines, ServiceType, Settings};
use serde_json::Value;
use std::collections::BTreeSet;

pub(super) struct Operator {
    rng: SeededRng,
    services: Vec<String>,
    machines: Vec<String>,
    version: u64,
}

impl Operator {
    pub fn new(seed: u64, options: &Options, machines: &[String]) -> Operator {
        Operator {
            rng: SeededRng::new(seed),
            services: (1..=options.services).map(|i| format!("s{i}")).collect(),
            machines: machines.to_vec(),
            version: 0,
        }
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn exists(world: &World, service: &str) -> bool {
        world.zk.get(&paths::service(service)).is_some()
    }

    fn machines_of(world: &World, service: &str) -> Option<BTreeSet<String>> {
        let node = world.zk.get(&paths::service_machines(service))?;
        parse_machines(&node.data).ok()
    }

    pub fn step(&mut self, world: &mut World) {
        let i = self.pick(self.services.len());
        let service = self.services[i].clone();
        if !Self::exists(world, &service) {
            self.add(world, &service);
            return;
        }
        match self.pick(10) {
            0..=2 => {
                let mut list = Self::machines_of(world, &service).unwrap_or_default();
                let i = self.pick(self.machines.len());
                let m = self.machines[i].clone();
                if list.contains(&m) {
                    world.coverage_if_down("undeploy while the machine is disconnected", &m);
                    list.remove(&m);
                } else {
                    list.insert(m);
                }
                world.admin_put(&paths::service_machines(&service), &render_machines(&list));
            }
            3..=5 => self.set(world, &service),
            6 => world.admin_remove(&paths::service(&service)),
            7 => {
                world.admin_put(&paths::service_settings(&service), b"{\"type\": garbage");
            }
            8 => world.admin_put(&paths::service_machines(&service), b"[\"m1\", 7"),
            _ => {
                // Deploy everywhere.
                let all: BTreeSet<String> = self.machines.iter().cloned().collect();
                world.admin_put(&paths::service_machines(&service), &render_machines(&all));
            }
        }
    }

    fn add(&mut self, world: &mut World, service: &str) {
        let echo = self.pick(3) == 0;
        let mut settings = if echo {
            ServiceType::Echo.default_settings(Some(0))
        } else {
            let mut s = ServiceType::Command.default_settings(None);
            s.insert("command".into(), Value::from(format!("serve {service}")));
            s
        };
        settings.insert("stop_timeout".into(), Value::from(1 + self.pick(2)));
        settings.insert("start_seconds".into(), Value::from(0.2));
        if self.pick(3) == 0 {
            settings.insert("session_loss".into(), Value::from("fence"));
        }
        let data = serde_json::to_vec(&Value::Object(settings)).unwrap_or_default();
        world.admin_put(&paths::service_settings(service), &data);
        world.admin_put(&paths::service_state_dir(service), b"");
        let mut list = BTreeSet::new();
        let i = self.pick(self.machines.len());
        list.insert(self.machines[i].clone());
        world.admin_put(&paths::service_machines(service), &render_machines(&list));
    }

    /// `pop set`: one KEY=VALUE applied to the current settings, if they are valid.
    fn set(&mut self, world: &mut World, service: &str) {
        let Some(node) = world.zk.get(&paths::service_settings(service)) else {
            return;
        };
        let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(&node.data) else {
            return; // `pop set` refuses to edit corrupt settings
        };
        if world.any_phase(service, "backoff") {
            world.note_coverage("settings change during a crash-loop backoff");
        }
        self.version += 1;
        let assignment = match self.pick(3) {
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
        let Ok((key, value)) = parse_assignment(&assignment) else {
            return;
        };
        map.insert(key, value);
        let data = serde_json::to_vec(&Value::Object(map)).unwrap_or_default();
        world.admin_put(&paths::service_settings(service), &data);
    }

    /// Before the healed phase: garbage is replaced by valid data (the agents keep their
    /// last good view until then, which the convergence check cannot know).
    pub fn repair(&mut self, world: &mut World) {
        for service in self.services.clone() {
            if !Self::exists(world, &service) {
                continue;
            }
            if Self::machines_of(world, &service).is_none() {
                world.admin_put(&paths::service_machines(&service), b"[]");
            }
            let valid = world
                .zk
                .get(&paths::service_settings(&service))
                .is_some_and(|n| Settings::parse(&n.data).is_ok());
            if !valid {
                self.add(world, &service);
            }
        }
    }
}
