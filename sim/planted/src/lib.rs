//! Tests that plant a deliberate bug in pop's core (`pop_core::planted`) and show that a
//! checker reports it: the input-sequence checker over the committed fuzz corpus
//! (`tests/checker_catches.rs`) and the simulator's chaos runner (`tests/chaos.rs`).
//! A checker that cannot fail proves nothing; these show each one can.
//!
//! This crate is the only one that enables pop-core's `planted-bugs` feature, and it is
//! not a default member of the workspace, so no other build carries the switches.

use pop_core::planted::{plant, Bug};

/// Runs `check` with `bug` planted on this thread, and unplants it afterwards, even when
/// `check` panics.
pub fn with_planted<T>(bug: Bug, check: impl FnOnce() -> T) -> T {
    struct Unplant;
    impl Drop for Unplant {
        fn drop(&mut self) {
            plant(None);
        }
    }
    plant(Some(bug));
    let _unplant = Unplant;
    check()
}
