//! What the simulated machines launch, as the world (not the agent) knows it: a
//! service's type resolved from ZooKeeper (built in, or the manifest stored at
//! `/plugins/<type>` now), its Python environment built on the machine's disk or not,
//! and the launch they make; the stored test type `tool`; and the environment builds
//! the driver would run (they take [`BUILD_TIME`], and fail for a package named
//! [`BROKEN_PACKAGE`], as a bad requirement would).

use super::{Event, World};
use crate::invariants::{self, MachineView};
use pop_core::environment::EnvironmentSpec;
use pop_core::launch::{Host, Launch};
use pop_core::paths;
use pop_core::plugin::{builtin, decode_stored, Manifest};
use pop_core::settings::Settings;
use std::time::Duration;

/// The pop binary and the state directory the simulated agents are configured with.
pub const SIM_POP: &str = "/usr/bin/pop";
pub const SIM_STATE_DIR: &str = "/var/lib/pop";
/// The stored type the operators add, replace and remove: a copy of `command`.
pub const TOOL: &str = "tool";
/// How long building an environment takes.
pub const BUILD_TIME: Duration = Duration::from_millis(300);
/// A requirement no environment can be built with.
pub const BROKEN_PACKAGE: &str = "broken==0";

/// The manifest of the stored type `tool` in one of its versions: 0 and 2 launch the
/// same (2 only describes it otherwise), 1 launches another argv.
pub fn tool_manifest(version: u8) -> String {
    let text = builtin::text("command").unwrap_or_default();
    let text = text.replace("name = \"command\"", &format!("name = \"{TOOL}\""));
    match version % 3 {
        0 => text,
        1 => text.replace(
            "command = [\"/bin/sh\", \"-c\", \"{command}\"]",
            "command = [\"/bin/sh\", \"-c\", \"exec {command}\"]",
        ),
        _ => text.replace(
            "description = \"runs the command setting with sh -c\"",
            "description = \"the command type under another name\"",
        ),
    }
}

pub(crate) use crate::invariants::Target;

pub(crate) fn host(machine: &str) -> Host {
    Host {
        machine: machine.to_string(),
        pop: SIM_POP.to_string(),
        state_dir: SIM_STATE_DIR.to_string(),
    }
}

impl World {
    /// The machine with index `machine` as the invariants see it, without its processes.
    pub(crate) fn place(&self, machine: usize) -> MachineView<'_> {
        let m = &self.machines[machine];
        MachineView {
            id: &m.id,
            host: host(&m.id),
            environments: &m.environments,
            processes: Vec::new(),
            session: m.session,
            healthy_since: None,
        }
    }

    /// What ZooKeeper wants of `service` on the machine with index `machine`.
    pub(crate) fn target(&self, service: &str, machine: usize) -> Target {
        invariants::target(&self.zk, &self.place(machine), service)
    }

    /// What `service` with `settings` is to run as on a machine its list names.
    pub(crate) fn target_here(&self, service: &str, settings: &Settings, machine: usize) -> Target {
        invariants::target_here(&self.zk, &self.place(machine), service, settings)
    }

    /// The launch of `service` with `settings` and `manifest` on a machine, if its
    /// environment (when it needs one) is on the machine's disk.
    pub(crate) fn launch_of(
        &self,
        machine: usize,
        service: &str,
        settings: &Settings,
        manifest: &Manifest,
    ) -> Option<Launch> {
        let m = &self.machines[machine];
        invariants::launch_of(&host(&m.id), &m.environments, service, settings, manifest)
    }

    /// Notes every valid manifest ever stored for a type (after a write to `path`).
    pub(crate) fn note_plugin_write(&mut self, path: &str) {
        let Some(name) = path
            .strip_prefix(paths::PLUGINS)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return;
        };
        let Some(node) = self.zk.get(path) else {
            return;
        };
        if let Ok(manifest) = decode_stored(name, &node.data) {
            let seen = self.plugin_history.entry(name.to_string()).or_default();
            if !seen.contains(&manifest) {
                seen.push(manifest);
            }
        }
    }

    /// Whether `launch` is what `settings` make with the built-in type, or with a
    /// manifest stored for their type at some time (and its environment, if any, built).
    pub(crate) fn launch_from_a_valid_manifest(
        &self,
        machine: usize,
        service: &str,
        settings: &Settings,
        launch: &Launch,
    ) -> bool {
        let name = settings.service_type.as_str();
        let manifests: Vec<Manifest> = match builtin::get(name) {
            Some(manifest) => vec![manifest.clone()],
            None => self.plugin_history.get(name).cloned().unwrap_or_default(),
        };
        manifests.iter().any(|manifest| {
            self.launch_of(machine, service, settings, manifest)
                .as_ref()
                == Some(launch)
        })
    }

    /// The driver builds an environment (or finds it built) for the agent of
    /// `incarnation`, which hears of it unless it is gone by then.
    pub(super) fn build_environment(
        &mut self,
        machine: usize,
        service: String,
        spec: &EnvironmentSpec,
    ) {
        let hash = spec.hash();
        let on_disk = self.machines[machine]
            .environments
            .contains(&(service.clone(), hash.clone()));
        let ok = !spec.packages.iter().any(|p| p == BROKEN_PACKAGE);
        let at = if on_disk {
            self.now + super::PROCESS_DELAY
        } else {
            self.coverage("environment built");
            if !ok {
                self.coverage("environment build failed");
            }
            self.now + BUILD_TIME
        };
        let incarnation = self.machines[machine].incarnation;
        self.schedule(
            at,
            Event::Built {
                machine,
                incarnation,
                service,
                hash,
                ok: ok || on_disk,
            },
        );
    }

    /// A build ends: what it built is on the disk, and its agent hears of it. A build of
    /// an agent that is gone was killed with it.
    pub(super) fn on_built(
        &mut self,
        machine: usize,
        incarnation: u32,
        service: String,
        hash: String,
        ok: bool,
    ) {
        if self.machines[machine].incarnation != incarnation {
            return;
        }
        if ok {
            self.machines[machine]
                .environments
                .insert((service.clone(), hash.clone()));
        }
        let result = if ok {
            Ok(())
        } else {
            Err(format!("simulated: no version of {BROKEN_PACKAGE}"))
        };
        self.send_to_agent(
            machine,
            self.now + super::PROCESS_DELAY,
            pop_core::Input::EnvironmentBuilt {
                service,
                spec_hash: hash,
                result,
            },
        );
    }

    /// The environment a process runs from, as its launch says: (service, hash).
    pub(crate) fn environment_of(launch: &Launch, service: &str) -> Option<(String, String)> {
        let dir = launch.env.get("VIRTUAL_ENV")?;
        let hash = dir.rsplit('/').next()?;
        Some((service.to_string(), hash.to_string()))
    }
}
