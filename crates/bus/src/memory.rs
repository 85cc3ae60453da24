//! `MemoryBus`: the bus inside one process. A lone node runs on it in
//! production (single-node mode), and tests connect several "nodes" to one
//! [`MemoryNetwork`] to get a cluster without Redis. It is also the bus's test
//! fake, so it keeps the same promises as Redis pub/sub: one order per topic
//! for every subscriber, delivery only to nodes that subscribed, and
//! backpressure (never an unbounded queue, never a silent drop) toward a slow
//! inbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc, watch};

use crate::{Bus, BusError, BusStatus, Envelope, INBOX_CAPACITY, Inbox, Topic};

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
    subscribers: Mutex<HashMap<Topic, BTreeMap<u64, mpsc::Sender<Envelope>>>>,
    /// Hands out node ids.
    next_node: AtomicU64,
    /// Always up: there is nothing to lose. Kept here so every receiver's
    /// sender lives as long as the network.
    status: watch::Sender<BusStatus>,
}

impl MemoryNetwork {
    /// An empty network with no nodes. Does no I/O.
    pub fn new() -> MemoryNetwork {
        let up = BusStatus {
            up: true,
            reconnects: 0,
        };
        MemoryNetwork {
            shared: Arc::new(Shared {
                subscribers: Mutex::new(HashMap::new()),
                next_node: AtomicU64::new(0),
                status: watch::channel(up).0,
            }),
        }
    }

    /// Adds one node: its bus handle and the inbox its fan-out task reads.
    /// The inbox is bounded ([`INBOX_CAPACITY`]); a full inbox makes
    /// publishers wait rather than lose anything.
    pub fn connect(&self) -> (MemoryBus, Inbox) {
        let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let bus = MemoryBus {
            network: self.clone(),
            node: self.shared.next_node.fetch_add(1, Ordering::Relaxed),
            inbox: tx,
        };
        (bus, inbox)
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
    inbox: mpsc::Sender<Envelope>,
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
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<(), BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        let Some(nodes) = subscribers.get_mut(topic) else {
            return Ok(());
        };
        let mut gone = Vec::new();
        for (node, inbox) in nodes.iter() {
            let envelope = Envelope {
                topic: topic.clone(),
                payload: payload.clone(),
            };
            // Waits while that inbox is full: backpressure, never a drop.
            if inbox.send(envelope).await.is_err() {
                gone.push(*node);
            }
        }
        // An inbox whose receiver was dropped belongs to a node that stopped.
        for node in gone {
            nodes.remove(&node);
        }
        if nodes.is_empty() {
            subscribers.remove(topic);
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        subscribers
            .entry(topic.clone())
            .or_default()
            .insert(self.node, self.inbox.clone());
        Ok(())
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        let mut subscribers = self.network.shared.subscribers.lock().await;
        if let Some(nodes) = subscribers.get_mut(topic) {
            nodes.remove(&self.node);
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
