//! The socket as tungstenite sees it: reads come straight from the TCP
//! stream; writes join the outlet's queue, so the session's own frames
//! interleave with the fan-out's only at frame boundaries.

use super::{Chunk, Offer, Outlet};
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write the outlet refused because the client's queue is full: it is a
/// slow consumer (close 4002). What tungstenite could not write stays in
/// its buffer and goes out whole before the close frame.
#[derive(Debug, thiserror::Error)]
#[error("the client's outbound queue is full")]
pub(crate) struct Overflow;

impl Overflow {
    /// Whether a write failed because of an [`Overflow`].
    pub fn caused(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Overflow>())
    }
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
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outlet = &self.outlet;
        // The session's own frames count against the queue's bounds too, in
        // frames and in bytes: a client that asks without reading is a slow
        // consumer like one that does not read its rooms (one reply bigger
        // than the byte limit still goes out, alone).
        {
            let state = outlet.lock();
            if state.queue.len() >= outlet.limit
                || (!state.queue.is_empty() && state.queued_bytes + buf.len() > outlet.byte_limit)
            {
                return Poll::Ready(Err(io::Error::other(Overflow)));
            }
        }
        let mut state = outlet.lock();
        if state.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        state.queued_bytes += buf.len();
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
