//! The socket as tungstenite sees it: reads come straight from the TCP
//! stream; writes join the outlet's queue, so the session's own frames
//! interleave with the fan-out's only at frame boundaries.

use super::{Chunk, Offer, Outlet};
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

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

impl Outlet {
    /// Queues one of the session's own frames (a reply, a `/text` line,
    /// tungstenite's pongs and close), whole, behind what is queued. The
    /// session's own frames count against the queue's bounds too, in frames
    /// and in bytes: a client that asks without reading is a slow consumer
    /// like one that does not read its rooms (`Err` of an [`Overflow`]; one
    /// reply bigger than the byte limit still goes out, alone).
    pub fn own(&self, bytes: Bytes) -> io::Result<()> {
        let mut state = self.lock();
        if state.queue.len() >= self.limit
            || (!state.queue.is_empty() && state.queued_bytes + bytes.len() > self.byte_limit)
        {
            return Err(io::Error::other(Overflow));
        }
        if state.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        state.queued_bytes += bytes.len();
        state.queue.push_back(Chunk {
            bytes,
            at: None,
            started: false,
        });
        // While held, the answer waits for `release`, which sends it with the
        // live frames that came meanwhile; behind a backlog, for the drain.
        if state.held.is_none()
            && state.queue.len() == 1
            && self.write_now(&mut state) == Offer::Closed
        {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
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
            // A read that fills less than the buffer drained the socket: its
            // readiness is cleared with the read (the closure's `WouldBlock`),
            // so the next poll waits for the kernel instead of asking it
            // again for nothing, one wasted `recvfrom` per client frame (as
            // tokio's own `TcpStream::poll_read` does). Readiness that came
            // after the read is kept.
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            let mut got = 0;
            match tcp.try_io(Interest::READABLE, || {
                got = tcp.try_read(unfilled)?;
                if got > 0 && got < wanted {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            }) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            buf.advance(got);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.outlet
                .own(Bytes::copy_from_slice(buf))
                .map(|()| buf.len()),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outlet.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outlet.poll_drain(cx)
    }
}
