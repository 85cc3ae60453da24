//! What each client frame does: joining and leaving rooms (with recovery),
//! sending, typing, presence and history reads (direct messages are in
//! [`super::dialogs`]).

use super::rules::{HISTORY_LIMIT, RECENT_HISTORY, ROOMS_PER_MINUTE, TRIM_SLACK, check_text, fit};
use super::session::Session;
use crate::metrics::DropReason;
use crate::presence::snapshot;
use banter_bus::{Draft, HistoryQuery, Position, Topic};
use banter_protocol::{ErrorCode, Message, MessageId, Ref, RoomId, ServerFrame, User};
use bytes::Bytes;
use tokio::time::Instant;

impl Session {
    /// Joins `room` (or answers again for a room already joined). With
    /// `since`, the history holds every message after it that the room still
    /// keeps, and `recovered` says whether that is all of them. The room is
    /// subscribed *before* history is read, and live messages already in the
    /// history are skipped by the floor, so nothing is missed or repeated.
    pub(crate) async fn join(&mut self, room: RoomId, since: Option<MessageId>) -> ServerFrame {
        let node = self.node.clone();
        let inner = &node.inner;
        let limit = inner.config.presence.list_limit;
        // The history is read while presence is written (one round trip).
        let (page, history) = if self.rooms.contains(&room) {
            let topic = Topic::Room(room.clone());
            tokio::join!(
                inner.presence.page(&topic, None, limit),
                self.recover(&room, since)
            )
        } else {
            if self.rooms.len() >= inner.config.limits.max_rooms {
                return self.fail(
                    ErrorCode::TooManyRooms,
                    "too many rooms: leave one first",
                    None,
                );
            }
            if !self.may_enter(&room) {
                return self.fail(
                    ErrorCode::RateLimited,
                    "too many new rooms this minute: try again later",
                    None,
                );
            }
            let recovery = self.recover(&room, since);
            match inner.hub.join(&room, &self.member, limit, recovery).await {
                (Ok(page), history) => {
                    self.rooms.insert(room.clone());
                    self.entered(&room);
                    (Ok(page), history.unwrap_or_default())
                }
                (Err(e), _) => {
                    tracing::warn!(%room, error = %e, "join failed");
                    return self.fail(ErrorCode::Unavailable, "cannot join now, try again", None);
                }
            }
        };
        let Ok(page) = page else {
            return self.fail(ErrorCode::Unavailable, "presence unavailable", None);
        };
        let (history, recovered) = history;
        let (history, cut, cost) = fit(history);
        let recovered = recovered && !cut;
        self.bucket.charge(cost);
        let last = history.last().and_then(|m| Position::parse(m.id.as_str()));
        self.outlet.set_floor(&room, last);
        ServerFrame::Joined {
            room,
            users: with_self(page.users, &self.member.user, limit),
            count: page.count,
            history,
            recovered,
        }
    }

    /// Whether this connection may join `room` now: one it was in during
    /// the last minute is fine; a new one counts, and a minute may hold
    /// `limits.max_rooms` of them (a client that reconnects joins all its
    /// rooms at once) plus [`ROOMS_PER_MINUTE`].
    fn may_enter(&mut self, room: &RoomId) -> bool {
        let now = Instant::now();
        let minute = std::time::Duration::from_secs(60);
        while self
            .recent_rooms
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= minute)
        {
            self.recent_rooms.pop_front();
        }
        let cap = self.node.inner.config.limits.max_rooms + ROOMS_PER_MINUTE;
        self.recent_rooms.len() < cap || self.recent_rooms.iter().any(|(_, r)| r == room)
    }

    /// Counts a room joined against the minute's (see [`Self::may_enter`]).
    fn entered(&mut self, room: &RoomId) {
        if !self.recent_rooms.iter().any(|(_, r)| r == room) {
            self.recent_rooms.push_back((Instant::now(), room.clone()));
        }
    }

    /// The history a `join` answers with, and whether it is a recovery:
    /// with a `since` of this history (same epoch, a position it has
    /// reached), every message after it that the room still keeps, and
    /// `true` when that is all of them. Otherwise (no `since`, one of another
    /// form, from a history since lost, or from the future) the recent
    /// messages and `false`.
    async fn recover(&self, room: &RoomId, since: Option<MessageId>) -> (Vec<Message>, bool) {
        let inner = &self.node.inner;
        let read = |query| async move {
            match inner.bus.history(room, query).await {
                Ok(page) => Some(page),
                Err(e) => {
                    tracing::warn!(%room, error = %e, "history unavailable for join");
                    None
                }
            }
        };
        let recent = HistoryQuery::Latest {
            limit: RECENT_HISTORY,
        };
        if let Some(since) = since.as_ref().and_then(|s| Position::parse(s.as_str())) {
            let limit = inner.config.history.size + TRIM_SLACK;
            let Some(page) = read(HistoryQuery::After { since, limit }).await else {
                return (Vec::new(), false);
            };
            let reached = page
                .newest
                .is_some_and(|n| n == since || n.after(since) == Some(true));
            if page.epoch == Some(since.epoch) && reached {
                return (page.messages, page.complete);
            }
        }
        let messages = read(recent).await.map(|p| p.messages).unwrap_or_default();
        (messages, false)
    }

    pub(super) async fn leave(&mut self, room: RoomId) -> ServerFrame {
        if !self.rooms.remove(&room) {
            return self.fail(ErrorCode::NotJoined, "not in this room", None);
        }
        // Nothing of the room may follow `left`, not even what was held
        // while this was answered: out of the hub first (no fan-out offers
        // to it after that), then what was held of the room is dropped.
        self.node.inner.hub.leave(&room, &self.member).await;
        self.outlet.forget_room(&room);
        ServerFrame::Left { room }
    }

    /// Checks a chat text against the limits: the refusal, if any.
    pub(super) fn refuse_text(&self, text: &str, reference: &Option<Ref>) -> Option<ServerFrame> {
        let max = self.node.inner.config.limits.max_text_chars;
        check_text(text, max)
            .err()
            .map(|(code, message)| self.fail(code, message, reference.clone()))
    }

    pub(super) async fn send(
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
            ts: crate::clock::now_ms(),
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

    pub(super) async fn typing(&mut self, room: RoomId) -> Option<ServerFrame> {
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

    /// One page of who is in `room`, after `cursor` (a previous page's).
    pub(super) async fn who(&mut self, room: RoomId, cursor: Option<String>) -> ServerFrame {
        let limit = self.node.config().presence.list_limit;
        match self
            .node
            .inner
            .presence
            .page(&Topic::Room(room.clone()), cursor.as_deref(), limit)
            .await
        {
            Ok(page) => snapshot(&room, page),
            Err(_) => self.fail(ErrorCode::Unavailable, "presence unavailable", None),
        }
    }

    pub(super) async fn history(
        &mut self,
        room: RoomId,
        before: Option<MessageId>,
        limit: Option<u32>,
    ) -> ServerFrame {
        let limit = limit.map_or(RECENT_HISTORY, |l| (l as usize).min(HISTORY_LIMIT));
        let query = match before {
            Some(before) => match Position::parse(before.as_str()) {
                Some(before) => HistoryQuery::Before { before, limit },
                None => {
                    return self.fail(ErrorCode::BadRequest, "before is not a message id", None);
                }
            },
            None => HistoryQuery::Latest { limit },
        };
        match self.node.inner.bus.history(&room, query).await {
            Ok(page) => {
                // Too many bytes for one reply: the newest stay, and the client
                // pages on with `before` = the oldest it got.
                let (messages, _, cost) = fit(page.messages);
                self.bucket.charge(cost);
                ServerFrame::History { room, messages }
            }
            Err(_) => self.fail(ErrorCode::Unavailable, "history unavailable", None),
        }
    }
}

/// The users a `joined` lists: the room's first page, and the joiner, who is
/// online there whether or not their id sorts into it (first, then, in
/// place of the page's last, so the list stays within `limit`).
fn with_self(mut users: Vec<User>, me: &User, limit: usize) -> Vec<User> {
    if limit > 0 && !users.iter().any(|u| u.id == me.id) {
        users.truncate(limit - 1);
        users.insert(0, me.clone());
    }
    users
}
