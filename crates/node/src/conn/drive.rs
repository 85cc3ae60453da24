//! The socket loop and its writes: what the fan-out could not write at
//! once, client frames in, pings and the idle check on one timer, and the
//! close handshake.

use super::Stop;
use super::session::Session;
use crate::outlet::{Kick, Outlet, Overflow, Socket, encode_text};
use banter_protocol::CloseReason;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::time;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// The WebSocket of one client, over its [`Outlet`].
pub(crate) type Ws = WebSocketStream<Socket>;

/// How long the close frame may take to reach a client before the socket
/// is dropped: a slow consumer's close waits behind what it has not read
/// yet (the kernel's buffer), and dropping earlier would leave it a frame
/// cut short and no close code. The session's cleanup does not wait for it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a kicked socket's answer in progress may still take.
const ANSWER_GRACE: Duration = Duration::from_millis(500);
/// How long to wait for the client's answer to our close frame.
const CLOSE_ECHO: Duration = Duration::from_millis(500);
/// tungstenite's read buffer: it grows for a larger frame (up to
/// `limits.max_frame_bytes`) and never shrinks, so small is cheap.
const READ_BUFFER: usize = 512;
/// The largest frame the node may write (a `joined` with many users can be
/// larger than what a client may send).
const MAX_WRITE: usize = 16 * 1024 * 1024;

/// tungstenite's buffers, sized for chat. Its defaults (128 KiB read buffer,
/// allocated eagerly; 128 KiB write high-water mark; 64 MiB messages) cost
/// ≈136 KB of RSS per idle socket. A 512-byte read buffer costs ≈0.5 KB.
/// Only the socket's own frames (replies, pings, the close) pass through
/// tungstenite, and none waits in its write buffer: each goes straight to
/// the outlet, which orders it among the live messages (see
/// [`crate::outlet`]). Incoming messages and frames are capped at
/// `limits.max_frame_bytes` (close 1009 above it), which also caps how far
/// the read buffer can grow.
pub(crate) fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
        .accept_unmasked_frames(false)
}

/// Writes one of the session's text frames and waits until it is out,
/// giving up when the socket is kicked (a write that stops moving gets it
/// kicked: see [`guard`]).
pub(super) async fn write(
    ws: &mut Ws,
    kick: &Kick,
    outlet: &Outlet,
    text: String,
) -> Result<(), Stop> {
    queue(outlet, text)?;
    guard(ws.flush(), kick).await
}

/// Queues one of the session's text frames in the outlet, encoded here
/// rather than by tungstenite: its write buffer keeps the capacity of the
/// largest frame it ever wrote (a `joined` of a big room is 4 KB) for the
/// socket's lifetime.
pub(super) fn queue(outlet: &Outlet, text: String) -> Result<(), Stop> {
    outlet.own(encode_text(Bytes::from(text))).map_err(|e| {
        if Overflow::caused(&e) {
            Stop::Close(CloseReason::SlowConsumer)
        } else {
            Stop::Gone
        }
    })
}

/// Runs a write to a registered socket until it completes or the socket is
/// kicked. A queue that stops draining is noticed by the housekeeping task
/// through [`Outlet::stalled_since`], which then kicks: no timer per write.
async fn guard<T>(io: impl Future<Output = Result<T, WsError>>, kick: &Kick) -> Result<T, Stop> {
    tokio::select! {
        biased;
        r = io => r.map_err(|e| match e {
            WsError::Io(e) if Overflow::caused(&e) => Stop::Close(CloseReason::SlowConsumer),
            _ => Stop::Gone,
        }),
        () = kick.kicked() => Err(Stop::Close(kick.reason())),
    }
}

/// Runs the answer to a client frame; if the socket is kicked meanwhile
/// (a drain), gives it [`ANSWER_GRACE`] more to finish (so an ack in
/// flight still goes out), then gives up: the close must not wait on Redis.
async fn answered<T>(
    answer: impl Future<Output = Result<T, Stop>>,
    kick: &Kick,
) -> Result<T, Stop> {
    tokio::pin!(answer);
    tokio::select! {
        biased;
        r = &mut answer => r,
        () = kick.kicked() => match time::timeout(ANSWER_GRACE, answer).await {
            Ok(r) => r,
            Err(_) => Err(Stop::Close(kick.reason())),
        },
    }
}

/// Sends the close frame for `reason`, within [`CLOSE_TIMEOUT`]. (The
/// outlet is sealed first: what was not sent of the backlog is dropped and
/// a half-sent frame is finished, so the client finds whole frames, then
/// the close code.)
pub(super) async fn send_close(ws: &mut Ws, reason: CloseReason) {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.as_str().into(),
    };
    let _ = time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

/// Answers a close the client sent (tungstenite queued the echo when it
/// read it), within [`CLOSE_TIMEOUT`].
pub(super) async fn answer_close(ws: &mut Ws) {
    let _ = time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
}

/// Waits briefly for the client's answer to our close frame, so its close
/// handshake completes and the connection ends cleanly.
pub(super) async fn await_echo(ws: &mut Ws) {
    let _ = time::timeout(CLOSE_ECHO, async {
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
        let config = &self.node.inner.config;
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
                            let answer = Box::pin(self.on_frame(text.as_str()));
                            if let Some(reply) = answered(answer, kick).await? {
                                // Queued, not written: `release` sends it together
                                // with what arrived meanwhile (often its own echo).
                                queue(outlet, reply)?;
                            }
                            outlet.release();
                            guard(ws.flush(), kick).await?;
                        }
                        Some(Ok(WsMessage::Binary(_))) => return Err(Stop::Close(CloseReason::Binary)),
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                        // The client closes: its close is answered, and nothing follows.
                        Some(Ok(WsMessage::Close(_))) => return Err(Stop::Closed),
                        None => return Err(Stop::Gone),
                        Some(Err(WsError::Protocol(e))) => {
                            tracing::debug!(error = %e, "protocol violation");
                            return Err(Stop::Close(CloseReason::Protocol));
                        }
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
