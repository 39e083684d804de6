//! Random histories of operator changes and faults: whatever happens, once the chaos
//! stops every machine converges to exactly what ZooKeeper says.

use pop_core::event::ExitStatus;
use pop_core::paths;
use pop_sim::World;
use proptest::prelude::*;
use std::time::Duration;

const MACHINES: [&str; 3] = ["m1", "m2", "m3"];
const SERVICES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
enum Step {
    Add {
        service: usize,
        echo: bool,
        on: u8,
    },
    Deploy {
        service: usize,
        on: u8,
    },
    Reconfigure {
        service: usize,
        version: u8,
    },
    Remove {
        service: usize,
    },
    BadJson {
        service: usize,
    },
    Crash {
        machine: usize,
        service: usize,
    },
    Expire {
        machine: usize,
    },
    /// Disconnected for a while within the session (the fence deadline may pass).
    Partition {
        machine: usize,
        millis: u16,
    },
    CrashAgent {
        machine: usize,
    },
    UpgradeAgent {
        machine: usize,
    },
    Wait {
        millis: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, any::<bool>(), 0..8u8).prop_map(|(service, echo, on)| Step::Add {
            service,
            echo,
            on
        }),
        (0..3usize, 0..8u8).prop_map(|(service, on)| Step::Deploy { service, on }),
        (0..3usize, 0..4u8).prop_map(|(service, version)| Step::Reconfigure { service, version }),
        (0..3usize).prop_map(|service| Step::Remove { service }),
        (0..3usize).prop_map(|service| Step::BadJson { service }),
        (0..3usize, 0..3usize).prop_map(|(machine, service)| Step::Crash { machine, service }),
        (0..3usize).prop_map(|machine| Step::Expire { machine }),
        (0..3usize, 0..3000u16).prop_map(|(machine, millis)| Step::Partition { machine, millis }),
        (0..3usize).prop_map(|machine| Step::CrashAgent { machine }),
        (0..3usize).prop_map(|machine| Step::UpgradeAgent { machine }),
        (0..2000u16).prop_map(|millis| Step::Wait { millis }),
    ]
}

fn machines_json(on: u8) -> Vec<u8> {
    let list: Vec<&str> = MACHINES
        .iter()
        .enumerate()
        .filter(|(i, _)| on & (1 << i) != 0)
        .map(|(_, m)| *m)
        .collect();
    serde_json::to_vec(&list).unwrap_or_default()
}

fn settings(echo: bool, version: u8) -> String {
    if echo {
        format!(r#"{{"type":"echo","port":0,"env":{{"V":"{version}"}}}}"#)
    } else {
        // Odd versions fence on session loss.
        let policy = if version % 4 == 1 {
            "fence"
        } else {
            "keep-running"
        };
        format!(
            r#"{{"type":"command","command":"run v{version}","start_seconds":0.3,"session_loss":"{policy}"}}"#
        )
    }
}

fn apply(w: &mut World, step: &Step) {
    match *step {
        Step::Add { service, echo, on } => {
            let name = SERVICES[service];
            w.admin_put(&paths::service_settings(name), settings(echo, 0).as_bytes());
            w.admin_put(&paths::service_state_dir(name), b"");
            w.admin_put(&paths::service_machines(name), &machines_json(on));
        }
        Step::Deploy { service, on } => {
            let name = SERVICES[service];
            if w.zk.get(&paths::service(name)).is_some() {
                w.admin_put(&paths::service_machines(name), &machines_json(on));
            }
        }
        Step::Reconfigure { service, version } => {
            let name = SERVICES[service];
            if w.zk.get(&paths::service(name)).is_some() {
                w.admin_put(
                    &paths::service_settings(name),
                    settings(version % 2 == 0, version).as_bytes(),
                );
            }
        }
        Step::Remove { service } => w.admin_remove(&paths::service(SERVICES[service])),
        Step::BadJson { service } => {
            let name = SERVICES[service];
            if w.zk.get(&paths::service(name)).is_some() {
                w.admin_put(&paths::service_machines(name), b"[not json");
            }
        }
        Step::Crash { machine, service } => w.crash(
            machine,
            SERVICES[service],
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        ),
        Step::Expire { machine } => w.expire_session(machine),
        Step::Partition { machine, millis } => {
            w.disconnect(machine);
            w.run_for(Duration::from_millis(u64::from(millis)));
            w.reconnect(machine);
        }
        Step::CrashAgent { machine } => w.crash_agent(machine),
        Step::UpgradeAgent { machine } => w.upgrade_agent(machine),
        Step::Wait { millis } => w.run_for(Duration::from_millis(u64::from(millis))),
    }
}

/// Bad data is kept out of the final state: it is the operator's to fix, and until then
/// the agent keeps its last good view, which the checker cannot know.
fn repair(w: &mut World) {
    for name in SERVICES {
        if let Some(node) = w.zk.get(&paths::service_machines(name)) {
            if pop_core::settings::parse_machines(&node.data).is_err() {
                w.admin_put(&paths::service_machines(name), b"[]");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn converges_after_any_history(seed: u64, steps in prop::collection::vec(step(), 1..40)) {
        let mut w = World::new(&MACHINES, seed);
        for s in &steps {
            apply(&mut w, s);
            w.run_for(Duration::from_millis(3));
        }
        repair(&mut w);
        // Long enough for the longest backoff (60 s) to run out.
        w.run_for(Duration::from_secs(90));
        if let Err(e) = w.check_converged() {
            let tail: Vec<&String> = w.trace.iter().rev().take(60).collect();
            prop_assert!(false, "{e}\nlast events:\n{:#?}", tail);
        }
        // Every decision of every agent follows from its journal alone.
        if let Err(e) = w.check_replay() {
            prop_assert!(false, "{e}");
        }
    }
}
