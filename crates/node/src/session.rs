//! One client socket, from upgrade to close: one task, one `select!`, one
//! cleanup. The rest of the node reaches it only through its [`ConnHandle`]:
//! a bounded outbox and a kick switch registered in the hub.

use crate::Node;
use crate::hub::{ConnHandle, Kick, Outbound};
use crate::metrics::DropReason;
use banter_bus::Topic;
use banter_presence::Member;
use banter_protocol::{
    ClientFrame, CloseReason, ErrorCode, FrameError, Limits, Message, MessageId, PresenceEvent,
    Ref, RoomId, ServerFrame, decode,
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// A write that takes longer than this means the client is gone or stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close frame may take to reach a client before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many queued frames are fed before one flush.
const WRITE_BATCH: usize = 64;

/// Why the loop stopped: a close code to send, or a peer that is already gone.
enum Stop {
    Close(CloseReason),
    Gone,
}

/// Drives one client socket until it closes. `join` is the `?room=` of the upgrade.
pub(crate) async fn run<S>(
    mut ws: WebSocketStream<S>,
    node: Node,
    member: Member,
    join: Option<Result<RoomId, FrameError>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &node.inner.config;
    let (tx, mut outbox) = mpsc::channel(config.limits.outbound_queue);
    let kick = Arc::new(Kick::child_of(&node.inner.shutdown));
    node.inner.hub.register(
        &member.conn,
        ConnHandle {
            user: member.user.clone(),
            tx,
            kick: kick.clone(),
        },
    );
    let mut session = Session {
        node: node.clone(),
        member,
        rooms: BTreeSet::new(),
        bucket: Bucket::new(config.limits.rate_per_sec, config.limits.burst),
    };

    let stop = async {
        write(&mut ws, &kick, session.welcome()).await?;
        if let Some(join) = join {
            let reply = match join {
                Ok(room) => session.join(room).await,
                Err(e) => session.error(e),
            };
            write(&mut ws, &kick, reply).await?;
        }
        session.drive(&mut ws, &kick, &mut outbox).await
    }
    .await;
    let reason = match stop {
        Ok(never) => match never {},
        Err(stop) => stop,
    };

    let rooms = std::mem::take(&mut session.rooms);
    node.inner.hub.leave_all(&session.member, rooms).await;
    node.inner.hub.unregister(&session.member.conn);
    if let Stop::Close(reason) = reason {
        tracing::debug!(conn = %session.member.conn, %reason, "closing socket");
        close(&mut ws, reason).await;
    }
}

/// Writes one frame, giving up when the client is stuck or the socket is kicked.
async fn write<S>(ws: &mut WebSocketStream<S>, kick: &Kick, frame: ServerFrame) -> Result<(), Stop>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(kick, ws.send(WsMessage::text(frame.to_json()))).await
}

async fn bounded(kick: &Kick, io: impl Future<Output = Result<(), WsError>>) -> Result<(), Stop> {
    tokio::select! {
        r = time::timeout(WRITE_TIMEOUT, io) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Stop::Gone),
        },
        () = kick.kicked() => Err(Stop::Close(kick.reason())),
    }
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

/// A token bucket on client frames, and the flood detector behind close 1008.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Frames received in the current 10 s window.
    window_frames: u64,
    window_start: Instant,
    /// 3× the allowed rate for 10 s.
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

struct Session {
    node: Node,
    member: Member,
    rooms: BTreeSet<RoomId>,
    bucket: Bucket,
}

impl Session {
    async fn drive<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        kick: &Kick,
        outbox: &mut mpsc::Receiver<Outbound>,
    ) -> Result<std::convert::Infallible, Stop>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.node.inner.config;
        let (ping_every, idle_after) = (config.ping_interval(), config.idle_timeout());
        let metrics = self.node.inner.metrics.clone();
        let mut ping = time::interval_at(time::Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        let mut last_seen = time::Instant::now();
        loop {
            tokio::select! {
                biased;
                () = kick.kicked() => return Err(Stop::Close(kick.reason())),
                Some(first) = outbox.recv() => {
                    let oldest = first.at;
                    let mut batch = vec![first.msg];
                    while batch.len() < WRITE_BATCH {
                        match outbox.try_recv() {
                            Ok(more) => batch.push(more.msg),
                            Err(_) => break,
                        }
                    }
                    bounded(kick, async {
                        for msg in batch {
                            ws.feed(msg).await?;
                        }
                        ws.flush().await
                    }).await?;
                    metrics.fanout_seconds.observe(oldest.elapsed().as_secs_f64());
                }
                msg = ws.next() => {
                    last_seen = time::Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(reply) = self.on_frame(text.as_str()).await? {
                                write(ws, kick, reply).await?;
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => return Err(Stop::Close(CloseReason::Binary)),
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                        Some(Ok(WsMessage::Close(_))) | None => return Err(Stop::Gone),
                        Some(Err(WsError::Capacity(_))) => return Err(Stop::Close(CloseReason::TooBig)),
                        Some(Err(WsError::Utf8(_))) => return Err(Stop::Close(CloseReason::InvalidUtf8)),
                        Some(Err(e)) => {
                            tracing::debug!(conn = %self.member.conn, error = %e, "socket error");
                            return Err(Stop::Gone);
                        }
                    }
                }
                () = time::sleep_until(last_seen + idle_after) => {
                    return Err(Stop::Close(CloseReason::IdleTimeout));
                }
                _ = ping.tick() => {
                    bounded(kick, ws.send(WsMessage::Ping(Bytes::new()))).await?;
                }
            }
        }
    }

    fn welcome(&self) -> ServerFrame {
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

    fn error(&self, e: FrameError) -> ServerFrame {
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

    /// Handles one text frame; every frame earns at most one direct reply.
    async fn on_frame(&mut self, text: &str) -> Result<Option<ServerFrame>, Stop> {
        let received = Instant::now();
        let metrics = &self.node.inner.metrics;
        metrics.frames_received.inc();
        let frame = decode(text);
        match self.bucket.take(received) {
            Ok(true) => {}
            Ok(false) => {
                metrics.rate_limited.inc();
                metrics.dropped(DropReason::RateLimited);
                let reference = frame
                    .err()
                    .and_then(|e| e.reference)
                    .or_else(|| frame_ref(text));
                return Ok(Some(self.fail(
                    ErrorCode::RateLimited,
                    "slow down",
                    reference,
                )));
            }
            Err(reason) => return Err(Stop::Close(reason)),
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Ok(Some(self.error(e))),
        };
        Ok(match frame {
            ClientFrame::Auth { .. } => Some(self.fail(
                ErrorCode::BadRequest,
                "already authenticated: auth is only valid before welcome",
                None,
            )),
            ClientFrame::Join { room, since: _ } => Some(self.join(room).await),
            ClientFrame::Leave { room } => Some(self.leave(room).await),
            ClientFrame::Send {
                room,
                text,
                reference,
            } => Some(self.send(room, text, reference, received).await),
            ClientFrame::Typing { room } => self.typing(room).await,
            ClientFrame::Who { room } => Some(self.who(room).await),
            ClientFrame::Ping { reference } => Some(ServerFrame::Pong { reference }),
            ClientFrame::Dm { reference, .. } => Some(self.fail(
                ErrorCode::NotFound,
                "direct messages are not available on this node yet",
                reference,
            )),
            ClientFrame::History { .. } => Some(self.fail(
                ErrorCode::BadRequest,
                "history is not kept by this node yet",
                None,
            )),
        })
    }

    pub(crate) async fn join(&mut self, room: RoomId) -> ServerFrame {
        let hub = &self.node.inner.hub;
        if !self.rooms.contains(&room) {
            if self.rooms.len() >= self.node.inner.config.limits.max_rooms {
                return self.fail(
                    ErrorCode::TooManyRooms,
                    "too many rooms: leave one first",
                    None,
                );
            }
            match hub.join(&room, &self.member).await {
                Ok(users) => {
                    self.rooms.insert(room.clone());
                    return joined(room, users);
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "join failed");
                    return self.fail(ErrorCode::Unavailable, "cannot join now, try again", None);
                }
            }
        }
        match self.node.inner.presence.users(&room).await {
            Ok(users) => joined(room, users),
            Err(_) => self.fail(ErrorCode::Unavailable, "presence unavailable", None),
        }
    }

    async fn leave(&mut self, room: RoomId) -> ServerFrame {
        if !self.rooms.remove(&room) {
            return self.fail(ErrorCode::NotJoined, "not in this room", None);
        }
        self.node.inner.hub.leave(&room, &self.member).await;
        ServerFrame::Left { room }
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
        if text.chars().count() > inner.config.limits.max_text_chars {
            return self.fail(ErrorCode::TooLarge, "text too long", reference);
        }
        if text.trim().is_empty() {
            return self.fail(ErrorCode::BadRequest, "text is empty", reference);
        }
        let (id, ts) = self.node.stamp();
        let frame = ServerFrame::Message(Message {
            room: room.clone(),
            id: id.clone(),
            from: self.member.user.clone(),
            text,
            ts,
        });
        let payload = Bytes::from(frame.to_json());
        match inner.bus.publish(&Topic::Room(room), payload).await {
            Ok(()) => {
                inner.metrics.published.inc();
                inner
                    .metrics
                    .publish_seconds
                    .observe(received.elapsed().as_secs_f64());
                ServerFrame::Ack { reference, id }
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
}

fn joined(room: RoomId, users: Vec<banter_protocol::User>) -> ServerFrame {
    ServerFrame::Joined {
        room,
        count: users.len(),
        users,
        history: Vec::new(),
        recovered: false,
    }
}

/// The `ref` of a frame that decoded fine, for replies that refuse it unread.
fn frame_ref(text: &str) -> Option<Ref> {
    #[derive(serde::Deserialize)]
    struct OnlyRef {
        #[serde(rename = "ref")]
        reference: Option<Ref>,
    }
    serde_json::from_str::<OnlyRef>(text)
        .ok()
        .and_then(|r| r.reference)
}

impl Node {
    /// A message id and timestamp: `{ms}-{node}-{seq}`, unique in the cluster
    /// because node ids are.
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
