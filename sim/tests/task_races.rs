//! `pop run` racing an operator's `pop undeploy` at another terminal: the task names only
//! machines its service's list names when it is issued.

use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::plan::{MachinesChange, RunRequest};
use pop_core::task::TaskRequest;
use pop_sim::world::{Command, JOB};
use pop_sim::World;
use std::time::Duration;

const RACE: &str = "pop run read again after its machines list changed";

fn web() -> ServiceName {
    ServiceName::new("web").expect("a name")
}

fn m(id: &str) -> MachineId {
    MachineId::new(id).expect("an id")
}

#[test]
fn an_undeploy_landing_between_the_reads_and_the_write_of_pop_run_is_read_again() {
    let mut w = World::new(&["m1", "m2"], 3);
    w.check_invariants = true;
    w.admin_put(&paths::plugin("job"), JOB.as_bytes());
    w.add_service("web", r#"{"type":"job","command":"serve"}"#, &["m1", "m2"]);
    w.run_for(Duration::from_secs(5));
    // Both commands start at once: `pop run` reads twice (the service, then its type's
    // manifest) before its multi, `pop undeploy` reads once before its own.
    w.run_command(
        0,
        Command::Run {
            name: web(),
            request: RunRequest {
                task: "work".into(),
                args: vec!["ok".into()],
                machines: Vec::new(),
                rolling: false,
                timeout: None,
                expire: None,
                author: "operator@sim".into(),
            },
            nonce: 7,
        },
    );
    w.run_command(
        1,
        Command::Machines {
            name: web(),
            change: MachinesChange::Undeploy,
            machines: vec![m("m2")],
        },
    );
    w.run_for(Duration::from_secs(5));
    assert_eq!(w.violation, None, "{}", w.trace.join("\n"));
    assert_eq!(
        w.coverage.get(RACE),
        Some(&1),
        "the undeploy did not land in between: {:?}",
        w.commands
    );
    let tasks = w.zk.children(&paths::service_tasks("web"));
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let node = w.zk.get(&paths::task("web", &tasks[0])).expect("the task");
    let request = TaskRequest::parse(&node.data).expect("a task request");
    let targets: Vec<&str> = request.machines.iter().map(MachineId::as_str).collect();
    assert_eq!(targets, ["m1"]);
}
