//! `chaos`: proves that no acked message is silently lost, duplicated or
//! reordered through faults. Each fault gets a round on a fresh cluster the
//! tool starts itself (one `redis-server` or, with `--redis-cluster`, a Redis
//! Cluster; `--nodes` `banter-node`s on free loopback ports): publishers on
//! the first node send open-loop, subscribers on the others read, the fault
//! strikes, clients that lose their socket reconnect and re-join with
//! `since`, and the accounting sorts every (subscriber, acked message) pair
//! into live, recovered, announced or lost.
//!
//! - [`cluster`]: the child processes, [`redis`]: the Redis ones (one
//!   server or a cluster); [`probe`]: Redis, HTTP and metrics.
//! - [`faults`]: what goes wrong; [`round`]: one round end to end;
//!   [`oom`]: Redis refusing writes; [`overload`]: the flood a node's
//!   fan-out cannot keep up with, and the watch of that node's memory.
//! - [`publisher`], [`subscriber`], [`shared`]: the clients.
//! - [`ledger`], [`order`]: the accounting, a pure function of the logs.
//! - [`table`]: the one-row-per-fault table and the report.

pub mod cluster;
pub mod faults;
pub mod ledger;
pub mod oom;
mod order;
pub mod overload;
pub mod probe;
pub mod publisher;
pub mod redis;
pub mod round;
pub mod shared;
pub mod subscriber;
mod table;

pub use faults::{Fault, Kind};
pub use round::RoundOutcome;
pub use table::{report, table};

use crate::cli::ChaosArgs;
use anyhow::{Context, anyhow};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosOutcome {
    /// Nodes per cluster.
    pub nodes: usize,
    /// Publishers (on the first node).
    pub publishers: usize,
    /// Subscribers (on the other nodes), each in every room.
    pub subscribers: usize,
    /// Rooms.
    pub rooms: usize,
    /// What Redis each round ran on.
    pub redis: String,
    /// The Redis Cluster's `cluster-node-timeout`, ms (`None`: one redis-server).
    pub node_timeout_ms: Option<u64>,
    /// Offered messages per second, all publishers.
    pub rate: f64,
    /// The node binary used.
    pub node_bin: String,
    /// One per fault, in the order asked.
    pub rounds: Vec<RoundOutcome>,
}

impl ChaosOutcome {
    /// Every round ran and found nothing silently lost, duplicated or reordered.
    pub fn clean(&self) -> bool {
        !self.rounds.is_empty() && self.rounds.iter().all(RoundOutcome::clean)
    }
}

/// `banter-node` beside this executable (or beside its parent directory:
/// a test binary lives in `target/debug/deps`), else on PATH.
pub fn default_node_bin() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("banter-node"))
            .find(|p| p.is_file())
    });
    beside.unwrap_or_else(|| PathBuf::from("banter-node"))
}

/// The longest a round may take with these flags, everything included.
fn round_budget(args: &ChaosArgs) -> Duration {
    let per_node = Duration::from_secs(60); // ready wait + drain + restart, bounded each
    // An overload round opens its readers, floods, then waits (bounded) for the node to catch up.
    let flood = args
        .faults
        .iter()
        .filter(|f| f.kind == Kind::Overload)
        .map(|f| f.overload.duration() + Duration::from_secs(90))
        .max()
        .unwrap_or_default();
    args.fault_at
        + args.duration.max(args.hold)
        + flood
        + args.after
        + args.drain
        + args.hold
        + Duration::from_secs(if args.redis_cluster { 150 } else { 90 })
        + per_node * u32::try_from(args.nodes).unwrap_or(u32::MAX)
}

/// Runs every fault's round; Ctrl-C or SIGTERM stops the run (and every
/// process it started).
pub async fn run(args: &ChaosArgs) -> anyhow::Result<ChaosOutcome> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(args.subscribers >= 1, "--subscribers must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(!args.faults.is_empty(), "--faults is empty");
    let topology = args.redis_cluster.then_some(redis::Topology {
        shards: args.shards,
        replicas: args.replicas,
        node_timeout: args.node_timeout,
    });
    if let Some(t) = topology {
        anyhow::ensure!(
            t.shards >= 3,
            "--shards must be at least 3 (redis-cli --cluster create needs 3 primaries)"
        );
    }
    for f in &args.faults {
        f.check(topology).map_err(|e| anyhow!(e))?;
    }
    let spec = cluster::Spec {
        node_bin: args.node_bin.clone().unwrap_or_else(default_node_bin),
        redis: redis::RedisSpec {
            server: args.redis_bin.clone(),
            cli: args.redis_cli.clone(),
            persistence: args.persistence,
            cluster: topology,
        },
        nodes: args.nodes,
        history_size: args.history_size,
        logs: args.logs.clone(),
    };
    anyhow::ensure!(
        spec.node_bin.components().count() == 1 || spec.node_bin.is_file(),
        "no banter-node at {} (build it with `cargo build -p banter-node`, or pass --node-bin)",
        spec.node_bin.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing a SIGTERM handler")?;
    let mut out = ChaosOutcome {
        nodes: args.nodes,
        publishers: args.publishers.max(1),
        subscribers: args.subscribers,
        rooms: args.rooms.max(1),
        redis: redis::describe(topology),
        node_timeout_ms: topology.map(|t| t.node_timeout.as_millis() as u64),
        rate: args.rate,
        node_bin: spec.node_bin.display().to_string(),
        rounds: Vec::new(),
    };
    for &fault in &args.faults {
        if !args.quiet {
            eprintln!(
                "chaos: {fault}: starting a fresh cluster of {} node(s)",
                args.nodes
            );
        }
        let budget = round_budget(args);
        let result = tokio::select! {
            r = tokio::time::timeout(budget, round::run(args, &spec, fault)) => {
                r.map_err(|_| anyhow!("the round took longer than {budget:?}")).and_then(|r| r)
            }
            _ = tokio::signal::ctrl_c() => return Err(anyhow!("interrupted (Ctrl-C): every process started was stopped")),
            _ = term.recv() => return Err(anyhow!("terminated (SIGTERM): every process started was stopped")),
        };
        let row = result.unwrap_or_else(|e| RoundOutcome {
            fault: fault.to_string(),
            persistence: spec.redis.persistence || fault.aof,
            error: Some(format!("{e:#}")),
            ..RoundOutcome::default()
        });
        if !args.quiet {
            eprintln!("chaos: {}", table::line(&row));
        }
        out.rounds.push(row);
    }
    Ok(out)
}
