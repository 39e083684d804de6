//! The seeded chaos runner is not blind: each planted bug is caught within a fixed
//! number of seeds.

use pop_core::planted::Bug;
use pop_planted_tests::with_planted;
use pop_sim::chaos::{run_catching, Options};
use std::time::Duration;

const SEEDS: u64 = 20;

#[test]
fn every_planted_bug_is_caught() {
    for &bug in Bug::ALL {
        let caught = with_planted(bug, || {
            (0..SEEDS).find_map(|seed| {
                let options = Options::from_seed(seed, None, Some(Duration::from_secs(60)));
                run_catching(&options).failure.map(|f| (seed, f))
            })
        });
        let (seed, failure) =
            caught.unwrap_or_else(|| panic!("{bug:?} not caught in {SEEDS} seeds"));
        eprintln!("{bug:?}: caught at seed {seed}: {failure}");
    }
}
