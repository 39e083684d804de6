//! The input-sequence checker is not blind: with a bug planted in the core, replaying the
//! committed fuzz corpus through it reports a violation; without one, none.

use pop_checker::corpus;
use pop_checker::targets::input_sequence_summary;
use pop_core::planted::{plant, Bug};

fn corpus() -> Vec<Vec<u8>> {
    corpus::inputs("corpus", "input_sequence")
        .into_iter()
        .map(|(_, data)| data)
        .collect()
}

#[test]
fn the_corpus_reaches_spawns_stops_and_requests() {
    let mut spawns = 0;
    let mut stops = 0;
    let mut requests = 0;
    for data in corpus() {
        let summary = input_sequence_summary(&data).unwrap_or_else(|v| panic!("{v}"));
        spawns += summary.spawns;
        stops += summary.stops;
        requests += summary.requests;
    }
    eprintln!("corpus: {requests} requests, {spawns} spawns, {stops} stops");
    assert!(spawns > 0 && stops > 0 && requests > 0);
}

#[test]
fn planted_bugs_are_reported() {
    let corpus = corpus();
    for bug in Bug::ALL {
        plant(Some(bug));
        let caught = corpus
            .iter()
            .find_map(|data| input_sequence_summary(data).err());
        plant(None);
        let violation = caught.unwrap_or_else(|| panic!("{bug:?}: no corpus input caught it"));
        eprintln!("{bug:?}: {violation}");
    }
}
