//! The agent's tasks through its public API, for what the simulator found.

mod common;

use common::{children, data, feed, read_of};
use pop_core::backoff::Backoff;
use pop_core::event::{Action, Input};
use pop_core::names::{MachineId, TaskName};
use pop_core::plugin::Environment;
use pop_core::task::{TaskKind, TaskRequest, TaskResult, TaskState};
use pop_core::zk::RequestId;
use pop_core::zk::{NodeStat, SessionEvent, SessionId, WatchEvent, WatchKind, ZkOp, ZkReply};
use pop_core::{Agent, AgentConfig};
use std::time::Duration;

fn agent() -> Agent {
    Agent::new(AgentConfig {
        access: Default::default(),
        machine: MachineId::new("m1").expect("machine id"),
        hostname: "h".into(),
        agent_pid: 1,
        version: "t".into(),
        containment: "none".into(),
        seed: 1,
        backoff: Backoff::default(),
        state_dir: String::new(),
        pop: String::new(),
    })
}

/// Session 1; `web` indexed, deployed on this machine; the actions after its settings.
fn deployed(a: &mut Agent) -> Vec<Action> {
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    let actions = feed(a, 1000, Input::Session(connected));
    let list = read_of(&actions, "/assignments/m1");
    let actions = feed(a, 1001, children(list, &["web"], 0));
    let machines = read_of(&actions, "/services/web/machines");
    let settings = read_of(&actions, "/services/web/settings");
    let mut actions = feed(a, 1002, data(machines, r#"["m1"]"#, 10));
    actions.extend(feed(
        a,
        1003,
        data(settings, r#"{"type":"command","command":"serve"}"#, 11),
    ));
    actions
}

/// Undeploys `web` from this machine.
fn undeploy(a: &mut Agent) {
    let watch = Input::Watch(WatchEvent {
        path: "/services/web/machines".into(),
        kind: WatchKind::DataChanged,
    });
    let actions = feed(a, 1004, watch);
    let machines = read_of(&actions, "/services/web/machines");
    feed(a, 1005, data(machines, "[]", 12));
}

const TASK: &str = "t0000000001000-beef";

/// A task listed after its service left this machine is written `skipped`, never run.
#[test]
fn a_task_listed_after_the_service_left_this_machine_is_skipped() {
    let mut a = agent();
    let actions = deployed(&mut a);
    let tasks = read_of(&actions, "/services/web/tasks");
    undeploy(&mut a);
    let actions = feed(&mut a, 1006, children(tasks, &[TASK], 0));
    let own = read_of(&actions, &format!("/services/web/tasks/{TASK}/m1"));
    let actions = feed(&mut a, 1007, data(own, r#"{"state":"pending"}"#, 13));
    let request = read_of(&actions, &format!("/services/web/tasks/{TASK}"));
    let issued = TaskRequest {
        kind: TaskKind::Command,
        task: TaskName::new("hello").expect("a name"),
        args: Vec::new(),
        machines: vec![MachineId::new("m1").expect("an id")],
        rolling: false,
        author: "me@here".into(),
        created_at: 1.0,
        expires_at: 3600.0,
        timeout_s: 60.0,
        command: vec!["true".into()],
        environment: Environment::None,
        restart_after: false,
    };
    let text = String::from_utf8(issued.render()).expect("JSON");
    let actions = feed(&mut a, 1008, data(request, &text, 14));
    let written = actions.iter().find_map(|a| match a {
        Action::Zk {
            op: ZkOp::SetData { path, data, .. },
            ..
        } if path.ends_with("/m1") => TaskResult::parse(data).ok(),
        _ => None,
    });
    assert_eq!(
        written.map(|r| r.state),
        Some(TaskState::Skipped),
        "{actions:?}"
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::RunTask { .. })));
    assert_eq!(a.audit(), Ok(()));
}

/// Found by the simulator: the list of a service's tasks arriving after the service was
/// undeployed from this machine left an empty entry behind, which reconciling
/// everything again would drop (`Agent::audit`).
#[test]
fn an_empty_tasks_list_arriving_after_the_service_left_this_machine_leaves_no_entry() {
    let mut a = agent();
    let actions = deployed(&mut a);
    let tasks = read_of(&actions, "/services/web/tasks");
    // Undeployed before the list of its tasks comes back.
    undeploy(&mut a);
    assert_eq!(a.audit(), Ok(()));
    feed(&mut a, 1006, children(tasks, &[], 0));
    assert_eq!(a.audit(), Ok(()));
}

/// The reply ZooKeeper gives a request an ACL refuses.
fn refused(id: RequestId) -> Input {
    Input::Reply {
        id,
        reply: ZkReply::Error(pop_core::zk::ZkError::NoAuth),
    }
}

/// A request of a task this machine may not read: the task fails, saying why in its
/// result, and the agent goes on (nothing else of its job is refused).
#[test]
fn a_refused_request_fails_the_task_and_the_agent_goes_on() {
    let mut a = agent();
    let actions = deployed(&mut a);
    let tasks = read_of(&actions, "/services/web/tasks");
    let actions = feed(&mut a, 1006, children(tasks, &[TASK], 0));
    let own = read_of(&actions, &format!("/services/web/tasks/{TASK}/m1"));
    let actions = feed(&mut a, 1007, data(own, r#"{"state":"pending"}"#, 13));
    let request = read_of(&actions, &format!("/services/web/tasks/{TASK}"));
    let actions = feed(&mut a, 1008, refused(request));
    assert!(!actions.contains(&Action::Exit), "{actions:?}");
    let written = actions.iter().find_map(|a| match a {
        Action::Zk {
            op: ZkOp::SetData { path, data, .. },
            ..
        } if path.ends_with("/m1") => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    });
    let written = written.unwrap_or_else(|| panic!("no result written: {actions:?}"));
    let result = TaskResult::parse(written.as_bytes()).expect("a result");
    assert_eq!(result.state, TaskState::Failed);
    assert!(
        written.contains(&format!(
            "reading /services/web/tasks/{TASK}: not authorised"
        )),
        "{written}"
    );
    assert_eq!(a.audit(), Ok(()));
}

/// Its own result this machine may not read: it cannot do its job with this
/// credential, so it says so and exits, as for its other nodes.
#[test]
fn a_refused_own_result_is_reported_and_the_agent_exits() {
    let mut a = agent();
    let actions = deployed(&mut a);
    let tasks = read_of(&actions, "/services/web/tasks");
    let actions = feed(&mut a, 1006, children(tasks, &[TASK], 0));
    let path = format!("/services/web/tasks/{TASK}/m1");
    let own = read_of(&actions, &path);
    let actions = feed(&mut a, 1007, refused(own));
    assert_eq!(
        actions,
        vec![
            Action::Report(pop_core::event::Report::NotAuthorised {
                path,
                doing: "reading".into(),
            }),
            Action::Exit,
        ]
    );
}

/// The id of the request writing `path`.
fn write_of(actions: &[Action], path: &str) -> (RequestId, TaskResult) {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Zk {
                id,
                op: ZkOp::SetData { path: p, data, .. },
            } if p == path => Some((*id, TaskResult::parse(data).expect("a result"))),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{path} is not written: {actions:?}"))
}

/// The driver hands over up to 64 KiB of a task's output (what `packages` keeps); a
/// task of a manifest's command keeps the last 4 KiB of it, as before.
#[test]
fn a_command_task_keeps_the_last_four_kib_of_what_the_driver_read() {
    let mut a = agent();
    let actions = deployed(&mut a);
    let tasks = read_of(&actions, "/services/web/tasks");
    let actions = feed(&mut a, 1006, children(tasks, &[TASK], 0));
    let own_path = format!("/services/web/tasks/{TASK}/m1");
    let own = read_of(&actions, &own_path);
    let actions = feed(&mut a, 1007, data(own, r#"{"state":"pending"}"#, 13));
    let request = read_of(&actions, &format!("/services/web/tasks/{TASK}"));
    let issued = TaskRequest {
        kind: TaskKind::Command,
        task: TaskName::new("hello").expect("a name"),
        args: Vec::new(),
        machines: vec![MachineId::new("m1").expect("an id")],
        rolling: false,
        author: "me@here".into(),
        created_at: 1.0,
        expires_at: 3600.0,
        timeout_s: 60.0,
        command: vec!["true".into()],
        environment: Environment::None,
        restart_after: false,
    };
    let text = String::from_utf8(issued.render()).expect("JSON");
    let actions = feed(&mut a, 1008, data(request, &text, 14));
    let settings = read_of(&actions, "/services/web/settings");
    let actions = feed(
        &mut a,
        1009,
        data(settings, r#"{"type":"command","command":"serve"}"#, 11),
    );
    let (claim, result) = write_of(&actions, &own_path);
    assert_eq!(result.state, TaskState::Running);
    let stat = NodeStat {
        version: 1,
        ..NodeStat::default()
    };
    let actions = feed(
        &mut a,
        1010,
        Input::Reply {
            id: claim,
            reply: ZkReply::Set { stat },
        },
    );
    let attempt = actions
        .iter()
        .find_map(|a| match a {
            Action::RunTask { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not run: {actions:?}"));
    let id = pop_core::task::TaskId::parse(TASK).expect("an id");
    feed(
        &mut a,
        1011,
        Input::TaskStarted {
            service: "web".into(),
            task: id.clone(),
            attempt,
            pid: 42,
        },
    );
    let long = format!("{}end\n", "x".repeat(10_000));
    let actions = feed(
        &mut a,
        1012,
        Input::TaskExited {
            service: "web".into(),
            task: id,
            attempt,
            status: pop_core::event::ExitStatus {
                code: Some(0),
                signal: None,
            },
            stdout_tail: long.clone(),
            stderr_tail: long,
        },
    );
    let (_, result) = write_of(&actions, &own_path);
    assert_eq!(result.state, TaskState::Succeeded);
    assert_eq!(result.stdout_tail.len(), pop_core::task::TAIL_BYTES);
    assert_eq!(result.stderr_tail.len(), pop_core::task::TAIL_BYTES);
    assert!(result.stdout_tail.ends_with("xend\n"));
    assert_eq!(a.audit(), Ok(()));
}
