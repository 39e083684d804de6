//! ACLs as the server checks them: each node's list, each session's authenticated ids
//! (`addAuth("digest", "user:password")` adds `digest:user:BASE64(SHA1(user:password))`),
//! and the permission each request needs, checked where the server checks it (see
//! [`ZkModel::apply`]):
//! - create: CREATE on the parent (once the parent is found); delete: DELETE on the
//!   parent, before the node is looked for;
//! - setData: WRITE on the node; getData, getChildren: READ on the node;
//! - setACL: ADMIN on the node; getACL: READ or ADMIN, and without ADMIN digest ids are
//!   shown as `user:x`;
//! - exists: nothing (the server does not check it).
//! - multi: each op as above, against the tree as the ops before it left it; a refusal
//!   is a failure like any other: the first failing op's index and NoAuth, nothing
//!   applied, no watch fired (the server marks the later ops "runtime inconsistency",
//!   which the client does not report).
//!
//! An entry grants when any of its bits is asked for and its id is `world:anyone` or one
//! of the session's ids. An empty list grants everything (the server skips the check),
//! though no client can set one. A superuser session (the server's super digest, used
//! here by tests' and the simulator's direct writes) passes every check.

use super::ZkModel;
use pop_core::digest::digest_id;
use pop_core::zk::{redacted_digest, Acl, NodeStat, Perms, SessionId, ZkError};
use std::collections::BTreeSet;

/// What a session has authenticated as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Auth {
    /// Digest ids added with `addAuth`.
    digests: BTreeSet<String>,
    /// Passes every check, as the server's super digest does.
    superuser: bool,
}

/// The client's own answer to a create with an empty ACL (it refuses to send it); what
/// production's `map_error` makes of `InvalidAcl`.
pub const INVALID_ACL: &str = "invalid acls";

impl Auth {
    pub(super) fn superuser() -> Auth {
        Auth {
            superuser: true,
            ..Auth::default()
        }
    }

    /// Whether `acl` grants any of `perms` to this session.
    pub(super) fn allows(&self, acl: &Acl, perms: Perms) -> bool {
        if self.superuser || acl.entries().is_empty() {
            return true;
        }
        acl.entries().iter().any(|e| {
            e.perms.0 & perms.0 != 0
                && match e.scheme.as_str() {
                    "world" => e.id == "anyone",
                    "digest" => self.digests.contains(&e.id),
                    _ => false,
                }
        })
    }
}

impl ZkModel {
    /// `addAuth("digest", auth)` for the session (`auth` is `user:password`). As on the
    /// server, any text authenticates: it only names an id that ACLs may or may not hold.
    pub fn add_auth(&mut self, session: SessionId, auth: &str) {
        if self.is_live(session) {
            let entry = self.auth.entry(session.0).or_default();
            entry.digests.insert(digest_id(auth));
        }
    }

    /// A session that passes every ACL check and never times out (the server's super
    /// digest): for writes made around pop, by tests and the simulator's bystanders.
    pub fn open_superuser_session(&mut self) -> SessionId {
        let session = self.open_session();
        self.auth.insert(session.0, Auth::superuser());
        session
    }

    pub(super) fn auth_of(&self, session: SessionId) -> Auth {
        self.auth.get(&session.0).cloned().unwrap_or_default()
    }

    /// Checks that `session` holds one of `perms` on the node at `path` (which exists).
    pub(super) fn check(
        &self,
        session: SessionId,
        path: &str,
        perms: Perms,
    ) -> Result<(), ZkError> {
        match self.nodes.get(path) {
            Some(n) if !self.auth_of(session).allows(&n.acl, perms) => Err(ZkError::NoAuth),
            _ => Ok(()),
        }
    }

    /// `getACL`: the node's ACL and stat as `session` may see them. Needs READ or ADMIN;
    /// without ADMIN, digest ids come back as `user:x`.
    pub fn get_acl(&self, session: SessionId, path: &str) -> Result<(Acl, NodeStat), ZkError> {
        if !self.is_live(session) {
            return Err(ZkError::SessionExpired);
        }
        let node = self.nodes.get(path).ok_or(ZkError::NoNode)?;
        let auth = self.auth_of(session);
        if !auth.allows(&node.acl, Perms::READ.and(Perms::ADMIN)) {
            return Err(ZkError::NoAuth);
        }
        if auth.allows(&node.acl, Perms::ADMIN) {
            return Ok((node.acl.clone(), node.stat()));
        }
        let shown = node
            .acl
            .entries()
            .iter()
            .fold(Acl::none(), |acl, e| match e.scheme.as_str() {
                "digest" => acl.digest(&redacted_digest(&e.id), e.perms),
                "world" => acl.anyone(e.perms),
                _ => acl,
            });
        Ok((shown, node.stat()))
    }

    /// The ACL version of the node (`setACL`'s version checks it).
    pub fn aversion(&self, path: &str) -> Option<i32> {
        self.nodes.get(path).map(|n| n.aversion)
    }
}
