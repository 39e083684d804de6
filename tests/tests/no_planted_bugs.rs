//! The `pop` the end-to-end tests run is the product, without pop-core's planted-bug
//! switches. They are compiled in only when a cargo command selects pop-planted-tests
//! (e.g. `cargo test --workspace`), which unifies its `planted-bugs` feature into every
//! crate built with it; ./test.sh checks the release `pop` for the same marker.

use pop_tests::pop_exe;

/// The start of `pop_core::planted::MARKER`, which names every bug and is in any binary
/// with the switches.
const MARKER: &[u8] = b"pop planted bugs:";

#[test]
fn the_pop_under_test_has_no_planted_bugs() {
    let pop = pop_exe();
    let binary = std::fs::read(&pop).expect("read the pop-under-test binary");
    if let Some(at) = binary.windows(MARKER.len()).position(|w| w == MARKER) {
        let names: String = binary[at..]
            .iter()
            .take(400)
            .take_while(|b| **b != b'.')
            .map(|b| char::from(*b))
            .collect();
        panic!(
            "{} has pop-core's planted-bug switches ({names}): a cargo command that selects \
             pop-planted-tests (e.g. --workspace) builds pop-core with `planted-bugs` for \
             everything; run `cargo test` and `cargo test -p pop-planted-tests` apart",
            pop.display()
        );
    }
}
