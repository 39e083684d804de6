//! Replays every committed fuzz input (`fuzz/corpus/<target>`) and every crash the
//! fuzzer found (`fuzz/regressions/<target>`) through the target bodies, on stable Rust.
//! With a bug planted, the same corpus is caught (sim/planted, `checker_catches`).

use pop_checker::corpus;
use pop_checker::targets::{input_sequence_summary, TARGETS};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn every_committed_fuzz_input_passes() {
    let mut failures = Vec::new();
    for (target, body) in TARGETS {
        let corpus = corpus::inputs("corpus", target);
        assert!(
            corpus.len() >= 10,
            "fuzz/corpus/{target} has {} inputs; run the fuzzer and `cargo fuzz cmin {target}`",
            corpus.len()
        );
        let regressions = corpus::inputs("regressions", target);
        for (file, data) in corpus.iter().chain(&regressions) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {message}", file.display()));
            }
        }
        eprintln!(
            "{target}: {} corpus inputs, {} regressions",
            corpus.len(),
            regressions.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The corpus gets deep enough for the checks to matter: it spawns, stops and requests.
#[test]
fn the_corpus_reaches_spawns_stops_and_requests() {
    let mut spawns = 0;
    let mut stops = 0;
    let mut requests = 0;
    for (_, data) in corpus::inputs("corpus", "input_sequence") {
        let summary = input_sequence_summary(&data).unwrap_or_else(|v| panic!("{v}"));
        spawns += summary.spawns;
        stops += summary.stops;
        requests += summary.requests;
    }
    eprintln!("corpus: {requests} requests, {spawns} spawns, {stops} stops");
    assert!(spawns > 0 && stops > 0 && requests > 0);
}
