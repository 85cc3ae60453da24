//! The presence seam: who is online in which room.
//!
//! # Layout
//!
//! - this file: the [`Presence`] trait, [`Member`], [`PresenceError`].
//! - [`memory`]: `MemoryPresence`, for a lone node (or several nodes of one test).
//! - [`redis`]: `RedisPresence`: per room a sorted set `{prefix}:presence:{room}`
//!   (member = connection id, score = expiry in ms) and a hash
//!   `{prefix}:presence:{room}:users` (connection id → user JSON). A node
//!   refreshes its own entries every ttl/3, so the users of a crashed node
//!   age out after the ttl.
//!
//! Presence counts *users*: a user with two connections in a room is listed
//! once, joins with the first connection and leaves with the last.

pub mod memory;
pub mod redis;

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

use banter_protocol::{ConnId, RoomId, User};

/// One connection of one user in a room.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The connection, unique in the cluster.
    pub conn: ConnId,
    /// Whose connection it is.
    pub user: User,
}

/// Why presence could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis is unreachable or failed the command.
    #[error("presence unavailable: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// No pooled connection could be had.
    #[error("presence unavailable: {0}")]
    Pool(#[source] deadpool_redis::PoolError),
    /// Redis held something this code did not write.
    #[error("presence data is corrupt: {0}")]
    Corrupt(String),
}

/// Who is online where. Entries expire `ttl` after their last join or refresh.
#[async_trait::async_trait]
pub trait Presence: Send + Sync + std::fmt::Debug + 'static {
    /// Records `member` in `room` until now + ttl. Returns `true` when this is
    /// the user's first live connection in the room (announce a join).
    async fn join(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError>;

    /// Removes `member` from `room`. Returns `true` when it was the user's
    /// last live connection in the room (announce a leave). Removing an
    /// absent member returns `false`.
    async fn leave(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError>;

    /// Everyone with a live (unexpired) connection in `room`, each user once,
    /// sorted by name then id.
    async fn users(&self, room: &RoomId) -> Result<Vec<User>, PresenceError>;

    /// Pushes the expiry of these entries to now + ttl (a node calls it for
    /// its own entries every ttl/3), then removes expired entries of these
    /// rooms — left by crashed nodes — and returns the users who thereby left
    /// (no live connection remains), each once per room, so the caller can
    /// announce the leaves. Two nodes sweeping the same room never both get
    /// the same departure.
    async fn refresh(
        &self,
        entries: &[(RoomId, ConnId)],
    ) -> Result<Vec<(RoomId, User)>, PresenceError>;
}
