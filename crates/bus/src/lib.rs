//! The bus seam: moves envelopes between nodes. It knows topics (rooms and
//! users), never sockets.
//!
//! # Layout
//!
//! - this file: the [`Bus`] trait, [`Topic`], [`Envelope`], [`BusStatus`], [`BusError`].
//! - [`history`]: room history types: positions ([`StreamId`]), [`Draft`], queries.
//! - [`memory`]: `MemoryBus`, in-process. One node alone, or several nodes in one test.
//! - [`redis`]: `RedisBus`, Redis pub/sub: pipelined `PUBLISH`, ONE subscriber
//!   connection per node that subscribes only the topics the node asked for,
//!   reconnecting with capped, jittered backoff and resubscribing everything.
//!
//! A stored message's [`Envelope`] carries its history position as data;
//! nothing downstream reads the position (or the room) out of the JSON.
//!
//! Traffic arrives on an [`Inbox`] (a bounded channel) that the node's fan-out
//! task owns, so single-node mode runs the same fan-out path as a cluster.
//! The bus promises, per subscribed topic, every stored message exactly once
//! and in order, across reconnects (gap repair from history), or a
//! [`BusEvent::Gap`] where history cannot fill the hole.

pub mod dialogs;
pub mod history;
mod inbox;
pub mod memory;
pub mod redis;

pub use dialogs::{DmDraft, ReadMark, is_guest};
pub use history::{DEFAULT_HISTORY, Draft, Epoch, HistoryPage, HistoryQuery, Position, StreamId};
pub use inbox::Inbox;
pub use memory::{MemoryBus, MemoryNetwork};
pub use redis::{RedisBus, RedisBusConfig};

use banter_protocol::{ChannelName, DialogEntry, DirectMessage, Message, RoomId, User, UserId};
use bytes::Bytes;
use tokio::sync::watch;

/// Where an envelope goes: one room's channel or one user's channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Everything said in a room, and its presence and typing events.
    Room(RoomId),
    /// Direct messages to every connection of one user.
    User(UserId),
    /// One channel of the Pusher front door: its events, stored briefly
    /// (like a user's mailbox) so that gap repair can give them back.
    Pusher(ChannelName),
}

/// One publish, as it reaches a subscribed node: the topic, the history
/// position of what it holds (a stored chat message), and the frame's JSON
/// exactly as published (nodes publish ready-to-send JSON frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Where it was published.
    pub topic: Topic,
    /// The message's position in its room's history: set by the bus for
    /// every stored message, `None` for events (presence, typing, DMs).
    pub position: Option<Position>,
    /// A presence change (in `banter-presence`'s own encoding), published
    /// by the presence store atomically with the change itself, in the
    /// room's order: the node merges these into `diff` frames.
    pub presence: bool,
    /// The frame's JSON.
    pub payload: Bytes,
}

/// What a node's [`Inbox`] receives: per topic, every stored message once
/// and in order, or word that it cannot be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// A publish.
    Envelope(Envelope),
    /// The topic's live delivery had a hole that history could not fill
    /// (history trimmed past it, lost, or a topic that has none): the
    /// topic's local members must be told.
    Gap(Topic),
    /// The topic's subscription was interrupted, and the `messages` missed
    /// meanwhile were delivered from history, before newer live ones.
    Repaired {
        /// The topic.
        topic: Topic,
        /// How many messages came from history.
        messages: usize,
    },
}

/// How many events may wait in an inbox before the bus waits for the fan-out.
pub const INBOX_CAPACITY: usize = 8192;

/// The bus's health, published on a watch channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStatus {
    /// True while the bus delivers subscriptions (readiness).
    pub up: bool,
    /// True while the bus can store and publish: publishes are tried. It
    /// stays true while only the subscriber connection is being replaced
    /// (what is published meanwhile reaches this node by gap repair).
    pub writable: bool,
    /// How many times the subscriber connection was re-established.
    pub reconnects: u64,
    /// On Redis Cluster, how many shard primaries the subscriber holds a
    /// live connection to (0 while it is down); `None` on one Redis or in
    /// memory.
    pub shards: Option<usize>,
}

/// Why the bus did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis is unreachable or failed the command.
    #[error("bus unavailable: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// No pooled connection could be had.
    #[error("bus unavailable: {0}")]
    Pool(#[source] deadpool_redis::PoolError),
    /// The bus is down (disconnected, reconnecting) and refused at once.
    #[error("bus unavailable: disconnected")]
    Down,
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
    /// The Redis URL cannot be used.
    #[error("bad redis url: {0}")]
    Url(#[source] ::redis::RedisError),
    /// A setting of the bus that cannot work.
    #[error("bad bus configuration: {0}")]
    Config(&'static str),
    /// A message that cannot be encoded for storage (a bug).
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
    /// On Redis Cluster, no replica confirmed a stored message in time: the
    /// primary may be about to lose it (see `Replication`), so it is not acked.
    #[error("bus unavailable: no replica confirmed the message")]
    NotReplicated,
    /// Redis answered with something this code did not write.
    #[error("unexpected reply from redis: {0}")]
    Unexpected(String),
}

/// Moves payloads between the nodes of a cluster.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes `payload` on `topic`. `Ok` means the bus has taken it: every
    /// node subscribed to `topic` now will receive it, in the topic's order.
    /// Returns how many nodes that is (0: nobody listens, e.g. a user who is
    /// online nowhere).
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError>;

    /// Publishes `payload` on `topic` and keeps it in the topic's short
    /// stream (Redis: the topic's mailbox, which gap repair reads), as one
    /// step, so an interrupted subscriber gets it back in order. For topics
    /// whose events are not chat messages: a Pusher channel's. Returns how
    /// many nodes listen.
    async fn publish_stored(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError>;

    /// Stores a chat message in its room's history and publishes it on the
    /// room's topic, as one atomic step: the history order is the live order.
    /// The message's id is its history position. Returns the stamped message.
    async fn publish_message(&self, draft: &Draft) -> Result<Message, BusError>;

    /// Reads a room's history.
    async fn history(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BusError>;

    /// Stores a direct message in the dialog of its two users and delivers
    /// it on both users' topics (every connection of each, on any node).
    /// `Ok` once stored; the message's id is its position in the dialog.
    async fn send_dm(&self, draft: &DmDraft) -> Result<DirectMessage, BusError>;

    /// Reads the dialog of `me` and `with`, oldest first. An `After` from
    /// another epoch (the dialog's history was lost since) reads the newest.
    async fn dm_history(
        &self,
        me: &UserId,
        with: &UserId,
        query: HistoryQuery,
    ) -> Result<Vec<DirectMessage>, BusError>;

    /// The dialogs of `me`, most recent first, at most `limit`.
    async fn dialogs(&self, me: &UserId, limit: usize) -> Result<Vec<DialogEntry>, BusError>;

    /// Moves how far `by` has read the dialog with `with` up to `id` (never
    /// back), and when it moved delivers a `read` receipt to both users.
    /// `None` when `id` is not a position in the dialog's current history.
    async fn mark_read(
        &self,
        by: &User,
        with: &UserId,
        id: Position,
    ) -> Result<Option<ReadMark>, BusError>;

    /// Whether some node listens on `user`'s topic (one of their
    /// connections is open somewhere).
    async fn online(&self, user: &UserId) -> Result<bool, BusError> {
        Ok(self.listeners(&Topic::User(user.clone())).await? > 0)
    }

    /// How many nodes listen on `topic` now.
    async fn listeners(&self, topic: &Topic) -> Result<usize, BusError>;

    /// The Pusher channels some node listens on (one of its sockets is
    /// subscribed), in no particular order.
    async fn pusher_channels(&self) -> Result<Vec<ChannelName>, BusError>;

    /// Takes a reference on `topic` for this node (a local member joined):
    /// the topic is delivered to this node's inbox while it holds any.
    /// Returns once the subscription is in place, so nothing published
    /// afterwards is missed. The reference is taken whatever the result (a
    /// bus that is down restores the subscription when it reconnects): give
    /// each one back with [`unsubscribe`](Self::unsubscribe).
    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError>;

    /// Gives back a reference taken by [`subscribe`](Self::subscribe). With
    /// the last one, delivery of `topic` stops: at once for a user's topic
    /// (so a direct message finds nobody listening), a moment later for a
    /// room (so a flapping room does not churn subscriptions). Because the
    /// bus counts, a join and a leave racing on two sessions can never leave
    /// a room with local members unsubscribed.
    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError>;

    /// The bus's health, updated as it changes.
    fn status(&self) -> watch::Receiver<BusStatus>;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
