//! The input-sequence checker is not blind: with a bug planted in the core, replaying the
//! committed fuzz corpus through it reports a violation (and, in pop-core's own tests,
//! without one it reports none).

use pop_checker::corpus;
use pop_checker::targets::input_sequence_summary;
use pop_core::planted::Bug;
use pop_planted_tests::with_planted;

#[test]
fn planted_bugs_are_reported() {
    let corpus: Vec<Vec<u8>> = corpus::inputs("corpus", "input_sequence")
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    assert!(!corpus.is_empty(), "no committed input_sequence corpus");
    // The checker runs the agent alone: bugs in the operator's plans are the simulator's.
    // Nor does it issue tasks: the bugs in the agent's tasks are the simulator's too.
    for &bug in Bug::ALL.iter().filter(|b| b.seen_by_checker()) {
        let caught = with_planted(bug, || {
            corpus
                .iter()
                .find_map(|data| input_sequence_summary(data).err())
        });
        let violation = caught.unwrap_or_else(|| panic!("{bug:?}: no corpus input caught it"));
        eprintln!("{bug:?}: {violation}");
    }
}
