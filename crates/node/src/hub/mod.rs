//! The local hub: which sockets are on this node and which rooms they are in,
//! and the one place where joining and leaving a room touches the bus
//! (subscribe, unsubscribe: [`subscriptions`]) and presence (join, leave,
//! their events: [`crate::presence`]).
//!
//! The fan-out reads the hub under a read lock once per run of envelopes and
//! offers the same deliveries to each member's [`Outlet`]: written at once
//! when the socket takes them, else queued; it never waits on a socket. A
//! member whose queue is full is kicked as a slow consumer.

mod subscriptions;

pub(crate) use subscriptions::UNSUBSCRIBE_DELAY;

use crate::clock::clock_s;
use crate::metrics::{DropReason, Metrics};
use crate::outlet::{Delivery, Kick, Offer, Outlet};
use crate::presence;
use banter_bus::{Bus, BusError, Topic};
use banter_presence::{Member, Presence, PresenceError};
use banter_protocol::{CloseReason, ConnId, PresenceEvent, RoomId, User, UserId};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};
use subscriptions::Subscriptions;

/// A socket whose queue has not moved for this long is closed as a slow
/// consumer (it stopped reading while nothing else arrives for it, which
/// would otherwise never overflow its queue).
const STUCK_WRITE: Duration = Duration::from_secs(10);

/// How the rest of the node reaches one socket.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    /// Whose socket it is.
    pub user: User,
    /// Its write side, shared with its task.
    pub outlet: Arc<Outlet>,
    /// Its kick switch.
    pub kick: Arc<Kick>,
}

#[derive(Debug, Default)]
struct State {
    conns: HashMap<ConnId, ConnHandle>,
    rooms: HashMap<RoomId, HashMap<ConnId, ConnHandle>>,
    /// Each user's local connections: where their direct messages go.
    users: HashMap<UserId, HashMap<ConnId, ConnHandle>>,
    /// Topics whose last local member left, and when: unsubscribed after
    /// [`subscriptions::UNSUBSCRIBE_DELAY`] unless a member came back meanwhile.
    emptied: HashMap<Topic, Instant>,
}

/// Why a join did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    /// The bus could not subscribe the room.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Presence could not record the member.
    #[error(transparent)]
    Presence(#[from] PresenceError),
}

/// The local rooms, see the module docs.
#[derive(Debug)]
pub(crate) struct Hub {
    state: RwLock<State>,
    subscriptions: Subscriptions,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, presence: Arc<dyn Presence>, metrics: Arc<Metrics>) -> Hub {
        Hub {
            state: RwLock::default(),
            subscriptions: Subscriptions::new(bus.clone()),
            bus,
            presence,
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a socket reachable, and subscribes its user's topic (direct
    /// messages) when it is the user's first connection on this node.
    pub async fn register(&self, conn: &ConnId, handle: ConnHandle) {
        let user = handle.user.id.clone();
        let first = {
            let mut state = self.write();
            state.conns.insert(conn.clone(), handle.clone());
            let conns = state.users.entry(user.clone()).or_default();
            conns.insert(conn.clone(), handle);
            conns.len() == 1
        };
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        if first && let Err(e) = self.subscriptions.ensure(&Topic::User(user)).await {
            // Kept as wanted: the bus restores it when it reconnects.
            tracing::warn!(error = %e, "user topic not subscribed yet");
        }
    }

    /// Forgets a socket; call after [`leave_all`](Self::leave_all). When it
    /// was its user's last connection here, the user's topic is
    /// unsubscribed at once: a direct message sent from now on finds nobody
    /// listening and its sender is told (`not_found`), rather than being
    /// acked into a node that has no one to give it to.
    pub async fn unregister(&self, member: &Member) {
        let last = {
            let mut state = self.write();
            if state.conns.remove(&member.conn).is_some() {
                self.metrics.connections.dec();
            }
            match state.users.get_mut(&member.user.id) {
                Some(conns) => {
                    conns.remove(&member.conn);
                    let last = conns.is_empty();
                    if last {
                        state.users.remove(&member.user.id);
                    }
                    last
                }
                None => false,
            }
        };
        if last {
            let topic = Topic::User(member.user.id.clone());
            self.unsubscribe(vec![(topic, Instant::now())]).await;
        }
    }

    /// Whether `topic` has no local member (any more).
    fn idle(&self, topic: &Topic) -> bool {
        let state = self.read();
        match topic {
            Topic::Room(room) => !state.rooms.contains_key(room),
            Topic::User(user) => !state.users.contains_key(user),
        }
    }

    /// Unsubscribes those of `due` that are still without a local member
    /// (checked in the subscriptions' order, so a join that came meanwhile
    /// keeps its topic); those the bus refused are tried again later.
    async fn unsubscribe(&self, due: Vec<(Topic, Instant)>) {
        let refused = self.subscriptions.drop_idle(due, |t| self.idle(t)).await;
        if !refused.is_empty() {
            let mut state = self.write();
            for (topic, since) in refused {
                state.emptied.entry(topic).or_insert(since);
            }
        }
    }

    /// Sockets on this node.
    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }

    /// Every (room, member) on this node: what the presence refresh keeps
    /// alive, and what is registered again after Redis lost it.
    pub fn local_members(&self) -> Vec<(RoomId, Member)> {
        let state = self.read();
        state
            .rooms
            .iter()
            .flat_map(|(room, members)| {
                members.iter().map(move |(conn, handle)| {
                    let member = Member {
                        conn: conn.clone(),
                        user: handle.user.clone(),
                    };
                    (room.clone(), member)
                })
            })
            .collect()
    }

    /// Hands frames (consecutive ones of one topic, in order) to every local
    /// socket `topic` reaches (a room's members, or a user's connections).
    /// Returns how many deliveries that made. Never waits on a socket: a
    /// full queue kicks its client as a slow consumer. The read lock is held
    /// throughout, so a join or leave waits for one fan-out at most.
    pub fn deliver(&self, topic: &Topic, deliveries: &[Arc<Delivery>]) -> usize {
        let state = self.read();
        let targets = match topic {
            Topic::Room(room) => state.rooms.get(room),
            Topic::User(user) => state.users.get(user),
        };
        let Some(targets) = targets else {
            return 0;
        };
        let mut delivered = 0;
        for handle in targets.values() {
            match handle.outlet.offer(deliveries) {
                Offer::Written | Offer::Queued => delivered += deliveries.len(),
                Offer::Full => {
                    if !handle.kick.is_kicked() {
                        self.metrics.slow_consumers.inc();
                    }
                    self.metrics
                        .dropped_n(DropReason::SlowConsumer, deliveries.len());
                    handle.kick.kick(CloseReason::SlowConsumer);
                }
                Offer::Skipped | Offer::Closed => {}
            }
        }
        delivered
    }

    /// Asks every socket to close with `reason` (the drain).
    pub fn kick_all(&self, reason: CloseReason) {
        for handle in self.read().conns.values() {
            handle.kick.kick(reason);
        }
    }

    /// Closes sockets whose queue has not moved in [`STUCK_WRITE`]. Run
    /// every second by housekeeping.
    pub fn kick_stuck(&self) {
        let now = clock_s() + 1;
        let limit = u32::try_from(STUCK_WRITE.as_secs()).unwrap_or(u32::MAX);
        for handle in self.read().conns.values() {
            let since = handle.outlet.stalled_since();
            if since != 0 && now.saturating_sub(since) > limit {
                handle.kick.kick(CloseReason::SlowConsumer);
            }
        }
    }

    /// Puts `member` into `room`: subscribes the room on the bus if it is the
    /// first local member (before answering, so nothing is missed), records
    /// presence, and announces a presence `join` when it is the user's first
    /// connection in the room. Returns everyone online in the room.
    pub async fn join(&self, room: &RoomId, member: &Member) -> Result<Vec<User>, JoinError> {
        let Some(handle) = self.read().conns.get(&member.conn).cloned() else {
            return Ok(Vec::new()); // the socket is already gone
        };
        let first_local = {
            let mut state = self.write();
            let members = state.rooms.entry(room.clone()).or_default();
            members.insert(member.conn.clone(), handle);
            members.len() == 1
        };
        if first_local {
            self.metrics.rooms_local.inc();
        }
        let topic = Topic::Room(room.clone());
        let result = async {
            self.subscriptions.ensure(&topic).await?;
            let first = self.presence.join(room, member).await?;
            let users = self.presence.users(room).await?;
            Ok::<_, JoinError>((first, users))
        }
        .await;
        match result {
            Ok((first, users)) => {
                if first {
                    let event = PresenceEvent::Join {
                        user: member.user.clone(),
                    };
                    presence::announce(&*self.bus, room, event, users.len()).await;
                }
                Ok(users)
            }
            Err(e) => {
                self.remove_local(room, &member.conn);
                Err(e)
            }
        }
    }

    /// Takes `member` out of `room`; announces a presence `leave` when it was
    /// the user's last connection in the room.
    pub async fn leave(&self, room: &RoomId, member: &Member) {
        self.remove_local(room, &member.conn);
        match self.presence.leave(room, member).await {
            Ok(true) => self.announce_leave(room, member.user.clone()).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%room, error = %e, "presence leave failed; the entry will expire")
            }
        }
    }

    /// Takes a closing socket out of every room it is in: exactly one place
    /// for the cleanup of a session.
    pub async fn leave_all(&self, member: &Member, rooms: impl IntoIterator<Item = RoomId>) {
        for room in rooms {
            self.leave(&room, member).await;
        }
    }

    /// Announces that `user` left `room` (their last connection there went,
    /// or a crashed node's entry was swept), with the room's count after it.
    pub async fn announce_leave(&self, room: &RoomId, user: User) {
        presence::announce_leave(&*self.bus, &*self.presence, room, user).await;
    }

    fn remove_local(self: &Hub, room: &RoomId, conn: &ConnId) {
        let last_local = {
            let mut state = self.write();
            let Some(members) = state.rooms.get_mut(room) else {
                return;
            };
            if members.remove(conn).is_none() {
                return;
            }
            let empty = members.is_empty();
            if empty {
                state.rooms.remove(room);
                state
                    .emptied
                    .insert(Topic::Room(room.clone()), Instant::now());
            }
            empty
        };
        if last_local {
            self.metrics.rooms_local.dec();
        }
    }

    /// Unsubscribes every topic that has had no local member for
    /// [`subscriptions::UNSUBSCRIBE_DELAY`]. Run by the node's housekeeping
    /// task; it looks only at topics that lost their last member, not at
    /// every subscription.
    pub async fn unsubscribe_idle(&self) {
        let now = Instant::now();
        let due: Vec<(Topic, Instant)> = {
            let mut state = self.write();
            let State {
                rooms,
                users,
                emptied,
                ..
            } = &mut *state;
            let mut due = Vec::new();
            emptied.retain(|topic, since| {
                let local = match topic {
                    Topic::Room(room) => rooms.contains_key(room),
                    Topic::User(user) => users.contains_key(user),
                };
                if local {
                    return false; // someone came back
                }
                if now.duration_since(*since) < subscriptions::UNSUBSCRIBE_DELAY {
                    return true;
                }
                due.push((topic.clone(), *since));
                false
            });
            due
        };
        self.unsubscribe(due).await;
    }
}
