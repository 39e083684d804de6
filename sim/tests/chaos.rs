//! The seeded chaos runner: deterministic, and clean on a fixed batch of seeds (including
//! every seed that once found a bug). That it catches each planted bug is shown apart, in
//! sim/planted (pop-planted-tests), the only build with the bug switches.

use pop_sim::chaos::{run, run_catching, Options};
use std::collections::BTreeMap;
use std::time::Duration;

/// Seeds that failed while the simulator was built (each a core or model bug since
/// fixed): they must stay clean.
const REGRESSIONS: [u64; 22] = [
    12, 27, 39, 57, 74, 92, 115, 119, 204, 223, 239, 249, 545, 681, 682, 699, 750, 818, 821, 852,
    1549, 3612,
];

fn short(seed: u64) -> Options {
    Options::from_seed(seed, None, Some(Duration::from_secs(60)))
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let options = short(0xfeed);
    let a = run(&options);
    let b = run(&options);
    assert!(a.events > 100, "{} events", a.events);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.coverage, b.coverage);
}

#[test]
fn regression_seeds_stay_clean() {
    for seed in REGRESSIONS {
        let outcome = run_catching(&Options::from_seed(seed, None, None));
        assert_eq!(outcome.failure, None, "seed {seed}");
    }
}

/// Clean, and between them the seeds reach every rare situation the runner counts.
#[test]
fn a_batch_of_seeds_is_clean_and_covers_the_rare_situations() {
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    // 66 seeds: an agent reads only what is deployed on it (issue 15), so schedules
    // changed and the rarest situations (a failed environment build: 2 of 1000..1065)
    // need a wider batch; 1132: a settings change during a crash-loop backoff. 1053
    // once failed: a machine cut off while a rolling task naming it was issued, its
    // agent upgraded and the service undeployed there before it was back, never read
    // the task, and the next machines waited for its result (now its agent looks at the
    // service's tasks once more when it leaves, and writes `skipped`).
    for seed in (1000..1066).chain([1132]) {
        let outcome = run_catching(&short(seed));
        assert_eq!(
            outcome.failure, None,
            "seed {seed}: pop sim --seed {seed} --duration 60s"
        );
        for (situation, n) in outcome.coverage {
            *coverage.entry(situation).or_default() += n;
        }
    }
    for situation in [
        "session expiry while services run",
        "agent killed with services running",
        "partition while a service starts",
        "undeploy while the machine is disconnected",
        "settings change during a crash-loop backoff",
        "connection loss of a create",
        "connection loss of an applied request",
        "stop of a process that ignores SIGTERM",
        "spawn failure",
        "remove --force racing a live agent that still runs the service",
        "add whose reply was lost",
        "CAS retried after a BadVersion",
        "stored type started",
        "bad data at a stored type",
        "service started from its environment",
        "environment build failed",
        "request of an agent in a secured namespace",
    ] {
        assert!(
            coverage.get(situation).is_some_and(|n| *n > 0),
            "never: {situation}; {coverage:?}"
        );
    }
}

/// Tasks under faults: between them the seeds run tasks where they were issued while a
/// target was cut off, while a session expires, again after their agent died, rolling
/// ones that stop at a failure, hanging ones past their timeout, and tasks written by
/// hand for machines they do not target; and every invariant of tasks holds.
#[test]
fn a_batch_of_seeds_runs_tasks_through_their_rare_situations() {
    let mut coverage: BTreeMap<&'static str, u64> = BTreeMap::new();
    for seed in 2000..2030 {
        let outcome = run_catching(&short(seed));
        assert_eq!(
            outcome.failure, None,
            "seed {seed}: pop sim --seed {seed} --duration 60s"
        );
        for (situation, n) in outcome.coverage {
            *coverage.entry(situation).or_default() += n;
        }
    }
    for situation in [
        "task run",
        "rolling task issued",
        "task issued while a target was cut off",
        "task run again after its agent died",
        "session expiry while a task runs",
        "task timed out",
        "task skipped",
        "task expired",
        "task written by hand with an untargeted placeholder",
        "stored type started",
        "bad data at a stored type",
        "service started from its environment",
        // Not "environment build failed": one seed of these reached it, and it runs a
        // secured namespace since half the seeds do; the batch above requires it.
        "request of an agent in a secured namespace",
    ] {
        assert!(
            coverage.get(situation).is_some_and(|n| *n > 0),
            "never: {situation}; {coverage:?}"
        );
    }
}
