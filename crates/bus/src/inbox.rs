//! A node's inbox: the bounded channel the bus's traffic arrives on, owned
//! by the node's fan-out task. Each event is stamped when the bus hands it
//! over, so the fan-out can tell how far behind the bus it is.

use crate::{BusEvent, INBOX_CAPACITY};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One event and when the bus handed it over.
#[derive(Debug)]
pub(crate) struct Stamped {
    event: BusEvent,
    at: Instant,
}

/// The receiving end of a node's bus traffic, in publish order per topic.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Stamped>,
}

/// The bus's end of an [`Inbox`].
#[derive(Clone, Debug)]
pub(crate) struct InboxSender {
    tx: mpsc::Sender<Stamped>,
}

/// A place reserved in a full-or-not inbox.
pub(crate) struct Permit<'a>(mpsc::Permit<'a, Stamped>);

impl Permit<'_> {
    /// Sends `event`, which has been on its way from the bus for `lag`.
    pub fn send(self, event: BusEvent, lag: std::time::Duration) {
        self.0.send(Stamped {
            event,
            at: stamp(lag),
        });
    }
}

/// When an event that has been on its way for `lag` left the bus.
fn stamp(lag: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_sub(lag).unwrap_or(now)
}

/// A bounded inbox ([`INBOX_CAPACITY`]) and its sender.
pub(crate) fn channel() -> (InboxSender, Inbox) {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    (InboxSender { tx }, Inbox { rx })
}

impl Inbox {
    /// The next event; `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        self.rx.recv().await.map(|s| s.event)
    }

    /// Takes up to `limit` waiting events (at least one, waiting for it)
    /// into `events`. Returns how many, and how long the oldest of them
    /// waited in the inbox (0 when the bus is gone).
    pub async fn recv_many(
        &mut self,
        events: &mut Vec<BusEvent>,
        limit: usize,
    ) -> (usize, std::time::Duration) {
        let mut stamped = Vec::with_capacity(limit.min(64));
        let n = self.rx.recv_many(&mut stamped, limit).await;
        let waited = stamped.first().map(|s| s.at.elapsed()).unwrap_or_default();
        events.extend(stamped.into_iter().map(|s| s.event));
        (n, waited)
    }

    /// The next event if one waits now.
    pub fn try_recv(&mut self) -> Result<BusEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv().map(|s| s.event)
    }

    /// Events waiting now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

impl InboxSender {
    /// Sends `event`, waiting while the inbox is full (backpressure, never
    /// a drop). `Err` when the inbox's receiver is gone.
    pub async fn send(&self, event: BusEvent) -> Result<(), BusEvent> {
        let stamped = Stamped {
            event,
            at: Instant::now(),
        };
        self.tx.send(stamped).await.map_err(|e| e.0.event)
    }

    /// Waits for room for one event. `None` when the receiver is gone.
    pub async fn reserve(&self) -> Option<Permit<'_>> {
        self.tx.reserve().await.ok().map(Permit)
    }

    /// Sends `event`, on its way from the bus for `lag`, if there is room
    /// now; else gives it back (`Ok(Some)`). `Err` when the receiver is gone.
    pub fn try_send(
        &self,
        event: BusEvent,
        lag: std::time::Duration,
    ) -> Result<Option<BusEvent>, ()> {
        let stamped = Stamped {
            event,
            at: stamp(lag),
        };
        match self.tx.try_send(stamped) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(s)) => Ok(Some(s.event)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        }
    }

    /// Resolves once the inbox's receiver is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}
