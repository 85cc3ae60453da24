//! A subscriber: joins every room, logs each `joined` (and its history),
//! each bench message and each `gap` with the time it was read, and when its
//! socket ends for any reason (close 1001, EOF, error, a refused join)
//! reconnects to the next node and re-joins every room with `since` = the
//! last id it read there. Ids are opaque: kept as the node sent them.

use super::ledger::{Event, Key, Via};
use super::shared::{Incoming, Role, Shared, backoff, stamp_key};
use crate::conn::Ws;
use crate::report::{Counts, bump};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// What one subscriber read, shared with the round for the drain check.
#[derive(Debug, Default)]
pub struct SubLog {
    /// Everything, in reading order.
    pub events: Vec<Event>,
    /// Distinct messages read, per room.
    pub read: Vec<HashSet<Key>>,
    /// Sessions that joined every room.
    pub sessions: u64,
    /// Why sessions ended, by reason.
    pub ends: Counts,
}

/// A subscriber's log behind its lock.
pub type SharedSubLog = Arc<Mutex<SubLog>>;

/// Locks a log (a poisoned lock still holds good data).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a subscriber from node `home` until `stop`.
pub async fn run(home: usize, shared: Arc<Shared>, log: SharedSubLog, stop: CancellationToken) {
    lock(&log).read = vec![HashSet::new(); shared.rooms.len()];
    let mut last: Vec<Option<serde_json::Value>> = vec![None; shared.rooms.len()];
    let mut node = home;
    let mut failures = 0;
    loop {
        if !backoff(failures, &stop).await {
            return;
        }
        let ended = tokio::select! {
            () = stop.cancelled() => return,
            e = session(node, &shared, &log, &mut last) => e,
        };
        let (reason, joined) = ended;
        bump(&mut lock(&log).ends, reason);
        failures = if joined { 0 } else { failures + 1 };
        // Its node may be down: the next one.
        node = (node + 1) % shared.nodes.len();
    }
}

/// One socket's life: (why it ended, whether it had joined every room).
async fn session(
    node: usize,
    shared: &Shared,
    log: &SharedSubLog,
    last: &mut [Option<serde_json::Value>],
) -> (String, bool) {
    let mut ws = match shared.connect(node).await {
        Ok(ws) => ws,
        Err(e) => return (e, false),
    };
    let mut since_sent = vec![false; shared.rooms.len()];
    for (r, room) in shared.rooms.iter().enumerate() {
        let mut join = serde_json::json!({"type": "join", "room": room});
        if let Some(id) = &last[r] {
            join["since"] = id.clone();
            since_sent[r] = true;
        }
        if let Err(e) = ws.send(WsMessage::text(join.to_string())).await {
            return (format!("write: {e}"), false);
        }
    }
    let mut pending = shared.rooms.len();
    let reason = read_loop(&mut ws, shared, log, last, &since_sent, &mut pending).await;
    let joined = pending == 0;
    if joined {
        shared.set_ready(Role::Subscriber, false);
    }
    (reason, joined)
}

async fn read_loop(
    ws: &mut Ws,
    shared: &Shared,
    log: &SharedSubLog,
    last: &mut [Option<serde_json::Value>],
    since_sent: &[bool],
    pending: &mut usize,
) -> String {
    loop {
        let text = match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(c))) => {
                return c.map_or("close (no code)".into(), |c| format!("close {}", c.code));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return format!("socket error: {e}"),
            None => return "eof".into(),
        };
        let at_us = shared.now_us();
        let Some(f) = Incoming::parse(&text) else {
            continue;
        };
        let room = f.room.as_deref().and_then(|r| shared.room(r));
        match (f.kind.as_str(), room) {
            ("message", Some(r)) => {
                let mut l = lock(log);
                if let Some(key) = f.text.as_deref().and_then(stamp_key) {
                    l.events.push(Event::Receipt {
                        room: r,
                        at_us,
                        key,
                        via: Via::Live,
                    });
                    l.read[r].insert(key);
                }
                if !f.id.is_null() {
                    last[r] = Some(f.id);
                }
            }
            ("joined", Some(r)) => {
                let mut l = lock(log);
                l.events.push(Event::Joined {
                    room: r,
                    at_us,
                    since: since_sent[r],
                    recovered: f.recovered,
                });
                for h in f.history {
                    if let Some(key) = stamp_key(&h.text) {
                        l.events.push(Event::Receipt {
                            room: r,
                            at_us,
                            key,
                            via: Via::History,
                        });
                        l.read[r].insert(key);
                    }
                    if !h.id.is_null() {
                        last[r] = Some(h.id);
                    }
                }
                *pending = pending.saturating_sub(1);
                if *pending == 0 {
                    l.sessions += 1;
                    drop(l);
                    shared.set_ready(Role::Subscriber, true);
                }
            }
            ("gap", Some(r)) => lock(log).events.push(Event::Gap { room: r, at_us }),
            ("error", _) if *pending > 0 => {
                return format!("join refused: {}", f.code.unwrap_or_default());
            }
            _ => {}
        }
    }
}
