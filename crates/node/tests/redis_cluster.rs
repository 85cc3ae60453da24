//! Nodes on a real Redis Cluster (`redis.mode = "cluster"`): what an
//! operator sees (`banter_bus_shards_up`), and a node restarted while a
//! primary fails over: it becomes ready once the replica has taken over,
//! and its users chat with the other node's, nothing acked lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_node::config::RedisMode;
use banter_testkit::{NODE_TIMEOUT_MS, RedisCluster};
use common::*;
use std::time::{Duration, Instant};

fn cluster_config(id: &str, cluster: &RedisCluster) -> Config {
    let mut c = config(id, Some(&cluster.url()));
    c.redis.mode = RedisMode::Cluster;
    c
}

async fn metric(node: &TestNode, name: &str) -> Option<String> {
    let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_reports_its_shards_and_a_standalone_one_does_not() {
    let cluster = RedisCluster::start(3, 0);
    let node = TestNode::start(cluster_config("node-a", &cluster)).await;
    eventually("banter_bus_shards_up 3", async || {
        metric(&node, "banter_bus_shards_up").await.as_deref()
            == Some("banter_bus_shards_up{node=\"node-a\"} 3")
    })
    .await;
    // The probes of every shard come back: the link holds (three probe
    // intervals of 1 s without a probe would rebuild it).
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        metric(&node, "banter_bus_reconnects_total")
            .await
            .as_deref(),
        Some("banter_bus_reconnects_total{node=\"node-a\"} 0")
    );
    let alone = TestNode::start(config("node-m", None)).await;
    assert_eq!(metric(&alone, "banter_bus_shards_up").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_during_a_failover_serves_once_the_replica_took_over() {
    let mut cluster = RedisCluster::start(3, 1);
    let a = TestNode::start(cluster_config("node-a", &cluster)).await;
    let b = TestNode::start(cluster_config("node-b", &cluster)).await;
    let mut ann = a.client("name=Ann").await;
    ann.join("lobby").await;
    let before = ann.say("lobby", "before").await;

    let victim = tokio::task::block_in_place(|| cluster.primary_of("banter:room:{lobby}"));
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.kill(victim));
    b.stop().await;
    let b = TestNode::start_unready(cluster_config("node-b", &cluster)).await;
    tokio::task::block_in_place(|| cluster.wait_failover(victim, 3));
    let limit = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    b.wait_ready_within(limit + Duration::from_secs(2)).await;
    eprintln!(
        "the restarted node was ready {:?} after the kill",
        killed.elapsed()
    );

    // Ann's node was on the cluster all along: what she says now reaches
    // Bob on the restarted node, and the other way round.
    let mut bob = b.client("name=Bob").await;
    bob.send(serde_json::json!({"type":"join","room":"lobby","since": before.as_str()}))
        .await;
    bob.recv_until(|f| matches!(f, banter_protocol::ServerFrame::Joined { .. }))
        .await;
    let id = ann.say("lobby", "after").await;
    let m = bob.next_message().await;
    assert_eq!((m.id, m.text.as_str()), (id, "after"));
    let id = bob.say("lobby", "back").await;
    // Ann sees her own "after" first, then Bob's.
    let mine = ann.next_message().await;
    assert_eq!(mine.text, "after");
    let m = ann.next_message().await;
    assert_eq!((m.id, m.text.as_str()), (id, "back"));
}
