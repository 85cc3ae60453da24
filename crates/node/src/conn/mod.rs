//! One client socket, from upgrade to close: one task, one `select!`, one
//! cleanup. The rest of the node reaches it only through its
//! [`ConnHandle`](crate::hub::ConnHandle): its [`Outlet`] (the write side,
//! which the fan-out writes to directly) and a [`Kick`] registered in the hub.
//!
//! - this file: who the socket is ([`Identity`]), what it speaks ([`Mode`]),
//!   and its life: register, greet, drive, clean up, close.
//! - [`drive`]: the socket loop, writes that give up when kicked, the close.
//! - [`session`]: the conversation's state and the dispatch of each frame;
//!   [`commands`]: what each frame does.
//! - [`bucket`]: the rate limit; [`rules`]: what a text and a request may be.
//! - [`pusher`]: a Pusher socket's frames (`/app/{key}`).

mod bucket;
mod commands;
mod dialogs;
mod drive;
mod pusher;
pub(crate) mod rules;
mod session;

pub(crate) use drive::ws_config;
pub(crate) use session::Session;

use crate::hub::ConnHandle;
use crate::node::Node;
use crate::outlet::{Kick, Outlet, text_line};
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, CloseReason, ConnId, FrameError, RoomId, ServerFrame, User, decode,
};
use drive::{Ws, answer_close, await_echo, send_close, write};
use futures_util::StreamExt;
use session::json;
use std::sync::Arc;
use tokio::time;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Why the loop stopped: a close code to send, a close of the client's to
/// answer, or a peer that is already gone.
pub(crate) enum Stop {
    Close(CloseReason),
    Closed,
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
    /// `/app/{key}`: the Pusher protocol. `refusal`: why the socket is
    /// closed at once (an unknown app key, a protocol version it does not
    /// speak), after a `pusher:error` saying so.
    Pusher { refusal: Option<CloseReason> },
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
            Ok(user) => user,
            Err(reason) => {
                send_close(&mut ws, reason).await;
                return await_echo(&mut ws).await;
            }
        },
    };
    let (mut session, kick) = register(&node, user, &outlet, &mode).await;
    let stop = match Box::pin(greet(&mut ws, &kick, &outlet, &mut session, mode)).await {
        Ok(()) => {
            // Live frames held since the registration follow what was just sent.
            outlet.release();
            match Box::pin(session.drive(&mut ws, &kick, &outlet)).await {
                Ok(never) => match never {},
                Err(stop) => stop,
            }
        }
        Err(stop) => stop,
    };
    let stop = match stop {
        Stop::Close(reason) if session.pusher.is_some() => Stop::Close(reason.for_pusher()),
        other => other,
    };
    if matches!(
        stop,
        Stop::Close(CloseReason::SlowConsumer | CloseReason::PusherOverCapacity)
    ) && !kick.is_kicked()
    {
        // Its own reply overflowed the queue (the hub counts those it cuts).
        node.inner.metrics.slow_consumers.inc();
    }
    // The close goes out first (every client hears of a drain at once),
    // then presence and the hub are cleaned up, then the echo is awaited.
    outlet.seal();
    let closing = async {
        match &stop {
            Stop::Close(reason) => {
                tracing::debug!(%reason, "closing socket");
                send_close(&mut ws, *reason).await;
            }
            Stop::Closed => answer_close(&mut ws).await,
            Stop::Gone => {}
        }
    };
    Box::pin(async { tokio::join!(closing, session.cleanup()) }).await;
    if let Stop::Close(_) = stop {
        Box::pin(await_echo(&mut ws)).await;
    }
}

/// Makes the socket reachable in the hub (its live frames wait in the held
/// outlet until [`greet`] is done) and starts its session.
async fn register(
    node: &Node,
    user: User,
    outlet: &Arc<Outlet>,
    mode: &Mode,
) -> (Session, Arc<Kick>) {
    let pusher = matches!(mode, Mode::Pusher { .. });
    let conn = if pusher {
        crate::pusher::socket_id()
    } else {
        new_conn_id()
    };
    let member = Member::new(conn, user);
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
    if pusher {
        session.pusher = Some(pusher::PusherState::default());
    }
    (session, kick)
}

/// The socket's first frames: `welcome` (and the `?room=` join's answer),
/// or in `/text` mode the room's recent history as lines.
async fn greet(
    ws: &mut Ws,
    kick: &Kick,
    outlet: &Outlet,
    session: &mut Session,
    mode: Mode,
) -> Result<(), Stop> {
    match mode {
        Mode::Json { join } => {
            write(ws, kick, outlet, json(&session.welcome())).await?;
            if let Some(join) = join {
                let reply = match join {
                    Ok(room) => Box::pin(session.join(room, None)).await,
                    Err(e) => session.error(e),
                };
                write(ws, kick, outlet, json(&reply)).await?;
            }
        }
        Mode::Pusher { refusal } => {
            if let Some(reason) = refusal {
                let said = crate::pusher::error(reason.code(), reason.as_str());
                write(ws, kick, outlet, said).await?;
                return Err(Stop::Close(reason));
            }
            let hello = pusher::connection_established(session.member.conn.as_str());
            write(ws, kick, outlet, hello).await?;
        }
        Mode::Text { room } => match Box::pin(session.join(room, None)).await {
            ServerFrame::Joined { history, .. } => {
                for message in &history {
                    write(ws, kick, outlet, text_line(message)).await?;
                }
            }
            _ => return Err(Stop::Close(CloseReason::Internal)),
        },
    }
    Ok(())
}

/// Waits (within `server.handshake_timeout_ms`, and not past a drain) for
/// the `auth` frame; the close reason when there is none or it is bad.
async fn await_auth(ws: &mut Ws, node: &Node) -> Result<User, CloseReason> {
    let first = async {
        loop {
            match ws.next().await? {
                Ok(WsMessage::Text(text)) => return Some(text),
                Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => continue,
                _ => return None,
            }
        }
    };
    let first = tokio::select! {
        first = time::timeout(node.config().handshake_timeout(), first) => first.ok().flatten(),
        () = node.inner.shutdown.cancelled() => return Err(CloseReason::ShuttingDown),
    };
    let Some(first) = first else {
        return Err(CloseReason::Unauthorized);
    };
    match decode(first.as_str()) {
        Ok(ClientFrame::Auth { token }) => node.inner.verifier.verify(&token).map_err(|e| {
            tracing::debug!(error = %e, "auth frame refused");
            CloseReason::Unauthorized
        }),
        _ => Err(CloseReason::Unauthorized),
    }
}

fn new_conn_id() -> ConnId {
    // Characters of [a-z0-9]: always a valid connection id, unique in the cluster.
    const CONN_ID_LEN: usize = 16;
    ConnId::try_from(crate::clock::random_id(CONN_ID_LEN))
        .unwrap_or_else(|_| unreachable!("random ids are alphanumeric"))
}
