//! Bugs planted on purpose, to show the checkers catch them (the tests in
//! `sim/planted/`, crate pop-planted-tests). This module exists only with the
//! `planted-bugs` feature, which nothing but that crate enables: without it there is no
//! [`Bug`], no switch, and the call sites (`planted!(Name)` in lib.rs) are the constant
//! `false`, so no build of `pop` carries a hook. [`MARKER`] lets a string search of a
//! binary tell (tests/tests/no_planted_bugs.rs, and ./test.sh for the release `pop`).

use std::cell::Cell;

/// Declares [`Bug`] and [`Bug::ALL`] from one list, so a new bug is one line here (plus
/// its `planted!(Name)` where it bites).
macro_rules! bugs {
    ($($(#[doc = $doc:literal])+ $bug:ident,)+) => {
        /// One deliberate bug per property the checkers hold the agent to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Bug {
            $($(#[doc = $doc])+ $bug,)+
        }

        impl Bug {
            /// Every planted bug, for the tests that show each one is caught.
            pub const ALL: &'static [Bug] = &[$(Bug::$bug,)+];
        }

        /// The bugs' names in one string, kept in every binary that has the switches
        /// (see [`active`]), so that searching a binary for it tells.
        pub const MARKER: &str = concat!("pop planted bugs:", $(" ", stringify!($bug),)+ ".");
    };
}

bugs! {
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
    /// A process exit is not noted as a change of its service, which is then neither
    /// reconciled nor indexed nor published until something else touches it.
    ExitNotNoted,
    /// `pop remove` deletes the service's state nodes before its machines list and
    /// settings, unregistering it while agents still run it as wanted.
    RemoveTreeFirst,
    /// A machine of a rolling task starts it without waiting for the machine before it.
    RollingIgnoresPredecessor,
    /// A machine runs a task it finds a result placeholder for, targeted or not.
    RunsUntargeted,
    /// After a session expiry the agent forgets the task processes it runs, finds its
    /// results `running`, and starts them again.
    ForgetsTaskRunsOnNewSession,
    /// A rolling task's machine ignores the watch on the result of the machine before
    /// it, and waits forever.
    PredecessorWatchIgnored,
    /// `install` reports success while the environment holding its requirements is
    /// still being built.
    InstallSucceedsWhileBuilding,
    /// In a secured namespace the agent gives its own nodes an ACL that leaves out its
    /// own machine: its next write of one is refused.
    OwnNodesLeaveOutTheMachine,
    /// The keeper does not read a machines list again when its watch fires: an edit by
    /// hand is not indexed until the next keeper's term.
    KeeperIgnoresListChanges,
    /// The driver waits on a ZooKeeper request without its `op_timeout` bound (pop-io).
    ZkCallWithoutTimeout,
    /// The driver journals an input only after the core handled it and its effects
    /// were carried out (pop-io).
    JournalAfterAct,
    /// The driver lets a message of an older ZooKeeper session (an earlier epoch)
    /// through to the core (pop-io).
    StaleEpochAccepted,
}

impl Bug {
    /// The bugs planted in the operator's plans: only the simulator, which runs the
    /// plans, can catch these; the agent checker never sees a plan.
    pub const IN_PLANS: &'static [Bug] = &[Bug::RemoveTreeFirst];

    /// The bugs in the agent's tasks: the fuzz corpus issues no tasks (a request is
    /// written by a plan), so only the simulator, whose operators run `pop run`,
    /// catches these.
    pub const IN_TASKS: &'static [Bug] = &[
        Bug::RollingIgnoresPredecessor,
        Bug::RunsUntargeted,
        Bug::ForgetsTaskRunsOnNewSession,
        Bug::PredecessorWatchIgnored,
        Bug::InstallSucceedsWhileBuilding,
    ];

    /// The bugs in pop-io's driver loop, around the core: neither the pure simulator
    /// nor the fuzz checker runs that code; sim/madsim (pop-madsim) catches these.
    pub const IN_DRIVER: &'static [Bug] = &[
        Bug::ZkCallWithoutTimeout,
        Bug::JournalAfterAct,
        Bug::StaleEpochAccepted,
    ];

    /// Whether the pure simulator (which runs the core, not the driver) can see it.
    pub fn in_simulator(self) -> bool {
        !Self::IN_DRIVER.contains(&self)
    }

    /// Whether the bug is in the agent (the fuzz checker catches those).
    pub fn in_agent(self) -> bool {
        !Self::IN_PLANS.contains(&self) && self.in_simulator()
    }

    /// The bugs only a secured namespace shows: the fuzz corpus runs an open one and
    /// has no ACLs, so only the simulator, whose model checks ACLs, catches these.
    pub const IN_ACLS: &'static [Bug] = &[Bug::OwnNodesLeaveOutTheMachine];

    /// The bugs in the keeper's repair of the index: the checker judges one agent's
    /// actions by what it was told, not the index against the lists, so only the
    /// simulator (which checks that) catches these.
    pub const IN_KEEPER: &'static [Bug] = &[Bug::KeeperIgnoresListChanges];

    /// Whether the input-sequence checker over the fuzz corpus can see it.
    pub fn seen_by_checker(self) -> bool {
        self.in_agent()
            && !Self::IN_TASKS.contains(&self)
            && !Self::IN_ACLS.contains(&self)
            && !Self::IN_KEEPER.contains(&self)
    }
}

thread_local! {
    static PLANTED: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Plants `bug` (or none) for agents run on this thread.
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread; `planted!(Name)` expands to this.
pub fn active(bug: Bug) -> bool {
    // Without this the names would be optimised away (nothing prints a Bug in a release
    // build), and a binary with the switches would look like one without.
    std::hint::black_box(MARKER);
    PLANTED.with(|p| p.get() == Some(bug))
}
