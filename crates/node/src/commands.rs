//! What each client frame does. Every frame earns at most one direct reply;
//! everything else reaches the client through the room or user topics.

use crate::Node;
use crate::metrics::DropReason;
use crate::outlet::Outlet;
use crate::session::{Stop, json};
use banter_bus::{Draft, HistoryQuery, StreamId, Topic};
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, CloseReason, DirectMessage, ErrorCode, FrameError, Limits, MessageId,
    PresenceEvent, Ref, RoomId, ServerFrame, User, UserId, decode,
};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// `join` without `since` returns this many recent messages.
const JOIN_HISTORY: usize = 50;
/// `history` frames return at most this many.
pub(crate) const HISTORY_LIMIT: usize = 200;

/// The state of one connection's conversation.
pub(crate) struct Session {
    node: Node,
    member: Member,
    rooms: BTreeSet<RoomId>,
    bucket: Bucket,
    /// The socket's write side: where a join's history floor goes.
    outlet: Arc<Outlet>,
    /// `/text`: replies and messages as plain lines.
    text_mode: bool,
}

impl Session {
    pub(crate) fn new(node: Node, member: Member, outlet: Arc<Outlet>, text_mode: bool) -> Session {
        let limits = &node.inner.config.limits;
        let bucket = Bucket::new(limits.rate_per_sec, limits.burst);
        Session {
            node,
            member,
            rooms: BTreeSet::new(),
            bucket,
            outlet,
            text_mode,
        }
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Leaves every room and forgets the socket: the one cleanup of a session.
    pub(crate) async fn cleanup(&mut self) {
        let hub = &self.node.inner.hub;
        let rooms = std::mem::take(&mut self.rooms);
        hub.leave_all(&self.member, rooms).await;
        hub.unregister(&self.member);
    }

    pub(crate) fn welcome(&self) -> ServerFrame {
        let config = &self.node.inner.config;
        ServerFrame::Welcome {
            user: self.member.user.clone(),
            node: config.node.id.clone(),
            heartbeat_ms: config.heartbeat.ping_interval_ms,
            limits: Limits {
                max_text_chars: config.limits.max_text_chars,
                max_rooms: config.limits.max_rooms,
                rate_per_sec: config.limits.rate_per_sec,
            },
        }
    }

    pub(crate) fn error(&self, e: FrameError) -> ServerFrame {
        self.node.inner.metrics.error(e.code);
        tracing::debug!(conn = %self.member.conn, code = %e.code, message = %e.message, "client error");
        e.into()
    }

    fn fail(&self, code: ErrorCode, message: &str, reference: Option<Ref>) -> ServerFrame {
        self.error(FrameError {
            code,
            message: message.to_owned(),
            reference,
        })
    }

    /// Handles one text frame: the reply to write, if any, or why to close.
    pub(crate) async fn on_frame(&mut self, text: &str) -> Result<Option<WsMessage>, Stop> {
        let received = Instant::now();
        let metrics = &self.node.inner.metrics;
        metrics.frames_received.inc();
        let allowed = self.bucket.take(received).map_err(Stop::Close)?;
        if self.text_mode {
            return Ok(self.on_line(text, allowed, received).await);
        }
        let frame = decode(text);
        if !allowed {
            metrics.rate_limited.inc();
            metrics.dropped(DropReason::RateLimited);
            let reference = match &frame {
                Ok(f) => frame_ref(f),
                Err(e) => e.reference.clone(),
            };
            return Ok(Some(json(&self.fail(
                ErrorCode::RateLimited,
                "slow down",
                reference,
            ))));
        }
        let reply = match frame {
            Err(e) => Some(self.error(e)),
            Ok(ClientFrame::Auth { .. }) => Some(self.fail(
                ErrorCode::BadRequest,
                "already authenticated: auth is only valid before welcome",
                None,
            )),
            Ok(ClientFrame::Join { room, since }) => Some(self.join(room, since).await),
            Ok(ClientFrame::Leave { room }) => Some(self.leave(room).await),
            Ok(ClientFrame::Send {
                room,
                text,
                reference,
            }) => Some(self.send(room, text, reference, received).await),
            Ok(ClientFrame::Dm {
                to,
                text,
                reference,
            }) => Some(self.dm(to, text, reference).await),
            Ok(ClientFrame::Typing { room }) => self.typing(room).await,
            Ok(ClientFrame::Who { room }) => Some(self.who(room).await),
            Ok(ClientFrame::History {
                room,
                before,
                limit,
            }) => Some(self.history(room, before, limit).await),
            Ok(ClientFrame::Ping { reference }) => Some(ServerFrame::Pong { reference }),
        };
        Ok(reply.map(|f| json(&f)))
    }

    /// Plain-text mode: every line is said in the room; only errors answer.
    async fn on_line(&mut self, text: &str, allowed: bool, received: Instant) -> Option<WsMessage> {
        let reply = if allowed {
            let room = self.rooms.first().cloned()?;
            let line = text.trim_end_matches(['\r', '\n']).to_owned();
            self.send(room, line, None, received).await
        } else {
            self.node.inner.metrics.rate_limited.inc();
            self.fail(ErrorCode::RateLimited, "slow down", None)
        };
        match reply {
            ServerFrame::Error { code, message, .. } => {
                Some(WsMessage::text(format!("! {code}: {message}")))
            }
            _ => None,
        }
    }

    /// Joins `room` (or answers again for a room already joined). With
    /// `since`, the history holds every message after it that the room still
    /// keeps, and `recovered` says whether that is all of them. The room is
    /// subscribed *before* history is read, and live messages already in the
    /// history are skipped by the floor, so nothing is missed or repeated.
    pub(crate) async fn join(&mut self, room: RoomId, since: Option<MessageId>) -> ServerFrame {
        let inner = &self.node.inner;
        let users = if self.rooms.contains(&room) {
            inner.presence.users(&room).await
        } else {
            if self.rooms.len() >= inner.config.limits.max_rooms {
                return self.fail(
                    ErrorCode::TooManyRooms,
                    "too many rooms: leave one first",
                    None,
                );
            }
            match inner.hub.join(&room, &self.member).await {
                Ok(users) => {
                    self.rooms.insert(room.clone());
                    Ok(users)
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "join failed");
                    return self.fail(ErrorCode::Unavailable, "cannot join now, try again", None);
                }
            }
        };
        let Ok(users) = users else {
            return self.fail(ErrorCode::Unavailable, "presence unavailable", None);
        };
        let recovery_limit = inner.config.history.size + 200;
        let query = match since.as_ref().map(|s| StreamId::parse(s.as_str())) {
            Some(Some(since)) => HistoryQuery::After {
                since,
                limit: recovery_limit,
            },
            // An id of another form (or none): the recent messages, not a recovery.
            Some(None) | None => HistoryQuery::Latest {
                limit: JOIN_HISTORY,
            },
        };
        let (history, recovered) = match inner.bus.history(&room, query).await {
            Ok(page) => (page.messages, since.is_some() && page.complete),
            Err(e) => {
                tracing::warn!(%room, error = %e, "history unavailable for join");
                (Vec::new(), false)
            }
        };
        let last = history.last().and_then(|m| StreamId::parse(m.id.as_str()));
        self.outlet.set_floor(&room, last);
        ServerFrame::Joined {
            room,
            count: users.len(),
            users,
            history,
            recovered,
        }
    }

    async fn leave(&mut self, room: RoomId) -> ServerFrame {
        if !self.rooms.remove(&room) {
            return self.fail(ErrorCode::NotJoined, "not in this room", None);
        }
        self.outlet.set_floor(&room, None);
        self.node.inner.hub.leave(&room, &self.member).await;
        ServerFrame::Left { room }
    }

    /// Checks a chat text against the limits: the refusal, if any.
    fn refuse_text(&self, text: &str, reference: &Option<Ref>) -> Option<ServerFrame> {
        let max = self.node.inner.config.limits.max_text_chars;
        check_text(text, max)
            .err()
            .map(|(code, message)| self.fail(code, message, reference.clone()))
    }

    async fn send(
        &mut self,
        room: RoomId,
        text: String,
        reference: Option<Ref>,
        received: Instant,
    ) -> ServerFrame {
        let inner = &self.node.inner;
        if !self.rooms.contains(&room) {
            return self.fail(ErrorCode::NotJoined, "join the room first", reference);
        }
        if let Some(refusal) = self.refuse_text(&text, &reference) {
            return refusal;
        }
        let draft = Draft {
            room,
            from: self.member.user.clone(),
            text,
            ts: crate::now_ms(),
        };
        match inner.bus.publish_message(&draft).await {
            Ok(message) => {
                inner.metrics.published.inc();
                inner
                    .metrics
                    .publish_seconds
                    .observe(received.elapsed().as_secs_f64());
                ServerFrame::Ack {
                    reference,
                    id: message.id,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                inner.metrics.dropped(DropReason::BusUnavailable);
                self.fail(
                    ErrorCode::Unavailable,
                    "the message was not sent: try again",
                    reference,
                )
            }
        }
    }

    /// A direct message goes to the user's topic: every node with one of
    /// their connections is subscribed, so nobody receiving it means they
    /// are online nowhere.
    async fn dm(&mut self, to: UserId, text: String, reference: Option<Ref>) -> ServerFrame {
        if let Some(refusal) = self.refuse_text(&text, &reference) {
            return refusal;
        }
        let (id, ts) = self.node.stamp();
        let frame = ServerFrame::Dm(DirectMessage {
            id: id.clone(),
            from: self.member.user.clone(),
            to: to.clone(),
            text,
            ts,
        });
        let inner = &self.node.inner;
        match inner
            .bus
            .publish(&Topic::User(to), Bytes::from(frame.to_json()))
            .await
        {
            Ok(0) => self.fail(ErrorCode::NotFound, "that user is not online", reference),
            Ok(_) => ServerFrame::Ack { reference, id },
            Err(e) => {
                tracing::warn!(error = %e, "dm publish failed");
                inner.metrics.dropped(DropReason::BusUnavailable);
                self.fail(
                    ErrorCode::Unavailable,
                    "the message was not sent: try again",
                    reference,
                )
            }
        }
    }

    async fn typing(&mut self, room: RoomId) -> Option<ServerFrame> {
        if !self.rooms.contains(&room) {
            return Some(self.fail(ErrorCode::NotJoined, "join the room first", None));
        }
        let frame = ServerFrame::Typing {
            room: room.clone(),
            from: self.member.user.clone(),
        };
        // Typing is best effort: a lost indicator is not a lost message.
        let _ = self
            .node
            .inner
            .bus
            .publish(&Topic::Room(room), Bytes::from(frame.to_json()))
            .await;
        None
    }

    async fn who(&mut self, room: RoomId) -> ServerFrame {
        match self.node.inner.presence.users(&room).await {
            Ok(users) => ServerFrame::Presence {
                room,
                count: users.len(),
                event: PresenceEvent::Snapshot { users },
            },
            Err(_) => self.fail(ErrorCode::Unavailable, "presence unavailable", None),
        }
    }

    async fn history(
        &mut self,
        room: RoomId,
        before: Option<MessageId>,
        limit: Option<u32>,
    ) -> ServerFrame {
        let limit = limit.map_or(JOIN_HISTORY, |l| (l as usize).min(HISTORY_LIMIT));
        let query = match before {
            Some(before) => match StreamId::parse(before.as_str()) {
                Some(before) => HistoryQuery::Before { before, limit },
                None => {
                    return self.fail(ErrorCode::BadRequest, "before is not a message id", None);
                }
            },
            None => HistoryQuery::Latest { limit },
        };
        match self.node.inner.bus.history(&room, query).await {
            Ok(page) => ServerFrame::History {
                room,
                messages: page.messages,
            },
            Err(_) => self.fail(ErrorCode::Unavailable, "history unavailable", None),
        }
    }
}

/// The `ref` of a frame that decoded fine, for replies that refuse it unread.
fn frame_ref(frame: &ClientFrame) -> Option<Ref> {
    match frame {
        ClientFrame::Send { reference, .. }
        | ClientFrame::Dm { reference, .. }
        | ClientFrame::Ping { reference } => reference.clone(),
        _ => None,
    }
}

/// A token bucket on client frames, and the flood detector behind close 1008.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Frames received in the current window.
    window_frames: u64,
    window_start: Instant,
    /// 3× the allowed rate for a whole window (plus the burst).
    flood_frames: u64,
}

const FLOOD_WINDOW: Duration = Duration::from_secs(10);

impl Bucket {
    fn new(rate_per_sec: u32, burst: u32) -> Bucket {
        let now = Instant::now();
        Bucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            window_frames: 0,
            window_start: now,
            flood_frames: 3 * u64::from(rate_per_sec) * FLOOD_WINDOW.as_secs() + u64::from(burst),
        }
    }

    /// Takes a token: `Ok(true)` to process the frame, `Ok(false)` to refuse
    /// it, `Err` when the client floods at 3× the rate for a whole window.
    fn take(&mut self, now: Instant) -> Result<bool, CloseReason> {
        if now.duration_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.window_frames = 0;
        }
        self.window_frames += 1;
        if self.window_frames > self.flood_frames {
            return Err(CloseReason::Policy);
        }
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
    }
}

impl Node {
    /// A direct-message id and timestamp: `{ms}-{node}-{seq}`, unique in the
    /// cluster because node ids are. (Room messages get history positions.)
    pub(crate) fn stamp(&self) -> (MessageId, u64) {
        let ts = crate::now_ms();
        let seq = self
            .inner
            .seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{ts}-{}-{seq}", self.inner.config.node.id);
        // Node ids are validated to [A-Za-z0-9_-]{1,32} at start: the id always parses.
        #[allow(clippy::expect_used)]
        let id = MessageId::try_from(id).expect("node ids are validated");
        (id, ts)
    }
}

/// Whether a chat text may be sent: not empty, at most `max_chars`
/// characters. The one check behind `send`, `dm` and the publish API.
pub(crate) fn check_text(text: &str, max_chars: usize) -> Result<(), (ErrorCode, &'static str)> {
    if text.chars().count() > max_chars {
        return Err((ErrorCode::TooLarge, "text too long"));
    }
    if text.trim().is_empty() {
        return Err((ErrorCode::BadRequest, "text is empty"));
    }
    Ok(())
}

/// The identity of server-published messages (`POST /api/rooms/{room}/messages`).
pub(crate) fn system_user(name: Option<&str>) -> Option<User> {
    let name = name.unwrap_or("system").parse().ok()?;
    Some(User {
        id: "system".parse().ok()?,
        name,
    })
}
