//! One client socket, from upgrade to close: one task, one `select!`, one
//! cleanup. The rest of the node reaches it only through its [`ConnHandle`]:
//! its [`Outlet`] (the write side, which the fan-out writes to directly) and
//! a kick switch registered in the hub. What each client frame does is in
//! [`crate::commands`].

use crate::Node;
use crate::commands::Session;
use crate::hub::{ConnHandle, Kick};
use crate::outlet::{Outlet, Socket};
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, CloseReason, ConnId, FrameError, RoomId, ServerFrame, User, decode,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::time;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// The WebSocket of one client, over its [`Outlet`].
pub(crate) type Ws = WebSocketStream<Socket>;

/// A write that takes longer than this means the client is gone or stuck.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close frame may take to reach a client before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Drives one client socket until it closes. `outlet` is the write side
/// under `ws`; it starts held (see [`Outlet::new`]).
pub(crate) async fn run(
    mut ws: Ws,
    outlet: Arc<Outlet>,
    node: Node,
    identity: Identity,
    mode: Mode,
) {
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
    let kick = Arc::new(Kick::default());
    let handle = ConnHandle {
        user: member.user.clone(),
        outlet: outlet.clone(),
        kick: kick.clone(),
    };
    node.inner.hub.register(&member.conn, handle).await;
    // A drain that began before this socket was registered did not see it.
    if node.inner.shutdown.is_cancelled() {
        kick.kick(CloseReason::ShuttingDown);
    }
    let text_mode = matches!(mode, Mode::Text { .. });
    let mut session = Session::new(node.clone(), member, outlet.clone(), text_mode);

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
        // Live frames held since the registration follow what was just sent.
        outlet.release();
        Box::pin(session.drive(&mut ws, &kick, &outlet)).await
    }
    .await;
    let reason = match stop {
        Ok(never) => match never {},
        Err(stop) => stop,
    };

    Box::pin(session.cleanup()).await;
    outlet.seal();
    if let Stop::Close(reason) = reason {
        tracing::debug!(%reason, "closing socket");
        Box::pin(close(&mut ws, reason)).await;
    }
}

/// Waits (within `server.handshake_timeout_ms`) for the `auth` frame.
async fn await_auth(ws: &mut Ws, node: &Node) -> Option<User> {
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
async fn write(ws: &mut Ws, kick: &Kick, msg: WsMessage) -> Result<(), Stop> {
    guard(ws.send(msg), kick).await
}

/// Runs a write to a registered socket until it completes or the socket is
/// kicked. A queue that stops draining is noticed by the housekeeping task
/// through [`Outlet::stalled_since`], which then kicks: no timer per write.
async fn guard<T>(io: impl Future<Output = Result<T, WsError>>, kick: &Kick) -> Result<T, Stop> {
    tokio::select! {
        biased;
        r = io => r.map_err(|_| Stop::Gone),
        () = kick.kicked() => Err(Stop::Close(kick.reason())),
    }
}

/// Sends the close frame and waits briefly for the client's echo.
async fn close(ws: &mut Ws, reason: CloseReason) {
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
    pub(crate) async fn drive(
        &mut self,
        ws: &mut Ws,
        kick: &Kick,
        outlet: &Outlet,
    ) -> Result<std::convert::Infallible, Stop> {
        let config = &self.node().inner.config;
        let (ping_every, idle_after) = (config.ping_interval(), config.idle_timeout());
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
                // What the fan-out could not write at once goes out here.
                e = outlet.pump() => {
                    tracing::debug!(error = %e, "socket write failed");
                    return Err(Stop::Gone);
                }
                msg = ws.next() => {
                    last_seen = time::Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => {
                            // Live frames wait until the answer is queued (and a
                            // join's floors are known), as they would in a queue.
                            outlet.hold();
                            // Boxed: client frames are rare next to deliveries, and
                            // their (large) future should not sit in every idle task.
                            if let Some(reply) = Box::pin(self.on_frame(text.as_str())).await? {
                                // Queued, not written: `release` sends it together
                                // with what arrived meanwhile (often its own echo).
                                guard(ws.feed(reply), kick).await?;
                            }
                            outlet.release();
                            guard(ws.flush(), kick).await?;
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
}
