//! Who serves what on a Redis Cluster, as Redis says (`CLUSTER KEYSLOT`,
//! `CLUSTER NODES`) rather than as this tool would compute it: the
//! primaries, the primary of a room's slot (where the faults strike), the
//! wait for a cluster to be whole again after a fault, a slot moved between
//! primaries, and what a room's history holds.

use super::{Redis, START_TIMEOUT, TIMEOUT};
use crate::scenarios::chaos::probe::{self, Reply};
use anyhow::{anyhow, bail};
use std::time::{Duration, Instant};

/// `MIGRATE`'s own timeout, ms.
const MIGRATE_TIMEOUT_MS: &str = "5000";

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeLine {
    port: u16,
    flags: Vec<String>,
    /// Slot ranges it serves (importing and migrating marks left out).
    slots: Vec<(u16, u16)>,
}

impl NodeLine {
    fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <primary>
/// <ping-sent> <pong-recv> <epoch> <link> <slot|lo-hi|[..]>...`.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.get(1)?.split(['@', ',']).next()?.rsplit(':').next()?;
            Some(NodeLine {
                port: port.parse().ok()?,
                flags: f.get(2)?.split(',').map(str::to_string).collect(),
                slots: f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                        None => s.parse().ok().map(|v| (v, v)),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The channel of room `room` in cluster mode, as the nodes name it with
/// the default `redis.key_prefix`: the room in a hash tag.
pub fn room_channel(room: &str) -> String {
    format!("banter:room:{{{room}}}")
}

impl Redis {
    /// Every running instance says `cluster_state:ok`.
    pub(super) async fn all_ok(&self) -> bool {
        for port in self.running() {
            let info = probe::redis(port, &["CLUSTER", "INFO"], TIMEOUT).await;
            if !info.is_ok_and(|i| i.text().contains("cluster_state:ok")) {
                return false;
            }
        }
        true
    }

    /// A command on the first running instance that answers it.
    async fn ask(&self, args: &[&str]) -> anyhow::Result<Reply> {
        let mut last = anyhow!("no redis-server is running");
        for port in self.running() {
            match probe::redis(port, args, TIMEOUT).await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn nodes(&self) -> anyhow::Result<Vec<NodeLine>> {
        Ok(parse_nodes(&self.ask(&["CLUSTER", "NODES"]).await?.text()))
    }

    /// The ports of the primaries that serve slots now (the one instance of
    /// a single `redis-server`).
    pub async fn primaries(&self) -> anyhow::Result<Vec<u16>> {
        if !self.is_cluster() {
            return Ok(vec![self.port()]);
        }
        let mut out: Vec<u16> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The slot of `room`'s channel and the port of the primary serving it
    /// (slot 0 and the only instance for a single `redis-server`).
    pub async fn primary_of(&self, room: &str) -> anyhow::Result<(u16, u16)> {
        if !self.is_cluster() {
            return Ok((0, self.port()));
        }
        let channel = room_channel(room);
        let slot = match self.ask(&["CLUSTER", "KEYSLOT", &channel]).await? {
            Reply::Int(s) => u16::try_from(s)?,
            other => bail!("CLUSTER KEYSLOT {channel}: {other:?}"),
        };
        Ok((slot, self.owner(slot).await?))
    }

    async fn owner(&self, slot: u16) -> anyhow::Result<u16> {
        self.nodes()
            .await?
            .into_iter()
            .find(|n| n.is_primary() && n.serves(slot))
            .map(|n| n.port)
            .ok_or_else(|| anyhow!("no primary serves slot {slot}"))
    }

    /// Waits until the cluster is whole again: every running instance says
    /// `cluster_state:ok` and names the same running primary for `slot`;
    /// that primary's port. A single `redis-server`: its port at once.
    pub async fn settle(&self, slot: u16) -> anyhow::Result<u16> {
        if !self.is_cluster() {
            return Ok(self.port());
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.all_ok().await {
                let mut owners = Vec::new();
                for port in self.running() {
                    let text = probe::redis(port, &["CLUSTER", "NODES"], TIMEOUT).await;
                    let owner = text.ok().and_then(|t| {
                        parse_nodes(&t.text())
                            .into_iter()
                            .find(|n| n.is_primary() && n.serves(slot))
                            .map(|n| n.port)
                    });
                    owners.push(owner);
                }
                if let Some(Some(owner)) = owners.first().copied()
                    && owners.iter().all(|o| *o == Some(owner))
                    && self.running().any(|p| p == owner)
                {
                    return Ok(owner);
                }
            }
            if Instant::now() > deadline {
                let nodes = self.ask(&["CLUSTER", "NODES"]).await.map(|r| r.text());
                bail!(
                    "the Redis Cluster was not whole again within {START_TIMEOUT:?}:\n{}",
                    nodes.unwrap_or_else(|e| format!("{e:#}"))
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The texts of every message the room's history (its stream) holds
    /// now, oldest first: what a node could still repair from.
    pub async fn history_texts(&self, room: &str) -> anyhow::Result<Vec<String>> {
        let key = if self.is_cluster() {
            format!("banter:history:{{{room}}}")
        } else {
            format!("banter:history:{room}")
        };
        let (_, port) = self.primary_of(room).await?;
        let entries = probe::redis(port, &["XRANGE", &key, "-", "+"], TIMEOUT).await?;
        let Reply::Array(entries) = entries else {
            bail!("XRANGE {key}: {entries:?}");
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            // [id, [field, value, ...]]; the record is the JSON in field `m`.
            let Reply::Array(e) = e else { continue };
            let Some(Reply::Array(fields)) = e.get(1) else {
                continue;
            };
            for pair in fields.chunks(2) {
                if let [name, value] = pair
                    && name.text() == "m"
                    && let Ok(record) = serde_json::from_str::<serde_json::Value>(&value.text())
                    && let Some(text) = record.get("text").and_then(|t| t.as_str())
                {
                    out.push(text.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Moves `slot` from the primary on `from` to the one on `to` while
    /// traffic goes on, as `redis-cli --cluster reshard` does for each slot:
    /// `IMPORTING` on the target, `MIGRATING` on the source, the slot's keys
    /// `MIGRATE`d one at a time with `pause` between them (clients meanwhile
    /// get `ASK` and `TRYAGAIN`), then `SETSLOT NODE` on the target, the
    /// source, and the other primaries. The number of keys moved.
    pub async fn move_slot(
        &self,
        slot: u16,
        (from, to): (u16, u16),
        pause: Duration,
    ) -> anyhow::Result<usize> {
        let id = |port: u16| async move {
            probe::redis(port, &["CLUSTER", "MYID"], TIMEOUT)
                .await
                .map(|r| r.text())
        };
        let (from_id, to_id) = (id(from).await?, id(to).await?);
        let s = slot.to_string();
        probe::redis(
            to,
            &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id],
            TIMEOUT,
        )
        .await?;
        probe::redis(
            from,
            &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id],
            TIMEOUT,
        )
        .await?;
        let port = to.to_string();
        let mut moved = 0;
        loop {
            let keys = probe::redis(from, &["CLUSTER", "GETKEYSINSLOT", &s, "1"], TIMEOUT).await?;
            let Reply::Array(keys) = keys else {
                bail!("CLUSTER GETKEYSINSLOT {s}: {keys:?}");
            };
            let Some(key) = keys.first().map(Reply::text) else {
                break;
            };
            let migrate = [
                "MIGRATE",
                "127.0.0.1",
                &port,
                "",
                "0",
                MIGRATE_TIMEOUT_MS,
                "KEYS",
                &key,
            ];
            probe::redis(from, &migrate, Duration::from_secs(10)).await?;
            moved += 1;
            tokio::time::sleep(pause).await;
        }
        for p in [to, from] {
            probe::redis(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id], TIMEOUT).await?;
        }
        for p in self.primaries().await? {
            if p != to && p != from {
                probe::redis(p, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id], TIMEOUT).await?;
            }
        }
        Ok(moved)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002,host master - 0 1426238316232 2 connected 5461-10922 [10923->-292f]
292f 127.0.0.1:30003@40003 myself,master - 0 0 3 connected 10923-16383 42
e7d1 127.0.0.1:30001@40001 master,fail - 1426238316232 0 1 disconnected
";
        let n = parse_nodes(text);
        assert_eq!(n.len(), 4);
        assert_eq!((n[0].port, n[0].is_primary()), (30004, false));
        assert_eq!(n[1].slots, vec![(5461, 10922)]);
        assert!(n[2].serves(42) && n[2].serves(16383) && !n[2].serves(5461));
        assert!(n[3].is_primary() && n[3].slots.is_empty());
        assert_eq!(room_channel("lobby"), "banter:room:{lobby}");
    }
}
