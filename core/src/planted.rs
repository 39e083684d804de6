//! Bugs planted on purpose, to show the simulator's checkers catch them. Compiled in
//! only with the `planted-bugs` feature (the simulator's tests enable it); without it
//! every switch is off and costs nothing.

/// One deliberate bug per invariant the simulator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// A service undeployed from this machine keeps running.
    SkipStopOnUndeploy,
    /// After a watch fires, the re-read sets no new watch.
    ForgetToRearmWatch,
    /// After a session expiry, ephemeral nodes are believed to still exist.
    NoEphemeralsAfterExpiry,
    /// A crashed service is restarted at once, every time.
    RestartWithoutBackoff,
    /// New settings start a new generation without stopping the running one.
    SpawnBeforeStopped,
    /// Reads are sent while the session is lost instead of after it is back.
    ReadWhileDisconnected,
    /// `pop remove` deletes the service's state nodes before its machines list and
    /// settings, unregistering it while agents still run it as wanted.
    RemoveTreeFirst,
}

impl Bug {
    /// The bugs planted in the agent (the fuzz checker and the simulator catch these).
    pub const ALL: [Bug; 6] = [
        Bug::SkipStopOnUndeploy,
        Bug::ForgetToRearmWatch,
        Bug::NoEphemeralsAfterExpiry,
        Bug::RestartWithoutBackoff,
        Bug::SpawnBeforeStopped,
        Bug::ReadWhileDisconnected,
    ];
    /// The bugs planted in the operator's plans (the simulator catches these).
    pub const IN_PLANS: [Bug; 1] = [Bug::RemoveTreeFirst];
}

#[cfg(feature = "planted-bugs")]
mod switch {
    use super::Bug;
    use std::cell::Cell;

    thread_local! {
        static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
    }

    /// Plants `bug` (or none) for agents run on this thread.
    pub fn plant(bug: Option<Bug>) {
        PLANTED.with(|p| p.set(bug));
    }

    pub(crate) fn active(bug: Bug) -> bool {
        PLANTED.with(|p| p.get() == Some(bug))
    }
}

#[cfg(feature = "planted-bugs")]
pub use switch::plant;

#[cfg(feature = "planted-bugs")]
pub(crate) use switch::active;

#[cfg(not(feature = "planted-bugs"))]
pub(crate) fn active(_bug: Bug) -> bool {
    false
}
