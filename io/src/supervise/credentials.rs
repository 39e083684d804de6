//! Whom a process runs as: a service's `user` and `group` settings resolved against the
//! machine's user database when it is launched. Resolved here, before the child is
//! created, because the child may only make system calls (see `spawn`); the child then
//! sets the groups, the gid and the uid, in that order, and `no_new_privs`.

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{getgrouplist, Gid, Group, Uid, User};
use pop_core::settings::{Account, RunAs};

/// What the child switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups: the user's (as `initgroups` would set them), with `gid`.
    pub groups: Vec<libc::gid_t>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("setting \"user\" needs the agent to run as root (it runs as uid {uid})")]
    NotRoot { uid: u32 },
    #[error("setting \"user\": no user {0:?} on this machine")]
    NoSuchUser(String),
    #[error("setting \"group\": no group {0:?} on this machine")]
    NoSuchGroup(String),
    #[error(
        "setting \"user\": user id {0} is not in this machine's user database, so it has no \
         group: set \"group\" as well"
    )]
    UidWithoutGroup(u32),
    #[error("cannot look up {what}: {source}")]
    Lookup {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot give {path} to user {uid}: {source}")]
    Chown {
        path: String,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
}

fn lookup(what: impl Into<String>) -> impl FnOnce(nix::Error) -> CredentialsError {
    let what = what.into();
    move |source| CredentialsError::Lookup { what, source }
}

/// Resolves `run_as` for the agent, which must be root to switch to it.
pub(crate) fn resolve(run_as: &RunAs) -> Result<Credentials, CredentialsError> {
    let me = Uid::effective();
    if !me.is_root() {
        return Err(CredentialsError::NotRoot { uid: me.as_raw() });
    }
    // The user's name (for its groups) and primary group, when the database knows it.
    let (uid, known) = match &run_as.user {
        Account::Name(name) => {
            let user = User::from_name(name)
                .map_err(lookup(format!("user {name:?}")))?
                .ok_or_else(|| CredentialsError::NoSuchUser(name.clone()))?;
            (user.uid.as_raw(), Some((user.name, user.gid)))
        }
        Account::Id(id) => {
            let user = User::from_uid(Uid::from_raw(*id)).map_err(lookup(format!("uid {id}")))?;
            (*id, user.map(|u| (u.name, u.gid)))
        }
    };
    let gid = match (&run_as.group, &known) {
        (Some(Account::Id(id)), _) => *id,
        (Some(Account::Name(name)), _) => Group::from_name(name)
            .map_err(lookup(format!("group {name:?}")))?
            .ok_or_else(|| CredentialsError::NoSuchGroup(name.clone()))?
            .gid
            .as_raw(),
        (None, Some((_, primary))) => primary.as_raw(),
        (None, None) => return Err(CredentialsError::UidWithoutGroup(uid)),
    };
    let groups = match known {
        Some((name, _)) => {
            let cname = CString::new(name.clone())
                .map_err(|_| lookup(format!("the groups of {name:?}"))(nix::Error::EINVAL))?;
            getgrouplist(&cname, Gid::from_raw(gid))
                .map_err(lookup(format!("the groups of {name:?}")))?
                .into_iter()
                .map(Gid::as_raw)
                .collect()
        }
        None => vec![gid],
    };
    Ok(Credentials { uid, gid, groups })
}

/// Makes what the process needs of the state directory usable by its user: its working
/// directory becomes the user's, and the state directory (0700) may be passed through
/// by others (0711, never listed) so the user reaches its working directory and Python
/// environment. Files in it that hold settings or credentials stay 0600.
pub(crate) fn prepare(
    credentials: &Credentials,
    cwd: Option<&Path>,
    state_dir: &Path,
) -> Result<(), CredentialsError> {
    if let Some(cwd) = cwd {
        std::os::unix::fs::chown(cwd, Some(credentials.uid), Some(credentials.gid)).map_err(
            |source| CredentialsError::Chown {
                path: cwd.display().to_string(),
                uid: credentials.uid,
                source,
            },
        )?;
    }
    if credentials.uid != Uid::effective().as_raw() {
        if let Err(e) = crate::state_dir::let_others_through(state_dir) {
            tracing::warn!(
                "cannot let user {} through {}: {e}",
                credentials.uid,
                state_dir.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_as(user: Account, group: Option<Account>) -> RunAs {
        RunAs { user, group }
    }

    /// The agent runs as root in CI, as these lookups need.
    #[test]
    fn names_and_ids_resolve_against_the_user_database() {
        assert!(Uid::effective().is_root(), "run as root (as CI does)");
        let nobody = User::from_name("nobody")
            .expect("lookup")
            .expect("a user nobody");
        let c = resolve(&run_as(Account::Name("nobody".into()), None)).expect("resolves");
        assert_eq!((c.uid, c.gid), (nobody.uid.as_raw(), nobody.gid.as_raw()));
        assert!(c.groups.contains(&c.gid), "{c:?}");
        // An id the database knows is the same user; `group` overrides the primary.
        let by_id = resolve(&run_as(Account::Id(nobody.uid.as_raw()), None)).expect("resolves");
        assert_eq!(by_id, c);
        let root_group = resolve(&run_as(
            Account::Name("nobody".into()),
            Some(Account::Id(0)),
        ))
        .expect("resolves");
        assert_eq!(root_group.gid, 0);
        assert!(root_group.groups.contains(&0));
        // An id it does not know needs a group; with one, that is its only group.
        let unknown = 4_000_000_007;
        let err = resolve(&run_as(Account::Id(unknown), None)).expect_err("no group");
        assert!(matches!(err, CredentialsError::UidWithoutGroup(id) if id == unknown));
        let c = resolve(&run_as(Account::Id(unknown), Some(Account::Id(7)))).expect("resolves");
        assert_eq!((c.uid, c.gid, c.groups), (unknown, 7, vec![7]));
        let err = resolve(&run_as(
            Account::Name("nobody".into()),
            Some(Account::Name("no-such-group-x".into())),
        ))
        .expect_err("no such group");
        assert_eq!(
            err.to_string(),
            "setting \"group\": no group \"no-such-group-x\" on this machine"
        );
    }
}
