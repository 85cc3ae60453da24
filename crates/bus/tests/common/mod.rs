//! Nodes for the bus test suites: several buses on one `MemoryNetwork`, or
//! on one real `redis-server`; and the bounded waits and small builders
//! their scenarios share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use banter_bus::{
    Bus, BusEvent, BusStatus, Envelope, INBOX_CAPACITY, Inbox, MemoryNetwork, RedisBus,
    RedisBusConfig, Topic,
};
use banter_testkit::{RedisCluster, RedisServer};
use bytes::Bytes;
use deadpool_redis::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// One node: its bus handle and its inbox.
pub struct Node {
    pub bus: Arc<dyn Bus>,
    pub inbox: Inbox,
}

/// Probes every 200 ms in these tests, so a dead connection shows in 600 ms.
pub const PROBE: Duration = Duration::from_millis(200);

/// `n` nodes on one in-memory network keeping `history` messages per room.
pub fn memory_nodes(n: usize, history: usize) -> Vec<Node> {
    let network = MemoryNetwork::with_history(history);
    (0..n)
        .map(|_| {
            let (bus, inbox) = network.connect();
            Node {
                bus: Arc::new(bus),
                inbox,
            }
        })
        .collect()
}

/// One Redis bus with its own pool, as a separate node process has.
pub async fn redis_bus(url: &str, history: usize) -> (RedisBus, Inbox) {
    let pool = deadpool_redis::Config::from_url(url)
        .builder()
        .unwrap()
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap();
    let config = RedisBusConfig {
        probe_interval: PROBE,
        history_size: history,
        // The contract says when delivery stops; the delay has its own test.
        unsubscribe_delay: Duration::ZERO,
        ..RedisBusConfig::new(url, "banter")
    };
    RedisBus::connect(pool, config).await.unwrap()
}

/// One bus on the Redis Cluster whose seed nodes are `seeds`.
pub async fn cluster_bus(seeds: &[String], history: usize) -> (RedisBus, Inbox) {
    let config = RedisBusConfig {
        probe_interval: PROBE,
        history_size: history,
        unsubscribe_delay: Duration::ZERO,
        ..RedisBusConfig::new(seeds.join(","), "banter")
    };
    RedisBus::connect_cluster(seeds, config).await.unwrap()
}

/// `n` nodes on the Redis Cluster `cluster`, each up before it is returned.
pub async fn cluster_nodes(cluster: &RedisCluster, n: usize, history: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let (bus, inbox) = cluster_bus(&cluster.urls(), history).await;
        nodes.push(up(bus, inbox).await);
    }
    nodes
}

/// The node of `bus`, once its status says up.
async fn up(bus: RedisBus, inbox: Inbox) -> Node {
    let mut status = bus.status();
    timeout(Duration::from_secs(10), status.wait_for(|s| s.up))
        .await
        .expect("bus up in time")
        .expect("status sender gone");
    Node {
        bus: Arc::new(bus),
        inbox,
    }
}

/// `n` Redis nodes on `server`, each up before it is returned.
pub async fn redis_nodes(server: &RedisServer, n: usize, history: usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        let (bus, inbox) = redis_bus(&server.url(), history).await;
        let mut status = bus.status();
        timeout(Duration::from_secs(5), status.wait_for(|s| s.up))
            .await
            .expect("bus up in time")
            .expect("status sender gone");
        nodes.push(Node {
            bus: Arc::new(bus),
            inbox,
        });
    }
    nodes
}

/// How long any single expected event may take.
pub const WITHIN: Duration = Duration::from_secs(5);

pub fn room(name: &str) -> Topic {
    Topic::Room(name.parse().unwrap())
}

pub fn user(id: &str) -> Topic {
    Topic::User(id.parse().unwrap())
}

pub async fn next(node: &mut Node) -> Envelope {
    match timeout(WITHIN, node.inbox.recv())
        .await
        .expect("no envelope in time")
        .expect("inbox closed")
    {
        BusEvent::Envelope(envelope) => envelope,
        other => panic!("an envelope was expected, not {other:?}"),
    }
}

pub async fn wait_status(node: &Node, wanted: impl FnMut(&BusStatus) -> bool) -> BusStatus {
    let mut status = node.bus.status();
    let seen = timeout(WITHIN, status.wait_for(wanted))
        .await
        .expect("status not reached in time");
    *seen.expect("status sender gone")
}

pub async fn publish(node: &Node, topic: &Topic, text: &str) {
    node.bus
        .publish(topic, Bytes::from(text.to_owned()))
        .await
        .unwrap();
}

pub fn envelope(topic: &Topic, text: &str) -> Envelope {
    Envelope {
        topic: topic.clone(),
        position: None,
        presence: false,
        payload: Bytes::from(text.to_owned()),
    }
}

/// Publishes past the inbox's capacity, then reads everything back. With a
/// `hold` (Redis only: its publishes do not wait for subscribers), all is
/// published first and nothing read for `hold` after that.
pub async fn full_inbox(nodes: &mut [Node], hold: Option<Duration>) {
    let total = INBOX_CAPACITY + 100;
    let topic = room("flood");
    nodes[0].bus.subscribe(&topic).await.unwrap();
    let (bus, flood) = (nodes[1].bus.clone(), topic.clone());
    let mut publisher = tokio::spawn(async move {
        for i in 0..total {
            bus.publish(&flood, Bytes::from(i.to_string()))
                .await
                .unwrap();
        }
    });
    if let Some(hold) = hold {
        timeout(WITHIN * 4, &mut publisher).await.unwrap().unwrap();
        tokio::time::sleep(hold).await;
    }
    for i in 0..total {
        assert_eq!(next(&mut nodes[0]).await, envelope(&topic, &i.to_string()));
    }
    if hold.is_none() {
        timeout(WITHIN, publisher).await.unwrap().unwrap();
    }
}
