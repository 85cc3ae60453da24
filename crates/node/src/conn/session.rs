//! The state of one connection's conversation, and the dispatch of each
//! client frame to what it does ([`super::commands`]). Every frame earns at
//! most one direct reply; everything else reaches the client through the
//! room or user topics.

use super::Stop;
use super::bucket::Bucket;
use crate::metrics::DropReason;
use crate::node::Node;
use crate::outlet::Outlet;
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, ErrorCode, FrameError, Limits, Ref, RoomId, ServerFrame, UserId, decode,
};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use tokio::time::Instant;

/// The state of one connection's conversation.
pub(crate) struct Session {
    pub(crate) node: Node,
    pub(crate) member: Member,
    pub(super) rooms: BTreeSet<RoomId>,
    pub(super) bucket: Bucket,
    /// Rooms this connection joined in the last minute, and when: it may
    /// bring only so many new rooms into being (each leaves keys in Redis).
    pub(super) recent_rooms: VecDeque<(Instant, RoomId)>,
    /// Users this connection wrote direct messages to in the last minute.
    pub(super) recent_peers: VecDeque<(Instant, UserId)>,
    /// The socket's write side: where a join's history floor goes.
    pub(super) outlet: Arc<Outlet>,
    /// `/text`: replies and messages as plain lines.
    text_mode: bool,
    /// A Pusher socket's channels (`None` for Banter's own protocols).
    pub(crate) pusher: Option<super::pusher::PusherState>,
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
            recent_rooms: VecDeque::new(),
            recent_peers: VecDeque::new(),
            outlet,
            text_mode,
            pusher: None,
        }
    }

    /// Leaves every room and forgets the socket: the one cleanup of a session.
    pub(crate) async fn cleanup(&mut self) {
        let node = self.node.clone();
        let hub = &node.inner.hub;
        let rooms = std::mem::take(&mut self.rooms);
        hub.leave_all(&self.member, rooms).await;
        self.pusher_cleanup().await;
        hub.unregister(&self.member).await;
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

    pub(super) fn fail(
        &self,
        code: ErrorCode,
        message: &str,
        reference: Option<Ref>,
    ) -> ServerFrame {
        self.error(FrameError {
            code,
            message: message.to_owned(),
            reference,
        })
    }

    /// Handles one text frame: the reply to write, if any, or why to close.
    pub(crate) async fn on_frame(&mut self, text: &str) -> Result<Option<String>, Stop> {
        let received = Instant::now();
        let metrics = &self.node.inner.metrics;
        metrics.frames_received.inc();
        let allowed = self.bucket.take(received).map_err(Stop::Close)?;
        if self.text_mode {
            return Ok(self.on_line(text, allowed, received).await);
        }
        if self.pusher.is_some() {
            if !allowed {
                metrics.rate_limited.inc();
            }
            return Ok(self.on_pusher(text, allowed).await);
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
            Ok(ClientFrame::Dialogs) => Some(self.dialogs().await),
            Ok(ClientFrame::DmHistory {
                with,
                before,
                after,
                limit,
            }) => Some(self.dm_history(with, before, after, limit).await),
            Ok(ClientFrame::Read { with, id }) => self.read(with, id).await,
            Ok(ClientFrame::Typing { room }) => self.typing(room).await,
            Ok(ClientFrame::Who { room, cursor }) => Some(self.who(room, cursor).await),
            Ok(ClientFrame::History {
                room,
                before,
                limit,
            }) => Some(self.history(room, before, limit).await),
            Ok(ClientFrame::Ping { reference }) => Some(ServerFrame::Pong { reference }),
        };
        // The client's socket was not read while the node worked on this:
        // what it sent meanwhile is not its fault.
        self.bucket.node_waited(received.elapsed());
        Ok(reply.map(|f| json(&f)))
    }

    /// Plain-text mode: every line is said in the room; only errors answer.
    async fn on_line(&mut self, text: &str, allowed: bool, received: Instant) -> Option<String> {
        let reply = if allowed {
            let room = self.rooms.first().cloned()?;
            let line = text.trim_end_matches(['\r', '\n']).to_owned();
            self.send(room, line, None, received).await
        } else {
            self.node.inner.metrics.rate_limited.inc();
            self.fail(ErrorCode::RateLimited, "slow down", None)
        };
        match reply {
            ServerFrame::Error { code, message, .. } => Some(format!("! {code}: {message}")),
            _ => None,
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

/// A server frame as a WebSocket text message.
pub(crate) fn json(frame: &ServerFrame) -> String {
    frame.to_json()
}
