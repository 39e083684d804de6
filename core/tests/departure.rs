//! A service that departs from this machine while a task naming it is outstanding
//! (found by the simulator, seed 1053): the agent that was away when the task was issued
//! never saw it, and once its service had left the index it read nothing of it any
//! more, so its result stayed `pending` and a rolling task's next machines waited for
//! it until the task expired. And the next machine's side: an agent back knowing
//! nothing of the service never learns of the task, so the machine after it skips once
//! the machine before it has left the service's machines list without starting.

mod common;

use common::{children, data, feed, find_read, read_of};

use pop_core::event::{Action, ExitStatus, Input};
use pop_core::names::{MachineId, TaskName};
use pop_core::plugin::Environment;
use pop_core::settings::Settings;
use pop_core::task::{TaskKind, TaskRequest, TaskResult, TaskState};
use pop_core::zk::{NodeStat, RequestId, SessionEvent, SessionId, ZkError, ZkOp, ZkReply};
use pop_core::{Agent, Timestamp};
use std::time::Duration;

const TASK: &str = "t0000000001000-beef";

/// A new agent on m1 (the one before it was upgraded while cut off) adopts `web`'s
/// process, connects, and finds `web` gone from its index and its list naming only m2:
/// the actions once that departure is confirmed, and the adopted process's generation.
fn departed(a: &mut Agent) -> Vec<Action> {
    let settings = Settings::parse(br#"{"type":"command","command":"serve"}"#).expect("settings");
    feed(
        a,
        1000,
        Input::Adopted {
            service: "web".into(),
            generation: 7,
            pid: 4242,
            started_at: Timestamp::from_millis(1),
            port: None,
            settings,
            launch: None,
        },
    );
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    let actions = feed(a, 1001, Input::Session(connected));
    let index = read_of(&actions, "/assignments/m1");
    let machines = read_of(&actions, "/services/web/machines");
    feed(a, 1002, data(machines, r#"["m2"]"#, 20));
    let actions = feed(a, 1003, children(index, &[], 21));
    let confirm = read_of(&actions, "/services/web/machines");
    feed(a, 1004, data(confirm, r#"["m2"]"#, 20))
}

/// A rolling task on m1 then m2, issued while m1's agent was away.
fn rolling_request() -> String {
    let request = TaskRequest {
        kind: TaskKind::Command,
        task: TaskName::new("deploy").expect("a name"),
        args: Vec::new(),
        machines: vec![
            MachineId::new("m1").expect("an id"),
            MachineId::new("m2").expect("an id"),
        ],
        rolling: true,
        author: "me@here".into(),
        created_at: 1.0,
        expires_at: 3600.0,
        timeout_s: 60.0,
        command: vec!["true".into()],
        environment: Environment::None,
        restart_after: false,
    };
    String::from_utf8(request.render()).expect("JSON")
}

fn written(actions: &[Action], path: &str) -> Option<(RequestId, TaskResult)> {
    actions.iter().find_map(|a| match a {
        Action::Zk {
            id,
            op: ZkOp::SetData { path: p, data, .. },
        } if p == path => Some((*id, TaskResult::parse(data).expect("a result"))),
        _ => None,
    })
}

fn exited(a: &mut Agent, at: u64) {
    let exit = Input::Exited {
        service: "web".into(),
        generation: 7,
        status: ExitStatus::default(),
    };
    feed(a, at, exit);
}

#[test]
fn a_rolling_task_issued_while_the_agent_was_away_is_skipped_once_its_service_departs() {
    let mut a = Agent::new(common::config("m1", 1, Default::default()));
    let actions = departed(&mut a);
    // One look at the tasks, without a watch: nothing more of them is wanted after.
    let look = actions
        .iter()
        .find_map(|action| match action {
            Action::Zk {
                id,
                op: ZkOp::GetChildren { path, watch },
            } if path == "/services/web/tasks" => Some((*id, *watch)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the tasks of web are not read: {actions:?}"));
    assert!(!look.1, "watched: {actions:?}");
    let actions = feed(&mut a, 1005, children(look.0, &[TASK], 30));
    let own_path = format!("/services/web/tasks/{TASK}/m1");
    let own = read_of(&actions, &own_path);
    let actions = feed(&mut a, 1006, data(own, r#"{"state":"pending"}"#, 31));
    let request = read_of(&actions, &format!("/services/web/tasks/{TASK}"));
    let actions = feed(&mut a, 1007, data(request, &rolling_request(), 31));
    let (write, result) =
        written(&actions, &own_path).unwrap_or_else(|| panic!("no result written: {actions:?}"));
    assert_eq!(result.state, TaskState::Skipped, "{result:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::RunTask { .. })));
    let stat = NodeStat {
        version: 1,
        ..NodeStat::default()
    };
    feed(
        &mut a,
        1008,
        Input::Reply {
            id: write,
            reply: ZkReply::Set { stat },
        },
    );
    assert_eq!(a.audit(), Ok(()));
    // Its process stopped (asked when the departure was confirmed), nothing of it is
    // left: the service is forgotten.
    exited(&mut a, 1009);
    assert_eq!(
        a.service_phases().get("web"),
        None,
        "{:?}",
        a.service_phases()
    );
    assert_eq!(a.audit(), Ok(()));
}

#[test]
fn a_departed_service_whose_tasks_are_gone_is_forgotten_once_its_process_ends() {
    let mut a = Agent::new(common::config("m1", 1, Default::default()));
    let actions = departed(&mut a);
    let look = read_of(&actions, "/services/web/tasks");
    exited(&mut a, 1005);
    // Kept until the look at its tasks is answered: removed with its service.
    assert!(a.service_phases().contains_key("web"));
    let gone = Input::Reply {
        id: look,
        reply: ZkReply::Error(ZkError::NoNode),
    };
    let actions = feed(&mut a, 1006, gone);
    // No fallback read of the service's children: nothing of it is followed any more.
    assert_eq!(find_read(&actions, "/services/web"), None, "{actions:?}");
    assert_eq!(
        a.service_phases().get("web"),
        None,
        "{:?}",
        a.service_phases()
    );
    assert_eq!(a.audit(), Ok(()));
}

#[test]
fn a_look_at_the_tasks_that_fails_is_sent_again_without_a_watch() {
    let mut a = Agent::new(common::config("m1", 1, Default::default()));
    let actions = departed(&mut a);
    let look = read_of(&actions, "/services/web/tasks");
    let lost = Input::Reply {
        id: look,
        reply: ZkReply::Error(ZkError::ConnectionLoss),
    };
    feed(&mut a, 1005, lost);
    let retry = a.poll_timeout().expect("a retry");
    let actions = feed(&mut a, retry.as_millis(), Input::Tick);
    let again = actions.iter().find_map(|action| match action {
        Action::Zk {
            op: ZkOp::GetChildren { path, watch },
            ..
        } if path == "/services/web/tasks" => Some(*watch),
        _ => None,
    });
    assert_eq!(again, Some(false), "{actions:?}");
}

#[test]
fn tasks_a_connected_agent_knew_are_not_read_again_when_its_service_departs() {
    // Deployed, its one task already done here; then undeployed by `pop undeploy`
    // (the list first, the index after): the last look lists the same task, which is
    // dropped without reading its result again.
    let mut a = Agent::new(common::config("m1", 1, Default::default()));
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    let actions = feed(&mut a, 1000, Input::Session(connected));
    let index = read_of(&actions, "/assignments/m1");
    let actions = feed(&mut a, 1001, children(index, &["web"], 10));
    let machines = read_of(&actions, "/services/web/machines");
    let settings = read_of(&actions, "/services/web/settings");
    let mut actions = feed(&mut a, 1002, data(machines, r#"["m1"]"#, 10));
    actions.extend(feed(
        &mut a,
        1003,
        data(settings, r#"{"type":"command","command":"serve"}"#, 11),
    ));
    let tasks = read_of(&actions, "/services/web/tasks");
    let actions = feed(&mut a, 1004, children(tasks, &[TASK], 12));
    let own_path = format!("/services/web/tasks/{TASK}/m1");
    let own = read_of(&actions, &own_path);
    feed(&mut a, 1005, data(own, r#"{"state":"succeeded"}"#, 13));
    let watch = |path: &str, kind| {
        Input::Watch(pop_core::zk::WatchEvent {
            path: path.into(),
            kind,
        })
    };
    let actions = feed(
        &mut a,
        1006,
        watch(
            "/services/web/machines",
            pop_core::zk::WatchKind::DataChanged,
        ),
    );
    let machines = read_of(&actions, "/services/web/machines");
    feed(&mut a, 1007, data(machines, "[]", 20));
    let actions = feed(
        &mut a,
        1008,
        watch("/assignments/m1", pop_core::zk::WatchKind::ChildrenChanged),
    );
    let index = read_of(&actions, "/assignments/m1");
    let actions = feed(&mut a, 1009, children(index, &[], 21));
    let confirm = read_of(&actions, "/services/web/machines");
    let actions = feed(&mut a, 1010, data(confirm, "[]", 20));
    let look = read_of(&actions, "/services/web/tasks");
    let actions = feed(&mut a, 1011, children(look, &[TASK], 12));
    assert_eq!(find_read(&actions, &own_path), None, "{actions:?}");
    assert_eq!(a.audit(), Ok(()));
}

/// m2's agent, `web` deployed on m1 and m2, follows the rolling task [m1, m2] with m1's
/// result `pending`: it writes `waiting`, and the write is answered.
fn waiting_for_m1(a: &mut Agent) {
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    let actions = feed(a, 1000, Input::Session(connected));
    let index = read_of(&actions, "/assignments/m2");
    let actions = feed(a, 1001, children(index, &["web"], 10));
    let machines = read_of(&actions, "/services/web/machines");
    let settings = read_of(&actions, "/services/web/settings");
    let mut actions = feed(a, 1002, data(machines, r#"["m1","m2"]"#, 10));
    actions.extend(feed(
        a,
        1003,
        data(settings, r#"{"type":"command","command":"serve"}"#, 11),
    ));
    let tasks = read_of(&actions, "/services/web/tasks");
    let actions = feed(a, 1004, children(tasks, &[TASK], 12));
    let own_path = format!("/services/web/tasks/{TASK}/m2");
    let own = read_of(&actions, &own_path);
    let actions = feed(a, 1005, data(own, r#"{"state":"pending"}"#, 13));
    let request = read_of(&actions, &format!("/services/web/tasks/{TASK}"));
    let actions = feed(a, 1006, data(request, &rolling_request(), 12));
    let previous = read_of(&actions, &format!("/services/web/tasks/{TASK}/m1"));
    let actions = feed(a, 1007, data(previous, r#"{"state":"pending"}"#, 13));
    let (write, result) =
        written(&actions, &own_path).unwrap_or_else(|| panic!("no result written: {actions:?}"));
    assert_eq!(result.state, TaskState::Waiting, "{result:?}");
    let stat = NodeStat {
        version: 1,
        ..NodeStat::default()
    };
    feed(
        a,
        1008,
        Input::Reply {
            id: write,
            reply: ZkReply::Set { stat },
        },
    );
}

/// The machines list of `web` changes to `list`: the actions once it is read.
fn machines_become(a: &mut Agent, list: &str) -> Vec<Action> {
    let watch = Input::Watch(pop_core::zk::WatchEvent {
        path: "/services/web/machines".into(),
        kind: pop_core::zk::WatchKind::DataChanged,
    });
    let actions = feed(a, 1010, watch);
    let machines = read_of(&actions, "/services/web/machines");
    feed(a, 1011, data(machines, list, 20))
}

#[test]
fn the_next_machine_skips_once_the_machine_before_it_leaves_the_list_without_starting() {
    // m1's agent never acts (back knowing nothing of `web`): its result stays pending.
    let mut a = Agent::new(common::config("m2", 1, Default::default()));
    waiting_for_m1(&mut a);
    let actions = machines_become(&mut a, r#"["m2"]"#);
    let own_path = format!("/services/web/tasks/{TASK}/m2");
    let (_, result) =
        written(&actions, &own_path).unwrap_or_else(|| panic!("no result written: {actions:?}"));
    assert_eq!(result.state, TaskState::Skipped, "{result:?}");
    assert_eq!(
        result.error.as_deref(),
        Some("m1 is pending and no longer in web's machines list")
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::RunTask { .. })));
    assert_eq!(a.audit(), Ok(()));
}

#[test]
fn the_next_machine_waits_while_the_machine_before_it_is_in_the_list() {
    let mut a = Agent::new(common::config("m2", 1, Default::default()));
    waiting_for_m1(&mut a);
    let actions = machines_become(&mut a, r#"["m1","m2","m3"]"#);
    let own_path = format!("/services/web/tasks/{TASK}/m2");
    assert_eq!(written(&actions, &own_path), None, "{actions:?}");
    assert!(!actions.iter().any(|a| matches!(a, Action::RunTask { .. })));
    assert_eq!(a.audit(), Ok(()));
}
