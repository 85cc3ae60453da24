//! The Redis a round owns: one `redis-server`, or a Redis Cluster of
//! `redis-server --cluster-enabled yes` instances (each primary with its
//! replicas) joined by `redis-cli --cluster create`, with a short
//! `cluster-node-timeout` so that a replica takes over within a round.
//! Every instance is a child process on a free loopback port (a cluster
//! instance's bus port, +10000, free too), killed when the [`Redis`] is
//! dropped; every wait is bounded. [`slots`]: who serves what on a cluster,
//! and moving a slot.

mod slots;

pub use slots::room_channel;

use super::probe;
use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long an instance may take to answer, and a cluster to form or settle.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Every command the tool sends an instance.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A Redis Cluster's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    /// Primaries.
    pub shards: usize,
    /// Replicas of each primary.
    pub replicas: usize,
    /// `cluster-node-timeout`: how long a primary may be unreachable before
    /// its replica takes over.
    pub node_timeout: Duration,
}

impl Topology {
    /// Instances in all.
    pub fn instances(&self) -> usize {
        self.shards * (1 + self.replicas)
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct RedisSpec {
    /// The `redis-server` binary.
    pub server: PathBuf,
    /// The `redis-cli` binary (cluster only: `--cluster create`).
    pub cli: PathBuf,
    /// `appendonly yes`, `appendfsync always` (each instance in its own dir).
    pub persistence: bool,
    /// A cluster of this shape; `None`: one `redis-server`.
    pub cluster: Option<Topology>,
}

#[derive(Debug)]
struct Instance {
    port: u16,
    child: Option<Child>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Redis {
    spec: RedisSpec,
    dir: PathBuf,
    instances: Vec<Instance>,
}

/// What runs, for reports: one `redis-server`, or the cluster's shape.
pub fn describe(cluster: Option<Topology>) -> String {
    match cluster {
        None => "one redis-server".into(),
        Some(t) => format!(
            "a Redis Cluster of {} primaries with {} replica(s) each, cluster-node-timeout {} ms",
            t.shards,
            t.replicas,
            t.node_timeout.as_millis()
        ),
    }
}

impl Redis {
    /// Starts the instances on `ports` (one, or the topology's count), in
    /// `dir`; a cluster is created and waited for until every instance says
    /// `cluster_state:ok` and every primary has its replicas online.
    pub async fn start(spec: &RedisSpec, dir: &Path, ports: &[u16]) -> anyhow::Result<Redis> {
        let want = spec.cluster.map_or(1, |t| t.instances());
        anyhow::ensure!(
            ports.len() == want,
            "{want} ports needed, {} given",
            ports.len()
        );
        let mut r = Redis {
            spec: spec.clone(),
            dir: dir.to_path_buf(),
            instances: ports
                .iter()
                .map(|&port| Instance { port, child: None })
                .collect(),
        };
        for &port in ports {
            r.spawn(port)?;
        }
        for &port in ports {
            r.wait_ping(port).await?;
        }
        if let Some(t) = spec.cluster {
            r.create(t).await?;
            r.wait_formed(t).await?;
        }
        Ok(r)
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.spec.cluster.is_some()
    }

    /// The URL(s) the nodes are given: `--redis URL`, or every instance as
    /// a seed of `--redis-cluster`.
    pub fn seeds(&self) -> String {
        self.instances
            .iter()
            .map(|i| format!("redis://127.0.0.1:{}/", i.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The only instance's port (one `redis-server`), or the first's.
    pub fn port(&self) -> u16 {
        self.instances.first().map_or(0, |i| i.port)
    }

    fn instance(&mut self, port: u16) -> anyhow::Result<&mut Instance> {
        self.instances
            .iter_mut()
            .find(|i| i.port == port)
            .ok_or_else(|| anyhow!("no redis-server of this round on port {port}"))
    }

    fn log(&self, port: u16) -> PathBuf {
        if self.is_cluster() {
            self.dir.join(format!("redis-{port}.log"))
        } else {
            self.dir.join("redis.log")
        }
    }

    fn spawn(&mut self, port: u16) -> anyhow::Result<()> {
        // A cluster instance keeps its nodes.conf (and AOF) in a dir of its own.
        let data = if self.is_cluster() {
            self.dir.join(format!("redis-{port}"))
        } else {
            self.dir.clone()
        };
        std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
        let mut cmd = Command::new(&self.spec.server);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no"])
            .args(["--save", "", "--enable-debug-command", "local"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(&data)
            .arg("--logfile")
            .arg(self.log(port));
        if self.spec.persistence {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(t) = self.spec.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args([
                    "--cluster-node-timeout",
                    &t.node_timeout.as_millis().to_string(),
                ])
                // A replica takes over however long since its primary last
                // wrote, and notices a dead primary within a second.
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--repl-ping-replica-period", "1"]);
        }
        let child = quiet(&mut cmd).spawn().with_context(|| {
            format!(
                "cannot start {} (install the Debian package redis-server, or pass --redis-bin)",
                self.spec.server.display()
            )
        })?;
        self.instance(port)?.child = Some(child);
        Ok(())
    }

    /// Waits until the instance on `port` answers `PING` (not `-LOADING`).
    async fn wait_ping(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.instance(port)?.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "redis-server on port {port} exited at start ({status}):\n{}",
                    tail(&self.log(port))
                );
            }
            let pong = probe::redis(port, &["PING"], TIMEOUT).await;
            if matches!(pong, Ok(ref r) if r.text() == "PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server on port {port} never answered PING: {pong:?}\n{}",
                    tail(&self.log(port))
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn create(&self, t: Topology) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.spec.cli);
        cmd.args(["--cluster", "create"]);
        for i in &self.instances {
            cmd.arg(format!("127.0.0.1:{}", i.port));
        }
        cmd.args([
            "--cluster-replicas",
            &t.replicas.to_string(),
            "--cluster-yes",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .map_err(|_| anyhow!("redis-cli --cluster create took over {START_TIMEOUT:?}"))?
            .with_context(|| {
                format!(
                    "cannot run {} (install the Debian package redis-tools, or pass --redis-cli)",
                    self.spec.cli.display()
                )
            })?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Every instance agrees the cluster is ok and every primary has its
    /// replicas online (so a replica can take over from the start).
    async fn wait_formed(&self, t: Topology) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut formed = self.all_ok().await;
            if formed {
                let primaries = self.primaries().await.unwrap_or_default();
                formed = primaries.len() == t.shards;
                for p in primaries {
                    let info = probe::redis(p, &["INFO", "replication"], TIMEOUT).await;
                    let online = info.map_or(0, |i| i.text().matches("state=online").count());
                    formed &= online >= t.replicas;
                }
            }
            if formed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the Redis Cluster did not form within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.instances
            .iter()
            .filter(|i| i.child.is_some())
            .map(|i| i.port)
    }

    /// Starts the instance on `port` again (its nodes.conf and AOF kept) and
    /// waits for `PING`.
    pub async fn restart(&mut self, port: u16) -> anyhow::Result<()> {
        self.spawn(port)?;
        self.wait_ping(port).await
    }

    /// SIGKILLs the instance on `port` and waits for it to be gone.
    pub async fn kill(&mut self, port: u16) -> anyhow::Result<()> {
        if let Some(mut c) = self.instance(port)?.child.take() {
            let _ = c.start_kill();
            tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .map_err(|_| anyhow!("redis-server {port} did not die within 5 s of SIGKILL"))??;
        }
        Ok(())
    }

    /// The process id of the instance on `port`, while it runs.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.instances
            .iter()
            .find(|i| i.port == port)?
            .child
            .as_ref()?
            .id()
    }

    /// Drops every child at once (kill_on_drop: SIGKILL), without waiting.
    pub fn abandon(&mut self) {
        for i in &mut self.instances {
            i.child.take();
        }
    }

    /// Kills every instance.
    pub async fn stop(&mut self) {
        let ports: Vec<u16> = self.running().collect();
        for port in ports {
            let _ = self.kill(port).await;
        }
    }
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
}

/// The last 12 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(12)..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}
