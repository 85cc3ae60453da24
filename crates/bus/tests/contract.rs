//! The bus contract, run against both implementations: `MemoryBus` (several
//! nodes on one `MemoryNetwork`) and `RedisBus` (several nodes on one real
//! `redis-server`, and on a real Redis Cluster of three primaries). The Redis-only promises are in redis_bus.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_bus::DEFAULT_HISTORY;
use common::*;

use banter_bus::{Bus, BusStatus};
use banter_testkit::{RedisCluster, RedisServer};
use bytes::Bytes;
use tokio::time::timeout;

/// Runs one contract point against memory and against Redis.
macro_rules! contract {
    ($point:ident, $nodes:expr) => {
        mod $point {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$point(memory_nodes($nodes, DEFAULT_HISTORY)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = RedisServer::start();
                super::$point(redis_nodes(&server, $nodes, DEFAULT_HISTORY).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                let cluster = RedisCluster::start(3, 0);
                super::$point(cluster_nodes(&cluster, $nodes, DEFAULT_HISTORY).await).await;
            }
        }
    };
}

contract!(publish_reaches_every_subscriber_once, 3);
contract!(concurrent_publishers_one_order, 2);
contract!(unsubscribe_stops_and_topics_are_separate, 2);
contract!(full_inbox_waits_never_drops, 2);
contract!(topics_subscribed_together_are_each_in_place, 2);

/// A publish reaches every subscribed node exactly once, the publisher's
/// own node included, and not a node that did not subscribe. A marker on a
/// topic everyone has, published afterwards, proves nothing else came.
async fn publish_reaches_every_subscriber_once(mut nodes: Vec<Node>) {
    let (lobby, marker) = (room("lobby"), room("marker"));
    for node in &nodes[..2] {
        node.bus.subscribe(&lobby).await.unwrap();
    }
    for node in &nodes {
        node.bus.subscribe(&marker).await.unwrap();
    }
    publish(&nodes[0], &lobby, "hello").await;
    publish(&nodes[0], &marker, "end").await;
    // (Two topics are not ordered with each other: on a Redis Cluster they
    // live on different shards, reached over different connections.)
    for node in &mut nodes[..2] {
        let mut got = vec![next(node).await, next(node).await];
        got.sort_by_key(|e| e.payload.clone());
        assert_eq!(got, [envelope(&marker, "end"), envelope(&lobby, "hello")]);
    }
    assert_eq!(
        next(&mut nodes[2]).await,
        envelope(&marker, "end"),
        "an unsubscribed node got the room"
    );
    for node in &mut nodes {
        assert!(node.inbox.try_recv().is_err(), "a duplicate arrived");
    }
}

/// Two nodes publish 200 messages each at the same time on one room: both
/// subscribers see the same sequence, with each publisher's messages in the
/// order it published them.
async fn concurrent_publishers_one_order(mut nodes: Vec<Node>) {
    const EACH: usize = 200;
    let topic = room("order");
    for node in &nodes {
        node.bus.subscribe(&topic).await.unwrap();
    }
    let publishers = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let (bus, topic) = (node.bus.clone(), topic.clone());
            tokio::spawn(async move {
                for i in 0..EACH {
                    bus.publish(&topic, Bytes::from(format!("{n}:{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect::<Vec<_>>();
    let mut seen = Vec::new();
    for node in &mut nodes {
        let mut sequence = Vec::new();
        for _ in 0..EACH * 2 {
            let env = next(node).await;
            assert_eq!(env.topic, topic);
            sequence.push(String::from_utf8(env.payload.to_vec()).unwrap());
        }
        seen.push(sequence);
    }
    for publisher in publishers {
        timeout(WITHIN, publisher).await.unwrap().unwrap();
    }
    assert_eq!(seen[0], seen[1], "subscribers disagree on the order");
    for n in 0..2 {
        let own = seen[0]
            .iter()
            .filter(|m| m.starts_with(&format!("{n}:")))
            .cloned()
            .collect::<Vec<_>>();
        let sent = (0..EACH).map(|i| format!("{n}:{i}")).collect::<Vec<_>>();
        assert_eq!(own, sent, "publisher {n}'s messages out of order");
    }
}

/// `unsubscribe` stops delivery at once, and a room and a user with the same
/// name are different topics.
async fn unsubscribe_stops_and_topics_are_separate(mut nodes: Vec<Node>) {
    let (the_room, the_user) = (room("same"), user("same"));
    nodes[0].bus.subscribe(&the_room).await.unwrap();
    publish(&nodes[1], &the_user, "to nobody").await;
    publish(&nodes[1], &the_room, "to the room").await;
    assert_eq!(
        next(&mut nodes[0]).await,
        envelope(&the_room, "to the room")
    );

    nodes[0].bus.subscribe(&the_user).await.unwrap();
    nodes[0].bus.unsubscribe(&the_room).await.unwrap();
    publish(&nodes[1], &the_room, "after unsubscribe").await;
    publish(&nodes[1], &the_user, "to the user").await;
    assert_eq!(
        next(&mut nodes[0]).await,
        envelope(&the_user, "to the user")
    );

    // Unsubscribing what is not subscribed is fine.
    nodes[0].bus.unsubscribe(&the_room).await.unwrap();
    nodes[1].bus.unsubscribe(&the_room).await.unwrap();
}

/// More than an inbox holds, published while nobody reads: the bus waits
/// for the fan-out, and every envelope arrives, in order.
async fn full_inbox_waits_never_drops(mut nodes: Vec<Node>) {
    full_inbox(&mut nodes, None).await;
}

/// Hundreds of subscribes at once (a node taking a burst of connections,
/// whose requests the Redis bus answers together, in one `SUBSCRIBE`), some
/// of one topic twice and mixed with unsubscribes: every subscribe that
/// returned is in place, each topic once, and what was given back is gone.
async fn topics_subscribed_together_are_each_in_place(mut nodes: Vec<Node>) {
    // (Users' topics: a room's stays subscribed a moment after its last reference.)
    let topics: Vec<_> = (0..600).map(|i| user(&format!("burst-{i}"))).collect();
    // The first 100 asked twice in a row (so both asks of one topic are
    // answered together).
    let twice = topics
        .iter()
        .enumerate()
        .flat_map(|(i, t)| std::iter::repeat_n(t, if i < 100 { 2 } else { 1 }));
    let asks = twice.map(|t| nodes[0].bus.subscribe(t));
    for result in futures_util::future::join_all(asks).await {
        result.unwrap();
    }
    // Each of the first 100 holds two references: one given back keeps it;
    // the last 100 lose their only one.
    let gives = topics[..100]
        .iter()
        .chain(&topics[500..])
        .map(|t| nodes[0].bus.unsubscribe(t));
    for result in futures_util::future::join_all(gives).await {
        result.unwrap();
    }
    for (i, topic) in topics.iter().enumerate() {
        publish(&nodes[1], topic, &i.to_string()).await;
    }
    let mut got: Vec<usize> = Vec::new();
    for _ in 0..500 {
        let e = next(&mut nodes[0]).await;
        got.push(
            String::from_utf8(e.payload.to_vec())
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    got.sort_unstable();
    assert_eq!(got, (0..500).collect::<Vec<_>>(), "each kept topic once");
    let marker = room("burst-end");
    nodes[0].bus.subscribe(&marker).await.unwrap();
    publish(&nodes[1], &marker, "end").await;
    assert_eq!(
        next(&mut nodes[0]).await,
        envelope(&marker, "end"),
        "nothing of the given-back topics"
    );
}

/// The memory bus never goes down.
#[tokio::test]
async fn memory_status_is_up() {
    let (bus, _inbox) = banter_bus::MemoryBus::new();
    assert_eq!(
        *bus.status().borrow(),
        BusStatus {
            up: true,
            writable: true,
            reconnects: 0,
            shards: None
        }
    );
}
