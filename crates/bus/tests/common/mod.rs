//! Nodes for the bus test suites: several buses on one `MemoryNetwork`, or
//! on one real `redis-server`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use banter_bus::{Bus, Inbox, MemoryNetwork, RedisBus, RedisBusConfig};
use banter_testkit::RedisServer;
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
        ..RedisBusConfig::new(url, "banter")
    };
    RedisBus::connect(pool, config).await.unwrap()
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
