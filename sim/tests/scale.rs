//! Many services on one agent: ten thousand deployed at once all run and are registered,
//! the agent's report stays small, and what it journaled replays.

use pop_core::paths;
use pop_core::published::{AgentReport, REPORT_LIMIT};
use pop_sim::World;
use std::time::{Duration, Instant};

const SERVICES: usize = 10_000;
const CMD: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;

#[test]
fn ten_thousand_services_deployed_at_once_all_run_and_are_registered() {
    let started = Instant::now();
    let mut w = World::new(&["m1"], 11);
    // Everything arrives within a few milliseconds of virtual time, and the journal is
    // snapshotted once, not every 150 records (each snapshot copies the whole agent).
    w.max_events_at_one_time = 100 * SERVICES as u64;
    w.journal_rotate_records = 5 * SERVICES;
    for i in 0..SERVICES {
        w.add_service(&format!("s{i:05}"), CMD, &["m1"]);
    }
    w.run_for(Duration::from_secs(10));
    let ran = started.elapsed();
    if let Err(e) = w.check_converged() {
        panic!("not converged: {e}");
    }
    let m = &w.machines[0];
    assert_eq!(m.processes.len(), SERVICES);
    assert_eq!(w.zk.children(&paths::machine("m1")).len(), SERVICES);
    let report = w.zk.get(&paths::agent("m1")).expect("the agent node");
    assert!(
        report.data.len() < 1024,
        "{} bytes: {}",
        report.data.len(),
        String::from_utf8_lossy(&report.data)
    );
    let report = AgentReport::parse(&report.data).expect("a report pop reads");
    assert_eq!(report.phases.running as usize, SERVICES);
    assert!(report.services.is_empty(), "{:?}", report.services);
    // Idle: nothing is scheduled once everything runs.
    assert_eq!(m.agent.poll_timeout(), None);
    assert!(
        m.journals.len() >= 2,
        "the journal was rotated at least once: {} records",
        m.journals[0].len()
    );
    w.check_replay().expect("the journals replay");
    eprintln!(
        "{SERVICES} services: converged in {ran:?} of wall time ({} events), replayed in {:?} more",
        w.events_handled,
        started.elapsed() - ran
    );
}

/// More services not running as they should, and more problems, than the report lists:
/// it lists the first 100 of each by name and says how many more there are.
#[test]
fn the_report_lists_at_most_a_hundred_services_and_problems() {
    let mut w = World::new(&["m1"], 12);
    for i in 0..150 {
        let name = format!("deaf{i:03}");
        w.never_ready.insert(name.clone());
        w.add_service(&name, r#"{"type":"echo","port":0}"#, &["m1"]);
    }
    for i in 0..120 {
        w.add_service(&format!("bad{i:03}"), "{garbage", &["m1"]);
    }
    w.run_for(Duration::from_secs(5));
    let node = w.zk.get(&paths::agent("m1")).expect("the agent node");
    let report = AgentReport::parse(&node.data).expect("a report pop reads");
    assert_eq!(report.phases.starting, 150, "{report:?}");
    assert_eq!(report.services.len(), REPORT_LIMIT);
    assert_eq!(report.services_omitted, 50);
    assert!(report.services.contains_key("deaf000") && report.services.contains_key("deaf099"));
    assert_eq!(report.problems.len(), REPORT_LIMIT);
    assert_eq!(report.problems_omitted, 20);
    assert!(node.data.len() < 40_000, "{} bytes", node.data.len());
}
