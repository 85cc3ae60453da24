//! A publisher: joins its room, then from `go` sends one bench message per
//! tick (open loop: a late tick is sent at once; ticks that fall while it
//! reconnects are skipped, never sent in a burst after) and records each one's fate: acked (with its id),
//! refused (an `error` with its `ref`), or unanswered (its socket ended
//! first). Reconnects like a subscriber; its sequence numbers go on.

use super::shared::{Incoming, Role, Shared, backoff, id_text};
use super::subscriber::lock;
use crate::conn::Ws;
use crate::report::{Counts, bump};
use crate::wire::{self, Stamp};
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// What became of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written, no answer yet.
    Pending,
    /// `ack` read at `ack_us`, with the id the node stamped.
    Acked {
        /// When the ack was read.
        ack_us: u64,
        /// The id (opaque), for reports.
        id: String,
    },
    /// `error` with this code: the node says it did not take the message.
    Refused(String),
    /// The socket ended (or the round did) before any answer.
    Unanswered,
}

/// One message written.
#[derive(Clone, Debug)]
pub struct Sent {
    /// When it was written.
    pub sent_us: u64,
    /// Its fate.
    pub outcome: Outcome,
}

/// What one publisher did; index = sequence number.
#[derive(Debug, Default)]
pub struct PubLog {
    /// Every message written.
    pub sent: Vec<Sent>,
    /// Sessions that joined the room.
    pub sessions: u64,
    /// Why sessions ended, by reason.
    pub ends: Counts,
}

/// A publisher's log behind its lock.
pub type SharedPubLog = Arc<Mutex<PubLog>>;

/// When the publisher starts and stops.
#[derive(Clone, Debug)]
pub struct Phases {
    /// Start sending.
    pub go: CancellationToken,
    /// Stop sending; wait for the answers still due.
    pub stop_send: CancellationToken,
    /// Stop everything.
    pub stop: CancellationToken,
}

/// Runs publisher `number` in room `room` from node `home`, one message per `period`.
pub async fn run(
    number: u32,
    home: usize,
    room: usize,
    period: Duration,
    shared: Arc<Shared>,
    log: SharedPubLog,
    phases: Phases,
) {
    let mut node = home;
    let mut failures = 0;
    loop {
        if !backoff(failures, &phases.stop).await {
            break;
        }
        let mut pending = BTreeSet::new();
        let (reason, joined) = tokio::select! {
            () = phases.stop.cancelled() => ("round over".into(), true),
            e = session(number, node, room, period, &shared, &log, &phases, &mut pending) => e,
        };
        {
            let mut l = lock(&log);
            for seq in &pending {
                if let Some(s) = l.sent.get_mut(*seq as usize) {
                    s.outcome = Outcome::Unanswered;
                }
            }
            bump(&mut l.ends, reason);
        }
        // Once sending has stopped, what was pending is settled: no new socket.
        if phases.stop.is_cancelled() || phases.stop_send.is_cancelled() {
            break;
        }
        failures = if joined { 0 } else { failures + 1 };
        node = (node + 1) % shared.nodes.len();
    }
}

/// One socket: (why it ended, whether it had joined). Ends by itself, with
/// "done", once sending has stopped and every answer is in.
#[allow(clippy::too_many_arguments)]
async fn session(
    number: u32,
    node: usize,
    room: usize,
    period: Duration,
    shared: &Shared,
    log: &SharedPubLog,
    phases: &Phases,
    pending: &mut BTreeSet<u64>,
) -> (String, bool) {
    let mut ws = match shared.connect(node).await {
        Ok(ws) => ws,
        Err(e) => return (e, false),
    };
    let name = &shared.rooms[room];
    let join = serde_json::json!({"type": "join", "room": name}).to_string();
    if let Err(e) = ws.send(WsMessage::text(join)).await {
        return (format!("write: {e}"), false);
    }
    if let Err(e) = wait_joined(&mut ws).await {
        return (e, false);
    }
    lock(log).sessions += 1;
    shared.set_ready(Role::Publisher, true);
    let reason = publish(number, room, period, shared, log, phases, pending, &mut ws).await;
    shared.set_ready(Role::Publisher, false);
    (reason, true)
}

async fn wait_joined(ws: &mut Ws) -> Result<(), String> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => match Incoming::parse(&t) {
                Some(f) if f.kind == "joined" => return Ok(()),
                Some(f) if f.kind == "error" => {
                    return Err(format!("join refused: {}", f.code.unwrap_or_default()));
                }
                _ => {}
            },
            Some(Ok(WsMessage::Close(c))) => {
                return Err(c.map_or("close (no code)".into(), |c| format!("close {}", c.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("socket error: {e}")),
            None => return Err("eof".into()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish(
    number: u32,
    room: usize,
    period: Duration,
    shared: &Shared,
    log: &SharedPubLog,
    phases: &Phases,
    pending: &mut BTreeSet<u64>,
    ws: &mut Ws,
) -> String {
    tokio::select! {
        () = phases.go.cancelled() => {}
        () = phases.stop.cancelled() => return "round over".into(),
    }
    // Within a socket's life the schedule holds (a late tick is sent at
    // once); a new socket starts a new schedule, so a reconnect is no burst.
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let name = &shared.rooms[room];
    loop {
        let sending = !phases.stop_send.is_cancelled();
        if !sending && pending.is_empty() {
            return "done".into();
        }
        tokio::select! {
            biased;
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(c))) => {
                        return c.map_or("close (no code)".into(), |c| format!("close {}", c.code));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return format!("socket error: {e}"),
                    None => return "eof".into(),
                };
                if wire::is_message(&text) {
                    continue; // its own echo: subscribers do the counting
                }
                let Some(f) = Incoming::parse(&text) else { continue };
                let Some(seq) = f.reference() else { continue };
                let outcome = match f.kind.as_str() {
                    "ack" => Outcome::Acked { ack_us: shared.now_us(), id: id_text(&f.id) },
                    "error" => Outcome::Refused(f.code.unwrap_or_else(|| "error".into())),
                    _ => continue,
                };
                if pending.remove(&seq)
                    && let Some(s) = lock(log).sent.get_mut(seq as usize)
                {
                    s.outcome = outcome;
                }
            }
            () = phases.stop_send.cancelled(), if sending => {}
            _ = tick.tick(), if sending => {
                let t_us = shared.now_us();
                let seq = {
                    let mut l = lock(log);
                    l.sent.push(Sent { sent_us: t_us, outcome: Outcome::Pending });
                    (l.sent.len() - 1) as u64
                };
                let frame = wire::send_frame(name, Stamp { publisher: number, seq, t_us }, shared.size);
                pending.insert(seq);
                if let Err(e) = ws.send(WsMessage::text(frame)).await {
                    return format!("write: {e}");
                }
            }
        }
    }
}
