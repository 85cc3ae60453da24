//! The faults, each injected once for a bounded time, and the window it
//! took: from the first action to the moment the cluster was whole again
//! (Redis answering, the restarted node ready).
//!
//! On a Redis Cluster (`--redis-cluster`) a fault that strikes "Redis"
//! strikes the primary that serves the first room's slot (`kill-pubsub`:
//! every primary), and the window ends once every instance says
//! `cluster_state:ok` and agrees on who serves that slot; `primary-kill`
//! and `reshard` exist only there.

use super::cluster::{Cluster, PROBE_TIMEOUT};
use super::oom;
use super::overload::{self, Flood, Overload};
use super::probe;
use super::redis::Topology;
use super::shared::Shared;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `CLIENT KILL TYPE pubsub`, twice, a second apart.
    KillPubsub,
    /// SIGSTOP Redis for `--hold`, then SIGCONT.
    Sigstop,
    /// SIGKILL Redis and start it again on its port.
    Restart,
    /// `maxmemory` just above `used_memory`, `noeviction`, for `--hold`.
    Oom,
    /// `DEBUG SLEEP 2`.
    DebugSleep,
    /// SIGKILL one node (not the publishers') and start it again.
    NodeKill,
    /// SIGTERM every node in turn, each restarted once it has exited.
    Rolling,
    /// A flood the last node's fan-out cannot keep up with (see [`overload`]).
    Overload,
    /// Redis Cluster: SIGKILL the primary of the first room's slot; its
    /// replica takes over.
    PrimaryKill,
    /// Redis Cluster: move the first room's slot to another primary, its
    /// keys one at a time, while traffic goes on.
    Reshard,
}

/// A fault, and whether its round's Redis persists (`+aof`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The fault.
    pub kind: Kind,
    /// Redis with `appendonly yes`, `appendfsync always` for this round.
    pub aof: bool,
    /// The flood's size (`overload` only).
    pub overload: Overload,
}

const NAMES: [(&str, Kind); 10] = [
    ("kill-pubsub", Kind::KillPubsub),
    ("sigstop", Kind::Sigstop),
    ("restart", Kind::Restart),
    ("oom", Kind::Oom),
    ("debug-sleep", Kind::DebugSleep),
    ("node-kill", Kind::NodeKill),
    ("rolling", Kind::Rolling),
    ("overload", Kind::Overload),
    ("primary-kill", Kind::PrimaryKill),
    ("reshard", Kind::Reshard),
];

impl Fault {
    /// Every fault, in table order.
    pub fn all() -> Vec<Fault> {
        NAMES
            .iter()
            .map(|&(_, kind)| Fault {
                kind,
                aof: false,
                overload: Overload::default(),
            })
            .collect()
    }

    /// Whether this fault can run on this Redis (`None`: one
    /// `redis-server`); why not, if it cannot.
    pub fn check(&self, cluster: Option<Topology>) -> Result<(), String> {
        match (self.kind, cluster) {
            (Kind::PrimaryKill, None) => Err(format!(
                "`{self}` needs --redis-cluster: a single redis-server has no replica to take \
                 over (`restart` is its nearest fault)"
            )),
            (Kind::PrimaryKill, Some(t)) if t.replicas == 0 => Err(format!(
                "`{self}` needs --replicas 1 or more: without a replica the killed primary's \
                 slots stay down"
            )),
            (Kind::Reshard, None) => Err(format!(
                "`{self}` needs --redis-cluster: a single redis-server has no slots to move"
            )),
            (Kind::Reshard, Some(t)) if t.shards < 2 => Err(format!(
                "`{self}` needs --shards 2 or more: the slot needs another primary to move to"
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES
            .iter()
            .find(|(_, k)| *k == self.kind)
            .map_or("?", |(n, _)| n);
        let size = if self.kind == Kind::Overload {
            self.overload.to_string()
        } else {
            String::new()
        };
        write!(f, "{name}{size}{}", if self.aof { "+aof" } else { "" })
    }
}

impl FromStr for Fault {
    type Err = String;

    /// `kill-pubsub`, `sigstop`, `restart`, `oom`, `debug-sleep`,
    /// `node-kill`, `rolling`, `primary-kill`, `reshard`, `overload` (with its size after colons:
    /// `overload:readers=3000:rate=2000:size=200:for=15s`, each optional),
    /// each optionally with `+aof`.
    fn from_str(s: &str) -> Result<Fault, String> {
        let (name, aof) = match s.trim().strip_suffix("+aof") {
            Some(n) => (n, true),
            None => (s.trim(), false),
        };
        let (name, size) = name.split_once(':').unwrap_or((name, ""));
        let overload = match name {
            "overload" => Overload::parse(size).map_err(|e| format!("`{s}`: {e}"))?,
            _ if !size.is_empty() => return Err(format!("`{s}`: only overload takes a size")),
            _ => Overload::default(),
        };
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, kind)| Fault {
                kind,
                aof,
                overload,
            })
            .ok_or_else(|| {
                let all: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown fault `{s}`: one of {} (optionally +aof)",
                    all.join(", ")
                )
            })
    }
}

/// When a fault ran, in µs since the round's epoch, and what it did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// First action.
    pub start_us: u64,
    /// The cluster is whole again.
    pub end_us: u64,
    /// What happened, for the JSON result.
    pub notes: Vec<String>,
    /// What the flood did (`overload` only).
    pub flood: Option<Flood>,
}

/// How long `reshard` waits between two keys it moves: long enough for
/// traffic to meet the slot half moved.
const RESHARD_PAUSE: Duration = Duration::from_millis(100);
/// How long the nodes may take to hold every shard again
/// (`banter_bus_shards_up`) once the cluster is whole.
const SHARDS_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// Injects `fault`. `victim` is the node `node-kill` kills; `clients` the
/// number of clients `rolling` waits for before each node it stops.
pub async fn inject(
    fault: Fault,
    cluster: &mut Cluster,
    shared: &Shared,
    (subscribers, publishers): (usize, usize),
    hold: Duration,
    victim: usize,
) -> anyhow::Result<Window> {
    let room = shared.rooms.first().cloned().unwrap_or_default();
    let sharded = cluster.redis().is_cluster();
    // The Redis the fault strikes: the only one, or the first room's primary.
    let (slot, port) = cluster.redis().primary_of(&room).await?;
    let mut w = Window {
        start_us: shared.now_us(),
        ..Window::default()
    };
    if sharded && fault.kind != Kind::KillPubsub {
        w.notes.push(format!(
            "the primary of {room}'s slot {slot}: 127.0.0.1:{port}"
        ));
    }
    match fault.kind {
        Kind::KillPubsub => {
            let primaries = cluster.redis().primaries().await?;
            for round in 0..2 {
                if round > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                // At once on every primary: a node that loses one shard's
                // connection drops its others itself.
                let cmd = ["CLIENT", "KILL", "TYPE", "pubsub"];
                let kills = primaries
                    .iter()
                    .map(|&p| probe::redis(p, &cmd, PROBE_TIMEOUT));
                let killed = futures_util::future::join_all(kills)
                    .await
                    .into_iter()
                    .map(|r| r.map(|k| k.text()))
                    .collect::<anyhow::Result<Vec<String>>>()?;
                w.notes.push(if sharded {
                    format!(
                        "CLIENT KILL TYPE pubsub on {} primaries: {} killed",
                        primaries.len(),
                        killed.join(" + ")
                    )
                } else {
                    format!("CLIENT KILL TYPE pubsub: {} killed", killed.join(" + "))
                });
            }
        }
        Kind::Sigstop => {
            cluster.signal_redis(port, "STOP").await?;
            tokio::time::sleep(hold).await;
            cluster.signal_redis(port, "CONT").await?;
            w.notes.push(format!("redis stopped for {hold:?}"));
        }
        Kind::Restart => {
            cluster.redis_mut().kill(port).await?;
            let killed_us = shared.now_us();
            cluster.redis_mut().restart(port).await?;
            w.notes.push(format!(
                "redis killed and answering again after {:.0} ms (persistence: {})",
                (shared.now_us() - killed_us) as f64 / 1000.0,
                if fault.aof {
                    "appendonly, fsync always"
                } else {
                    "none"
                }
            ));
        }
        Kind::Oom => w.notes.push(oom::run(port, hold).await?),
        Kind::DebugSleep => {
            let r = probe::redis(port, &["DEBUG", "SLEEP", "2"], Duration::from_secs(10)).await;
            w.notes.push(format!("DEBUG SLEEP 2: {}", r?.text()));
        }
        Kind::PrimaryKill => {
            cluster.redis_mut().kill(port).await?;
            w.notes.push("SIGKILLed (not restarted)".into());
        }
        Kind::Reshard => {
            let primaries = cluster.redis().primaries().await?;
            let to = primaries
                .iter()
                .copied()
                .find(|&p| p != port)
                .ok_or_else(|| anyhow::anyhow!("no other primary to move slot {slot} to"))?;
            let moved = cluster
                .redis()
                .move_slot(slot, (port, to), RESHARD_PAUSE)
                .await?;
            w.notes.push(format!(
                "slot {slot} moved to 127.0.0.1:{to}: {moved} key(s) MIGRATEd one at a time, \
                 {} ms apart, in {:.0} ms",
                RESHARD_PAUSE.as_millis(),
                (shared.now_us() - w.start_us) as f64 / 1000.0
            ));
        }
        Kind::NodeKill => {
            cluster.kill_node(victim).await?;
            cluster.restart_node(victim).await?;
            w.notes
                .push(format!("node {victim} killed (SIGKILL) and ready again"));
        }
        Kind::Overload => {
            let (victim_addr, home) = (shared.nodes[victim % shared.nodes.len()], 0);
            let f = overload::flood(shared, (victim, home), &room, fault.overload).await?;
            w.notes.push(format!(
                "{} readers on node {victim} (opened in {:.1} s; {} cut off by the node), \
                 {} flood messages/s of {} B into {room} from node {home} for {:.1} s: \
                 {} sent, {} acked, {} refused; the readers read {} frames",
                f.readers,
                f.open_secs,
                f.readers_cut.values().sum::<u64>(),
                f.rate,
                fault.overload.size,
                f.flood_secs,
                f.sent,
                f.acked,
                f.refused,
                f.reader_frames
            ));
            // The fault ends once the node has caught up again.
            let caught = overload::caught_up(victim_addr, Duration::from_secs(30)).await;
            if !caught {
                w.notes
                    .push("the node had not caught up 30 s after the flood".into());
            }
            w.flood = Some(f);
        }
        Kind::Rolling => {
            for i in 0..cluster.addrs().len() {
                let all = shared
                    .wait_ready(subscribers, publishers, Duration::from_secs(15))
                    .await;
                if !all {
                    w.notes.push(format!(
                        "not every client had reconnected before node {i} stopped"
                    ));
                }
                let status = cluster.term_node(i).await?;
                cluster.restart_node(i).await?;
                w.notes
                    .push(format!("node {i}: SIGTERM, exited {status}, ready again"));
            }
        }
    }
    if sharded {
        // Whole again: every instance ok, one running primary for the slot.
        let before = shared.now_us();
        let owner = cluster.redis().settle(slot).await?;
        w.notes.push(format!(
            "cluster_state ok on every instance {:.0} ms later, slot {slot} served by \
             127.0.0.1:{owner}{}",
            (shared.now_us() - before) as f64 / 1000.0,
            if owner == port {
                ""
            } else {
                " (a new primary)"
            }
        ));
        w.end_us = shared.now_us();
        let shards = cluster.redis().primaries().await?.len();
        w.notes.push(shards_up(shared, shards).await);
    } else {
        w.end_us = shared.now_us();
    }
    Ok(w)
}

/// Waits (bounded) until every node's `banter_bus_shards_up` is `shards`;
/// what it saw, for the notes.
async fn shards_up(shared: &Shared, shards: usize) -> String {
    let start = tokio::time::Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < SHARDS_UP_TIMEOUT {
        seen.clear();
        for &addr in &shared.nodes {
            let m = probe::http_get(addr, "/metrics", PROBE_TIMEOUT).await;
            seen.push(
                m.ok()
                    .and_then(|(_, text)| probe::sample(&text, "banter_bus_shards_up", None)),
            );
        }
        if seen.iter().all(|v| *v == Some(shards as f64)) {
            return format!(
                "every node's banter_bus_shards_up = {shards} {:.0} ms after that",
                start.elapsed().as_secs_f64() * 1000.0
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    format!(
        "banter_bus_shards_up not {shards} on every node within {SHARDS_UP_TIMEOUT:?}: {seen:?}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Fault::all() {
            assert_eq!(f.to_string().parse::<Fault>(), Ok(f));
        }
        let f: Fault = "restart+aof".parse().unwrap();
        assert_eq!(
            (f.kind, f.aof, f.to_string().as_str()),
            (Kind::Restart, true, "restart+aof")
        );
        assert!("explode".parse::<Fault>().is_err());
        let o: Fault = "overload:readers=10:for=2s".parse().unwrap();
        assert_eq!(
            (o.kind, o.overload.readers, o.overload.for_ms),
            (Kind::Overload, 10, 2000)
        );
        assert_eq!(o.to_string().parse::<Fault>(), Ok(o));
        assert_eq!("overload".parse::<Fault>().unwrap().to_string(), "overload");
        assert!("sigstop:readers=3".parse::<Fault>().is_err());
    }

    #[test]
    fn cluster_faults_need_a_cluster_that_can_take_them() {
        let t = |shards, replicas| {
            Some(Topology {
                shards,
                replicas,
                node_timeout: Duration::from_millis(1500),
            })
        };
        let (kill, reshard): (Fault, Fault) =
            ("primary-kill".parse().unwrap(), "reshard".parse().unwrap());
        assert!(kill.check(None).unwrap_err().contains("--redis-cluster"));
        assert!(kill.check(t(3, 0)).unwrap_err().contains("--replicas"));
        assert!(reshard.check(None).unwrap_err().contains("--redis-cluster"));
        assert!(kill.check(t(3, 1)).is_ok() && reshard.check(t(3, 0)).is_ok());
        for f in Fault::all() {
            assert!(f.check(t(3, 1)).is_ok(), "{f}");
        }
    }
}
