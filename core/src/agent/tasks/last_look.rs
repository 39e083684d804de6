//! The last look at a departed service's tasks. While a service is deployed here its
//! tasks container is read and watched; once its departure is confirmed (see
//! [`crate::agent::assignments`]) the container is read once more, without a watch, so
//! that a task issued while this agent was away (cut off, frozen, restarting) and naming
//! this machine is seen and written `skipped`. Without it such a task's result stayed
//! `pending`, and a rolling task's next machines waited for it until it expired.

use crate::agent::Agent;
use crate::paths::Watched;
use crate::zk::{RequestId, ZkError, ZkReply};
use serde::{Deserialize, Serialize};

/// Whether the agent reads a service's tasks container, and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Following {
    /// Not read (any more): what is kept of its tasks are those read before.
    #[default]
    No,
    /// The service is deployed here: read and watched.
    Deployed,
    /// It has left this machine (its departure from the index is confirmed): read once
    /// more, without a watch, by request `from` or a later one. A task issued while this
    /// agent was away (cut off, frozen, restarting) names this machine with no result of
    /// it yet: that read is its only chance to see it and write `skipped`, or a rolling
    /// task's next machines would wait for it until the task expires.
    LastLook { from: RequestId },
}

/// `following`, or the flag a snapshot from before it holds (`followed`).
pub(super) fn following_or_flag<'de, D>(deserializer: D) -> Result<Following, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Flag(bool),
        Following(Following),
    }
    Ok(match Stored::deserialize(deserializer)? {
        Stored::Flag(true) => Following::Deployed,
        Stored::Flag(false) => Following::No,
        Stored::Following(following) => following,
    })
}

impl Agent {
    /// The service's departure from this machine is confirmed: its tasks container is
    /// read once more (see [`Following::LastLook`]).
    pub(in crate::agent) fn look_at_tasks_once_more(&mut self, name: &str) {
        let from = RequestId(self.next_request);
        self.tasks
            .services
            .entry(name.to_string())
            .or_default()
            .following = Following::LastLook { from };
        self.read(Watched::Tasks(name.to_string()));
    }

    /// The service whose last look at its tasks the reply to request `id` answers.
    pub(in crate::agent) fn looking_at(&self, id: RequestId, watched: &Watched) -> Option<String> {
        let Watched::Tasks(name) = watched else {
            return None;
        };
        matches!(self.tasks.following(name), Following::LastLook { from } if id >= from)
            .then(|| name.clone())
    }

    /// The last look at the service's tasks came back (and was applied, if it was news):
    /// a list, or none (the service was removed). Another reply is not an answer: the
    /// read is sent again with the other retries.
    pub(in crate::agent) fn end_last_look(&mut self, name: &str, reply: &ZkReply) {
        let answered = matches!(
            reply,
            ZkReply::Children { .. } | ZkReply::Error(ZkError::NoNode)
        );
        let Some(st) = self.tasks.services.get_mut(name) else {
            return;
        };
        if !answered || !matches!(st.following, Following::LastLook { .. }) {
            return;
        }
        st.following = Following::No;
        // Departed now: what is done of its tasks here is dropped.
        let keys = self.tasks.of_service(name);
        self.dirty.tasks.extend(keys);
        self.drop_if_untasked(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tasks::ServiceTasks;
    use std::collections::BTreeMap;

    /// A journal rotated before `following` holds the flag it replaced.
    #[test]
    fn a_snapshot_with_the_followed_flag_is_read_as_following() {
        let parse = |text: &str| {
            serde_json::from_str::<ServiceTasks>(text)
                .map(|st| st.following)
                .expect("service tasks")
        };
        assert_eq!(
            parse(r#"{"followed":true,"tasks":{}}"#),
            Following::Deployed
        );
        assert_eq!(parse(r#"{"followed":false,"tasks":{}}"#), Following::No);
        let look = ServiceTasks {
            following: Following::LastLook { from: RequestId(7) },
            tasks: BTreeMap::new(),
        };
        let text = serde_json::to_string(&look).expect("JSON");
        assert_eq!(parse(&text), look.following);
    }
}
