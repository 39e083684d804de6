//! pop's core: a pure, sans-IO, event-driven state machine for one machine's agent.
//!
//! The one rule: after every [`Agent::handle`], drain [`Agent::poll_action`] until it is
//! empty, then wait for the next input or [`Agent::poll_timeout`]. Time, randomness (a
//! seed) and all I/O results come in as values, so the same inputs give the same actions:
//! the production driver (`pop-io`) and the simulator (`pop-sim`) run this very code.

/// `planted!(SkipStopOnUndeploy)`: whether that deliberate bug is switched on (see
/// [`planted`]). Without the `planted-bugs` feature it is `false` and names nothing, so
/// neither the switch nor the bugs' names reach the compiled code.
#[cfg(feature = "planted-bugs")]
macro_rules! planted {
    ($bug:ident) => {
        $crate::planted::active($crate::planted::Bug::$bug)
    };
}
#[cfg(not(feature = "planted-bugs"))]
macro_rules! planted {
    ($bug:ident) => {
        false
    };
}

pub mod access;
pub mod agent;
pub mod assignment;
pub mod backoff;
mod bytes;
mod describe;
pub mod digest;
pub mod environment;
pub mod event;
pub mod journal;
pub mod launch;
pub mod names;
pub mod packages;
pub mod paths;
pub mod plan;
#[cfg(feature = "planted-bugs")]
pub mod planted;
pub mod plugin;
pub mod published;
pub mod settings;
pub mod task;
pub mod time;
pub mod zk;

pub use agent::{Agent, AgentConfig, MAX_OUTSTANDING_READS};
pub use event::{Action, ExitStatus, Input, Report};
pub use time::Timestamp;
