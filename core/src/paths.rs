//! The ZooKeeper layout. The seed's table fixes the first five; the rest are pop's extras.
//!
//! | path                                   | data              | type      |
//! |----------------------------------------|-------------------|-----------|
//! | /machines/<machine-id>/<service>       | PID (integer)     | ephemeral |
//! | /services/<service>/machines           | JSON list         |           |
//! | /services/<service>/settings           | JSON object       |           |
//! | /services/<service>/state/<machine-id> | JSON object       | ephemeral |
//! | /agents/<machine-id>                   | JSON agent report | ephemeral |
//! | /plugins/<type>                        | TOML manifest     |           |
//! | /services/<service>/tasks              | (container)       |           |
//! | /services/<service>/tasks/<id>         | JSON task request |           |
//! | /services/<service>/tasks/<id>/<machine> | JSON task result |          |
//! | /assignments/<machine-id>              | (container)       |           |
//! | /assignments/<machine-id>/<service>    | (empty)           |           |
//! | /pop/keeper                            | machine id        | ephemeral |
//!
//! `/assignments` is an index, a hint kept by pop's own plans: `/assignments/<m>/<s>`
//! exists iff `<m>` is in `/services/<s>/machines`, written in the same multi as the list.
//! An agent reads and watches only its own `/assignments/<m>` and the services in it, so
//! what a change costs grows with the machines it touches, not with the fleet. The
//! machines list stays the truth; after an edit that bypasses pop, the keeper (one agent,
//! elected on `/pop/keeper`) makes the index agree again.

pub const MACHINES: &str = "/machines";
pub const SERVICES: &str = "/services";
pub const AGENTS: &str = "/agents";
/// Service types stored in ZooKeeper, each a manifest's TOML text.
pub const PLUGINS: &str = "/plugins";
/// Marks an initialised namespace; holds the layout version.
pub const POP: &str = "/pop";
/// The index of which services each machine should look at: an entry
/// `/assignments/<m>/<s>` exists iff `<s>`'s machines list names `<m>` (the list stays
/// the source of truth; see README, "The assignment index").
pub const ASSIGNMENTS: &str = "/assignments";
/// The ephemeral node of the agent that is the keeper (repairs the index after
/// out-of-band edits of machines lists); it holds the keeper's machine id.
pub const KEEPER: &str = "/pop/keeper";

/// Every persistent node `pop init` creates, parents first.
pub const NAMESPACE: [&str; 6] = [POP, MACHINES, SERVICES, AGENTS, PLUGINS, ASSIGNMENTS];

pub fn machine(machine: &str) -> String {
    format!("{MACHINES}/{machine}")
}

pub fn machine_service(machine: &str, service: &str) -> String {
    format!("{MACHINES}/{machine}/{service}")
}

pub fn service(service: &str) -> String {
    format!("{SERVICES}/{service}")
}

pub fn service_machines(service: &str) -> String {
    format!("{SERVICES}/{service}/machines")
}

pub fn service_settings(service: &str) -> String {
    format!("{SERVICES}/{service}/settings")
}

pub fn service_state_dir(service: &str) -> String {
    format!("{SERVICES}/{service}/state")
}

pub fn service_state(service: &str, machine: &str) -> String {
    format!("{SERVICES}/{service}/state/{machine}")
}

/// The container of a service's tasks (`pop run`).
pub fn service_tasks(service: &str) -> String {
    format!("{SERVICES}/{service}/tasks")
}

pub fn task(service: &str, task: &str) -> String {
    format!("{SERVICES}/{service}/tasks/{task}")
}

/// One machine's result of a task.
pub fn task_result(service: &str, task: &str, machine: &str) -> String {
    format!("{SERVICES}/{service}/tasks/{task}/{machine}")
}

/// A machine's index: one child per service deployed on it.
pub fn assignments(machine: &str) -> String {
    format!("{ASSIGNMENTS}/{machine}")
}

/// The index entry saying `service` is deployed on `machine`.
pub fn assignment(machine: &str, service: &str) -> String {
    format!("{ASSIGNMENTS}/{machine}/{service}")
}

pub fn agent(machine: &str) -> String {
    format!("{AGENTS}/{machine}")
}

pub fn plugin(name: &str) -> String {
    format!("{PLUGINS}/{name}")
}

/// The parent of a path, `None` for the root and top-level nodes' parent "/".
pub fn parent(path: &str) -> Option<&str> {
    let idx = path.rfind('/')?;
    if idx == 0 {
        None
    } else {
        Some(&path[..idx])
    }
}

/// What a watched path is about, so a watch event can be routed back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Watched {
    ServiceList,
    /// A machine's index (its children): the services deployed on it.
    Assignments(String),
    Machines(String),
    Settings(String),
    /// The children of a service's tasks container.
    Tasks(String),
    /// The children of a service's node, while it has no tasks container (a service
    /// added before tasks existed): the container's creation is seen there.
    ServiceChildren(String),
    /// A machine's result of a task (the one before this machine in a rolling task).
    TaskResult {
        service: String,
        task: String,
        machine: String,
    },
    /// A stored service type's manifest.
    Plugin(String),
    /// The stored types' names, watched while a type a service needs is missing.
    PluginList,
}

impl Watched {
    pub fn parse(path: &str) -> Option<Watched> {
        if path == SERVICES {
            return Some(Watched::ServiceList);
        }
        if path == PLUGINS {
            return Some(Watched::PluginList);
        }
        if let Some(machine) = path
            .strip_prefix(ASSIGNMENTS)
            .and_then(|r| r.strip_prefix('/'))
        {
            return (!machine.is_empty() && !machine.contains('/'))
                .then(|| Watched::Assignments(machine.to_string()));
        }
        if let Some(name) = path.strip_prefix(PLUGINS).and_then(|r| r.strip_prefix('/')) {
            return (!name.is_empty() && !name.contains('/'))
                .then(|| Watched::Plugin(name.to_string()));
        }
        let rest = path.strip_prefix(SERVICES)?.strip_prefix('/')?;
        let Some((name, leaf)) = rest.split_once('/') else {
            return (!rest.is_empty()).then(|| Watched::ServiceChildren(rest.to_string()));
        };
        match leaf.split('/').collect::<Vec<_>>()[..] {
            ["machines"] => Some(Watched::Machines(name.to_string())),
            ["settings"] => Some(Watched::Settings(name.to_string())),
            ["tasks"] => Some(Watched::Tasks(name.to_string())),
            ["tasks", task, machine] if !task.is_empty() && !machine.is_empty() => {
                Some(Watched::TaskResult {
                    service: name.to_string(),
                    task: task.to_string(),
                    machine: machine.to_string(),
                })
            }
            _ => None,
        }
    }

    /// Whether the node's children are read (else its data).
    pub fn reads_children(&self) -> bool {
        matches!(
            self,
            Watched::ServiceList
                | Watched::Assignments(_)
                | Watched::PluginList
                | Watched::Tasks(_)
                | Watched::ServiceChildren(_)
        )
    }

    /// The service the path is about, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Watched::ServiceList
            | Watched::Assignments(_)
            | Watched::Plugin(_)
            | Watched::PluginList => None,
            Watched::Machines(s)
            | Watched::Settings(s)
            | Watched::Tasks(s)
            | Watched::ServiceChildren(s)
            | Watched::TaskResult { service: s, .. } => Some(s),
        }
    }

    pub fn path(&self) -> String {
        match self {
            Watched::ServiceList => SERVICES.to_string(),
            Watched::Assignments(m) => assignments(m),
            Watched::Machines(s) => service_machines(s),
            Watched::Settings(s) => service_settings(s),
            Watched::Tasks(s) => service_tasks(s),
            Watched::ServiceChildren(s) => service(s),
            Watched::TaskResult {
                service,
                task,
                machine,
            } => task_result(service, task, machine),
            Watched::Plugin(name) => plugin(name),
            Watched::PluginList => PLUGINS.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_seed_table() {
        assert_eq!(machine_service("m1", "plone4"), "/machines/m1/plone4");
        assert_eq!(service_machines("plone4"), "/services/plone4/machines");
        assert_eq!(service_settings("plone4"), "/services/plone4/settings");
        assert_eq!(service_state("plone4", "m1"), "/services/plone4/state/m1");
        assert_eq!(assignments("m1"), "/assignments/m1");
        assert_eq!(assignment("m1", "plone4"), "/assignments/m1/plone4");
    }

    #[test]
    fn watched_paths_round_trip() {
        for w in [
            Watched::ServiceList,
            Watched::Assignments("m1".into()),
            Watched::Machines("a".into()),
            Watched::Settings("b".into()),
            Watched::Tasks("c".into()),
            Watched::ServiceChildren("d".into()),
            Watched::TaskResult {
                service: "e".into(),
                task: "t1".into(),
                machine: "m1".into(),
            },
            Watched::Plugin("greeter".into()),
            Watched::PluginList,
        ] {
            assert_eq!(Watched::parse(&w.path()), Some(w));
        }
        assert_eq!(Watched::parse("/services/a/state"), None);
        assert_eq!(Watched::parse("/services/a/tasks/t1"), None);
        assert_eq!(Watched::parse("/services/a/tasks/t1/m1/x"), None);
        assert_eq!(Watched::parse("/services/"), None);
        assert_eq!(Watched::parse("/plugins/a/b"), None);
        assert_eq!(Watched::parse("/plugins/"), None);
        assert_eq!(Watched::parse("/assignments/m1/a"), None);
        assert_eq!(Watched::parse("/assignments/"), None);
        assert_eq!(parent("/machines/m1/x"), Some("/machines/m1"));
        assert_eq!(parent("/machines"), None);
    }
}
