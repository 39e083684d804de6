//! pop's core: a pure, sans-IO, event-driven state machine for one machine's agent.
//!
//! The one rule: after every [`Agent::handle`], drain [`Agent::poll_action`] until it is
//! empty, then wait for the next input or [`Agent::poll_timeout`]. Time, randomness (a
//! seed) and all I/O results come in as values, so the same inputs give the same actions:
//! the production driver (`pop-io`) and the simulator (`pop-sim`) run this very code.

pub mod agent;
pub mod assignment;
pub mod backoff;
mod bytes;
mod describe;
pub mod event;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod journal;
pub mod launch;
pub mod names;
pub mod paths;
pub mod plan;
pub mod planted;
pub mod published;
pub mod settings;
pub mod time;
pub mod zk;

pub use agent::{Agent, AgentConfig};
pub use event::{Action, ExitStatus, Input, Report};
pub use time::Timestamp;
