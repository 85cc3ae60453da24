//! [`MemoryPresence`]: presence kept in this process.
//!
//! It follows the Redis implementation rule for rule (wall-clock expiry in
//! ms, entries counted per user until they are left or swept, a room
//! forgotten `2 × ttl` after its last join or refresh), so that the contract
//! tests hold for both and a lone node behaves like a cluster of one.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banter_protocol::{ConnId, RoomId, User, UserId};

use crate::{Member, Presence, PresenceError};

/// Presence for a lone node, or for several nodes of one test: clones share
/// one store, so each simulated node can hold its own handle.
#[derive(Clone, Debug)]
pub struct MemoryPresence {
    /// The one store every clone shares. A std mutex: it is never held
    /// across an await, and every operation is a few map lookups.
    state: Arc<Mutex<HashMap<RoomId, Room>>>,
    /// How long an entry lives after its last join or refresh, in ms.
    ttl_ms: u64,
}

/// One room: the same three things the Redis implementation keeps in keys.
#[derive(Debug, Default)]
struct Room {
    /// Connection → whose it is and when it expires (ms since epoch).
    conns: HashMap<ConnId, Conn>,
    /// User → how many of `conns` are theirs. A user joins when this goes
    /// 0 → 1 and leaves when it goes back to 0, by `leave` or by a sweep,
    /// so every announced join is paired with exactly one announced leave.
    counts: HashMap<UserId, usize>,
    /// When the whole room is forgotten (ms since epoch), like the Redis
    /// keys' PEXPIRE: a room whose nodes all died must not live forever.
    forget_at: u64,
}

#[derive(Debug)]
struct Conn {
    user: User,
    expires: u64,
}

impl MemoryPresence {
    /// An empty store whose entries expire `ttl` after their last join or
    /// refresh (`presence.ttl_ms`; nodes refresh every ttl/3).
    pub fn new(ttl: Duration) -> MemoryPresence {
        MemoryPresence {
            state: Arc::default(),
            ttl_ms: duration_ms(ttl),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Room>> {
        // A panic while holding the lock leaves the maps consistent (every
        // operation validates as it goes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The room, unless it does not exist or was forgotten (then it is dropped).
fn live_room<'a>(
    rooms: &'a mut HashMap<RoomId, Room>,
    room: &RoomId,
    now: u64,
) -> Option<&'a mut Room> {
    forget_if_due(rooms, room, now);
    rooms.get_mut(room)
}

/// Drops the room if it is past its `forget_at`, as Redis expires keys.
fn forget_if_due(rooms: &mut HashMap<RoomId, Room>, room: &RoomId, now: u64) {
    if rooms.get(room).is_some_and(|r| r.forget_at <= now) {
        rooms.remove(room);
    }
}

/// Drops the room once nothing is left in it, as Redis drops empty keys.
fn drop_if_empty(rooms: &mut HashMap<RoomId, Room>, room: &RoomId) {
    if rooms.get(room).is_some_and(|r| r.conns.is_empty()) {
        rooms.remove(room);
    }
}

impl Room {
    /// Takes one connection of `user` away; true when it was their last.
    fn uncount(&mut self, user: &UserId) -> bool {
        match self.counts.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.counts.remove(user);
                true
            }
        }
    }
}

#[async_trait::async_trait]
impl Presence for MemoryPresence {
    async fn join(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError> {
        let now = now_ms();
        let mut rooms = self.lock();
        forget_if_due(&mut rooms, room, now);
        let r = rooms.entry(room.clone()).or_default();
        r.forget_at = now.saturating_add(self.ttl_ms.saturating_mul(2));
        let expires = now.saturating_add(self.ttl_ms);
        match r.conns.entry(member.conn.clone()) {
            Entry::Occupied(mut e) => {
                // The same connection again: only its expiry moves.
                e.get_mut().expires = expires;
                Ok(false)
            }
            Entry::Vacant(e) => {
                e.insert(Conn {
                    user: member.user.clone(),
                    expires,
                });
                let n = r.counts.entry(member.user.id.clone()).or_default();
                *n += 1;
                Ok(*n == 1)
            }
        }
    }

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError> {
        let now = now_ms();
        let mut rooms = self.lock();
        let Some(r) = live_room(&mut rooms, room, now) else {
            return Ok(false);
        };
        let Some(gone) = r.conns.remove(&member.conn) else {
            return Ok(false);
        };
        let last = r.uncount(&gone.user.id);
        drop_if_empty(&mut rooms, room);
        Ok(last)
    }

    async fn users(&self, room: &RoomId) -> Result<Vec<User>, PresenceError> {
        let now = now_ms();
        let mut rooms = self.lock();
        let Some(r) = live_room(&mut rooms, room, now) else {
            return Ok(Vec::new());
        };
        let live = r
            .conns
            .values()
            .filter(|c| c.expires > now)
            .map(|c| c.user.clone())
            .collect();
        Ok(sorted_unique(live))
    }

    async fn refresh(
        &self,
        entries: &[(RoomId, ConnId)],
    ) -> Result<Vec<(RoomId, User)>, PresenceError> {
        let now = now_ms();
        let expires = now.saturating_add(self.ttl_ms);
        let mut rooms = self.lock();
        let mut departed = Vec::new();
        for (room, conns) in group_by_room(entries) {
            let Some(r) = live_room(&mut rooms, room, now) else {
                continue;
            };
            r.forget_at = now.saturating_add(self.ttl_ms.saturating_mul(2));
            for conn in conns {
                // Only entries still present: one swept by another node
                // (its leave already announced) is not brought back.
                if let Some(c) = r.conns.get_mut(conn) {
                    c.expires = expires;
                }
            }
            let dead: Vec<ConnId> = r
                .conns
                .iter()
                .filter(|(_, c)| c.expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let mut gone = Vec::new();
            for conn in dead {
                if let Some(c) = r.conns.remove(&conn)
                    && r.uncount(&c.user.id)
                {
                    gone.push(c.user);
                }
            }
            drop_if_empty(&mut rooms, room);
            departed.extend(sorted_unique(gone).into_iter().map(|u| (room.clone(), u)));
        }
        Ok(departed)
    }
}

/// The entries' rooms in order of first appearance, each with its conns.
pub(crate) fn group_by_room(entries: &[(RoomId, ConnId)]) -> Vec<(&RoomId, Vec<&ConnId>)> {
    let mut index: HashMap<&RoomId, usize> = HashMap::new();
    let mut groups: Vec<(&RoomId, Vec<&ConnId>)> = Vec::new();
    for (room, conn) in entries {
        let i = *index.entry(room).or_insert_with(|| {
            groups.push((room, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, conns)) = groups.get_mut(i) {
            conns.push(conn);
        }
    }
    groups
}

/// Users sorted by name then id, each id once (the first name in that order
/// wins if one user's connections carry different names).
pub(crate) fn sorted_unique(mut users: Vec<User>) -> Vec<User> {
    users.sort_by(|a, b| (a.name.as_str(), a.id.as_str()).cmp(&(b.name.as_str(), b.id.as_str())));
    let mut seen = HashSet::new();
    users.retain(|u| seen.insert(u.id.clone()));
    users
}

/// Wall-clock ms since the Unix epoch: the clock entry expiries are kept in,
/// shared by every node of a cluster (Redis sees only these numbers).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

/// A duration in whole ms, at least 1 so that an entry is never born dead.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
