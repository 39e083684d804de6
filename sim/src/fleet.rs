//! Fleet mode: the real core on many machines against the ZooKeeper model, measuring
//! what changes cost the server rather than checking invariants (the chaos runner does
//! that). Services are spread one machine each; the report gives the server's ops
//! (agents' requests plus watch notifications) per settings change and per added
//! service, the watches held, and the load of a resync after every session expired at
//! once (the model is one server: its peak of outstanding requests and of requests per
//! 100 ms).

use crate::world::load::RATE_WINDOW;
use crate::World;
use pop_core::paths;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub machines: usize,
    pub services: usize,
    /// Changes measured of each kind (settings changes, added services).
    pub changes: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct FleetReport {
    pub machines: usize,
    pub services: usize,
    pub ops_per_set: f64,
    pub ops_per_new_service: f64,
    pub watches: usize,
    /// Every session expired at once: the peak of requests outstanding over all agents,
    /// the most requests within 100 ms, all requests until every agent was back, and
    /// how long (virtual time) that took.
    pub resync_peak_outstanding: usize,
    pub resync_peak_requests_per_window: u64,
    pub resync_requests: u64,
    pub resync_time: Duration,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
}

impl FleetReport {
    pub fn watches_per_agent(&self) -> f64 {
        self.watches as f64 / self.machines as f64
    }
}

const SETTINGS: &str = r#"{"type":"command","command":"serve","start_seconds":0.5}"#;
/// Virtual time one change is given to settle (a restart takes well under a second).
const SETTLE: Duration = Duration::from_secs(3);
/// The resolution of the resync's duration.
const RESYNC_STEP: Duration = Duration::from_millis(10);
/// How long the fleet may take to converge before the run fails.
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);

fn machine_id(i: usize) -> String {
    format!("m{i:05}")
}

/// Runs the fleet; an error when it does not converge.
pub fn run(options: &FleetOptions) -> Result<FleetReport, String> {
    if options.machines == 0 || options.services == 0 || options.changes == 0 {
        return Err("machines, services and changes must each be at least 1".into());
    }
    let started = Instant::now();
    let ids: Vec<String> = (0..options.machines).map(machine_id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut w = World::new(&refs, options.seed);
    w.check_invariants = false;
    // Whole fleets start, and resync, at one instant; the journals are not replayed.
    w.max_events_at_one_time = u64::MAX;
    w.journal_rotate_records = usize::MAX;
    for i in 0..options.services {
        w.add_new_service(&format!("s{i:05}"), SETTINGS, &[&ids[i % options.machines]]);
    }
    converge(&mut w, RATE_WINDOW)?;

    let mut set_ops = 0;
    for change in 0..options.changes {
        let name = format!("s{:05}", (change * 7) % options.services);
        let settings = format!(
            r#"{{"type":"command","command":"serve","start_seconds":0.5,"env":{{"V":"{change}"}}}}"#
        );
        let before = w.load.ops();
        w.admin_put(&paths::service_settings(&name), settings.as_bytes());
        settle(&mut w)?;
        set_ops += w.load.ops() - before;
    }
    let mut new_ops = 0;
    for added in 0..options.changes {
        let machine = &ids[(added * 3) % options.machines];
        let before = w.load.ops();
        w.add_new_service(&format!("new{added:05}"), SETTINGS, &[machine]);
        settle(&mut w)?;
        new_ops += w.load.ops() - before;
    }
    let watches = w.zk.watch_count();

    w.load.reset_peaks();
    let before = w.load.requests;
    let expired_at = w.now;
    for machine in 0..options.machines {
        w.expire_session(machine);
    }
    converge(&mut w, RESYNC_STEP)?;
    let changes = options.changes as f64;
    Ok(FleetReport {
        machines: options.machines,
        services: options.services,
        ops_per_set: set_ops as f64 / changes,
        ops_per_new_service: new_ops as f64 / changes,
        watches,
        resync_peak_outstanding: w.load.peak_outstanding,
        resync_peak_requests_per_window: w.load.peak_requests_per_window,
        resync_requests: w.load.requests - before,
        resync_time: w.now.saturating_since(expired_at),
        wall: started.elapsed(),
    })
}

/// Runs in `step`s until every agent is connected, runs what it should and has
/// nothing outstanding; the trace and journals are dropped as it goes (a fleet's would
/// not fit in memory).
fn converge(w: &mut World, step: Duration) -> Result<(), String> {
    let limit = w.now + CONVERGE_LIMIT;
    loop {
        w.run_for(step);
        forget_history(w);
        let connected = w.machines.iter().all(|m| m.session.is_some());
        if connected && w.load.outstanding == 0 && w.check_converged().is_ok() {
            return Ok(());
        }
        if w.now > limit {
            return Err(format!(
                "the fleet did not converge within {CONVERGE_LIMIT:?}: {}",
                w.check_converged().err().unwrap_or_default()
            ));
        }
    }
}

/// Gives one change its time, then checks the fleet converged.
fn settle(w: &mut World) -> Result<(), String> {
    w.run_for(SETTLE);
    forget_history(w);
    converge(w, RATE_WINDOW)
}

fn forget_history(w: &mut World) {
    w.trace.clear();
    for m in &mut w.machines {
        for journal in &mut m.journals {
            journal.clear();
        }
    }
}
