//! [`MemoryPresence`]: presence kept in this process.
//!
//! It follows the Redis implementation rule for rule (wall-clock expiry in
//! ms, entries counted per user until they are left or swept, tombstones
//! for left connections, a room forgotten `2 × ttl` after its last join or
//! refresh, changes published on the room's topic as they are made), so that
//! the contract tests hold for both and a lone node behaves like a cluster
//! of one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use banter_bus::{MemoryNetwork, Topic};
use banter_protocol::{ConnId, User, UserId};
use bytes::Bytes;

use crate::{Change, Member, Page, Presence, PresenceError};

/// Presence for a lone node, or for several nodes of one test: clones share
/// one store, so each simulated node can hold its own handle.
#[derive(Clone, Debug)]
pub struct MemoryPresence {
    /// The one store every clone shares. A std mutex: it is never held
    /// across an await, and every operation is a few map lookups.
    state: Arc<Mutex<HashMap<Topic, Room>>>,
    /// How long an entry lives after its last join or refresh, in ms.
    ttl_ms: u64,
    /// Where changes are published (the rooms' topics), in the order they
    /// are made; without one they are not published (a store on its own).
    network: Option<MemoryNetwork>,
    /// The subscription counts (see [`Presence::tally`]), per topic.
    tallies: Arc<Mutex<HashMap<Topic, Tally>>>,
}

/// One topic's subscription counts, as `lua/tally.lua` keeps them.
#[derive(Debug, Default)]
struct Tally {
    /// Node → its sockets subscribed, and when that expires (ms since epoch).
    nodes: HashMap<String, (usize, u64)>,
    /// The total last published.
    last: Option<usize>,
}

impl Tally {
    /// The total over the nodes not expired by `now`; sweeps the others.
    fn total(&mut self, now: u64) -> usize {
        self.nodes.retain(|_, (_, expiry)| *expiry >= now);
        self.nodes.values().map(|(n, _)| n).sum()
    }
}

/// One room: the same things the Redis implementation keeps in keys.
#[derive(Debug, Default)]
struct Room {
    /// Connection → whose it is and when it expires (ms since epoch).
    conns: HashMap<ConnId, Conn>,
    /// User → how many of `conns` are theirs. A user joins when this goes
    /// 0 → 1 and leaves when it goes back to 0, by `leave` or by a sweep,
    /// so every announced join is paired with exactly one announced leave.
    counts: HashMap<UserId, usize>,
    /// The users present, in id order: what pages are read from; with
    /// their `info`, if any.
    roster: BTreeMap<UserId, (User, Option<Arc<str>>)>,
    /// Connections that left, and when: a refresh from a snapshot taken
    /// before the leave must not bring them back. Kept for a ttl.
    left: HashMap<ConnId, u64>,
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
    /// refresh (nodes refresh well within it), publishing
    /// nothing.
    pub fn new(ttl: Duration) -> MemoryPresence {
        MemoryPresence {
            state: Arc::default(),
            ttl_ms: duration_ms(ttl),
            network: None,
            tallies: Arc::default(),
        }
    }

    /// The same, publishing every change on `network`'s room topics.
    pub fn on(network: MemoryNetwork, ttl: Duration) -> MemoryPresence {
        MemoryPresence {
            network: Some(network),
            ..MemoryPresence::new(ttl)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Room>> {
        // A panic while holding the lock leaves the maps consistent (every
        // operation validates as it goes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `change` on the store and publishes the changes it made on
    /// `room`'s topic, as one step.
    async fn changing<T>(
        &self,
        room: &Topic,
        change: impl FnOnce(&mut HashMap<Topic, Room>) -> (T, Vec<Change>),
    ) -> T {
        let apply = || {
            let (out, changes) = change(&mut self.lock());
            (
                out,
                changes.iter().map(Change::encode).collect::<Vec<Bytes>>(),
            )
        };
        match &self.network {
            Some(network) => network.publish_presence(room, apply).await,
            None => apply().0,
        }
    }
}

/// The room, unless it does not exist or was forgotten (then it is dropped).
fn live_room<'a>(
    rooms: &'a mut HashMap<Topic, Room>,
    room: &Topic,
    now: u64,
) -> Option<&'a mut Room> {
    if rooms.get(room).is_some_and(|r| r.forget_at <= now) {
        rooms.remove(room);
    }
    rooms.get_mut(room)
}

impl Room {
    /// Counts one more connection of `user`; a change when it is their first.
    fn count(&mut self, user: &User, info: &Option<Arc<str>>) -> Option<Change> {
        let n = self.counts.entry(user.id.clone()).or_default();
        *n += 1;
        (*n == 1).then(|| {
            self.roster
                .insert(user.id.clone(), (user.clone(), info.clone()));
            Change {
                joined: true,
                user: user.clone(),
                count: self.roster.len(),
                info: info.clone(),
            }
        })
    }

    /// Takes one connection of `user` away; a change when it was their last.
    fn uncount(&mut self, user: &User) -> Option<Change> {
        match self.counts.get_mut(&user.id) {
            Some(n) if *n > 1 => {
                *n -= 1;
                None
            }
            _ => {
                self.counts.remove(&user.id);
                let info = self.roster.remove(&user.id).and_then(|(_, info)| info);
                Some(Change {
                    joined: false,
                    user: user.clone(),
                    count: self.roster.len(),
                    info,
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl Presence for MemoryPresence {
    async fn tally(&self, topic: &Topic, node: &str, local: usize) -> Result<usize, PresenceError> {
        let now = now_ms();
        let expiry = now.saturating_add(self.ttl_ms);
        let apply = || {
            let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
            let tally = tallies.entry(topic.clone()).or_default();
            if local > 0 {
                tally.nodes.insert(node.to_owned(), (local, expiry));
            } else {
                tally.nodes.remove(node);
            }
            let total = tally.total(now);
            let changed = tally.last != Some(total);
            tally.last = Some(total);
            if total == 0 {
                tallies.remove(topic);
            }
            let published = if changed {
                vec![crate::encode_tally(total)]
            } else {
                Vec::new()
            };
            (total, published)
        };
        Ok(match &self.network {
            Some(network) => network.publish_presence(topic, apply).await,
            None => apply().0,
        })
    }

    async fn tallied(&self, topic: &Topic) -> Result<usize, PresenceError> {
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(tallies.get_mut(topic).map_or(0, |t| t.total(now_ms())))
    }

    async fn join(&self, room: &Topic, member: &Member) -> Result<(), PresenceError> {
        let (now, ttl) = (now_ms(), self.ttl_ms);
        self.changing(room, |rooms| {
            live_room(rooms, room, now);
            let r = rooms.entry(room.clone()).or_default();
            r.forget_at = now.saturating_add(ttl.saturating_mul(2));
            r.left.remove(&member.conn);
            let expires = now.saturating_add(ttl);
            if let Some(c) = r.conns.get_mut(&member.conn) {
                // The same connection again: only its expiry moves.
                c.expires = expires;
                return ((), Vec::new());
            }
            r.conns.insert(
                member.conn.clone(),
                Conn {
                    user: member.user.clone(),
                    expires,
                },
            );
            (
                (),
                r.count(&member.user, &member.info).into_iter().collect(),
            )
        })
        .await;
        Ok(())
    }

    async fn leave(&self, room: &Topic, member: &Member) -> Result<(), PresenceError> {
        let (now, ttl) = (now_ms(), self.ttl_ms);
        self.changing(room, |rooms| {
            let Some(r) = live_room(rooms, room, now) else {
                return ((), Vec::new());
            };
            r.left.insert(member.conn.clone(), now);
            r.left.retain(|_, at| now.saturating_sub(*at) < ttl);
            let Some(gone) = r.conns.remove(&member.conn) else {
                return ((), Vec::new());
            };
            ((), r.uncount(&gone.user).into_iter().collect())
        })
        .await;
        Ok(())
    }

    async fn page(
        &self,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, PresenceError> {
        let now = now_ms();
        let mut rooms = self.lock();
        let Some(r) = live_room(&mut rooms, room, now) else {
            return Ok(Page::default());
        };
        type Entry<'a> = (&'a UserId, &'a (User, Option<Arc<str>>));
        let rest: Box<dyn Iterator<Item = Entry<'_>>> = match after {
            Some(after) => Box::new(
                r.roster
                    .iter()
                    .skip_while(move |(id, _)| id.as_str() <= after),
            ),
            None => Box::new(r.roster.iter()),
        };
        let mut entries: Vec<&(User, Option<Arc<str>>)> =
            rest.take(limit.saturating_add(1)).map(|(_, e)| e).collect();
        let next = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map(|(u, _)| u.id.to_string())
        } else {
            None
        };
        let info = entries
            .iter()
            .filter_map(|(u, info)| Some((u.id.clone(), info.clone()?)))
            .collect();
        Ok(Page {
            users: entries.into_iter().map(|(u, _)| u.clone()).collect(),
            count: r.roster.len(),
            next,
            info,
        })
    }

    async fn refresh(&self, entries: &[(Topic, Member)]) -> Result<(), PresenceError> {
        let (now, ttl) = (now_ms(), self.ttl_ms);
        let expires = now.saturating_add(ttl);
        for (room, members) in group_by_room(entries) {
            self.changing(room, |rooms| {
                let r = rooms.entry(room.clone()).or_default();
                if r.forget_at <= now {
                    *r = Room::default();
                }
                r.forget_at = now.saturating_add(ttl.saturating_mul(2));
                r.left.retain(|_, at| now.saturating_sub(*at) < ttl);
                let mut changes = Vec::new();
                for member in members {
                    if r.left.contains_key(&member.conn) {
                        continue; // it left after the snapshot was taken
                    }
                    if let Some(c) = r.conns.get_mut(&member.conn) {
                        c.expires = expires;
                        continue;
                    }
                    // Swept while its node stalled: it is back.
                    r.conns.insert(
                        member.conn.clone(),
                        Conn {
                            user: member.user.clone(),
                            expires,
                        },
                    );
                    changes.extend(r.count(&member.user, &member.info));
                }
                let dead: Vec<ConnId> = r
                    .conns
                    .iter()
                    .filter(|(_, c)| c.expires <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for conn in dead {
                    if let Some(c) = r.conns.remove(&conn) {
                        changes.extend(r.uncount(&c.user));
                    }
                }
                ((), changes)
            })
            .await;
        }
        Ok(())
    }
}

/// The entries' rooms in order of first appearance, each with its members.
pub(crate) fn group_by_room(entries: &[(Topic, Member)]) -> Vec<(&Topic, Vec<&Member>)> {
    let mut index: HashMap<&Topic, usize> = HashMap::new();
    let mut groups: Vec<(&Topic, Vec<&Member>)> = Vec::new();
    for (room, member) in entries {
        let i = *index.entry(room).or_insert_with(|| {
            groups.push((room, Vec::new()));
            groups.len() - 1
        });
        if let Some((_, members)) = groups.get_mut(i) {
            members.push(member);
        }
    }
    groups
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
