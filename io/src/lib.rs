//! pop's production drivers: the ZooKeeper client, process supervision and the tokio
//! event loop that feeds `pop_core::Agent` and carries out its actions.
//!
//! Built with `--cfg madsim` (sim/madsim), only the event loop, its ports, the clock and
//! the journal writer are compiled, over madsim's simulated tokio: everything that
//! touches the real machine is left out, so a simulation cannot reach it by mistake.

/// `planted!(ZkCallWithoutTimeout)`: whether that deliberate driver bug is switched on
/// (pop-core's `planted` list; only sim/madsim, pop-madsim, enables the `planted-bugs`
/// feature). Without it the constant `false`, as in pop-core.
#[cfg(feature = "planted-bugs")]
macro_rules! planted {
    ($bug:ident) => {
        pop_core::planted::active(pop_core::planted::Bug::$bug)
    };
}
#[cfg(not(feature = "planted-bugs"))]
macro_rules! planted {
    ($bug:ident) => {
        false
    };
}

pub mod clock;
pub mod driver;
pub mod journal;

#[cfg(not(madsim))]
pub mod credential;
#[cfg(not(madsim))]
pub mod environment;
#[cfg(not(madsim))]
pub mod machine_id;
#[cfg(not(madsim))]
pub mod state_dir;
#[cfg(not(madsim))]
pub mod supervise;
#[cfg(not(madsim))]
pub mod tasks;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod zk;
