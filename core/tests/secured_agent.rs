//! An agent in a secured namespace: its own nodes carry its and the admin's ACL, it
//! leaves its machine directory to `pop machine add`, and a request an ACL refuses
//! (NoAuth) is reported and ends the agent instead of being retried forever.

mod common;

use pop_core::access::AgentAccess;
use pop_core::event::{Action, Input, Report};
use pop_core::zk::{NodeStat, SessionEvent, SessionId, ZkError, ZkOp, ZkReply};
use pop_core::{Agent, Timestamp};
use std::time::Duration;

fn agent(access: AgentAccess) -> Agent {
    Agent::new(common::config("m1", 1, access))
}

fn secured() -> AgentAccess {
    AgentAccess::Secured {
        admin: "root:R=".into(),
        machine: "m1:M=".into(),
    }
}

fn feed(agent: &mut Agent, at: u64, input: Input) -> Vec<Action> {
    agent.handle(Timestamp::from_millis(at), input);
    agent.drain_actions()
}

fn connect(agent: &mut Agent) -> Vec<Action> {
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    feed(agent, 1000, Input::Session(connected))
}

fn creates(actions: &[Action]) -> Vec<&ZkOp> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Zk {
                op: op @ ZkOp::Create { .. },
                ..
            } => Some(op),
            _ => None,
        })
        .collect()
}

/// When the agent retries what failed at `failed_at`: after the retry delay (500 ms)
/// and its jitter (under 500 ms more).
fn retry_time(agent: &Agent, failed_at: u64) -> u64 {
    let at = agent.poll_timeout().expect("a retry scheduled").as_millis();
    assert!(
        (failed_at + 500..failed_at + 1000).contains(&at),
        "retry at {at}, failed at {failed_at}"
    );
    at
}

fn request_for(actions: &[Action], path: &str) -> pop_core::zk::RequestId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Zk { id, op } if op.path() == path => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no request for {path} in {actions:?}"))
}

#[test]
fn a_secured_agent_protects_its_nodes_and_leaves_its_directory_to_the_admin() {
    let mut agent = agent(secured());
    let actions = connect(&mut agent);
    let made = creates(&actions);
    assert!(
        made.iter().all(|op| op.path() != "/machines/m1"),
        "{actions:?}"
    );
    let report = made
        .iter()
        .find(|op| op.path() == "/agents/m1")
        .expect("its report is published");
    let ZkOp::Create { acl, .. } = report else {
        unreachable!("filtered to creates")
    };
    assert_eq!(acl.to_string(), "[m1=all root=all]");
}

#[test]
fn an_open_agent_creates_as_before() {
    let mut agent = agent(AgentAccess::Open);
    let actions = connect(&mut agent);
    let made = creates(&actions);
    assert!(made.iter().any(|op| op.path() == "/machines/m1"));
    assert!(made.iter().all(|op| match op {
        ZkOp::Create { acl, .. } => acl.is_open(),
        _ => false,
    }));
}

/// The read of `path` among the actions.
fn read_for(actions: &[Action], path: &str) -> pop_core::zk::RequestId {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Zk {
                id,
                op: op @ (ZkOp::GetData { .. } | ZkOp::GetChildren { .. }),
            } if op.path() == path => Some(*id),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no read of {path} in {actions:?}"))
}

#[test]
fn a_refused_request_is_reported_and_the_agent_exits() {
    let mut agent = agent(AgentAccess::Open);
    let actions = connect(&mut agent);
    let id = read_for(&actions, "/assignments/m1");
    let reply = ZkReply::Error(ZkError::NoAuth);
    let actions = feed(&mut agent, 1001, Input::Reply { id, reply });
    assert_eq!(
        actions,
        vec![
            Action::Report(Report::NotAuthorised {
                path: "/assignments/m1".into(),
                doing: "reading".into(),
            }),
            Action::Exit,
        ]
    );
    // Nothing more, whatever comes next.
    let listing = ZkReply::Children {
        names: vec!["web".into()],
        stat: NodeStat::default(),
    };
    assert!(connect(&mut agent).is_empty());
    assert!(feed(&mut agent, 1002, Input::Reply { id, reply: listing }).is_empty());
}

#[test]
fn a_refused_machine_directory_is_no_refusal() {
    // In a secured namespace `pop machine add` made it; creating it again is refused
    // (ZooKeeper checks the parent's ACL before whether the node exists).
    let mut agent = agent(AgentAccess::Open);
    let actions = connect(&mut agent);
    let id = request_for(&actions, "/machines/m1");
    let reply = ZkReply::Error(ZkError::NoAuth);
    let actions = feed(&mut agent, 1001, Input::Reply { id, reply });
    assert!(!actions.contains(&Action::Exit), "{actions:?}");
}

#[test]
fn settings_kept_from_it_are_read_again_once_it_is_deployed() {
    let mut agent = agent(secured());
    let actions = connect(&mut agent);
    let id = request_for(&actions, "/assignments/m1");
    let listing = ZkReply::Children {
        names: vec!["web".into()],
        stat: NodeStat::default(),
    };
    let actions = feed(&mut agent, 1001, Input::Reply { id, reply: listing });
    let settings = request_for(&actions, "/services/web/settings");
    let machines = request_for(&actions, "/services/web/machines");
    let refused = ZkReply::Error(ZkError::NoAuth);
    let after = feed(
        &mut agent,
        1002,
        Input::Reply {
            id: settings,
            reply: refused,
        },
    );
    assert!(!after.contains(&Action::Exit), "{after:?}");
    let elsewhere = ZkReply::Data {
        data: b"[\"m2\"]".to_vec(),
        stat: NodeStat {
            mzxid: 5,
            ..NodeStat::default()
        },
    };
    let after = feed(
        &mut agent,
        1003,
        Input::Reply {
            id: machines,
            reply: elsewhere,
        },
    );
    assert!(
        after
            .iter()
            .all(|a| !matches!(a, Action::Zk { op, .. } if op.path() == "/services/web/settings")),
        "not deployed here: not read again {after:?}"
    );
    // The admin granted read, then listed m1: the list's watch fires, settings are read.
    let watch = pop_core::zk::WatchEvent {
        path: "/services/web/machines".into(),
        kind: pop_core::zk::WatchKind::DataChanged,
    };
    let actions = feed(&mut agent, 1004, Input::Watch(watch));
    let machines = request_for(&actions, "/services/web/machines");
    let here = ZkReply::Data {
        data: b"[\"m1\"]".to_vec(),
        stat: NodeStat {
            mzxid: 6,
            ..NodeStat::default()
        },
    };
    let actions = feed(
        &mut agent,
        1005,
        Input::Reply {
            id: machines,
            reply: here,
        },
    );
    request_for(&actions, "/services/web/settings");
}

#[test]
fn settings_refused_while_it_is_listed_are_read_again_until_granted() {
    // Two deploys racing: one's grant overwrote the other's, so the list names m1
    // before the ACL lets it read. ZooKeeper fires no watch when the ACL catches up.
    let mut agent = agent(secured());
    let actions = connect(&mut agent);
    let id = request_for(&actions, "/assignments/m1");
    let listing = ZkReply::Children {
        names: vec!["web".into()],
        stat: NodeStat::default(),
    };
    let actions = feed(&mut agent, 1001, Input::Reply { id, reply: listing });
    let settings = request_for(&actions, "/services/web/settings");
    let machines = request_for(&actions, "/services/web/machines");
    let here = ZkReply::Data {
        data: b"[\"m1\"]".to_vec(),
        stat: NodeStat {
            mzxid: 5,
            ..NodeStat::default()
        },
    };
    feed(
        &mut agent,
        1002,
        Input::Reply {
            id: machines,
            reply: here,
        },
    );
    let refused = ZkReply::Error(ZkError::NoAuth);
    let after = feed(
        &mut agent,
        1003,
        Input::Reply {
            id: settings,
            reply: refused.clone(),
        },
    );
    assert!(!after.contains(&Action::Exit), "{after:?}");
    // Refused again after a pause (jittered, at most a second): read again after another.
    let first_retry = retry_time(&agent, 1003);
    let retry = feed(&mut agent, first_retry, Input::Tick);
    let settings = request_for(&retry, "/services/web/settings");
    feed(
        &mut agent,
        first_retry + 1,
        Input::Reply {
            id: settings,
            reply: refused,
        },
    );
    let second_retry = retry_time(&agent, first_retry + 1);
    let retry = feed(&mut agent, second_retry, Input::Tick);
    let settings = request_for(&retry, "/services/web/settings");
    let granted = ZkReply::Data {
        data: br#"{"type":"command","command":"serve"}"#.to_vec(),
        stat: NodeStat {
            mzxid: 6,
            ..NodeStat::default()
        },
    };
    let started = feed(
        &mut agent,
        second_retry + 1,
        Input::Reply {
            id: settings,
            reply: granted,
        },
    );
    assert!(
        started
            .iter()
            .any(|a| matches!(a, Action::Spawn { service, .. } if service == "web")),
        "{started:?}"
    );
    // Nothing more to read once granted.
    let later = feed(&mut agent, second_retry + 3000, Input::Tick);
    assert!(
        later
            .iter()
            .all(|a| !matches!(a, Action::Zk { op, .. } if op.path() == "/services/web/settings")),
        "{later:?}"
    );
}
