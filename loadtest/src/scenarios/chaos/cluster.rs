//! The cluster a chaos round owns: its Redis (one `redis-server`, or a Redis
//! Cluster: see [`super::redis`]) and N `banter-node` child processes on
//! free loopback ports, their logs in a work directory.
//! Everything is killed when the [`Cluster`] is dropped (error, Ctrl-C) and
//! stopped in order by [`Cluster::stop`]; every wait is bounded.

use super::probe::{self, NodeCounters};
use super::redis::{Redis, RedisSpec};
use anyhow::{Context, anyhow, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long a process may take to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may drain after SIGTERM (its own `drain_timeout_ms` is 10 s).
const TERM_TIMEOUT: Duration = Duration::from_secs(15);
/// Probes of `/readyz`, `/metrics` and Redis.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The `banter-node` binary.
    pub node_bin: PathBuf,
    /// The Redis (`persistence`: `appendonly yes` and `appendfsync always`,
    /// in the work dir).
    pub redis: RedisSpec,
    /// How many nodes.
    pub nodes: usize,
    /// `history.size` of the nodes (0: their default).
    pub history_size: usize,
    /// Keep the logs here (None: a temporary directory, removed at the end).
    pub logs: Option<PathBuf>,
}

#[derive(Debug)]
struct NodeProc {
    id: String,
    addr: SocketAddr,
    child: Option<Child>,
    life: u32,
    /// The counters last read from the current life.
    last: NodeCounters,
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    dir: PathBuf,
    remove_dir: bool,
    redis: Redis,
    nodes: Vec<NodeProc>,
    /// Counters of node lives that ended.
    ended: NodeCounters,
}

impl Cluster {
    /// Starts Redis and every node, and waits until each is ready.
    pub async fn start(spec: &Spec, tag: &str) -> anyhow::Result<Cluster> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let (dir, remove_dir) = match &spec.logs {
            Some(d) => (d.join(tag), false),
            None => (
                std::env::temp_dir().join(format!(
                    "banter-chaos-{}-{}-{tag}",
                    std::process::id(),
                    RUN.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // The nodes' ports, and one for a single redis-server.
        let ports = probe::free_ports(spec.nodes + 1)?;
        let redis_ports = match spec.redis.cluster {
            None => vec![ports[0]],
            Some(t) => probe::free_cluster_ports(t.instances(), &ports)?,
        };
        let nodes = (0..spec.nodes)
            .map(|i| NodeProc {
                id: format!("chaos-{}", (b'a' + (i % 26) as u8) as char),
                addr: SocketAddr::from(([127, 0, 0, 1], ports[i + 1])),
                child: None,
                life: 0,
                last: NodeCounters::default(),
            })
            .collect();
        let redis = Redis::start(&spec.redis, &dir, &redis_ports).await;
        let redis = match redis {
            Ok(r) => r,
            Err(e) => {
                if remove_dir {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(e);
            }
        };
        let mut c = Cluster {
            spec: spec.clone(),
            dir,
            remove_dir,
            redis,
            nodes,
            ended: NodeCounters::default(),
        };
        for i in 0..spec.nodes {
            c.spawn_node(i)?;
        }
        for i in 0..spec.nodes {
            c.wait_ready(i).await?;
        }
        Ok(c)
    }

    /// The nodes' WebSocket addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Node `i`'s process id, while it runs.
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref()?.id()
    }

    /// The round's Redis.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// The round's Redis, to break.
    pub fn redis_mut(&mut self) -> &mut Redis {
        &mut self.redis
    }

    /// Sends `sig` (`STOP`, `CONT`, ...) to the Redis instance on `port`.
    pub async fn signal_redis(&self, port: u16, sig: &str) -> anyhow::Result<()> {
        let pid = self.redis.pid(port);
        signal(
            pid.ok_or_else(|| anyhow!("redis-server {port} is not running"))?,
            sig,
        )
        .await
    }

    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let flag = if self.redis.is_cluster() {
            "--redis-cluster"
        } else {
            "--redis"
        };
        let redis = self.redis.seeds();
        let n = &mut self.nodes[i];
        n.life += 1;
        let log_path = self.dir.join(format!("node-{}-{}.log", n.id, n.life));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let mut cmd = Command::new(&self.spec.node_bin);
        cmd.arg(flag)
            .arg(&redis)
            .arg("--listen")
            .arg(n.addr.to_string())
            .arg("--node-id")
            .arg(&n.id)
            .env("BANTER__LIMITS__RATE_PER_SEC", "1000000")
            .env("BANTER__LIMITS__BURST", "1000000")
            .env("BANTER__PRESENCE__TTL_MS", "3000");
        if std::env::var_os("BANTER__LOG__LEVEL").is_none() {
            cmd.env("BANTER__LOG__LEVEL", "warn");
        }
        if self.spec.history_size > 0 {
            cmd.env("BANTER__HISTORY__SIZE", self.spec.history_size.to_string());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build -p banter-node`, or pass --node-bin)",
                self.spec.node_bin.display()
            )
        })?;
        n.child = Some(child);
        n.last = NodeCounters::default();
        Ok(())
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let n = &mut self.nodes[i];
            if let Some(c) = n.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let id = n.id.clone();
                bail!("node {id} exited at start ({status}):\n{}", self.log_tail());
            }
            let addr = n.addr;
            if let Ok((200, _)) = probe::http_get(addr, "/readyz", PROBE_TIMEOUT).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {addr} never became ready:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Reads node `i`'s counters (kept if it cannot answer).
    pub async fn scrape(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.child.is_none() {
            return;
        }
        if let Ok((200, text)) = probe::http_get(n.addr, "/metrics", PROBE_TIMEOUT).await {
            n.last = NodeCounters::parse(&text);
        }
    }

    /// Every node's counters over the whole round (each life's last reading).
    pub async fn counters(&mut self) -> NodeCounters {
        for i in 0..self.nodes.len() {
            self.scrape(i).await;
        }
        self.nodes
            .iter()
            .fold(self.ended, |acc, n| acc.plus(n.last))
    }

    fn end_life(&mut self, i: usize) -> Option<Child> {
        let n = &mut self.nodes[i];
        self.ended = self.ended.plus(n.last);
        n.last = NodeCounters::default();
        n.child.take()
    }

    /// SIGKILLs node `i` (after reading its counters) and waits for it to be gone.
    pub async fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.scrape(i).await;
        if let Some(c) = self.end_life(i) {
            reap(c, "banter-node").await?;
        }
        Ok(())
    }

    /// SIGTERMs node `i` and waits for it to drain and exit; its exit status.
    pub async fn term_node(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.scrape(i).await;
        let Some(mut c) = self.end_life(i) else {
            bail!("node {i} is not running");
        };
        signal(
            c.id().ok_or_else(|| anyhow!("node {i} has no pid"))?,
            "TERM",
        )
        .await?;
        match tokio::time::timeout(TERM_TIMEOUT, c.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                reap(c, "banter-node").await?;
                bail!("node {i} did not exit within {TERM_TIMEOUT:?} of SIGTERM (killed)")
            }
        }
    }

    /// Starts node `i` again on its port and waits until it is ready.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_node(i)?;
        self.wait_ready(i).await
    }

    /// Stops everything: nodes by SIGTERM (bounded), then Redis.
    pub async fn stop(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                let _ = self.term_node(i).await;
            }
        }
        self.redis.stop().await;
    }

    /// The last lines of every log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", p.display()));
            for l in &lines[lines.len().saturating_sub(12)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The work directory (logs, AOF).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // kill_on_drop: every child still held gets SIGKILL here.
        self.redis.abandon();
        for n in &mut self.nodes {
            n.child.take();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
}

/// SIGKILL and wait (bounded).
async fn reap(mut c: Child, what: &str) -> anyhow::Result<()> {
    let _ = c.start_kill();
    tokio::time::timeout(Duration::from_secs(5), c.wait())
        .await
        .map_err(|_| anyhow!("{what} did not die within 5 s of SIGKILL"))??;
    Ok(())
}

/// `kill -s SIG pid`.
async fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        quiet(Command::new("kill").args(["-s", sig, &pid.to_string()])).status(),
    )
    .await
    .map_err(|_| anyhow!("kill -s {sig} {pid} hung"))?
    .with_context(|| format!("kill -s {sig} {pid} (is procps installed?)"))?;
    anyhow::ensure!(status.success(), "kill -s {sig} {pid}: {status}");
    Ok(())
}
