//! Nodes in this process on 127.0.0.1:0: a test config, one node, and two
//! nodes sharing one real Redis or one in-memory network.

use super::{Client, WAIT, http};
pub use banter_node::config::Config;
use banter_node::{Node, run};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A config for a test node: loopback, port 0, short timers.
pub fn config(id: &str, redis_url: Option<&str>) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.node.id = id.into();
    c.redis.url = redis_url.unwrap_or_default().into();
    c.redis.pool_size = 4;
    c.presence.ttl_ms = 3_000;
    // Scenarios send fast; the rate limit has tests of its own.
    c.limits.rate_per_sec = 10_000;
    c.limits.burst = 10_000;
    // Some scenarios sign tokens without `exp`; tests/security.rs checks
    // the default (`exp` required) on nodes of its own.
    c.auth.require_exp = false;
    c
}

/// A node serving on 127.0.0.1 in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Node,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestNode {
    /// A node on the backends its config names (Redis, or in-memory).
    pub async fn start(config: Config) -> TestNode {
        let node = Node::connect(config).await.expect("node");
        TestNode::serve(node).await
    }

    /// A node on the backends its config names, serving, perhaps not ready.
    pub async fn start_unready(config: Config) -> TestNode {
        let node = Node::connect(config).await.expect("node");
        TestNode::serve_unready(node).await
    }

    /// Serves an already built node, once it is ready.
    pub async fn serve(node: Node) -> TestNode {
        let t = TestNode::serve_unready(node).await;
        t.wait_ready().await;
        t
    }

    /// Serves an already built node.
    pub async fn serve_unready(node: Node) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (node, shutdown) = (node.clone(), shutdown.clone());
            async move { run(listener, node, shutdown).await.expect("run") }
        });
        TestNode {
            addr,
            node,
            shutdown,
            task,
        }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        self.wait_ready_within(WAIT).await;
    }

    /// Waits until `/readyz` answers 200, at most `limit`.
    pub async fn wait_ready_within(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/readyz", &[], "").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never became ready",
                self.node.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client on `/ws?{query}`, past its `welcome`.
    pub async fn client(&self, query: &str) -> Client {
        Client::connect(self.addr, query).await
    }

    /// Drains the node and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("drain")
            .unwrap();
    }
}

/// Two nodes that share a bus and presence: either one real Redis or one
/// in-memory network. Scenarios run against both.
pub struct Pair {
    pub a: TestNode,
    pub b: TestNode,
    pub redis: Option<banter_testkit::RedisServer>,
    pub cluster: Option<banter_testkit::RedisCluster>,
}

impl Pair {
    pub async fn redis() -> Pair {
        Pair::redis_with(|_| {}).await
    }

    /// [`Pair::redis`] with `f` applied to both nodes' configs.
    pub async fn redis_with(f: impl Fn(&mut Config)) -> Pair {
        let redis = banter_testkit::RedisServer::start();
        let config = |id: &str| {
            let mut c = config(id, Some(&redis.url()));
            f(&mut c);
            c
        };
        let a = TestNode::start(config("node-a")).await;
        let b = TestNode::start(config("node-b")).await;
        Pair {
            a,
            b,
            redis: Some(redis),
            cluster: None,
        }
    }

    /// Two nodes on a real Redis Cluster of three primaries (`redis.mode =
    /// "cluster"`, every node's address a seed).
    pub async fn redis_cluster() -> Pair {
        Pair::redis_cluster_with(|_| {}).await
    }

    /// [`Pair::redis_cluster`] with `f` applied to both nodes' configs.
    pub async fn redis_cluster_with(f: impl Fn(&mut Config)) -> Pair {
        let cluster = banter_testkit::RedisCluster::start(3, 0);
        let config = |id: &str| {
            let mut c = config(id, Some(&cluster.url()));
            c.redis.mode = banter_node::config::RedisMode::Cluster;
            f(&mut c);
            c
        };
        let a = TestNode::start(config("node-a")).await;
        let b = TestNode::start(config("node-b")).await;
        Pair {
            a,
            b,
            redis: None,
            cluster: Some(cluster),
        }
    }

    pub async fn memory() -> Pair {
        Pair::memory_with(|_| {}).await
    }

    /// [`Pair::memory`] with `f` applied to both nodes' configs.
    pub async fn memory_with(f: impl Fn(&mut Config)) -> Pair {
        Pair::memory_on(banter_bus::MemoryNetwork::new(), f).await
    }

    /// Two nodes on `network` (made with the retention a test wants).
    pub async fn memory_on(network: banter_bus::MemoryNetwork, f: impl Fn(&mut Config)) -> Pair {
        let presence = Arc::new(banter_presence::MemoryPresence::on(
            network.clone(),
            Duration::from_millis(3_000),
        ));
        let mut nodes = Vec::new();
        for id in ["node-a", "node-b"] {
            let (bus, inbox) = network.connect();
            let mut c = config(id, None);
            f(&mut c);
            let node = Node::with_backends(c, Arc::new(bus), inbox, presence.clone()).unwrap();
            nodes.push(TestNode::serve(node).await);
        }
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        Pair {
            a,
            b,
            redis: None,
            cluster: None,
        }
    }
}
