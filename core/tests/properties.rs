//! The core over arbitrary input sequences (any order of session events, replies with
//! stale or unknown ids, watch events, exits of unknown generations, early and late
//! ticks, garbage data): it never panics, writes only this machine's nodes, does nothing
//! more when nothing new happened, and replays to the same actions.

use pop_core::backoff::Backoff;
use pop_core::event::{Action, ExitStatus, Input};
use pop_core::journal::{decode, replay, Record};
use pop_core::names::MachineId;
use pop_core::zk::{
    NodeStat, RequestId, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkOp, ZkReply,
};
use pop_core::{Agent, AgentConfig, Timestamp};
use proptest::prelude::*;
use std::time::Duration;

const SERVICES: [&str; 3] = ["a", "b", "c"];

fn config() -> AgentConfig {
    AgentConfig {
        machine: MachineId::new("m1").expect("machine id"),
        hostname: "h".into(),
        agent_pid: 1,
        version: "t".into(),
        containment: "none".into(),
        seed: 9,
        backoff: Backoff::default(),
    }
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(br#"["m1"]"#.to_vec()),
        Just(br#"["m2"]"#.to_vec()),
        Just(br#"{"type":"command","command":"x","start_seconds":0.1}"#.to_vec()),
        Just(br#"{"type":"echo","port":0,"session_loss":"fence"}"#.to_vec()),
        Just(b"[not json".to_vec()),
        Just(b"1234".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn reply() -> impl Strategy<Value = ZkReply> {
    let stat = (
        0..3i32,
        prop_oneof![Just(0i64), Just(5), Just(6)],
        0..100i64,
    )
        .prop_map(|(version, ephemeral_owner, mzxid)| NodeStat {
            version,
            ephemeral_owner,
            mzxid,
            pzxid: mzxid,
        });
    prop_oneof![
        (data(), stat.clone()).prop_map(|(data, stat)| ZkReply::Data { data, stat }),
        (
            prop::collection::vec(prop::sample::select(SERVICES.to_vec()), 0..3),
            stat.clone()
        )
            .prop_map(|(names, stat)| ZkReply::Children {
                names: names.into_iter().map(String::from).collect(),
                stat
            }),
        Just(ZkReply::Created),
        stat.prop_map(|stat| ZkReply::Set { stat }),
        Just(ZkReply::Deleted),
        prop_oneof![
            Just(ZkError::NoNode),
            Just(ZkError::NodeExists),
            Just(ZkError::ConnectionLoss),
            Just(ZkError::SessionExpired),
            Just(ZkError::Timeout),
        ]
        .prop_map(ZkReply::Error),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let service = prop::sample::select(SERVICES.to_vec()).prop_map(String::from);
    let path = prop_oneof![
        Just("/services".to_string()),
        service
            .clone()
            .prop_map(|s| format!("/services/{s}/machines")),
        service
            .clone()
            .prop_map(|s| format!("/services/{s}/settings")),
        service.clone().prop_map(|s| format!("/machines/m1/{s}")),
        Just("/agents/m1".to_string()),
    ];
    prop_oneof![
        3 => (5..7i64).prop_map(|s| Input::Session(SessionEvent::Connected {
            session: SessionId(s),
            timeout: Duration::from_secs(4),
        })),
        1 => Just(Input::Session(SessionEvent::Disconnected)),
        1 => Just(Input::Session(SessionEvent::Expired)),
        8 => (1..40u64, reply()).prop_map(|(id, reply)| Input::Reply { id: RequestId(id), reply }),
        3 => (path, prop_oneof![
            Just(WatchKind::DataChanged),
            Just(WatchKind::Deleted),
            Just(WatchKind::ChildrenChanged),
        ]).prop_map(|(path, kind)| Input::Watch(WatchEvent { path, kind })),
        2 => (service.clone(), 0..4u64, 100..110u32)
            .prop_map(|(service, generation, pid)| Input::Spawned { service, generation, pid }),
        2 => (service.clone(), 0..4u64, any::<Option<i32>>()).prop_map(|(service, generation, code)| {
            Input::Exited { service, generation, status: ExitStatus { code, signal: None } }
        }),
        1 => (service.clone(), 0..4u64).prop_map(|(service, generation)| Input::Ready {
            service, generation, port: Some(8080),
        }),
        1 => (service, 0..4u64).prop_map(|(service, generation)| Input::SpawnFailed {
            service, generation, error: "no".into(),
        }),
        3 => Just(Input::Tick),
        1 => Just(Input::Shutdown),
    ]
}

/// Writes go only to this machine's nodes (and its own directory).
fn own_write(op: &ZkOp) -> bool {
    match op {
        ZkOp::GetData { .. } | ZkOp::GetChildren { .. } => true,
        ZkOp::Create { path, .. } | ZkOp::SetData { path, .. } | ZkOp::Delete { path, .. } => {
            path == "/machines/m1"
                || path.starts_with("/machines/m1/")
                || path == "/agents/m1"
                || (path.starts_with("/services/") && path.ends_with("/state/m1"))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_input_sequence_is_handled_safely(steps in prop::collection::vec((0..3000u64, input()), 1..80)) {
        let mut agent = Agent::new(config());
        let mut records = vec![Record::Start { config: config() }];
        let mut now = 1_000_000u64;
        for (advance, input) in steps {
            now += advance;
            let at = Timestamp::from_millis(now);
            records.push(Record::Input { at, input: input.clone() });
            agent.handle(at, input);
            let actions: Vec<Action> = agent.drain_actions();
            for action in &actions {
                if let Action::Zk { op, .. } = action {
                    prop_assert!(own_write(op), "wrote another machine's node: {op:?}");
                    prop_assert!(op.path().starts_with('/'), "{op:?}");
                }
                if let Action::Spawn { service, .. } | Action::Stop { service, .. } = action {
                    prop_assert!(SERVICES.contains(&service.as_str()), "{action:?}");
                }
            }
            records.push(Record::Actions { actions });
            // Nothing new happened: a tick before any deadline changes nothing.
            if agent.poll_timeout().is_none_or(|t| t > at) {
                let tick = Input::Tick;
                records.push(Record::Input { at, input: tick.clone() });
                agent.handle(at, tick);
                let again: Vec<Action> = agent.drain_actions();
                prop_assert!(again.is_empty(), "acted with nothing new: {again:?}");
                records.push(Record::Actions { actions: again });
            }
        }
        // Event sourcing: the recorded inputs replay to the recorded actions.
        let text: String = records.iter().map(|r| r.to_line() + "\n").collect();
        let steps = replay(&decode(&text).expect("decodes")).expect("replays");
        prop_assert!(steps.iter().all(|s| s.matches()));
    }
}
