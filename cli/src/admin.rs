//! ZooKeeper access for the command-line tool: one short session, every call under a
//! timeout, errors that name the path. The reads behind `status`, `machines` and `dump`
//! are here; the commands that write are plans (`pop_core::plan`), which [`Admin::run`]
//! performs step by step with production's request mapping (`pop_io::zk::execute`).

use crate::{auth, Cli};
use anyhow::{anyhow, bail, Result};
use pop_core::access::{self, Access, Marker, Principals};
use pop_core::paths;
use pop_core::plan::{Feedback, Outcome, Plan, PlanError, Request, Step};
use pop_io::clock::SystemClock;
use pop_io::credential::Credential;
use pop_io::zk::{self as zkio, Client, ZkConfig};
use std::collections::BTreeMap;
use std::time::Duration;
use zookeeper_client as zkc;

/// How long `pop remove` and `pop init --force` wait for agents that keep publishing
/// under a service they are deleting.
pub const DELETE_PATIENCE: Duration = Duration::from_secs(30);

pub struct Admin {
    pub client: Client,
    pub hosts: String,
    timeout: Duration,
    /// What the session authenticated with, if anything.
    pub credential: Option<Credential>,
}

/// A node's data and who owns it (ephemeral nodes).
pub struct Versioned {
    pub data: Vec<u8>,
    pub ephemeral_owner: i64,
}

fn persistent() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
}

impl Admin {
    /// A session for the operator's commands, authenticated as [`auth::operator`] says.
    pub async fn for_cli(cli: &Cli) -> Result<Admin> {
        Admin::connect(crate::context::zk_config(cli)?, auth::operator(cli)?).await
    }

    /// A session to `config`'s servers, authenticated with `credential` if given.
    pub async fn connect(mut config: ZkConfig, credential: Option<Credential>) -> Result<Admin> {
        config.auth.extend(credential.clone());
        let client = zkio::connect(&config).await?;
        Ok(Admin {
            client,
            hosts: config.hosts.clone(),
            timeout: config.op_timeout,
            credential,
        })
    }

    /// An error for a request an ACL refused, naming the credential in use.
    fn refused(&self, doing: &str, path: &str) -> anyhow::Error {
        anyhow!(
            "ZooKeeper refused {doing} {path}: not authorised ({})",
            auth::described(self.credential.as_ref())
        )
    }

    /// What the namespace's marker says: `None` when there is no namespace.
    pub async fn marker(&self) -> Result<Option<Marker>> {
        match self.get(paths::POP).await? {
            None => Ok(None),
            Some(node) => Ok(Some(Marker::parse(&node.data)?)),
        }
    }

    /// The ACLs the plans of this command give what they create: open in an unsecured
    /// namespace; in a secured one the admin's and the registered machines', which only
    /// the admin may read (so this refuses anyone else, saying why).
    pub async fn access(&self) -> Result<Access> {
        let Some(Marker::Secured { admin }) = self.marker().await? else {
            return Ok(Access::Open);
        };
        let credential = match &self.credential {
            Some(c) if c.user() == admin => c,
            other => bail!(
                "the namespace at {} is secured: only its admin, {admin}, may change it ({})",
                self.hosts,
                auth::described(other.as_ref())
            ),
        };
        let names = self.children(access::REGISTRY).await.map_err(|_| {
            anyhow!(
                "ZooKeeper refused the admin's registry to {admin}: the password given is not the one of `pop init --admin-identity`"
            )
        })?;
        let mut machines = BTreeMap::new();
        for machine in names {
            let path = access::registered(&machine);
            if let Some(node) = self.get(&path).await? {
                machines.insert(machine, String::from_utf8_lossy(&node.data).into_owned());
            }
        }
        Ok(Access::Secured(Principals {
            admin: credential.digest_id(),
            machines,
        }))
    }

    async fn timed<T, E>(
        &self,
        what: &str,
        path: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>> {
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| {
            anyhow!(
                "{what} {path}: ZooKeeper at {} did not answer within {:?}",
                self.hosts,
                self.timeout
            )
        })
    }

    /// The node's data, or `None` if it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Versioned>> {
        match self
            .timed("reading", path, self.client.get_data(path))
            .await?
        {
            Ok((data, stat)) => Ok(Some(Versioned {
                data,
                ephemeral_owner: stat.ephemeral_owner,
            })),
            Err(zkc::Error::NoNode) => Ok(None),
            Err(zkc::Error::NoAuth) => Err(self.refused("reading", path)),
            Err(e) => Err(anyhow!("reading {path}: {e}")),
        }
    }

    pub async fn children(&self, path: &str) -> Result<Vec<String>> {
        match self
            .timed("listing", path, self.client.list_children(path))
            .await?
        {
            Ok(mut names) => {
                names.sort();
                Ok(names)
            }
            Err(zkc::Error::NoNode) => Ok(Vec::new()),
            Err(zkc::Error::NoAuth) => Err(self.refused("listing", path)),
            Err(e) => Err(anyhow!("listing {path}: {e}")),
        }
    }

    pub async fn exists(&self, path: &str) -> Result<bool> {
        match self
            .timed("checking", path, self.client.check_stat(path))
            .await?
        {
            Ok(stat) => Ok(stat.is_some()),
            Err(e) => Err(anyhow!("checking {path}: {e}")),
        }
    }

    /// Creates a persistent node; false if it existed already.
    pub async fn create_if_missing(&self, path: &str, data: &[u8]) -> Result<bool> {
        match self
            .timed(
                "creating",
                path,
                self.client.create(path, data, &persistent()),
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(zkc::Error::NodeExists) => Ok(false),
            Err(zkc::Error::NoAuth) => Err(self.refused("creating", path)),
            Err(e) => Err(anyhow!("creating {path}: {e}")),
        }
    }

    /// Creates the chroot of a connect string like `host:2181/pop/prod` (needed before
    /// anything can be written under it); a no-op without a chroot.
    pub async fn ensure_chroot(cli: &Cli) -> Result<()> {
        let mut config = crate::context::zk_config(cli)?;
        let Some((servers, chroot)) = cli.host.split_once('/') else {
            return Ok(());
        };
        if chroot.trim_matches('/').is_empty() {
            return Ok(());
        }
        config.hosts = servers.to_string();
        let base = Admin::connect(config, None).await?;
        let mut path = String::new();
        for part in chroot.split('/').filter(|p| !p.is_empty()) {
            path.push('/');
            path.push_str(part);
            base.create_if_missing(&path, b"").await?;
        }
        Ok(())
    }

    /// Fails with the `pop init` hint unless the namespace exists.
    pub async fn require_namespace(&self) -> Result<()> {
        if !self.exists(paths::POP).await? {
            bail!(
                "no pop namespace in ZooKeeper at {}: run `pop init` first",
                self.hosts
            );
        }
        Ok(())
    }

    /// Runs a plan to its end; an ACL's refusal names the credential in use.
    pub async fn run_plan(&self, plan: &mut dyn Plan) -> Result<Outcome> {
        match self.run(plan).await {
            Ok(outcome) => Ok(outcome),
            Err(e @ PlanError::NotAuthorised { .. }) => Err(anyhow!(
                "{e} ({})",
                auth::described(self.credential.as_ref())
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a plan to its end: reads one after another, writes and waits as it asks.
    pub async fn run(&self, plan: &mut dyn Plan) -> Result<Outcome, PlanError> {
        let clock = SystemClock::new();
        let mut feedback = Feedback::Start;
        loop {
            feedback = match plan.next(clock.now(), feedback) {
                Step::Done(result) => return result,
                Step::Do(Request::Read(ops)) => {
                    let mut replies = Vec::with_capacity(ops.len());
                    for op in &ops {
                        replies.push(zkio::execute(&self.client, op, self.timeout).await.0);
                    }
                    Feedback::Read(replies)
                }
                Step::Do(Request::Write(op)) => {
                    Feedback::Wrote(zkio::execute(&self.client, &op, self.timeout).await.0)
                }
                Step::Do(Request::Wait(until)) => {
                    tokio::time::sleep_until(clock.instant_of(until)).await;
                    Feedback::Woke
                }
            };
        }
    }
}
