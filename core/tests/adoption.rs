//! An adopted process before the agent has read what ZooKeeper wants (found in review):
//! a stop still stops it, fencing still fences it, and one that ends is not forgotten.

mod common;

use pop_core::event::{Action, ExitStatus, Input};
use pop_core::settings::Settings;
use pop_core::zk::{NodeStat, SessionEvent, SessionId, ZkOp, ZkReply};
use pop_core::{Agent, Timestamp};
use std::time::Duration;

fn agent() -> Agent {
    Agent::new(common::config("m1", 1, Default::default()))
}

fn settings(extra: &str) -> Settings {
    Settings::parse(format!(r#"{{"type":"command","command":"serve"{extra}}}"#).as_bytes())
        .expect("settings")
}

fn feed(agent: &mut Agent, at: u64, input: Input) -> Vec<Action> {
    agent.handle(Timestamp::from_millis(at), input);
    agent.drain_actions()
}

/// Session 1 with a 4 s timeout.
fn connect(agent: &mut Agent, at: u64) -> Vec<Action> {
    let connected = SessionEvent::Connected {
        session: SessionId(1),
        timeout: Duration::from_secs(4),
    };
    feed(agent, at, Input::Session(connected))
}

fn adopted(settings: Settings) -> Input {
    Input::Adopted {
        service: "web".into(),
        generation: 7,
        pid: 4242,
        started_at: Timestamp::from_millis(1),
        port: None,
        settings,
        launch: None,
    }
}

fn stops(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Stop { service, generation: 7, .. } if service == "web"))
}

#[test]
fn a_stop_request_stops_an_adopted_process_before_the_target_is_known() {
    let mut a = agent();
    feed(&mut a, 1000, adopted(settings("")));
    let actions = feed(&mut a, 1001, Input::Shutdown);
    assert!(stops(&actions), "{actions:?}");
    let actions = feed(
        &mut a,
        1002,
        Input::Exited {
            service: "web".into(),
            generation: 7,
            status: ExitStatus::default(),
        },
    );
    assert!(actions.contains(&Action::Exit), "{actions:?}");
}

#[test]
fn an_adopted_fence_service_is_fenced_before_the_target_is_known() {
    let mut a = agent();
    feed(
        &mut a,
        1000,
        adopted(settings(r#","session_loss":"fence""#)),
    );
    connect(&mut a, 1001);
    feed(&mut a, 1002, Input::Session(SessionEvent::Disconnected));
    let deadline = a.poll_timeout().expect("a fence deadline");
    assert!(deadline <= Timestamp::from_millis(1002 + 1000));
    let actions = feed(&mut a, deadline.as_millis(), Input::Tick);
    assert!(stops(&actions), "{actions:?}");
}

#[test]
fn an_adopted_process_that_ends_before_the_target_is_known_is_not_forgotten() {
    let mut a = agent();
    feed(&mut a, 1000, adopted(settings(r#","restart":"never""#)));
    feed(
        &mut a,
        1001,
        Input::Exited {
            service: "web".into(),
            generation: 7,
            status: ExitStatus {
                code: Some(0),
                signal: None,
            },
        },
    );
    // Still known, as finished: once the target is read it is not started again, and
    // its generation does not go back to 1.
    assert_eq!(
        a.service_phases().get("web").map(String::as_str),
        Some("exited")
    );
}

/// Found by fuzzing: a process adopted while a start of ours was in flight replaced it in
/// the core's view without a stop, so the next start ran beside it.
#[test]
fn an_adoption_while_a_start_is_in_flight_stops_that_start() {
    use pop_core::zk::{NodeStat, RequestId, ZkReply};
    let mut a = agent();
    let data = |id: u64, data: &str, mzxid: i64| Input::Reply {
        id: RequestId(id),
        reply: ZkReply::Data {
            data: data.as_bytes().to_vec(),
            stat: NodeStat {
                mzxid,
                ..NodeStat::default()
            },
        },
    };
    connect(&mut a, 1000);
    // #1 and #2 make this machine's nodes, #3 watches its pid nodes, #4 reads its index.
    let listing = Input::Reply {
        id: RequestId(4),
        reply: ZkReply::Children {
            names: vec!["web".into()],
            stat: NodeStat::default(),
        },
    };
    let reads = feed(&mut a, 1001, listing);
    let read_of = |path: &str| {
        reads
            .iter()
            .find_map(|action| match action {
                Action::Zk {
                    id,
                    op: ZkOp::GetData { path: p, .. },
                } if p == path => Some(id.0),
                _ => None,
            })
            .expect("the listing makes the agent read web's machines and settings")
    };
    let (machines_read, settings_read) = (
        read_of("/services/web/machines"),
        read_of("/services/web/settings"),
    );
    feed(&mut a, 1002, data(machines_read, r#"["m1"]"#, 10));
    let actions = feed(
        &mut a,
        1003,
        data(settings_read, r#"{"type":"command","command":"serve"}"#, 11),
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Spawn { generation: 1, .. })),
        "{actions:?}"
    );
    // Before web#1 is reported spawned, an adoption of web#7 arrives.
    let actions = feed(&mut a, 1004, adopted(settings("")));
    assert!(
        actions.iter().any(|a| matches!(a,
            Action::Stop { service, generation: 1, .. } if service == "web")),
        "the start in flight is stopped: {actions:?}"
    );
}

/// Found by fuzzing: fencing was due only by a tick scheduled while a fence service ran,
/// so a fence service adopted (or started) after the session had been lost for a quarter
/// of its timeout ran on. Fencing is now due by the clock.
#[test]
fn a_fence_service_adopted_long_after_the_session_was_lost_is_stopped() {
    let mut a = agent();
    connect(&mut a, 1000);
    feed(&mut a, 1100, Input::Session(SessionEvent::Disconnected));
    // 1 s = T/4 later, with nothing running, nothing was scheduled to fence.
    let actions = feed(
        &mut a,
        2200,
        adopted(settings(r#","session_loss":"fence""#)),
    );
    assert!(stops(&actions), "{actions:?}");
}

fn reads_of(actions: &[Action], path: &str) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Zk { op: ZkOp::GetData { path: p, .. }, .. } if p == path))
        .count()
}

/// A new session reads what it adopted before the index arrives; the index naming
/// those services does not read them again.
#[test]
fn an_adopted_service_is_read_once_in_the_new_session() {
    let mut a = agent();
    feed(&mut a, 1000, adopted(settings("")));
    let mut actions = connect(&mut a, 1001);
    let listing = actions
        .iter()
        .find_map(|a| match a {
            Action::Zk {
                id,
                op: ZkOp::GetChildren { .. },
            } => Some(*id),
            _ => None,
        })
        .expect("the index is read");
    let reply = ZkReply::Children {
        names: vec!["web".into()],
        stat: NodeStat::default(),
    };
    actions.extend(feed(&mut a, 1002, Input::Reply { id: listing, reply }));
    for path in ["/services/web/machines", "/services/web/settings"] {
        assert_eq!(reads_of(&actions, path), 1, "{path}: {actions:?}");
    }
}
