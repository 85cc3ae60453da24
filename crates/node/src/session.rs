//! One client socket, from upgrade to close: one task, one `select!`, one
//! cleanup. The rest of the node reaches it only through its [`ConnHandle`]:
//! a bounded outbox and a kick switch registered in the hub. What each client
//! frame does is in [`crate::commands`].

use crate::Node;
use crate::commands::Session;
use crate::hub::{ConnHandle, Kick, Outbound};
use banter_bus::StreamId;
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, CloseReason, ConnId, FrameError, RoomId, ServerFrame, User, decode,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// A write that takes longer than this means the client is gone or stuck.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close frame may take to reach a client before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many queued frames are fed before one flush.
const WRITE_BATCH: usize = 64;

/// Why the loop stopped: a close code to send, or a peer that is already gone.
pub(crate) enum Stop {
    Close(CloseReason),
    Gone,
}

/// Who the socket belongs to, as far as the upgrade could tell.
pub(crate) enum Identity {
    /// A token on the URL, or a guest.
    Known(User),
    /// `auth.anonymous = false` and no `?token=`: the first frame must be `auth`.
    AwaitAuth,
}

/// Which protocol the socket speaks.
pub(crate) enum Mode {
    /// `/ws`: JSON frames; `join` is the `?room=` of the upgrade.
    Json {
        join: Option<Result<RoomId, FrameError>>,
    },
    /// `/text?room=R`: each text frame is posted to R, each message of R
    /// arrives as `name: text`.
    Text { room: RoomId },
}

/// Drives one client socket until it closes.
pub(crate) async fn run<S>(mut ws: WebSocketStream<S>, node: Node, identity: Identity, mode: Mode)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = match identity {
        Identity::Known(user) => user,
        Identity::AwaitAuth => match Box::pin(await_auth(&mut ws, &node)).await {
            Some(user) => user,
            None => return close(&mut ws, CloseReason::Unauthorized).await,
        },
    };
    let member = Member {
        conn: new_conn_id(),
        user,
    };
    let config = &node.inner.config;
    let (tx, mut outbox) = mpsc::channel(config.limits.outbound_queue);
    let kick = Arc::new(Kick::default());
    let handle = ConnHandle {
        user: member.user.clone(),
        tx,
        kick: kick.clone(),
    };
    node.inner.hub.register(&member.conn, handle).await;
    // A drain that began before this socket was registered did not see it.
    if node.inner.shutdown.is_cancelled() {
        kick.kick(CloseReason::ShuttingDown);
    }
    let mut session = Session::new(node.clone(), member, matches!(mode, Mode::Text { .. }));

    let stop = async {
        match mode {
            Mode::Json { join } => {
                Box::pin(write(&mut ws, &kick, json(&session.welcome()))).await?;
                if let Some(join) = join {
                    let reply = match join {
                        Ok(room) => Box::pin(session.join(room, None)).await,
                        Err(e) => session.error(e),
                    };
                    Box::pin(write(&mut ws, &kick, json(&reply))).await?;
                }
            }
            Mode::Text { room } => {
                // Recent history first, as lines, then everything live.
                match Box::pin(session.join(room, None)).await {
                    ServerFrame::Joined { history, .. } => {
                        for m in history {
                            write(
                                &mut ws,
                                &kick,
                                WsMessage::text(format!("{}: {}", m.from.name, m.text)),
                            )
                            .await?;
                        }
                    }
                    _ => return Err(Stop::Close(CloseReason::Internal)),
                }
            }
        }
        Box::pin(session.drive(&mut ws, &kick, &mut outbox)).await
    }
    .await;
    let reason = match stop {
        Ok(never) => match never {},
        Err(stop) => stop,
    };

    Box::pin(session.cleanup()).await;
    if let Stop::Close(reason) = reason {
        tracing::debug!(%reason, "closing socket");
        Box::pin(close(&mut ws, reason)).await;
    }
}

/// Waits (within `server.handshake_timeout_ms`) for the `auth` frame.
async fn await_auth<S>(ws: &mut WebSocketStream<S>, node: &Node) -> Option<User>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = time::timeout(node.config().handshake_timeout(), async {
        loop {
            match ws.next().await? {
                Ok(WsMessage::Text(text)) => return Some(text),
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .ok()??;
    match decode(first.as_str()) {
        Ok(ClientFrame::Auth { token }) => match node.inner.verifier.verify(&token) {
            Ok(user) => Some(user),
            Err(e) => {
                tracing::debug!(error = %e, "auth frame refused");
                None
            }
        },
        _ => None,
    }
}

fn new_conn_id() -> ConnId {
    // 16 characters of [a-z0-9]: always a valid connection id.
    ConnId::try_from(crate::random_id(16))
        .unwrap_or_else(|_| unreachable!("random ids are alphanumeric"))
}

/// A server frame as a WebSocket text message.
pub(crate) fn json(frame: &ServerFrame) -> WsMessage {
    WsMessage::text(frame.to_json())
}

/// Writes one message, giving up when the socket is kicked (a write stuck
/// for [`WRITE_TIMEOUT`] gets it kicked: see [`guard`]).
async fn write<S>(ws: &mut WebSocketStream<S>, kick: &Kick, msg: WsMessage) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    guard(ws.send(msg), kick).await
}

/// Runs a write to a registered socket until it completes or the socket is
/// kicked. A write that does not complete is noticed by the housekeeping task
/// through [`Kick::writing`], which then kicks: no timer per write.
async fn guard<T>(io: impl Future<Output = Result<T, WsError>>, kick: &Kick) -> Result<T, Stop> {
    kick.writing(true);
    let result = tokio::select! {
        biased;
        r = io => r.map_err(|_| Stop::Gone),
        () = kick.kicked() => Err(Stop::Close(kick.reason())),
    };
    kick.writing(false);
    result
}

/// Sends the close frame and waits briefly for the client's echo.
async fn close<S>(ws: &mut WebSocketStream<S>, reason: CloseReason)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.as_str().into(),
    };
    // A slow consumer's close frame waits behind what it has not read yet:
    // give it a few seconds before dropping the connection without it.
    let _ = time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
    let _ = time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

impl Session {
    /// The socket loop. Returns only by `Err`: why the socket stops.
    pub(crate) async fn drive<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        kick: &Kick,
        outbox: &mut mpsc::Receiver<Outbound>,
    ) -> Result<std::convert::Infallible, Stop>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.node().inner.config;
        let (ping_every, idle_after) = (config.ping_interval(), config.idle_timeout());
        let metrics = self.node().inner.metrics.clone();
        // One timer per socket: it sends the pings and checks the idle time.
        // (A timer or cancellation future per wakeup would cost a timer-wheel
        // or lock round trip per delivery.) Idle sockets are closed at most a
        // quarter of the idle timeout late.
        let tick_every = ping_every.min(idle_after / 4);
        let mut tick = time::interval_at(time::Instant::now() + tick_every, tick_every);
        tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        let (mut last_seen, mut last_ping) = (time::Instant::now(), time::Instant::now());
        loop {
            tokio::select! {
                biased;
                () = kick.kicked() => return Err(Stop::Close(kick.reason())),
                Some(first) = outbox.recv() => {
                    let oldest = first.at;
                    // Feed what is queued (up to a batch), flush once: one
                    // write syscall for a burst, no buffer of our own.
                    let feed = async {
                        let mut next = Some(first);
                        let (mut fed, mut wrote) = (0, false);
                        while let Some(out) = next.take() {
                            if let Some(msg) = self.outgoing(WsMessage::Text(out.text.clone())) {
                                ws.feed(msg).await?;
                                wrote = true;
                            }
                            fed += 1;
                            if fed < WRITE_BATCH {
                                next = outbox.try_recv().ok();
                            }
                        }
                        if wrote {
                            ws.flush().await?;
                        }
                        Ok(wrote)
                    };
                    if guard(feed, kick).await? {
                        metrics.fanout_seconds.observe(crate::hub::seconds_since(oldest));
                    }
                }
                msg = ws.next() => {
                    last_seen = time::Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => {
                            // Boxed: client frames are rare next to deliveries, and
                            // their (large) future should not sit in every idle task.
                            if let Some(reply) = Box::pin(self.on_frame(text.as_str())).await? {
                                guard(ws.send(reply), kick).await?;
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => return Err(Stop::Close(CloseReason::Binary)),
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                        Some(Ok(WsMessage::Close(_))) | None => return Err(Stop::Gone),
                        Some(Err(WsError::Capacity(_))) => return Err(Stop::Close(CloseReason::TooBig)),
                        Some(Err(WsError::Utf8(_))) => return Err(Stop::Close(CloseReason::InvalidUtf8)),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "socket error");
                            return Err(Stop::Gone);
                        }
                    }
                }
                now = tick.tick() => {
                    if now.duration_since(last_seen) >= idle_after {
                        return Err(Stop::Close(CloseReason::IdleTimeout));
                    }
                    if now.duration_since(last_ping) >= ping_every {
                        last_ping = now;
                        guard(ws.send(WsMessage::Ping(Bytes::new())), kick).await?;
                    }
                }
            }
        }
    }

    /// What a queued frame becomes on this socket: itself (the fast path),
    /// nothing (a message already sent in a recovery's history), or, in
    /// plain-text mode, a `name: text` line.
    fn outgoing(&mut self, msg: WsMessage) -> Option<WsMessage> {
        if self.floors.is_empty() && !self.text_mode {
            return Some(msg);
        }
        let WsMessage::Text(text) = &msg else {
            return Some(msg);
        };
        if let Some((room, id)) = message_position(text.as_str())
            && let Some(i) = self.floors.iter().position(|(r, _)| r.as_str() == room)
        {
            if id <= self.floors[i].1 {
                return None; // already in the `joined` history
            }
            // The room's order is the stream's: everything from here on is newer.
            self.floors.swap_remove(i);
        }
        if self.text_mode {
            return match serde_json::from_str::<ServerFrame>(text.as_str()) {
                Ok(ServerFrame::Message(m)) => {
                    Some(WsMessage::text(format!("{}: {}", m.from.name, m.text)))
                }
                _ => None,
            };
        }
        Some(msg)
    }
}

/// The room and position of a `message` frame, read from its fixed prefix
/// (`{"type":"message","room":"R","id":"ID",`) without parsing the rest.
fn message_position(json: &str) -> Option<(&str, StreamId)> {
    let rest = json.strip_prefix(r#"{"type":"message","room":""#)?;
    let (room, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(r#","id":""#)?;
    let (id, _) = rest.split_once('"')?;
    Some((room, StreamId::parse(id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_the_prefix() {
        let m = r#"{"type":"message","room":"lobby","id":"17-3","from":{"id":"u","name":"A"},"text":"x","ts":1}"#;
        assert_eq!(
            message_position(m),
            Some(("lobby", StreamId { ms: 17, seq: 3 }))
        );
        assert_eq!(
            message_position(r#"{"type":"presence","room":"lobby"}"#),
            None
        );
    }
}
