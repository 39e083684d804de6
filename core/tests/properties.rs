//! The core over arbitrary input sequences (any order of session events, replies with
//! stale or unknown ids, watch events, exits of unknown generations, early and late
//! ticks, garbage data), checked by `pop_checker::Checker`: it never panics,
//! requests only while connected and only under the namespace, writes only this
//! machine's nodes (pids it was given, JSON state), spawns only services read as wanted
//! here with settings it read and never beside a running generation, stops only what it
//! had, does nothing more when nothing new happened, and replays to the same actions.

use pop_checker::check_inputs;
use pop_checker::targets::input_sequence_summary;
use pop_core::event::{ExitStatus, Input};
use pop_core::zk::{
    NodeStat, RequestId, SessionEvent, SessionId, WatchEvent, WatchKind, ZkError, ZkReply,
};
use proptest::prelude::*;
use std::time::Duration;

const SERVICES: [&str; 3] = ["a", "b", "c"];

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
        Just("/assignments/m1".to_string()),
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Concrete inputs with random request ids, most of them stale or unknown.
    #[test]
    fn any_input_sequence_is_handled_safely(steps in prop::collection::vec((0..3000u64, input()), 1..80)) {
        let inputs = steps
            .into_iter()
            .map(|(ms, input)| (Duration::from_millis(ms), input))
            .collect();
        if let Err(violation) = check_inputs(inputs) {
            prop_assert!(false, "{}", violation);
        }
    }

    /// Steps decoded from random bytes, as the fuzzer does, so CI covers the decoding
    /// and the resolution of steps against outstanding requests too.
    #[test]
    fn fuzzer_shaped_sequences_are_handled_safely(bytes in prop::collection::vec(any::<u8>(), 0..3000)) {
        if let Err(violation) = input_sequence_summary(&bytes) {
            prop_assert!(false, "{}", violation);
        }
    }
}
