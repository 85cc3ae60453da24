//! The presence seam: who is online in which room.
//!
//! # Layout
//!
//! - this file: the [`Presence`] trait, [`Member`], [`Page`], [`PresenceError`].
//! - [`change`]: a presence change as it is published on the room's topic.
//! - [`memory`]: `MemoryPresence`, for a lone node (or several nodes of one test).
//! - [`redis`]: `RedisPresence`: per room a sorted set of connections scored
//!   by expiry and the hashes and roster beside it (see the module). A node
//!   refreshes its own entries often enough (the node's choice: every
//!   `presence.ttl_ms / 4`, entries living half of it) that the users of a
//!   crashed node age out within `presence.ttl_ms`.
//!
//! Presence counts *users*: a user with two connections in a room is listed
//! once, joins with the first connection and leaves with the last. Every
//! change is published on the room's topic by the store itself, atomically
//! with the change, so every node sees one room's changes in one order (a
//! leave on one node and a join on another can never arrive reversed), and
//! nodes merge them into `diff` frames for their members.

pub mod change;
pub mod memory;
pub mod redis;

pub use change::{Change, decode_tally, encode_tally};
pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use banter_bus::Topic;
use banter_protocol::{ConnId, User, UserId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One connection of one user in a room (a Banter room, or a Pusher
/// presence channel: presence is kept per [`Topic`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The connection, unique in the cluster.
    pub conn: ConnId,
    /// Whose connection it is.
    pub user: User,
    /// What else the room shows of the user, as JSON (a Pusher presence
    /// channel's `user_info`); kept with the user's entry, given back in
    /// pages and in the user's join. `None` in Banter rooms.
    pub info: Option<Arc<str>>,
}

impl Member {
    /// A member without `info`.
    pub fn new(conn: ConnId, user: User) -> Member {
        Member {
            conn,
            user,
            info: None,
        }
    }

    /// How the store keeps the member's user: `{"id","name"}`, with
    /// `"info"` when there is one.
    pub fn stored_json(&self) -> String {
        stored_json(&self.user, self.info.as_deref())
    }
}

/// `{"id","name"}` of `user`, with `"info": info` (JSON) when given.
pub(crate) fn stored_json(user: &User, info: Option<&str>) -> String {
    let json = serde_json::to_string(user).unwrap_or_default();
    match info {
        Some(info) if json.ends_with('}') => {
            format!("{},\"info\":{info}}}", &json[..json.len() - 1])
        }
        _ => json,
    }
}

/// A stored user as read back: `{"id","name"}` and `info` if any, read in
/// one pass (`info` kept as its JSON text, not built).
#[derive(serde::Deserialize)]
pub(crate) struct Stored {
    id: banter_protocol::UserId,
    name: banter_protocol::DisplayName,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

impl Stored {
    /// The user, and its `info` if any.
    pub(crate) fn into_parts(self) -> (User, Option<Arc<str>>) {
        let user = User {
            id: self.id,
            name: self.name,
        };
        // `"info": null` is no info, as it was when written.
        let info = self
            .info
            .filter(|raw| raw.get() != "null")
            .map(|raw| Arc::from(raw.get()));
        (user, info)
    }
}

/// A stored user as read back: the user, and its `info` if any.
pub(crate) fn parse_stored(json: &[u8]) -> Option<(User, Option<Arc<str>>)> {
    serde_json::from_slice::<Stored>(json)
        .ok()
        .map(Stored::into_parts)
}

/// One page of a room's users.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Each user once, in id order.
    pub users: Vec<User>,
    /// How many users the room has: exact.
    pub count: usize,
    /// Where the next page starts, if more users follow.
    pub next: Option<String>,
    /// The `info` of the page's users that have one (JSON).
    pub info: BTreeMap<UserId, Arc<str>>,
}

/// Why presence could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis is unreachable or failed the command.
    #[error("presence unavailable: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// The bus's command connection failed (Redis unreachable, or the
    /// command refused).
    #[error("presence unavailable: {0}")]
    Bus(#[source] banter_bus::BusError),
    /// Redis held something this code did not write.
    #[error("presence data is corrupt: {0}")]
    Corrupt(String),
}

/// Who is online where. Entries expire `ttl` after their last join or
/// refresh; every change is published on the room's topic (see the crate
/// docs).
#[async_trait::async_trait]
pub trait Presence: Send + Sync + std::fmt::Debug + 'static {
    /// Records `member` in `room` until now + ttl. The user's first live
    /// connection in the room publishes their join.
    async fn join(&self, room: &Topic, member: &Member) -> Result<(), PresenceError>;

    /// Removes `member` from `room`, for good: a refresh that still lists it
    /// (a snapshot taken before the leave) does not bring it back. The
    /// user's last connection publishes their leave. Removing an absent
    /// member is fine.
    async fn leave(&self, room: &Topic, member: &Member) -> Result<(), PresenceError>;

    /// Up to `limit` of `room`'s users after the cursor `after` (from a
    /// previous page's `next`), in id order, with the room's exact count.
    /// Costs the page, not the room.
    async fn page(
        &self,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, PresenceError>;

    /// [`Presence::join`], then the room's first page of `limit` users
    /// (what a `joined` frame lists): one round trip where the store can.
    async fn join_page(
        &self,
        room: &Topic,
        member: &Member,
        limit: usize,
    ) -> Result<Page, PresenceError> {
        self.join(room, member).await?;
        self.page(room, None, limit).await
    }

    /// Keeps these entries (a node's own live members) alive until now +
    /// ttl, puts back any that were swept meanwhile (a node that stalled past
    /// the ttl: its users come back, with their joins), then sweeps the
    /// expired entries of these rooms (left by crashed nodes), publishing
    /// each user's leave once, however many nodes sweep the same room.
    async fn refresh(&self, entries: &[(Topic, Member)]) -> Result<(), PresenceError>;

    /// Sets how many of `node`'s sockets subscribe `topic` (until now +
    /// ttl: a node re-tallies its topics within it; 0 takes the node out),
    /// sweeps the expired counts of other nodes, and returns the topic's
    /// count over every node. When that total differs from the last one
    /// published, it is published on the topic ([`encode_tally`]), in the
    /// topic's order: the Pusher `subscription_count`.
    async fn tally(&self, topic: &Topic, node: &str, local: usize) -> Result<usize, PresenceError>;

    /// How many sockets subscribe `topic` over every node whose count has
    /// not expired.
    async fn tallied(&self, topic: &Topic) -> Result<usize, PresenceError>;
}
