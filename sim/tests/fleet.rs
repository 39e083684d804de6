//! Fleet mode at small sizes (issue 15): what a change costs the ZooKeeper model must
//! not grow with the machines it does not touch, and a fleet resyncing after every
//! session expired at once keeps each agent under the read cap. The large run is a soak
//! (BENCHMARKS.md, "Fleet"): `pop sim --fleet --machines 1000 --services 10000`.

use pop_sim::fleet::{run, FleetOptions, FleetReport};

fn fleet(machines: usize, services: usize) -> FleetReport {
    let report = run(&FleetOptions {
        machines,
        services,
        changes: 4,
        seed: 15,
    })
    .unwrap_or_else(|e| panic!("{machines} machines: {e}"));
    eprintln!("{report:?}");
    report
}

/// The cap holds in a whole fleet: outstanding requests after a mass expiry stay within
/// the cap of reads per agent plus its writes (one per ephemeral, a few services each).
#[test]
fn a_mass_expiry_keeps_every_agent_under_the_read_cap() {
    let report = fleet(20, 200);
    // Without the cap each agent would send its 2 × 200 reads at once.
    let bound = 20 * (pop_core::MAX_OUTSTANDING_READS + 3 * 200 / 20);
    assert!(
        report.resync_peak_outstanding <= bound,
        "{} outstanding, bound {bound}",
        report.resync_peak_outstanding
    );
}

/// Ops per `pop set` and per added service must not grow with the fleet: the same 60
/// services on 5 and on 20 machines, each service on one machine. On main's layout every
/// agent read and watched every service, so this failed (ops grew about 3 per agent per
/// change); it passes since agents read only what is assigned to them (the index, issue
/// 15).
#[test]
fn ops_per_change_do_not_grow_with_the_fleet() {
    let small = fleet(5, 60);
    let large = fleet(20, 60);
    assert!(
        large.ops_per_set <= small.ops_per_set + 2.0,
        "per set: {} at 5 machines, {} at 20",
        small.ops_per_set,
        large.ops_per_set
    );
    assert!(
        large.ops_per_new_service <= small.ops_per_new_service + 4.0,
        "per new service: {} at 5 machines, {} at 20",
        small.ops_per_new_service,
        large.ops_per_new_service
    );
    // Watches per agent follow the services deployed on it (3 per machine here at 20
    // machines, 12 at 5), not the fleet's.
    assert!(
        large.watches_per_agent() < small.watches_per_agent(),
        "watches per agent: {} at 5 machines, {} at 20",
        small.watches_per_agent(),
        large.watches_per_agent()
    );
}
