//! The local hub: which sockets are on this node and which rooms they are in,
//! and the one place where joining and leaving a room touches the bus (a
//! reference on the room's topic per local member: the bus subscribes the
//! first and unsubscribes after the last) and presence (join, leave, the
//! first page of who is there).
//!
//! The fan-out reads the hub under a read lock once per run of envelopes and
//! offers the same deliveries to each member's [`Outlet`]: written at once
//! when the socket takes them, else queued; it never waits on a socket. A
//! member whose queue is full is kicked as a slow consumer. No lock is held
//! across an `.await`.

use crate::clock::clock_s;
use crate::metrics::{DropReason, Metrics};
use crate::outlet::{Delivery, Kick, Offer, Outlet};
use banter_bus::{Bus, BusError, Topic};
use banter_presence::{Member, Page, Presence, PresenceError};
use banter_protocol::{ChannelName, CloseReason, ConnId, RoomId, User, UserId};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

mod tallies;
pub(crate) use tallies::Tallies;

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
    /// The local subscribers of each Pusher channel.
    channels: HashMap<ChannelName, HashMap<ConnId, ChannelSub>>,
}

/// One socket's subscription to a Pusher channel.
#[derive(Clone, Debug)]
struct ChannelSub {
    handle: ConnHandle,
    /// On a presence channel: who the socket is there (its `channel_data`).
    member: Option<Member>,
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
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    metrics: Arc<Metrics>,
    /// The Pusher channels whose local count changed.
    tallies: Arc<Tallies>,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, presence: Arc<dyn Presence>, metrics: Arc<Metrics>) -> Hub {
        Hub {
            state: RwLock::default(),
            bus,
            presence,
            metrics,
            tallies: Arc::default(),
        }
    }

    /// The Pusher channels whose local subscriber count changed.
    pub fn tallies(&self) -> Arc<Tallies> {
        self.tallies.clone()
    }

    /// The Pusher channels with a local subscriber.
    pub fn local_channels(&self) -> Vec<ChannelName> {
        self.read().channels.keys().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a socket reachable, and takes a reference on its user's topic
    /// (direct messages).
    pub async fn register(&self, conn: &ConnId, handle: ConnHandle) {
        let user = handle.user.id.clone();
        {
            let mut state = self.write();
            state.conns.insert(conn.clone(), handle.clone());
            state
                .users
                .entry(user.clone())
                .or_default()
                .insert(conn.clone(), handle);
        }
        self.metrics.connections.inc();
        self.metrics.connections_total.inc();
        if let Err(e) = self.bus.subscribe(&Topic::User(user)).await {
            // Kept as wanted: the bus restores it when it reconnects.
            tracing::warn!(error = %e, "user topic not subscribed yet");
        }
    }

    /// Forgets a socket; call after [`leave_all`](Self::leave_all). Its
    /// reference on the user's topic goes back: with the user's last
    /// connection anywhere on this node, the bus unsubscribes the topic at
    /// once, so a direct message sent from now on finds nobody listening
    /// and its sender is told (`not_found`), rather than being acked into a
    /// node that has no one to give it to.
    pub async fn unregister(&self, member: &Member) {
        let known = {
            let mut state = self.write();
            let known = state.conns.remove(&member.conn).is_some();
            if let Some(conns) = state.users.get_mut(&member.user.id) {
                conns.remove(&member.conn);
                if conns.is_empty() {
                    state.users.remove(&member.user.id);
                }
            }
            known
        };
        if known {
            self.metrics.connections.dec();
            let _ = self
                .bus
                .unsubscribe(&Topic::User(member.user.id.clone()))
                .await;
        }
    }

    /// Sockets on this node.
    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }

    /// Every (room, member) on this node: what the presence refresh keeps
    /// alive, and what is registered again after Redis lost it.
    pub fn local_members(&self) -> Vec<(Topic, Member)> {
        let state = self.read();
        let rooms = state.rooms.iter().flat_map(|(room, members)| {
            members.iter().map(move |(conn, handle)| {
                let member = Member::new(conn.clone(), handle.user.clone());
                (Topic::Room(room.clone()), member)
            })
        });
        let channels = state.channels.iter().flat_map(|(channel, subs)| {
            subs.values().filter_map(move |sub| {
                let member = sub.member.clone()?;
                Some((Topic::Pusher(channel.clone()), member))
            })
        });
        rooms.chain(channels).collect()
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
            Topic::Pusher(channel) => {
                let Some(subs) = state.channels.get(channel) else {
                    return 0;
                };
                return self.deliver_channel(subs, deliveries);
            }
        };
        let Some(targets) = targets else {
            return 0;
        };
        targets
            .values()
            .map(|handle| self.offer(handle, deliveries))
            .sum()
    }

    /// A Pusher channel's deliveries: each to every subscriber but the one
    /// it skips (the sender of a client event, a trigger's `socket_id`, the
    /// user a `member_added`/`member_removed` is about).
    fn deliver_channel(
        &self,
        subs: &HashMap<ConnId, ChannelSub>,
        deliveries: &[Arc<Delivery>],
    ) -> usize {
        let skipping = deliveries
            .iter()
            .any(|d| d.except.is_some() || d.except_user.is_some());
        let mut delivered = 0;
        for (conn, sub) in subs {
            let user = sub.member.as_ref().map(|m| &m.user.id);
            let skipped = |d: &Delivery| {
                d.except.as_ref() == Some(conn)
                    || (d.except_user.is_some() && d.except_user.as_ref() == user)
            };
            if skipping && deliveries.iter().any(|d| skipped(d)) {
                let kept: Vec<Arc<Delivery>> =
                    deliveries.iter().filter(|d| !skipped(d)).cloned().collect();
                if !kept.is_empty() {
                    delivered += self.offer(&sub.handle, &kept);
                }
            } else {
                delivered += self.offer(&sub.handle, deliveries);
            }
        }
        delivered
    }

    /// Offers deliveries to one socket; how many it took. A full queue
    /// kicks its client as a slow consumer.
    fn offer(&self, handle: &ConnHandle, deliveries: &[Arc<Delivery>]) -> usize {
        match handle.outlet.offer(deliveries) {
            Offer::Written | Offer::Queued => deliveries.len(),
            Offer::Full => {
                if !handle.kick.is_kicked() {
                    self.metrics.slow_consumers.inc();
                }
                self.metrics
                    .dropped_n(DropReason::SlowConsumer, deliveries.len());
                handle.kick.kick(CloseReason::SlowConsumer);
                0
            }
            Offer::Overheld => {
                tracing::warn!(
                    "frames piled up while a client's request waited on the bus; closing it"
                );
                handle.kick.kick(CloseReason::Internal);
                0
            }
            Offer::Skipped | Offer::Closed => 0,
        }
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

    /// Puts `member` into `room`: takes a reference on the room's topic
    /// (subscribed before answering, so nothing is missed), records
    /// presence (which publishes the user's join if this is their first
    /// connection in the room), and returns the first page of who is there,
    /// at most `limit` users, with the exact count.
    ///
    /// `alongside` (the join's history read) runs once the room is
    /// subscribed, at the same time as the presence write: both requests go
    /// to Redis together, and the join waits one round trip instead of two.
    /// Its output comes back with the page (`None` when the socket was
    /// already gone or the subscription failed, and it never ran).
    pub async fn join<T>(
        &self,
        room: &RoomId,
        member: &Member,
        limit: usize,
        alongside: impl Future<Output = T>,
    ) -> (Result<Page, JoinError>, Option<T>) {
        let Some(handle) = self.read().conns.get(&member.conn).cloned() else {
            return (Ok(Page::default()), None); // the socket is already gone
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
        let (result, beside) = self
            .take_topic(&Topic::Room(room.clone()), Some(member), limit, alongside)
            .await;
        if result.is_err() {
            self.remove_local(room, &member.conn);
        }
        (result, beside)
    }

    /// Takes a reference on `topic` (subscribed before this returns) and,
    /// for a `member`, records it in the topic's presence and reads its
    /// first page of `limit` users, while `alongside` runs (once
    /// subscribed; see [`Hub::join`]). On failure the reference goes back
    /// and the member is not left recorded; the caller forgets its local
    /// entry.
    async fn take_topic<T>(
        &self,
        topic: &Topic,
        member: Option<&Member>,
        limit: usize,
        alongside: impl Future<Output = T>,
    ) -> (Result<Page, JoinError>, Option<T>) {
        let subscribed = self.bus.subscribe(topic).await;
        let (result, beside) = match subscribed {
            Err(e) => (Err(JoinError::from(e)), None),
            Ok(()) => {
                let record = async {
                    let Some(member) = member else {
                        return Ok(Page::default());
                    };
                    match self.presence.join_page(topic, member, limit).await {
                        Ok(page) => Ok(page),
                        Err(e) => {
                            // It may have been recorded all the same (a reply lost).
                            let _ = self.presence.leave(topic, member).await;
                            Err(JoinError::from(e))
                        }
                    }
                };
                let (result, beside) = tokio::join!(record, alongside);
                (result, Some(beside))
            }
        };
        if result.is_err() {
            // The reference was taken whatever the result.
            let _ = self.bus.unsubscribe(topic).await;
        }
        (result, beside)
    }

    /// Takes `member` out of `room` (presence publishes the user's leave if
    /// it was their last connection there) and gives its reference on the
    /// room's topic back.
    pub async fn leave(&self, room: &RoomId, member: &Member) {
        if !self.remove_local(room, &member.conn) {
            return;
        }
        if let Err(e) = self
            .presence
            .leave(&Topic::Room(room.clone()), member)
            .await
        {
            tracing::warn!(%room, error = %e, "presence leave failed; the entry will expire");
        }
        let _ = self.bus.unsubscribe(&Topic::Room(room.clone())).await;
    }

    /// Subscribes a socket to a Pusher channel: takes a reference on the
    /// channel's topic (in place before this returns, so nothing published
    /// afterwards is missed). On a presence channel `member` is who the
    /// socket is there: it is recorded in presence (the user's first
    /// connection cluster-wide announces them) and the channel's members,
    /// at most `limit`, come back. `Ok(None)` when the socket is gone.
    pub async fn subscribe_channel(
        &self,
        channel: &ChannelName,
        conn: &ConnId,
        member: Option<Member>,
        limit: usize,
    ) -> Result<Option<Page>, JoinError> {
        let Some(handle) = self.read().conns.get(conn).cloned() else {
            return Ok(None);
        };
        let sub = ChannelSub {
            handle,
            member: member.clone(),
        };
        self.write()
            .channels
            .entry(channel.clone())
            .or_default()
            .insert(conn.clone(), sub);
        self.tallies.touch(channel);
        let topic = Topic::Pusher(channel.clone());
        match self
            .take_topic(&topic, member.as_ref(), limit, std::future::ready(()))
            .await
            .0
        {
            Ok(page) => Ok(Some(page)),
            Err(e) => {
                self.remove_channel(channel, conn);
                Err(e)
            }
        }
    }

    /// Takes a socket off a Pusher channel (and out of its presence) and
    /// gives its reference back.
    pub async fn unsubscribe_channel(&self, channel: &ChannelName, conn: &ConnId) {
        let Some(sub) = self.remove_channel(channel, conn) else {
            return;
        };
        let topic = Topic::Pusher(channel.clone());
        if let Some(member) = &sub.member
            && let Err(e) = self.presence.leave(&topic, member).await
        {
            tracing::warn!(?topic, error = %e, "presence leave failed; the entry will expire");
        }
        let _ = self.bus.unsubscribe(&topic).await;
    }

    /// Asks every local subscriber of `channel` to close with `reason`.
    pub fn kick_channel(&self, channel: &ChannelName, reason: CloseReason) {
        if let Some(subs) = self.read().channels.get(channel) {
            for sub in subs.values() {
                sub.handle.kick.kick(reason);
            }
        }
    }

    /// How many local sockets are subscribed to `channel`.
    pub fn channel_subscribers(&self, channel: &ChannelName) -> usize {
        self.read().channels.get(channel).map_or(0, HashMap::len)
    }

    fn remove_channel(&self, channel: &ChannelName, conn: &ConnId) -> Option<ChannelSub> {
        let mut state = self.write();
        let members = state.channels.get_mut(channel)?;
        let removed = members.remove(conn);
        if members.is_empty() {
            state.channels.remove(channel);
        }
        if removed.is_some() {
            self.tallies.touch(channel);
        }
        removed
    }

    /// Takes a closing socket out of every room it is in: exactly one place
    /// for the cleanup of a session.
    pub async fn leave_all(&self, member: &Member, rooms: impl IntoIterator<Item = RoomId>) {
        for room in rooms {
            self.leave(&room, member).await;
        }
    }

    /// Takes a socket out of a room's local members; `false` when it was
    /// not in it.
    fn remove_local(&self, room: &RoomId, conn: &ConnId) -> bool {
        let last_local = {
            let mut state = self.write();
            let Some(members) = state.rooms.get_mut(room) else {
                return false;
            };
            if members.remove(conn).is_none() {
                return false;
            }
            let empty = members.is_empty();
            if empty {
                state.rooms.remove(room);
            }
            empty
        };
        if last_local {
            self.metrics.rooms_local.dec();
        }
        true
    }
}
