//! `MemoryBus`: the bus inside one process. A lone node runs on it in
//! production (single-node mode), and tests connect several "nodes" to one
//! [`MemoryNetwork`] to get a cluster without Redis. It is also the bus's test
//! fake, so it keeps the same promises as Redis pub/sub: one order per topic
//! for every subscriber, delivery only to nodes that subscribed, and
//! backpressure (never an unbounded queue, never a silent drop) toward a slow
//! inbox.

mod dialogs;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, watch};

use crate::dialogs::{
    DEFAULT_DIALOG_SIZE, DEFAULT_DIALOG_TTL, DmDraft, ReadMark, both, read_frame,
};
use crate::history::{
    DEFAULT_HISTORY, Draft, Epoch, HistoryPage, HistoryQuery, Position, Record, StreamId,
};
use crate::inbox::{self, InboxSender};
use crate::{Bus, BusError, BusEvent, BusStatus, Envelope, Inbox, Topic};
use banter_protocol::{
    ChannelName, DialogEntry, DirectMessage, Message, RoomId, ServerFrame, User, UserId,
};
use dialogs::DialogStore;

/// How long a room's history is kept after its last message, unless told.
const DEFAULT_HISTORY_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// One room's history: a ring buffer of stored records.
#[derive(Debug)]
struct RoomHistory {
    /// This history's life: drawn when the room's history begins (a node
    /// that restarted, or a room forgotten after its ttl, begins anew), so an
    /// id from an earlier life never passes for a position in this one.
    epoch: Epoch,
    /// When the last message was stored (ms since epoch), for the ttl.
    written_ms: u64,
    entries: VecDeque<(StreamId, Record)>,
    /// The newest position handed out (ids never go back, even when trimmed).
    last: StreamId,
    /// The newest position trimmed away: recovery after an older id is incomplete.
    max_deleted: StreamId,
}

/// One node's subscription to a topic: where it goes, and how many
/// references the node holds on it.
#[derive(Debug)]
struct Subscriber {
    inbox: InboxSender,
    refs: usize,
}

/// An in-process stand-in for Redis that several [`MemoryBus`] nodes share.
/// Cloning it gives another handle to the same network.
#[derive(Clone, Debug)]
pub struct MemoryNetwork {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Who listens to what. One async lock, held across every delivery of one
    /// publish: two concurrent publishes cannot interleave differently at
    /// different nodes, so every subscriber sees one order per topic, as
    /// with a single Redis server.
    subscribers: Mutex<HashMap<Topic, BTreeMap<u64, Subscriber>>>,
    /// Hands out node ids.
    next_node: AtomicU64,
    /// Room histories. Written only while `subscribers` is held, so the
    /// history order is the delivery order.
    histories: std::sync::Mutex<HashMap<RoomId, RoomHistory>>,
    /// Messages kept per room.
    history_size: usize,
    /// A room's history is forgotten this long after its last message.
    history_ttl_ms: u64,
    /// Stores since the last sweep of forgotten rooms.
    stores: AtomicU64,
    /// Every dialog. Written only while `subscribers` is held, like histories.
    dialogs: std::sync::Mutex<DialogStore>,
    /// Always up: there is nothing to lose. Kept here so every receiver's
    /// sender lives as long as the network.
    status: watch::Sender<BusStatus>,
}

impl MemoryNetwork {
    /// An empty network with no nodes, keeping [`DEFAULT_HISTORY`] messages per room.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::with_history(DEFAULT_HISTORY)
    }

    /// An empty network keeping `history_size` messages per room (0 = none).
    pub fn with_history(history_size: usize) -> MemoryNetwork {
        MemoryNetwork::with_retention(history_size, DEFAULT_HISTORY_TTL)
    }

    /// An empty network keeping `history_size` messages per room, each room
    /// forgotten `history_ttl` after its last message (`history.ttl_ms`).
    pub fn with_retention(history_size: usize, history_ttl: std::time::Duration) -> MemoryNetwork {
        let up = BusStatus {
            up: true,
            writable: true,
            reconnects: 0,
            shards: None,
        };
        MemoryNetwork {
            shared: Arc::new(Shared {
                subscribers: Mutex::new(HashMap::new()),
                next_node: AtomicU64::new(0),
                histories: std::sync::Mutex::default(),
                history_size,
                history_ttl_ms: millis(history_ttl),
                stores: AtomicU64::new(0),
                dialogs: std::sync::Mutex::new(DialogStore::new(
                    DEFAULT_DIALOG_SIZE,
                    millis(DEFAULT_DIALOG_TTL),
                )),
                status: watch::channel(up).0,
            }),
        }
    }

    /// Keeps `size` direct messages per dialog (`history.dialog_size`), each
    /// dialog forgotten `ttl` after its last message (`history.dialog_ttl_ms`).
    /// Forgets the dialogs stored so far.
    pub fn with_dialogs(self, size: usize, ttl: std::time::Duration) -> MemoryNetwork {
        *self.dialogs() = DialogStore::new(size, millis(ttl));
        self
    }

    fn dialogs(&self) -> std::sync::MutexGuard<'_, DialogStore> {
        self.shared
            .dialogs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one node: its bus handle and the inbox its fan-out task reads.
    /// The inbox is bounded ([`INBOX_CAPACITY`](crate::INBOX_CAPACITY)); a
    /// full inbox makes publishers wait rather than lose anything.
    pub fn connect(&self) -> (MemoryBus, Inbox) {
        let (tx, inbox) = inbox::channel();
        let bus = MemoryBus {
            network: self.clone(),
            node: self.shared.next_node.fetch_add(1, Ordering::Relaxed),
            inbox: tx,
        };
        (bus, inbox)
    }
}

impl RoomHistory {
    /// A room's history beginning, in a new epoch.
    fn begin() -> RoomHistory {
        RoomHistory {
            epoch: Epoch::random(),
            written_ms: 0,
            entries: VecDeque::new(),
            last: StreamId::default(),
            max_deleted: StreamId::default(),
        }
    }
}

/// Stores between two sweeps of rooms whose history expired.
const SWEEP_EVERY: u64 = 1024;

impl Shared {
    /// Whether a room's history outlived its ttl without a message.
    fn expired(&self, h: &RoomHistory, now: u64) -> bool {
        now.saturating_sub(h.written_ms) >= self.history_ttl_ms
    }

    /// Every [`SWEEP_EVERY`] stores, forgets the rooms whose history expired
    /// (a room nobody writes to any more must not stay in memory forever).
    fn forget_idle(&self, histories: &mut HashMap<RoomId, RoomHistory>, now: u64) {
        if self
            .stores
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
        {
            histories.retain(|_, h| !self.expired(h, now));
        }
    }
}

impl MemoryNetwork {
    /// Makes a presence change and publishes what it returns on the room's
    /// (or Pusher channel's) topic, as one step (the memory twin of Redis running a presence
    /// script that publishes): every node sees a room's presence changes in
    /// the order they were made. `change` runs under the network's delivery
    /// lock and must not block.
    pub async fn publish_presence<T>(
        &self,
        topic: &Topic,
        change: impl FnOnce() -> (T, Vec<Bytes>),
    ) -> T {
        let mut subscribers = self.shared.subscribers.lock().await;
        let (out, payloads) = change();
        for payload in payloads {
            deliver(&mut subscribers, topic, None, true, payload).await;
        }
        out
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new()
    }
}

/// One node's handle on a [`MemoryNetwork`]. Clones are the same node.
#[derive(Clone, Debug)]
pub struct MemoryBus {
    network: MemoryNetwork,
    /// This node's id on the network.
    node: u64,
    /// Where envelopes for this node go; registered per subscribed topic.
    inbox: InboxSender,
}

impl MemoryBus {
    /// A node alone on its own network: single-node mode.
    pub fn new() -> (MemoryBus, Inbox) {
        MemoryNetwork::new().connect()
    }

    /// The network this node is on, to connect more nodes to it.
    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        Ok(deliver(&mut subscribers, topic, None, false, payload).await)
    }

    async fn publish_stored(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError> {
        // Nothing in memory is ever interrupted: a plain publish.
        self.publish(topic, payload).await
    }

    async fn publish_message(&self, draft: &Draft) -> Result<Message, BusError> {
        let shared = &self.network.shared;
        // Held across store and delivery: the history order is the live order.
        let mut subscribers = shared.subscribers.lock().await;
        let position = {
            let mut histories = shared
                .histories
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = crate::now_ms();
            shared.forget_idle(&mut histories, now);
            if histories
                .get(&draft.room)
                .is_some_and(|h| shared.expired(h, now))
            {
                histories.remove(&draft.room);
            }
            let room = histories
                .entry(draft.room.clone())
                .or_insert_with(RoomHistory::begin);
            let id = room.last.next(now);
            room.last = id;
            room.written_ms = now;
            room.entries.push_back((id, draft.to_record()));
            while room.entries.len() > shared.history_size {
                if let Some((gone, _)) = room.entries.pop_front() {
                    room.max_deleted = gone;
                }
            }
            Position {
                epoch: room.epoch,
                id,
            }
        };
        let payload = Bytes::from(draft.frame(position));
        let topic = Topic::Room(draft.room.clone());
        deliver(&mut subscribers, &topic, Some(position), false, payload).await;
        Ok(draft.stamp(position.to_message_id()))
    }

    async fn history(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BusError> {
        let shared = &self.network.shared;
        let mut histories = shared
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if histories
            .get(room)
            .is_some_and(|h| shared.expired(h, crate::now_ms()))
        {
            histories.remove(room);
        }
        let Some(h) = histories.get(room) else {
            // Nothing is known about this room: recovery cannot vouch for it.
            return Ok(HistoryPage::default());
        };
        let epoch = h.epoch;
        let at = |id: StreamId| Position { epoch, id };
        let message = |(id, r): &(StreamId, Record)| r.clone().into_message(room, at(*id));
        let ours = |p: Position| p.epoch == epoch;
        let (messages, complete) = match query {
            HistoryQuery::Latest { limit } => {
                let skip = h.entries.len().saturating_sub(limit);
                (h.entries.iter().skip(skip).map(message).collect(), false)
            }
            HistoryQuery::Before { before, .. } if !ours(before) => (Vec::new(), false),
            HistoryQuery::Before { before, limit } => {
                let older: Vec<_> = h.entries.iter().filter(|(id, _)| *id < before.id).collect();
                let skip = older.len().saturating_sub(limit);
                (older.into_iter().skip(skip).map(message).collect(), false)
            }
            HistoryQuery::After { since, .. } if !ours(since) => (Vec::new(), false),
            HistoryQuery::After { since, limit } => {
                let newer: Vec<_> = h.entries.iter().filter(|(id, _)| *id > since.id).collect();
                let complete = since.id >= h.max_deleted && newer.len() <= limit;
                (
                    newer.into_iter().take(limit).map(message).collect(),
                    complete,
                )
            }
        };
        Ok(HistoryPage {
            messages,
            complete,
            epoch: Some(epoch),
            newest: h.entries.back().map(|(id, _)| at(*id)),
        })
    }

    async fn send_dm(&self, draft: &DmDraft) -> Result<DirectMessage, BusError> {
        // Held across store and delivery: every connection sees one order.
        let mut subscribers = self.network.shared.subscribers.lock().await;
        let position = self.network.dialogs().store(draft, crate::now_ms());
        let message = draft.to_record().into_message(position);
        let payload = Bytes::from(ServerFrame::Dm(message.clone()).to_json());
        for user in both(&draft.from.id, &draft.to) {
            let topic = Topic::User(user.clone());
            deliver(&mut subscribers, &topic, None, false, payload.clone()).await;
        }
        Ok(message)
    }

    async fn dm_history(
        &self,
        me: &UserId,
        with: &UserId,
        query: HistoryQuery,
    ) -> Result<Vec<DirectMessage>, BusError> {
        Ok(self
            .network
            .dialogs()
            .history(me, with, query, crate::now_ms()))
    }

    async fn dialogs(&self, me: &UserId, limit: usize) -> Result<Vec<DialogEntry>, BusError> {
        Ok(self.network.dialogs().list(me, limit, crate::now_ms()))
    }

    async fn mark_read(
        &self,
        by: &User,
        with: &UserId,
        id: Position,
    ) -> Result<Option<ReadMark>, BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        let mark = self.network.dialogs().read(by, with, id, crate::now_ms());
        if let Some(mark) = mark.as_ref().filter(|m| m.moved) {
            let payload = Bytes::from(read_frame(mark).to_json());
            for user in both(&by.id, with) {
                let topic = Topic::User(user.clone());
                deliver(&mut subscribers, &topic, None, false, payload.clone()).await;
            }
        }
        Ok(mark)
    }

    async fn listeners(&self, topic: &Topic) -> Result<usize, BusError> {
        let subscribers = self.network.shared.subscribers.lock().await;
        Ok(subscribers.get(topic).map_or(0, BTreeMap::len))
    }

    async fn pusher_channels(&self) -> Result<Vec<ChannelName>, BusError> {
        let subscribers = self.network.shared.subscribers.lock().await;
        Ok(subscribers
            .keys()
            .filter_map(|t| match t {
                Topic::Pusher(c) => Some(c.clone()),
                _ => None,
            })
            .collect())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        subscribers
            .entry(topic.clone())
            .or_default()
            .entry(self.node)
            .or_insert_with(|| Subscriber {
                inbox: self.inbox.clone(),
                refs: 0,
            })
            .refs += 1;
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        if let Some(nodes) = subscribers.get_mut(topic) {
            if let Some(sub) = nodes.get_mut(&self.node) {
                sub.refs = sub.refs.saturating_sub(1);
                if sub.refs == 0 {
                    nodes.remove(&self.node);
                }
            }
            if nodes.is_empty() {
                subscribers.remove(topic);
            }
        }
        Ok(())
    }

    fn status(&self) -> watch::Receiver<BusStatus> {
        self.network.shared.status.subscribe()
    }
}

/// Hands `payload` (at `position` in the room's history, if stored) to every
/// node subscribed to `topic`; returns how many got it.
async fn deliver(
    subscribers: &mut HashMap<Topic, BTreeMap<u64, Subscriber>>,
    topic: &Topic,
    position: Option<Position>,
    presence: bool,
    payload: Bytes,
) -> usize {
    let Some(nodes) = subscribers.get_mut(topic) else {
        return 0;
    };
    let mut gone = Vec::new();
    for (node, sub) in nodes.iter() {
        let envelope = Envelope {
            topic: topic.clone(),
            position,
            presence,
            payload: payload.clone(),
        };
        // Waits while that inbox is full: backpressure, never a drop.
        if sub.inbox.send(BusEvent::Envelope(envelope)).await.is_err() {
            gone.push(*node);
        }
    }
    // An inbox whose receiver was dropped belongs to a node that stopped.
    for node in gone {
        nodes.remove(&node);
    }
    let delivered = nodes.len();
    if nodes.is_empty() {
        subscribers.remove(topic);
    }
    delivered
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
