//! One socket's write side, shared by its session task and the fan-out.
//!
//! The fan-out writes each frame straight to the socket (`try_write`, one
//! syscall, no task wakeup) when nothing is queued before it. Only what the
//! kernel does not take at once is queued, in order, bounded by
//! `limits.outbound_queue` frames; the session task drains that queue when
//! the socket turns writable. The session's own frames (welcome, replies,
//! pings, the close) go through the same queue as bytes, via [`Socket`], so
//! everything reaches the wire whole and in order.
//!
//! While the session task answers a client frame the outlet is *held*: live
//! frames wait unencoded until the answer is queued, and a `join`'s floors
//! (what its history already holds) are applied to them on release.

use crate::hub::{Delivery, seconds_since};
use banter_bus::StreamId;
use banter_protocol::{RoomId, ServerFrame};
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use prometheus::Histogram;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// At most this many queued frames go into one (vectored) write.
const WRITE_BATCH: usize = 64;

/// A bus frame encoded once as a complete WebSocket text frame (a server's
/// frames are unmasked, so every socket can be sent the same bytes).
pub(crate) fn encode_text(text: Bytes) -> Bytes {
    let frame = Frame::message(text, OpCode::Data(Data::Text), true);
    let mut wire = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut wire);
    Bytes::from(wire)
}

/// What became of a frame offered to an outlet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The kernel took all of it.
    Written,
    /// Queued behind earlier frames (or held while the session answers).
    Queued,
    /// Not for this socket: already in its `joined` history, or not a line
    /// in `/text` mode.
    Skipped,
    /// The queue is full: the client is a slow consumer.
    Full,
    /// The socket is closing.
    Closed,
}

/// Bytes waiting for the socket, and when the bus delivered them (`None`
/// for the session's own frames).
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    at: Option<u32>,
    /// Part of it is on the wire: it must be finished even when the rest of
    /// the queue is discarded.
    started: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Chunk>,
    /// `Some` while the session task answers a client frame.
    held: Option<Vec<Arc<Delivery>>>,
    /// Rooms just joined with history: live messages at or before these
    /// positions were already sent in `joined.history` and are skipped once.
    floors: Vec<(RoomId, StreamId)>,
    /// `/text`: messages go out as `name: text` lines, nothing else does.
    text_mode: bool,
    /// No more bus frames: the session is closing.
    sealed: bool,
    /// A write failed: the peer is gone.
    failed: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Outlet {
    tcp: TcpStream,
    state: Mutex<State>,
    /// The session task, woken when its queue turns non-empty.
    waker: AtomicWaker,
    /// At most this many frames queued (`limits.outbound_queue`).
    limit: usize,
    /// [`clock_s`](crate::hub) + 1 when the queue last stalled, 0 while it is empty.
    stalled_since: AtomicU32,
    fanout_seconds: Histogram,
}

impl Outlet {
    /// An outlet for a socket. It starts held: live frames wait until the
    /// session has sent its welcome (or its first lines).
    pub fn new(tcp: TcpStream, limit: usize, text_mode: bool, fanout_seconds: Histogram) -> Outlet {
        Outlet {
            tcp,
            state: Mutex::new(State {
                held: Some(Vec::new()),
                text_mode,
                ..State::default()
            }),
            waker: AtomicWaker::new(),
            limit: limit.max(1),
            stalled_since: AtomicU32::new(0),
            fanout_seconds,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands bus frames (in order) to the socket: written now, in one
    /// syscall, if nothing is queued before them, else queued. Never waits.
    pub fn offer(&self, deliveries: &[Arc<Delivery>]) -> Offer {
        let mut state = self.lock();
        if state.sealed || state.failed {
            return Offer::Closed;
        }
        let waiting = state.queue.len() + state.held.as_ref().map_or(0, Vec::len);
        if waiting + deliveries.len() > self.limit {
            return Offer::Full;
        }
        if let Some(held) = &mut state.held {
            held.extend(deliveries.iter().cloned());
            return Offer::Queued;
        }
        let before = state.queue.len();
        for delivery in deliveries {
            state.enqueue(delivery);
        }
        if state.queue.len() == before {
            return Offer::Skipped;
        }
        if before > 0 {
            return Offer::Queued; // behind a backlog the session's task is writing
        }
        self.write_now(&mut state)
    }

    /// Writes what is queued now; what the kernel does not take is left to
    /// the session's task, which is woken for it (as it is for a failure).
    fn write_now(&self, state: &mut State) -> Offer {
        match self.write_some(state) {
            Ok(true) => Offer::Written,
            Ok(false) => {
                self.waker.wake();
                Offer::Queued
            }
            Err(e) => {
                tracing::debug!(error = %e, "socket write failed");
                state.failed = true;
                self.waker.wake();
                Offer::Closed
            }
        }
    }

    /// Writes the queue's front, up to [`WRITE_BATCH`] frames per syscall.
    /// `Ok(true)` once the queue is empty; `Ok(false)` when the kernel took
    /// less than everything (the socket's buffer is full).
    fn write_some(&self, state: &mut State) -> io::Result<bool> {
        let mut progressed = false;
        loop {
            let result = match state.queue.len() {
                0 => {
                    self.stalled_since.store(0, Ordering::Relaxed);
                    return Ok(true);
                }
                1 => self.tcp.try_write(&state.queue[0].bytes),
                _ => {
                    let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
                    let mut count = 0;
                    for (slice, chunk) in slices.iter_mut().zip(&state.queue) {
                        *slice = IoSlice::new(&chunk.bytes);
                        count += 1;
                    }
                    self.tcp.try_write_vectored(&slices[..count])
                }
            };
            let mut written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            progressed = true;
            while let Some(front) = state.queue.front_mut() {
                if written < front.bytes.len() {
                    front.bytes.advance(written);
                    front.started |= written > 0;
                    break;
                }
                written -= front.bytes.len();
                if let Some(at) = front.at {
                    self.fanout_seconds.observe(seconds_since(at));
                }
                state.queue.pop_front();
                if written == 0 {
                    break;
                }
            }
            if state.queue.front().is_some_and(|c| c.started) {
                break; // a partial write: the buffer is full
            }
        }
        // Stalled: stamp when the stall began, and again on every progress.
        if progressed || self.stalled_since.load(Ordering::Relaxed) == 0 {
            self.stalled_since
                .store(crate::hub::clock_s() + 1, Ordering::Relaxed);
        }
        Ok(false)
    }

    /// The session starts answering a client frame: live frames wait.
    pub fn hold(&self) {
        let mut state = self.lock();
        if state.held.is_none() {
            state.held = Some(Vec::new());
        }
    }

    /// The answer is queued: what waited goes out after it, through the
    /// floors as they are now, in the same syscall when it fits.
    pub fn release(&self) {
        let mut state = self.lock();
        let Some(held) = state.held.take() else {
            return;
        };
        if state.sealed || state.failed {
            return;
        }
        for delivery in &held {
            state.enqueue(delivery);
        }
        self.write_now(&mut state);
    }

    /// Records what a `join`'s history already holds of `room` (`None`: nothing).
    pub fn set_floor(&self, room: &RoomId, last: Option<StreamId>) {
        let mut state = self.lock();
        state.floors.retain(|(r, _)| r != room);
        if let Some(last) = last {
            state.floors.push((room.clone(), last));
        }
    }

    /// No more bus frames; frames not yet started are dropped (a closing
    /// client gets its close code next, not a backlog it was too slow for).
    pub fn seal(&self) {
        let mut state = self.lock();
        state.sealed = true;
        state.held = None;
        state.queue.retain(|c| c.started);
    }

    /// Seconds (as [`clock_s`](crate::hub) + 1) since the queue stopped
    /// draining, or 0: for the stuck-write check.
    pub fn stalled_since(&self) -> u32 {
        self.stalled_since.load(Ordering::Relaxed)
    }

    /// Writes the queue out. Ready once it is empty, or when the socket fails.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut state = self.lock();
            if state.failed {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            match self.write_some(&mut state) {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {
                    drop(state);
                    ready!(self.tcp.poll_write_ready(cx))?;
                }
                Err(e) => {
                    state.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
    }

    /// Drains the queue whenever it has something; resolves only when the
    /// socket fails. The session task's "write" branch.
    pub async fn pump(&self) -> io::Error {
        std::future::poll_fn(|cx| {
            // Registered before looking, so a frame queued meanwhile wakes us.
            self.waker.register(cx.waker());
            match self.poll_drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(e),
                Poll::Ready(Ok(())) | Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

impl State {
    /// Queues what a bus frame becomes on this socket, if anything.
    fn enqueue(&mut self, delivery: &Delivery) {
        if let Some(bytes) = self.filter(delivery) {
            self.queue.push_back(Chunk {
                bytes,
                at: Some(delivery.at),
                started: false,
            });
        }
    }

    /// What a bus frame becomes on this socket: itself, nothing (a message
    /// already sent in a recovery's history), or in `/text` mode a line.
    fn filter(&mut self, delivery: &Delivery) -> Option<Bytes> {
        let text = delivery.text.as_str();
        if !self.floors.is_empty()
            && let Some((room, id)) = message_position(text)
            && let Some(i) = self.floors.iter().position(|(r, _)| r.as_str() == room)
        {
            if id <= self.floors[i].1 {
                return None; // already in the `joined` history
            }
            // The room's order is the stream's: everything from here on is newer.
            self.floors.swap_remove(i);
        }
        if !self.text_mode {
            return Some(delivery.wire.clone());
        }
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(ServerFrame::Message(m)) => Some(encode_text(Bytes::from(format!(
                "{}: {}",
                m.from.name, m.text
            )))),
            _ => None,
        }
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

/// The socket as tungstenite sees it: reads come from the TCP stream, writes
/// join the outlet's queue (so they interleave with the fan-out's frames
/// only at frame boundaries), and a flush drains that queue.
#[derive(Debug)]
pub(crate) struct Socket {
    outlet: Arc<Outlet>,
}

impl Socket {
    pub fn new(outlet: Arc<Outlet>) -> Socket {
        Socket { outlet }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.outlet.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outlet = &self.outlet;
        // The session's own frames wait for room in the queue too: a client
        // that asks without reading gets no unbounded backlog.
        if outlet.lock().queue.len() >= outlet.limit {
            ready!(outlet.poll_drain(cx))?;
        }
        let mut state = outlet.lock();
        if state.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        state.queue.push_back(Chunk {
            bytes: Bytes::copy_from_slice(buf),
            at: None,
            started: false,
        });
        // While held, the answer waits for `release`, which sends it with the
        // live frames that came meanwhile; behind a backlog, for the drain.
        if state.held.is_none()
            && state.queue.len() == 1
            && outlet.write_now(&mut state) == Offer::Closed
        {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outlet.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outlet.poll_drain(cx)
    }
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

    #[test]
    fn frames_are_encoded_unmasked_with_their_length() {
        let wire = encode_text(Bytes::from_static(b"hi"));
        assert_eq!(&wire[..], &[0x81, 2, b'h', b'i']);
        let long = encode_text(Bytes::from(vec![b'x'; 300]));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
    }
}
