//! One member of the big room: connects (past `welcome`), sends `join` and
//! times it to `joined`, then reads until told to stop, counting every
//! `presence` frame (with its arrival time), the room's count it carries, and
//! the room's messages. The first few members also chat while the room is
//! held. Frames are recognised by their first bytes: no JSON parse on the
//! hot path.

use crate::conn::{self, ConnectError, Target, Ws};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

const PRESENCE: &str = r#"{"type":"presence""#;
const JOINED: &str = r#"{"type":"joined""#;
const MESSAGE: &str = r#"{"type":"message""#;
const ACK: &str = r#"{"type":"ack""#;
const ERROR: &str = r#"{"type":"error""#;
const GAP: &str = r#"{"type":"gap""#;

/// Wall-clock µs since the Unix epoch: one time base for every process of a
/// run split over processes.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The number after the last `"count":` of a frame (`count` is the last
/// field of `presence`; user names in this run never hold the key).
pub fn count_of(frame: &str) -> Option<u64> {
    let at = frame.rfind(r#""count":"#)? + r#""count":"#.len();
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// What one member saw.
#[derive(Clone, Debug, Default)]
pub struct MemberLog {
    /// Arrival of every `presence` frame since `join` was sent, wall µs.
    pub presence_us: Vec<u64>,
    /// The room's count each of them carried (`u64::MAX`: none).
    pub presence_counts: Vec<u64>,
    /// The largest `presence` frame, bytes.
    pub presence_bytes_max: usize,
    /// The room's count in the newest `presence` frame (or in `joined`).
    pub last_count: Option<u64>,
    /// `message` frames of the room.
    pub messages: u64,
    /// `gap` frames.
    pub gaps: u64,
    /// Chat messages sent, acked, refused (chatters only).
    pub sent: u64,
    /// Acked.
    pub acked: u64,
    /// Answered with `error`.
    pub refused: u64,
    /// Why the socket ended before the member was told to stop, if it did.
    pub ended_early: Option<String>,
}

impl MemberLog {
    fn on_text(&mut self, t: &str) {
        if t.starts_with(PRESENCE) {
            self.presence_us.push(wall_us());
            self.presence_bytes_max = self.presence_bytes_max.max(t.len());
            let count = count_of(t);
            self.presence_counts.push(count.unwrap_or(u64::MAX));
            if count.is_some() {
                self.last_count = count;
            }
        } else if t.starts_with(MESSAGE) {
            self.messages += 1;
        } else if t.starts_with(ACK) {
            self.acked += 1;
        } else if t.starts_with(ERROR) {
            self.refused += 1;
        } else if t.starts_with(GAP) {
            self.gaps += 1;
        }
    }
}

/// A member that has joined.
#[derive(Debug)]
pub struct Joined {
    /// Its socket.
    pub ws: Ws,
    /// What it saw so far.
    pub log: MemberLog,
    /// Connect + upgrade + `welcome`, µs.
    pub connect_us: u64,
    /// `join` sent → `joined` read, µs.
    pub join_us: u64,
    /// When `joined` was read, wall µs.
    pub joined_at_us: u64,
    /// The size of the `joined` frame, bytes.
    pub joined_bytes: usize,
}

/// Opens member `i`'s socket to `target` and joins `room`; a failure is
/// labelled by the limit behind it, like [`ConnectError::label`].
pub async fn join(target: &Target, i: usize, room: &str) -> Result<Joined, String> {
    let fut = async {
        let t0 = Instant::now();
        let mut ws = conn::open(target, &format!("name=m{i}"))
            .await
            .map_err(|e| e.label())?;
        let connect_us = elapsed_us(t0);
        let frame = serde_json::json!({"type": "join", "room": room}).to_string();
        let t1 = Instant::now();
        ws.send(WsMessage::text(frame))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut log = MemberLog::default();
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    if t.starts_with(JOINED) {
                        let join_us = elapsed_us(t1);
                        log.last_count = joined_count(&t);
                        return Ok(Joined {
                            joined_bytes: t.len(),
                            ws,
                            log,
                            connect_us,
                            join_us,
                            joined_at_us: wall_us(),
                        });
                    }
                    if t.starts_with(ERROR) {
                        let code = serde_json::from_str::<serde_json::Value>(&t)
                            .ok()
                            .and_then(|v| v["code"].as_str().map(String::from))
                            .unwrap_or_default();
                        return Err(ConnectError::JoinError(code).label());
                    }
                    log.on_text(&t);
                }
                Some(Ok(WsMessage::Close(_))) | None => return Err(ConnectError::Closed.label()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("join: {e}")),
            }
        }
    };
    tokio::time::timeout(conn::CONNECT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err(ConnectError::Timeout.label()))
}

/// The room's count in a `joined` frame. A parse that keeps nothing but
/// `count` (the users and the history are skipped, not built).
fn joined_count(frame: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Count {
        count: u64,
    }
    serde_json::from_str::<Count>(frame).ok().map(|c| c.count)
}

fn elapsed_us(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// What a member hands back: its log, and its socket unless the node ended it.
pub type Ended = (MemberLog, Option<Ws>);

/// The run's phases as a member sees them.
#[derive(Clone, Debug)]
pub struct Phases {
    /// The hold has begun: chatters start.
    pub hold: CancellationToken,
    /// Chatters stop (a little before the hold ends, so the last messages
    /// arrive within it).
    pub quiet: CancellationToken,
    /// Stop reading; hand back the log and the socket.
    pub stop: CancellationToken,
}

/// A chatter's part: its number and how often it speaks.
#[derive(Clone, Debug)]
pub struct Chat {
    /// The member's number (in its texts).
    pub member: usize,
    /// One message per period.
    pub period: Duration,
    /// The room.
    pub room: String,
}

/// Reads (and, for a chatter, talks) until `phases.stop`; then returns what
/// the member saw, and its socket (still open, no longer read) unless the
/// node ended it.
pub async fn live(j: Joined, phases: Phases, chat: Option<Chat>) -> Ended {
    match chat {
        Some(chat) => chatter(j, phases, chat).await,
        None => listen(j, phases.stop).await,
    }
}

/// Why a socket ended, when the node (or the network) ended it.
fn ended(m: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) -> Option<String> {
    match m {
        Some(Ok(WsMessage::Close(c))) => {
            Some(format!("close {}", c.map_or(0, |c| u16::from(c.code))))
        }
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(format!("error: {e}")),
        None => Some("ended".into()),
    }
}

/// A member that only reads: one registration on its stop token for its
/// whole life (a fresh `cancelled()` per frame would lock the shared token).
async fn listen(mut j: Joined, stop: CancellationToken) -> Ended {
    let stop = stop.child_token();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            m = j.ws.next() => match m {
                Some(Ok(WsMessage::Text(t))) => j.log.on_text(&t),
                other => {
                    if let Some(reason) = ended(other) {
                        j.log.ended_early = Some(reason);
                        return (j.log, None);
                    }
                }
            },
        }
    }
    (j.log, Some(j.ws))
}

/// A member that also chats while the room is held: from `phases.hold`, one
/// message per period, until `phases.quiet`.
async fn chatter(mut j: Joined, phases: Phases, c: Chat) -> Ended {
    let stop = phases.stop.child_token();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut next: Option<tokio::time::Instant> = None;
    let log = &mut j.log;
    loop {
        let chatting = !phases.quiet.is_cancelled();
        let due = next.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            m = j.ws.next() => match m {
                Some(Ok(WsMessage::Text(t))) => log.on_text(&t),
                other => {
                    if let Some(reason) = ended(other) {
                        log.ended_early = Some(reason);
                        return (j.log, None);
                    }
                }
            },
            () = phases.hold.cancelled(), if chatting && next.is_none() => {
                next = Some(tokio::time::Instant::now());
            }
            () = tokio::time::sleep_until(due), if chatting && next.is_some() => {
                next = Some(due + c.period);
                log.sent += 1;
                let frame = serde_json::json!({
                    "type": "send",
                    "room": c.room,
                    "text": format!("chatter {} says {}", c.member, log.sent),
                    "ref": log.sent,
                });
                if let Err(e) = conn::send_text(&mut j.ws, frame.to_string()).await {
                    log.ended_early = Some(format!("write: {e}"));
                    return (j.log, None);
                }
            }
            () = phases.quiet.cancelled(), if chatting && next.is_some() => {}
        }
    }
    (j.log, Some(j.ws))
}

/// Presence frames within any `window` of one member's arrival times
/// (sorted): the most, and the shortest spacing between two frames.
pub fn window_stats(times: &[u64], window_us: u64) -> (u64, Option<u64>) {
    let (mut most, mut lo, mut min_gap) = (0u64, 0usize, None::<u64>);
    for hi in 0..times.len() {
        while times[hi].saturating_sub(times[lo]) >= window_us.max(1) {
            lo += 1;
        }
        most = most.max((hi - lo + 1) as u64);
        if hi > 0 {
            let gap = times[hi].saturating_sub(times[hi - 1]);
            min_gap = Some(min_gap.map_or(gap, |g| g.min(gap)));
        }
    }
    (most, min_gap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_found_without_a_parse() {
        let diff = r#"{"type":"presence","room":"hall","event":"diff","joined":[],"left":[],"count":20000}"#;
        assert_eq!(count_of(diff), Some(20000));
        let snap = r#"{"type":"presence","room":"r","event":"snapshot","users":[],"cursor":"g-x","count":5}"#;
        assert_eq!(count_of(snap), Some(5));
        assert_eq!(count_of(r#"{"type":"presence"}"#), None);
        let joined = r#"{"type":"joined","room":"r","users":[{"id":"g-1","name":"m1"}],"count":3,"history":[],"recovered":false}"#;
        assert_eq!(joined_count(joined), Some(3));
    }

    #[test]
    fn frames_are_sorted_by_their_start() {
        let mut l = MemberLog::default();
        l.on_text(
            r#"{"type":"presence","room":"r","event":"diff","joined":[],"left":[],"count":7}"#,
        );
        l.on_text(r#"{"type":"message","room":"r","id":"x","text":"hi"}"#);
        l.on_text(r#"{"type":"ack","ref":1,"id":"x"}"#);
        l.on_text(r#"{"type":"gap","room":"r"}"#);
        assert_eq!(
            (
                l.presence_us.len(),
                l.last_count,
                l.messages,
                l.acked,
                l.gaps
            ),
            (1, Some(7), 1, 1, 1)
        );
    }

    #[test]
    fn windows_count_frames_closer_than_the_interval() {
        let s = 1_000_000;
        // One a second: never two within a second.
        assert_eq!(window_stats(&[0, s, 2 * s, 3 * s], s), (1, Some(s)));
        // Two 300 ms apart.
        assert_eq!(
            window_stats(&[0, s, s + 300_000, 3 * s], s),
            (2, Some(300_000))
        );
        assert_eq!(window_stats(&[], s), (0, None));
        assert_eq!(window_stats(&[5], s), (1, None));
    }
}
