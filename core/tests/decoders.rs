//! Everything read from outside decodes to a value or a typed error, never a panic; valid
//! values round-trip; accepted names always make safe znode paths.

use pop_core::assignment::{parse_assignment, render_settings};
use pop_core::journal::{decode, Record};
use pop_core::names::{MachineId, ServiceName};
use pop_core::paths;
use pop_core::published::{
    parse_pid, render_pid, AgentReport, Phase, PhaseCounts, ServiceReport, StateNode,
};
use pop_core::settings::{parse_machines, render_machines, RestartPolicy, SessionLoss, Settings};
use pop_core::zk::{RequestId, ZkReply};
use pop_core::{Input, Timestamp};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::time::Duration;

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn znode_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_machines(&bytes);
        let _ = Settings::parse(&bytes);
        let _ = parse_pid(&bytes);
        let _ = StateNode::parse(&bytes);
        let _ = AgentReport::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(&text);
        let _ = parse_assignment(&text);
    }

    #[test]
    fn json_shaped_payloads_never_panic(text in r#"[\[\]{}",:0-9a-z_ .-]{0,60}"#) {
        let _ = parse_machines(text.as_bytes());
        let _ = Settings::parse(text.as_bytes());
        let _ = AgentReport::parse(text.as_bytes());
        let _ = decode(&text);
    }

    #[test]
    fn agent_reports_round_trip(report in agent_report()) {
        prop_assert_eq!(AgentReport::parse(&report.render()), Ok(report));
    }

    /// A newer agent's report (a field this version does not know, at the top and in a
    /// service) reads as the report without it.
    #[test]
    fn agent_reports_tolerate_an_extra_field(report in agent_report(), value in any::<i64>()) {
        let mut json: serde_json::Value = serde_json::from_slice(&report.render()).expect("json");
        json["a_newer_field"] = value.into();
        for service in json["services"].as_object_mut().expect("services").values_mut() {
            service["another_newer_field"] = serde_json::json!({ "x": value });
        }
        let data = serde_json::to_vec(&json).expect("encodes");
        prop_assert_eq!(AgentReport::parse(&data), Ok(report));
    }

    /// An older agent's report, without an optional field, reads with it defaulted.
    #[test]
    fn agent_reports_tolerate_a_missing_optional_field(
        report in agent_report(),
        top in prop::sample::select(vec![
            "phases", "problems", "problems_omitted", "services", "services_omitted", "started_at",
        ]),
        nested in prop::sample::select(vec![
            "generation", "last_exit", "next_start_at", "not_ready_within", "pid",
            "quick_failures", "restarts", "since",
        ]),
    ) {
        let mut json: serde_json::Value = serde_json::from_slice(&report.render()).expect("json");
        for service in json["services"].as_object_mut().expect("services").values_mut() {
            service.as_object_mut().expect("a service object").remove(nested);
        }
        json.as_object_mut().expect("an object").remove(top);
        let data = serde_json::to_vec(&json).expect("encodes");
        let read = AgentReport::parse(&data).expect("an older report reads");
        let mut expected = report;
        match top {
            "phases" => expected.phases = PhaseCounts::default(),
            "problems" => expected.problems.clear(),
            "problems_omitted" => expected.problems_omitted = 0,
            "services" => expected.services.clear(),
            "services_omitted" => expected.services_omitted = 0,
            _ => expected.started_at = None,
        }
        for service in expected.services.values_mut() {
            match nested {
                "generation" => service.generation = 0,
                "last_exit" => service.last_exit = None,
                "next_start_at" => service.next_start_at = None,
                "not_ready_within" => service.not_ready_within = None,
                "pid" => service.pid = None,
                "quick_failures" => service.quick_failures = 0,
                "restarts" => service.restarts = 0,
                _ => service.since = None,
            }
        }
        prop_assert_eq!(read, expected);
    }

    #[test]
    fn machine_lists_round_trip(names in prop::collection::btree_set("[a-z0-9-]{1,12}", 0..6)) {
        let rendered = render_machines(&names);
        prop_assert_eq!(parse_machines(&rendered).expect("valid"), names);
    }

    #[test]
    fn accepted_names_make_one_path_component(name in "\\PC{0,120}") {
        match ServiceName::new(&name) {
            Ok(service) => {
                let path = paths::service(service.as_str());
                prop_assert_eq!(path.matches('/').count(), 2, "{}", path);
                prop_assert!(paths::parent(&path) == Some(paths::SERVICES));
                prop_assert!(MachineId::new(&name).is_ok());
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn pids_round_trip(pid in 1..=u32::MAX) {
        prop_assert_eq!(parse_pid(&render_pid(pid)), Ok(pid));
    }

    #[test]
    fn state_nodes_round_trip(
        generation in any::<u64>(),
        host in "\\PC{0,20}",
        last_exit in prop::option::of("\\PC{0,20}"),
        pid in any::<u32>(),
        port in any::<Option<u16>>(),
        restarts in any::<u32>(),
        started_ms in 0..u64::MAX / 2,
    ) {
        let state = StateNode {
            generation,
            host,
            last_exit,
            machine: "m1".into(),
            pid,
            port,
            restarts,
            started_at: Timestamp::from_millis(started_ms).as_secs_f64(),
        };
        prop_assert_eq!(StateNode::parse(&state.render()), Ok(state));
    }

    /// Settings as `pop add` writes them (any mix of keys) read back as what was written.
    #[test]
    fn settings_round_trip(
        command in "\\PC{1,30}",
        port in any::<Option<u16>>(),
        restart in prop::sample::select(vec!["always", "on-failure", "never"]),
        fence in any::<bool>(),
        stop_ms in 0..86_400_000u64,
        env in prop::collection::btree_map("[A-Z_]{1,8}", "\\PC{0,12}", 0..4),
        extra in prop::collection::btree_map("x_[a-z]{1,8}", any::<i64>(), 0..3),
    ) {
        let manifest = pop_core::plugin::builtin::get("command").expect("built in");
        let mut map = manifest.default_settings(port);
        map.insert("command".into(), command.clone().into());
        map.insert("restart".into(), restart.into());
        map.insert("session_loss".into(), if fence { "fence" } else { "keep-running" }.into());
        map.insert("stop_timeout".into(), serde_json::Value::from(stop_ms as f64 / 1000.0));
        map.insert("env".into(), serde_json::to_value(&env).expect("strings"));
        for (k, v) in &extra {
            map.insert(k.clone(), (*v).into());
        }
        let settings = Settings::parse(&render_settings(map)).expect("valid");
        prop_assert_eq!(settings.extra.get("command"), Some(&serde_json::Value::from(command)));
        prop_assert_eq!(settings.port, port);
        let policy = match restart {
            "always" => RestartPolicy::Always,
            "on-failure" => RestartPolicy::OnFailure,
            _ => RestartPolicy::Never,
        };
        prop_assert_eq!(settings.restart, policy);
        prop_assert_eq!(settings.session_loss == SessionLoss::Fence, fence);
        prop_assert_eq!(settings.stop_timeout, Duration::from_millis(stop_ms));
        prop_assert_eq!(settings.env, env);
        // `command` is the command type's own setting, kept with the others.
        prop_assert_eq!(settings.extra.len(), extra.len() + 1);
    }

    #[test]
    fn journal_records_round_trip(id in 0..1000u64, at in 0..u64::MAX / 2, data in prop::collection::vec(any::<u8>(), 0..32)) {
        let record = Record::Input {
            at: Timestamp::from_millis(at),
            input: Input::Reply {
                id: RequestId(id),
                reply: ZkReply::Data { data, stat: Default::default() },
            },
        };
        let journal = decode(&(record.to_line() + "\n")).expect("decodes");
        prop_assert_eq!(journal.records.len(), 1);
        prop_assert_eq!(journal.records[0].to_line(), record.to_line());
    }
}

fn seconds() -> impl Strategy<Value = f64> {
    (0..u64::MAX / 2).prop_map(|ms| Timestamp::from_millis(ms).as_secs_f64())
}

fn service_report() -> impl Strategy<Value = ServiceReport> {
    let phase = prop::sample::select(vec![
        Phase::Stopped,
        Phase::Waiting,
        Phase::Backoff,
        Phase::Exited,
        Phase::Starting,
        Phase::Running,
        Phase::Stopping,
        Phase::Unknown,
    ]);
    (
        (
            any::<u64>(),
            prop::option::of("\\PC{0,20}"),
            prop::option::of(seconds()),
            prop::option::of(seconds()),
        ),
        (
            phase,
            any::<Option<u32>>(),
            prop::option::of("\\PC{0,20}"),
            any::<u32>(),
            any::<u32>(),
            prop::option::of(seconds()),
        ),
    )
        .prop_map(
            |(
                (generation, last_exit, next_start_at, not_ready_within),
                (phase, pid, problem, quick_failures, restarts, since),
            )| {
                ServiceReport {
                    generation,
                    last_exit,
                    next_start_at,
                    not_ready_within,
                    phase,
                    pid,
                    problem,
                    quick_failures,
                    restarts,
                    since,
                }
            },
        )
}

fn phase_counts() -> impl Strategy<Value = PhaseCounts> {
    any::<[u32; 7]>().prop_map(
        |[backoff, exited, running, starting, stopped, stopping, waiting]| PhaseCounts {
            backoff,
            exited,
            running,
            starting,
            stopped,
            stopping,
            waiting,
        },
    )
}

fn agent_report() -> impl Strategy<Value = AgentReport> {
    (
        ("\\PC{0,20}", "\\PC{0,20}", "[a-z0-9-]{1,12}", any::<u32>()),
        prop::collection::btree_map("/services/[a-z]{1,8}/settings", "\\PC{0,20}", 0..3),
        prop::collection::btree_map("[a-z0-9-]{1,12}", service_report(), 0..4),
        (prop::option::of(seconds()), "\\PC{0,10}"),
        (phase_counts(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(
                (containment, hostname, machine, pid),
                problems,
                services,
                (started_at, version),
                (phases, problems_omitted, services_omitted),
            )| {
                AgentReport {
                    containment,
                    hostname,
                    machine,
                    phases,
                    pid,
                    problems,
                    problems_omitted,
                    services,
                    services_omitted,
                    started_at,
                    version,
                }
            },
        )
}

#[test]
fn a_report_that_is_not_one_is_an_error_not_a_panic() {
    for data in [&b""[..], b"null", b"[]", b"{}", br#"{"pid":-1}"#, b"\xff"] {
        let err = AgentReport::parse(data).expect_err("not a report");
        assert!(err.to_string().contains("agent report"), "{err}");
    }
}

#[test]
fn a_settings_assignment_takes_json_or_a_string() {
    let set: BTreeSet<String> = ["m1".to_string()].into();
    assert_eq!(render_machines(&set), br#"["m1"]"#);
    assert!(parse_assignment("a=").is_ok());
    assert!(parse_assignment("noequals").is_err());
}
