//! What the clients of a round share: the node addresses, the clock, a
//! gauge of clients that have joined every room, and reading a node's frames
//! leniently (frames this tool does not know, such as new fields or types,
//! are skipped, never an error).

use super::ledger::Key;
use crate::conn::{self, Target, Ws};
use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long one connect + upgrade + welcome may take before the client
/// tries the next node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Shared by every client of a round.
#[derive(Debug)]
pub struct Shared {
    /// The round's clock: every time in the logs is µs since this.
    pub epoch: Instant,
    /// The nodes, in order.
    pub nodes: Vec<SocketAddr>,
    /// The rooms, by index.
    pub rooms: Vec<String>,
    /// Bench text size.
    pub size: usize,
    /// Subscribers, publishers with every room joined.
    ready: [AtomicUsize; 2],
    changed: Notify,
}

/// Which kind of client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads.
    Subscriber = 0,
    /// Writes.
    Publisher = 1,
}

impl Shared {
    /// Shared state for clients of `nodes` in `rooms`.
    pub fn new(nodes: Vec<SocketAddr>, rooms: Vec<String>, size: usize) -> Shared {
        Shared {
            epoch: Instant::now(),
            nodes,
            rooms,
            size,
            ready: [AtomicUsize::new(0), AtomicUsize::new(0)],
            changed: Notify::new(),
        }
    }

    /// µs since the epoch.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The index of room `name`.
    pub fn room(&self, name: &str) -> Option<usize> {
        self.rooms.iter().position(|r| r == name)
    }

    /// A client has joined all its rooms (`true`) or lost its socket (`false`).
    pub fn set_ready(&self, role: Role, up: bool) {
        let g = &self.ready[role as usize];
        if up {
            g.fetch_add(1, Ordering::AcqRel);
        } else {
            g.fetch_sub(1, Ordering::AcqRel);
        }
        self.changed.notify_waiters();
    }

    /// Clients of `role` ready now.
    pub fn ready(&self, role: Role) -> usize {
        self.ready[role as usize].load(Ordering::Acquire)
    }

    /// Waits until at least `subs` subscribers and `pubs` publishers are
    /// ready; false on `timeout`.
    pub async fn wait_ready(&self, subs: usize, pubs: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let all = || self.ready(Role::Subscriber) >= subs && self.ready(Role::Publisher) >= pubs;
        loop {
            let changed = self.changed.notified();
            if all() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return all();
            }
        }
    }

    /// Opens a socket to node `i`, past `welcome`.
    pub async fn connect(&self, i: usize) -> Result<Ws, String> {
        let target = Target {
            node: self.nodes[i % self.nodes.len()],
            source: Ipv4Addr::LOCALHOST,
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, conn::open(&target, "")).await {
            Ok(Ok(ws)) => Ok(ws),
            Ok(Err(e)) => Err(format!("connect: {}", e.label())),
            Err(_) => Err("connect: timeout".into()),
        }
    }
}

/// Waits before reconnect attempt `failures` (0: at once, then 50 ms
/// doubling to 800 ms); false when `stop` fired meanwhile.
pub async fn backoff(failures: u32, stop: &CancellationToken) -> bool {
    if failures == 0 {
        return !stop.is_cancelled();
    }
    let ms = 50u64 << failures.min(5).saturating_sub(1);
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(Duration::from_millis(ms)) => true,
    }
}

/// A message inside a `joined` history.
#[derive(Debug, Deserialize)]
pub struct HistoryItem {
    /// Opaque id.
    #[serde(default)]
    pub id: serde_json::Value,
    /// The text.
    #[serde(default)]
    pub text: String,
}

/// Any frame a node sends, with only the fields this tool reads.
#[derive(Debug, Deserialize)]
pub struct Incoming {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `room`, when the frame has one.
    #[serde(default)]
    pub room: Option<String>,
    /// `id` (message, ack): opaque.
    #[serde(default)]
    pub id: serde_json::Value,
    /// `text` (message).
    #[serde(default)]
    pub text: Option<String>,
    /// `history` (joined).
    #[serde(default)]
    pub history: Vec<HistoryItem>,
    /// `recovered` (joined).
    #[serde(default)]
    pub recovered: bool,
    /// `code` (error).
    #[serde(default)]
    pub code: Option<String>,
    /// `ref` (ack, error).
    #[serde(default, rename = "ref")]
    pub reference: Option<serde_json::Value>,
}

impl Incoming {
    /// Parses a frame; `None` for presence and typing (skipped unparsed) and
    /// for anything that is not a JSON object with a `type`.
    pub fn parse(frame: &str) -> Option<Incoming> {
        if frame.starts_with(r#"{"type":"presence""#) || frame.starts_with(r#"{"type":"typing""#) {
            return None;
        }
        serde_json::from_str(frame).ok()
    }

    /// The numeric `ref`.
    pub fn reference(&self) -> Option<u64> {
        self.reference.as_ref().and_then(serde_json::Value::as_u64)
    }
}

/// The (publisher, seq) of a bench text `P:S:T:xxx` (see `wire`), or `None`.
pub fn stamp_key(text: &str) -> Option<Key> {
    let mut parts = text.splitn(4, ':');
    let p = parts.next()?.parse().ok()?;
    let s = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    Some((p, s))
}

/// An opaque id as a short string, for reports.
pub fn id_text(id: &serde_json::Value) -> String {
    match id {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Stamp, encode_text};

    #[test]
    fn bench_texts_give_their_key() {
        let t = encode_text(
            Stamp {
                publisher: 2,
                seq: 77,
                t_us: 123,
            },
            64,
        );
        assert_eq!(stamp_key(&t), Some((2, 77)));
        assert_eq!(stamp_key("hello"), None);
        assert_eq!(stamp_key("1:2"), None);
    }

    #[test]
    fn unknown_frames_and_fields_are_read_leniently() {
        let g = Incoming::parse(r#"{"type":"gap","room":"r","epoch":3,"from":"x"}"#).unwrap();
        assert_eq!((g.kind.as_str(), g.room.as_deref()), ("gap", Some("r")));
        let a = Incoming::parse(r#"{"type":"ack","ref":4,"id":{"e":1,"s":"2-0"}}"#).unwrap();
        assert_eq!(a.reference(), Some(4));
        assert_eq!(id_text(&a.id), r#"{"e":1,"s":"2-0"}"#);
        assert!(Incoming::parse(r#"{"type":"presence","room":"r"}"#).is_none());
        assert!(Incoming::parse("nope").is_none());
    }
}
