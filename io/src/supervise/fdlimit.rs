//! The agent's limit on open files.
//!
//! The agent holds a few descriptors per service at times (the log a child is started
//! with, a pidfd of a leftover), and many services start at once, so the soft
//! `RLIMIT_NOFILE` (often 1024) is raised to the hard limit when the supervisor
//! starts. Services get the soft limit the agent started with back (the child sets it
//! before exec), so raising it changes nothing for them: some programs misbehave with a
//! huge soft limit (`select`, loops closing every possible descriptor).

use std::sync::OnceLock;

use tracing::{debug, warn};

/// The soft and hard limits found at start-up, whether the soft one was raised, and
/// the soft limit in force after that.
#[derive(Debug, Clone, Copy)]
struct Limits {
    original: libc::rlimit,
    raised: bool,
    in_force: u64,
}

static LIMITS: OnceLock<Option<Limits>> = OnceLock::new();

fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once per process (later calls do
/// nothing). Returns the soft limit now in force, if it can be read.
pub(crate) fn raise() -> Option<u64> {
    let limits = LIMITS.get_or_init(|| {
        let original = get()?;
        if original.rlim_cur >= original.rlim_max {
            return Some(Limits {
                original,
                raised: false,
                in_force: original.rlim_cur,
            });
        }
        let wanted = libc::rlimit {
            rlim_cur: original.rlim_max,
            rlim_max: original.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } == 0;
        if raised {
            debug!(
                from = original.rlim_cur,
                to = original.rlim_max,
                "raised the open-file limit"
            );
        } else {
            warn!(error = %std::io::Error::last_os_error(), soft = original.rlim_cur, "cannot raise the open-file limit");
        }
        let in_force = get().map_or(original.rlim_cur, |l| l.rlim_cur);
        Some(Limits {
            original,
            raised,
            in_force,
        })
    });
    limits.map(|l| l.in_force)
}

/// The limit a service's process gets before exec: the agent's original one, if the
/// agent raised its own.
pub(crate) fn for_children() -> Option<libc::rlimit> {
    LIMITS
        .get()
        .copied()
        .flatten()
        .filter(|l| l.raised)
        .map(|l| l.original)
}

/// The soft limit in force: as [`raise`] left it (asked at every spawn, so not read
/// again from the kernel each time), or as read now if it was never called.
pub(crate) fn soft() -> Option<u64> {
    match LIMITS.get() {
        Some(Some(limits)) => Some(limits.in_force),
        _ => get().map(|l| l.rlim_cur),
    }
}
