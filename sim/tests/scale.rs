//! Many services on one agent: ten thousand deployed at once all run and are registered,
//! the agent's report stays small, and what it journaled replays.

use pop_core::paths;
use pop_core::published::AgentReport;
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
