//! ZooKeeper access for the command-line tool: one short session, every call under a
//! timeout, errors that name the path, and compare-and-set edits of JSON nodes.

use anyhow::{anyhow, bail, Context, Result};
use pop_core::paths;
use pop_io::zk::{self as zkio, Client, ZkConfig};
use std::time::Duration;
use zookeeper_client as zkc;

/// How often a compare-and-set edit is retried when others write concurrently.
const CAS_ATTEMPTS: usize = 100;
/// How long a subtree delete waits for agents to stop re-creating children.
const DELETE_DEADLINE: Duration = Duration::from_secs(30);

pub struct Admin {
    pub client: Client,
    pub hosts: String,
    timeout: Duration,
}

/// A node's data and the version it was read at.
pub struct Versioned {
    pub data: Vec<u8>,
    pub version: i32,
    pub ephemeral_owner: i64,
}

fn persistent() -> zkc::CreateOptions<'static> {
    zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all())
}

impl Admin {
    pub async fn connect(hosts: &str) -> Result<Admin> {
        let config = ZkConfig::new(hosts);
        let client = zkio::connect(&config).await?;
        Ok(Admin {
            client,
            hosts: hosts.to_string(),
            timeout: config.op_timeout,
        })
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
                version: stat.version,
                ephemeral_owner: stat.ephemeral_owner,
            })),
            Err(zkc::Error::NoNode) => Ok(None),
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
            Err(e) => Err(anyhow!("creating {path}: {e}")),
        }
    }

    /// Creates the chroot of a connect string like `host:2181/pop/prod` (needed before
    /// anything can be written under it); a no-op without a chroot.
    pub async fn ensure_chroot(hosts: &str) -> Result<()> {
        let Some((servers, chroot)) = hosts.split_once('/') else {
            return Ok(());
        };
        if chroot.trim_matches('/').is_empty() {
            return Ok(());
        }
        let base = Admin::connect(servers).await?;
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

    /// Deletes one node; false if it has children.
    pub async fn delete_node(&self, path: &str) -> Result<bool> {
        match self
            .timed("deleting", path, self.client.delete(path, None))
            .await?
        {
            Ok(()) | Err(zkc::Error::NoNode) => Ok(true),
            Err(zkc::Error::NotEmpty) => Ok(false),
            Err(e) => bail!("deleting {path}: {e}"),
        }
    }

    /// Deletes a subtree, children first. Nodes vanishing meanwhile are fine; children
    /// appearing meanwhile (an agent still stopping) are waited for, up to a deadline.
    pub async fn delete_tree(&self, path: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + DELETE_DEADLINE;
        let mut stack = vec![(path.to_string(), false)];
        while let Some((node, expanded)) = stack.pop() {
            if !expanded {
                stack.push((node.clone(), true));
                for child in self.children(&node).await? {
                    stack.push((format!("{node}/{child}"), false));
                }
                continue;
            }
            if !self.delete_node(&node).await? {
                if tokio::time::Instant::now() > deadline {
                    bail!("deleting {node}: children keep appearing for {DELETE_DEADLINE:?} (an agent still publishing?)");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                stack.push((node, false));
            }
        }
        Ok(())
    }

    /// Runs creates as one transaction: all or nothing.
    pub async fn create_all(&self, nodes: &[(String, Vec<u8>)]) -> Result<()> {
        let mut multi = self.client.new_multi_writer();
        for (path, data) in nodes {
            multi
                .add_create(path, data, &persistent())
                .map_err(|e| anyhow!("preparing {path}: {e}"))?;
        }
        let first = nodes.first().map(|(p, _)| p.as_str()).unwrap_or("/");
        match self.timed("creating", first, multi.commit()).await? {
            Ok(_) => Ok(()),
            Err(zkc::MultiWriteError::OperationFailed { index, source }) => {
                let path = nodes.get(index).map(|(p, _)| p.as_str()).unwrap_or("?");
                Err(anyhow!("creating {path}: {source}"))
            }
            Err(e) => Err(anyhow!("creating {first}: {e}")),
        }
    }

    /// Read-modify-write of one node, retried while someone else writes it in between.
    /// `edit` gets the current data and returns the new data, or `None` to leave it.
    pub async fn edit(
        &self,
        path: &str,
        mut edit: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<bool> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self
                .get(path)
                .await?
                .with_context(|| format!("{path} does not exist"))?;
            let Some(new) = edit(&current.data)? else {
                return Ok(false);
            };
            match self
                .timed(
                    "writing",
                    path,
                    self.client.set_data(path, &new, Some(current.version)),
                )
                .await?
            {
                Ok(_) => return Ok(true),
                Err(zkc::Error::BadVersion) => continue,
                Err(e) => bail!("writing {path}: {e}"),
            }
        }
        bail!("writing {path}: still conflicting after {CAS_ATTEMPTS} attempts")
    }
}
