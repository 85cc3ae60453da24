//! The faults, each injected once for a bounded time, and the window it
//! took: from the first action to the moment the cluster was whole again
//! (Redis answering, the restarted node ready).

use super::cluster::{Cluster, PROBE_TIMEOUT};
use super::overload::{self, Flood, Overload};
use super::probe;
use super::shared::Shared;
use anyhow::Context;
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

const NAMES: [(&str, Kind); 8] = [
    ("kill-pubsub", Kind::KillPubsub),
    ("sigstop", Kind::Sigstop),
    ("restart", Kind::Restart),
    ("oom", Kind::Oom),
    ("debug-sleep", Kind::DebugSleep),
    ("node-kill", Kind::NodeKill),
    ("rolling", Kind::Rolling),
    ("overload", Kind::Overload),
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
    /// `node-kill`, `rolling`, `overload` (with its size after colons:
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
    let port = cluster.redis_port();
    let mut w = Window {
        start_us: shared.now_us(),
        ..Window::default()
    };
    match fault.kind {
        Kind::KillPubsub => {
            for round in 0..2 {
                if round > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let killed =
                    probe::redis(port, &["CLIENT", "KILL", "TYPE", "pubsub"], PROBE_TIMEOUT)
                        .await?;
                w.notes
                    .push(format!("CLIENT KILL TYPE pubsub: {} killed", killed.text()));
            }
        }
        Kind::Sigstop => {
            cluster.signal_redis("STOP").await?;
            tokio::time::sleep(hold).await;
            cluster.signal_redis("CONT").await?;
            w.notes.push(format!("redis stopped for {hold:?}"));
        }
        Kind::Restart => {
            cluster.kill_redis().await?;
            let killed_us = shared.now_us();
            cluster.start_redis().await?;
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
        Kind::Oom => oom(port, hold, &mut w).await?,
        Kind::DebugSleep => {
            let r = probe::redis(port, &["DEBUG", "SLEEP", "2"], Duration::from_secs(10)).await;
            w.notes.push(format!("DEBUG SLEEP 2: {}", r?.text()));
        }
        Kind::NodeKill => {
            cluster.kill_node(victim).await?;
            cluster.restart_node(victim).await?;
            w.notes
                .push(format!("node {victim} killed (SIGKILL) and ready again"));
        }
        Kind::Overload => {
            let (victim_addr, home) = (shared.nodes[victim % shared.nodes.len()], 0);
            let room = shared.rooms.first().cloned().unwrap_or_default();
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
    w.end_us = shared.now_us();
    Ok(w)
}

/// How far above `used_memory` the `oom` fault sets `maxmemory`: less than
/// one trimmed stream node, so the next writes cross it.
const OOM_MARGIN: u64 = 1024;

/// A number from `INFO section`'s line `prefix...` (0 when absent).
async fn info_number(port: u16, section: &str, prefix: &str) -> anyhow::Result<u64> {
    let info = probe::redis(port, &["INFO", section], PROBE_TIMEOUT).await?;
    Ok(info
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// `maxmemory` just above what Redis uses, with `noeviction`: writes are
/// refused with OOM for `hold`, then the limit is lifted again (also when
/// setting it failed half-way). Redis's memory saws up and down (streams
/// are trimmed a node at a time, client buffers come and go), so a limit set
/// at a peak may sit above the next trough: whenever Redis has refused
/// nothing for 250 ms, the limit is cut to well below what it uses.
async fn oom(port: u16, hold: Duration, w: &mut Window) -> anyhow::Result<()> {
    let used = info_number(port, "memory", "used_memory:").await?;
    anyhow::ensure!(used > 0, "no used_memory in INFO memory");
    let limit = used + OOM_MARGIN;
    let refused_before = info_number(port, "errorstats", "errorstat_OOM:count=").await?;
    let set = async {
        let policy = ["CONFIG", "SET", "maxmemory-policy", "noeviction"];
        probe::redis(port, &policy, PROBE_TIMEOUT).await?;
        probe::redis(
            port,
            &["CONFIG", "SET", "maxmemory", &limit.to_string()],
            PROBE_TIMEOUT,
        )
        .await?;
        let until = tokio::time::Instant::now() + hold;
        let (mut seen, mut cuts) = (refused_before, 0);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = tokio::time::sleep_until(until) => break,
            }
            let refused = info_number(port, "errorstats", "errorstat_OOM:count=").await?;
            if refused == seen {
                let now = info_number(port, "memory", "used_memory:").await?;
                let cut = (now.min(limit) / 2).to_string();
                probe::redis(port, &["CONFIG", "SET", "maxmemory", &cut], PROBE_TIMEOUT).await?;
                cuts += 1;
            }
            seen = refused;
        }
        anyhow::Ok((cuts, seen - refused_before))
    }
    .await;
    let restore = probe::redis(port, &["CONFIG", "SET", "maxmemory", "0"], PROBE_TIMEOUT)
        .await
        .context("lifting maxmemory again");
    let (cuts, refused) = set?;
    restore?;
    w.notes.push(format!(
        "maxmemory {limit} (used_memory {used} + {OOM_MARGIN} B), noeviction, for {hold:?} \
         (cut to half after 250 ms with no refusal: {cuts} times); Redis refused {refused} \
         commands with OOM"
    ));
    Ok(())
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
}
