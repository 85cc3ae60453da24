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

mod delivery;
mod kick;
mod socket;

pub(crate) use delivery::{Delivery, Format, encode_text, text_line};
pub(crate) use kick::Kick;
pub(crate) use socket::{Overflow, Socket};

use crate::clock::{clock_s, seconds_since};
use banter_bus::{Position, Topic};
use banter_protocol::RoomId;
use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use prometheus::Histogram;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use tokio::net::TcpStream;

/// Bytes queued to one client unless told otherwise (`limits.outbound_bytes`).
const DEFAULT_BYTE_LIMIT: usize = 1 << 20;
/// At most this many queued frames go into one (vectored) write.
const WRITE_BATCH: usize = 64;
/// While the session waits (on Redis) to answer a client frame, live
/// frames are held, at most this many times `limits.outbound_queue`: they
/// are not the client's slowness and do not count against its queue, but
/// they are bounded too. Past it the socket is closed with 1011.
const HELD_FACTOR: usize = 8;

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
    /// The queue is full (frames or bytes): the client is a slow consumer.
    Full,
    /// Too much arrived while the node waited to answer the client: the
    /// node's own trouble.
    Overheld,
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

#[derive(Debug)]
struct State {
    queue: VecDeque<Chunk>,
    /// Bytes in `queue` (what is left of each chunk).
    queued_bytes: usize,
    /// `Some` while the session task answers a client frame.
    held: Option<Vec<Arc<Delivery>>>,
    /// Rooms just joined with history: live messages at or before these
    /// positions were already sent in `joined.history` and are skipped once.
    floors: Vec<(RoomId, Position)>,
    /// The wire format this socket speaks.
    format: Format,
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
    /// At most this many bytes queued (`limits.outbound_bytes`).
    byte_limit: usize,
    /// [`clock_s`] + 1 when the queue last stalled, 0 while it is empty.
    stalled_since: AtomicU32,
    fanout_seconds: Histogram,
}

impl Outlet {
    /// An outlet for a socket. It starts held: live frames wait until the
    /// session has sent its welcome (or its first lines).
    pub fn new(tcp: TcpStream, limit: usize, format: Format, fanout_seconds: Histogram) -> Outlet {
        Outlet {
            tcp,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                queued_bytes: 0,
                held: Some(Vec::new()),
                floors: Vec::new(),
                format,
                sealed: false,
                failed: false,
            }),
            waker: AtomicWaker::new(),
            limit: limit.max(1),
            byte_limit: DEFAULT_BYTE_LIMIT,
            stalled_since: AtomicU32::new(0),
            fanout_seconds,
        }
    }

    /// Bounds the bytes queued to the client (`limits.outbound_bytes`).
    pub fn with_byte_limit(mut self, bytes: usize) -> Outlet {
        self.byte_limit = bytes.max(1);
        self
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
        if let Some(held) = &mut state.held {
            if held.len() + deliveries.len() > self.limit.saturating_mul(HELD_FACTOR) {
                return Offer::Overheld;
            }
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
        if state.queue.len() > self.limit || state.queued_bytes > self.byte_limit {
            return Offer::Full;
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
            state.queued_bytes = state.queued_bytes.saturating_sub(written);
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
            self.stalled_since.store(clock_s() + 1, Ordering::Relaxed);
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

    /// The client left `room`: what was held of it is dropped (the client
    /// is answered `left`, and nothing of the room may follow), and so is
    /// its floor.
    pub fn forget_room(&self, room: &RoomId) {
        let mut state = self.lock();
        if let Some(held) = &mut state.held {
            held.retain(|d| !matches!(&d.topic, Topic::Room(r) if r == room));
        }
        state.floors.retain(|(r, _)| r != room);
    }

    /// Records what a `join`'s history already holds of `room` (`None`: nothing).
    pub fn set_floor(&self, room: &RoomId, last: Option<Position>) {
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
        state.queued_bytes = state.queue.iter().map(|c| c.bytes.len()).sum();
    }

    /// Seconds (as [`clock_s`] + 1) since the queue stopped
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
            self.queued_bytes += bytes.len();
            self.queue.push_back(Chunk {
                bytes,
                at: Some(delivery.at),
                started: false,
            });
        }
    }

    /// What a bus frame becomes on this socket: its frame in the socket's
    /// format, or nothing (a message already sent in a recovery's history,
    /// or a frame the format has no use for).
    fn filter(&mut self, delivery: &Delivery) -> Option<Bytes> {
        if !self.floors.is_empty()
            && let (Some(position), Topic::Room(room)) = (delivery.position, &delivery.topic)
            && let Some(i) = self.floors.iter().position(|(r, _)| r == room)
        {
            if position.after(self.floors[i].1) == Some(false) {
                return None; // already in the `joined` history
            }
            // The room's order is the stream's: everything from here on is newer.
            self.floors.swap_remove(i);
        }
        delivery.wire(self.format).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_bus::Envelope;
    use tokio::io::AsyncReadExt;

    /// An outlet over a real loopback connection, and the peer's end.
    async fn outlet(limit: usize) -> (Outlet, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let hist = Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        (Outlet::new(tcp, limit, Format::Json, hist), peer)
    }

    fn delivery(n: usize) -> Arc<Delivery> {
        Arc::new(Delivery::new(
            Envelope {
                topic: Topic::Room("r".parse().unwrap()),
                position: None,
                presence: false,
                payload: Bytes::from(format!("{{\"n\":{n}}}")),
            },
            0,
        ))
    }

    /// What arrives while the session waits (on Redis) to answer its client
    /// is the node's delay, not the client's slowness: it does not count
    /// against the client's queue (it is bounded on its own).
    #[tokio::test]
    async fn held_frames_do_not_make_a_slow_consumer() {
        let (outlet, mut peer) = outlet(4).await;
        // Held since creation (the welcome is not sent yet): ten frames for a
        // client whose queue takes four.
        let ten: Vec<_> = (0..10).map(delivery).collect();
        assert_eq!(outlet.offer(&ten), Offer::Queued, "held, not full");
        outlet.release();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), peer.read(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "released and written");
        // Bounded on their own.
        outlet.hold();
        let many: Vec<_> = (0..4 * HELD_FACTOR + 1).map(delivery).collect();
        assert_eq!(
            outlet.offer(&many),
            Offer::Overheld,
            "held frames are bounded too"
        );
    }
}
