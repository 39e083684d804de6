//! Keeping the index (`/assignments/<m>/<s>`, see [`crate::paths`]) as a machines list
//! says, in the same multi as the list's write: a plan reads what [`IndexReads`] asks
//! beside the list, and adds the ops [`IndexReads::ops`] gives to its write, so the list's
//! version check guards the entries too.

use super::engine::Got;
use super::{get, PlanError};
use crate::access::Access;
use crate::paths;
use crate::zk::{CreateMode, ZkOp};
use std::collections::BTreeSet;

/// The index nodes of one service on some machines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IndexReads {
    service: String,
    machines: Vec<String>,
}

/// What the reads found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexFound {
    root: bool,
    /// Per machine, in order: its index exists, its entry for the service exists.
    machines: Vec<(String, bool, bool)>,
}

impl IndexReads {
    pub(crate) fn new(service: &str, machines: impl IntoIterator<Item = String>) -> IndexReads {
        let machines: BTreeSet<String> = machines.into_iter().collect();
        IndexReads {
            service: service.to_string(),
            machines: machines.into_iter().collect(),
        }
    }

    pub(crate) fn machines(&self) -> &[String] {
        &self.machines
    }

    /// `/assignments`, then each machine's index and entry (nothing for no machines).
    pub(crate) fn reads(&self) -> Vec<ZkOp> {
        if self.machines.is_empty() {
            return Vec::new();
        }
        let mut reads = vec![get(paths::ASSIGNMENTS)];
        for m in &self.machines {
            reads.push(get(paths::assignments(m)));
            reads.push(get(paths::assignment(m, &self.service)));
        }
        reads
    }

    /// How many replies [`IndexReads::reads`] brings back.
    fn len(&self) -> usize {
        if self.machines.is_empty() {
            return 0;
        }
        1 + 2 * self.machines.len()
    }

    /// Takes the replies to [`IndexReads::reads`].
    pub(crate) fn found(&self, got: &[Got]) -> Result<IndexFound, PlanError> {
        if got.len() != self.len() {
            return Err(PlanError::Misfed {
                expected: "one reply per read",
                got: "another number of replies",
            });
        }
        let mut got = got.iter().map(Got::exists);
        let root = got.next().unwrap_or(false);
        let machines = self
            .machines
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    got.next().unwrap_or(false),
                    got.next().unwrap_or(false),
                )
            })
            .collect();
        Ok(IndexFound { root, machines })
    }

    /// The ops that make the entries of the read machines be what `wanted` (the list
    /// being written over `current`) says: created where it names the machine (with its
    /// index, and `/assignments`, when missing), deleted where it does not. An entry
    /// left from before (a list edited by hand) for a machine the list now adds is made
    /// again, so the machine's index changes and its agent reads the list.
    pub(crate) fn ops(
        &self,
        found: &IndexFound,
        current: &BTreeSet<String>,
        wanted: &BTreeSet<String>,
        access: &Access,
    ) -> Vec<ZkOp> {
        let create = |path: String| ZkOp::Create {
            acl: access.acl(&path, &BTreeSet::new()),
            path,
            data: Vec::new(),
            mode: CreateMode::Persistent,
        };
        let mut ops = Vec::new();
        let mut root = found.root;
        for (m, dir, entry) in &found.machines {
            match (wanted.contains(m), entry) {
                (true, false) => {
                    if !root {
                        ops.push(create(paths::ASSIGNMENTS.to_string()));
                        root = true;
                    }
                    if !dir {
                        ops.push(create(paths::assignments(m)));
                    }
                    ops.push(create(paths::assignment(m, &self.service)));
                }
                (true, true) if !current.contains(m) => {
                    let path = paths::assignment(m, &self.service);
                    ops.push(ZkOp::Delete {
                        path: path.clone(),
                        version: None,
                    });
                    ops.push(create(path));
                }
                (false, true) => ops.push(ZkOp::Delete {
                    path: paths::assignment(m, &self.service),
                    version: None,
                }),
                _ => {}
            }
        }
        ops
    }
}
