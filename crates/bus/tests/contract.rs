//! The bus contract, run against both implementations: `MemoryBus` (several
//! nodes on one `MemoryNetwork`) and `RedisBus` (several nodes on one real
//! `redis-server`). Then the Redis-only promises: exact channels, no
//! patterns, and surviving an outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_bus::memory::DEFAULT_HISTORY;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use banter_bus::{
    Bus, BusError, BusStatus, Envelope, INBOX_CAPACITY, RedisBus, RedisBusConfig, Topic,
};
use banter_testkit::RedisServer;
use bytes::Bytes;
use deadpool_redis::Runtime;
use tokio::time::timeout;

/// How long any single expected event may take.
const WITHIN: Duration = Duration::from_secs(5);

fn room(name: &str) -> Topic {
    Topic::Room(name.parse().unwrap())
}

fn user(id: &str) -> Topic {
    Topic::User(id.parse().unwrap())
}

async fn next(node: &mut Node) -> Envelope {
    timeout(WITHIN, node.inbox.recv())
        .await
        .expect("no envelope in time")
        .expect("inbox closed")
}

async fn wait_status(node: &Node, wanted: impl FnMut(&BusStatus) -> bool) -> BusStatus {
    let mut status = node.bus.status();
    let seen = timeout(WITHIN, status.wait_for(wanted))
        .await
        .expect("status not reached in time");
    *seen.expect("status sender gone")
}

async fn publish(node: &Node, topic: &Topic, text: &str) {
    node.bus
        .publish(topic, Bytes::from(text.to_owned()))
        .await
        .unwrap();
}

fn envelope(topic: &Topic, text: &str) -> Envelope {
    Envelope {
        topic: topic.clone(),
        payload: Bytes::from(text.to_owned()),
    }
}

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
        }
    };
}

contract!(publish_reaches_every_subscriber_once, 3);
contract!(concurrent_publishers_one_order, 2);
contract!(unsubscribe_stops_and_topics_are_separate, 2);
contract!(full_inbox_waits_never_drops, 2);

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
    for node in &mut nodes[..2] {
        assert_eq!(next(node).await, envelope(&lobby, "hello"));
        assert_eq!(next(node).await, envelope(&marker, "end"));
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

/// Publishes past the inbox's capacity, then reads everything back. With a
/// `hold` (Redis only: its publishes do not wait for subscribers), all is
/// published first and nothing read for `hold` after that.
async fn full_inbox(nodes: &mut [Node], hold: Option<Duration>) {
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

/// The memory bus never goes down.
#[tokio::test]
async fn memory_status_is_up() {
    let (bus, _inbox) = banter_bus::MemoryBus::new();
    assert_eq!(
        *bus.status().borrow(),
        BusStatus {
            up: true,
            reconnects: 0
        }
    );
}

/// Redis subscribes exactly the rooms nodes asked for, by name, never a pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscribes_exactly_the_asked_channels() {
    let server = RedisServer::start();
    let nodes = redis_nodes(&server, 2, DEFAULT_HISTORY).await;
    let rooms = |server: &RedisServer| {
        tokio::task::block_in_place(|| server.pubsub_channels("banter:room:*"))
    };
    assert_eq!(rooms(&server), Vec::<String>::new());

    nodes[0].bus.subscribe(&room("r1")).await.unwrap();
    nodes[0].bus.subscribe(&room("r2")).await.unwrap();
    nodes[1].bus.subscribe(&room("r2")).await.unwrap();
    nodes[1].bus.subscribe(&user("u1")).await.unwrap();
    assert_eq!(rooms(&server), ["banter:room:r1", "banter:room:r2"]);

    nodes[0].bus.unsubscribe(&room("r1")).await.unwrap();
    nodes[0].bus.unsubscribe(&room("r2")).await.unwrap();
    assert_eq!(
        rooms(&server),
        ["banter:room:r2"],
        "r2 is still wanted by the other node"
    );
    nodes[1].bus.unsubscribe(&room("r2")).await.unwrap();
    assert_eq!(rooms(&server), Vec::<String>::new());
    assert_eq!(tokio::task::block_in_place(|| server.numpat()), 0);
}

/// Redis goes away: status down, publishes refused fast. It comes back on
/// the same port: status up with a reconnect counted, and a room subscribed
/// before the outage delivers again with no new `subscribe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_and_recovery() {
    let mut server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 2, DEFAULT_HISTORY).await;
    let topic = room("live");
    nodes[0].bus.subscribe(&topic).await.unwrap();

    tokio::task::block_in_place(|| server.stop());
    for node in &nodes {
        wait_status(node, |s| !s.up).await;
    }
    let started = Instant::now();
    let refused = nodes[1]
        .bus
        .publish(&topic, Bytes::from_static(b"lost"))
        .await;
    assert!(matches!(refused, Err(BusError::Down)), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // Subscribing while down is recorded and reported as not live yet.
    let early = nodes[0].bus.subscribe(&room("later")).await;
    assert!(matches!(early, Err(BusError::Down)), "{early:?}");

    tokio::task::block_in_place(|| server.restart());
    for node in &nodes {
        let status = wait_status(node, |s| s.up).await;
        assert!(status.reconnects >= 1, "{status:?}");
    }
    publish(&nodes[1], &topic, "back").await;
    assert_eq!(next(&mut nodes[0]).await, envelope(&topic, "back"));
    publish(&nodes[1], &room("later"), "restored").await;
    assert_eq!(
        next(&mut nodes[0]).await,
        envelope(&room("later"), "restored")
    );
    let rooms = tokio::task::block_in_place(|| server.pubsub_channels("banter:room:*"));
    assert_eq!(rooms, ["banter:room:later", "banter:room:live"]);
}

/// Redis kills the subscriber connection while the server stays up: the bus
/// reconnects and resubscribes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_subscriber_resubscribes() {
    let server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 2, DEFAULT_HISTORY).await;
    let topic = room("kept");
    nodes[0].bus.subscribe(&topic).await.unwrap();
    tokio::task::block_in_place(|| server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]));
    for node in &nodes {
        wait_status(node, |s| s.up && s.reconnects >= 1).await;
    }
    publish(&nodes[1], &topic, "again").await;
    assert_eq!(next(&mut nodes[0]).await, envelope(&topic, "again"));
}

/// A Redis that is not there at start does not fail `connect`: the bus
/// starts down and comes up (with what was subscribed meanwhile) once Redis
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connect_while_down_starts_down_and_recovers() {
    let mut server = RedisServer::start();
    tokio::task::block_in_place(|| server.stop());
    let (bus, inbox) = redis_bus(&server.url(), DEFAULT_HISTORY).await;
    let mut node = Node {
        bus: Arc::new(bus),
        inbox,
    };
    assert!(!node.bus.status().borrow().up);
    let topic = room("early");
    assert!(matches!(
        node.bus.subscribe(&topic).await,
        Err(BusError::Down)
    ));

    tokio::task::block_in_place(|| server.restart());
    wait_status(&node, |s| s.up).await;
    publish(&node, &topic, "hi").await;
    assert_eq!(next(&mut node).await, envelope(&topic, "hi"));
}

/// A fan-out that stops reading for longer than the probe window is not a
/// dead connection: the probe is only stuck behind the envelopes. No
/// reconnect, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_slow_inbox_is_not_a_dead_connection() {
    let server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 2, DEFAULT_HISTORY).await;
    full_inbox(&mut nodes, Some(PROBE * 10)).await;
    assert_eq!(
        *nodes[0].bus.status().borrow(),
        BusStatus {
            up: true,
            reconnects: 0
        }
    );
}

/// A connection that stays open but gets no answers (Redis paused) is found
/// by the probe: status down within a few probe intervals, then up again
/// once Redis answers. Probes never reach the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_probe_finds_a_silent_connection() {
    let server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 1, DEFAULT_HISTORY).await;
    tokio::task::block_in_place(|| server.command(&["CLIENT", "PAUSE", "1500", "ALL"]));
    wait_status(&nodes[0], |s| !s.up).await;
    wait_status(&nodes[0], |s| s.up && s.reconnects >= 1).await;
    assert!(
        nodes[0].inbox.try_recv().is_err(),
        "a probe reached the inbox"
    );
}

/// Dropping every handle ends the subscriber task and closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dropped_bus_closes_its_subscriber() {
    let server = RedisServer::start();
    let health = |server: &RedisServer| {
        tokio::task::block_in_place(|| server.pubsub_channels("banter:health:*"))
    };
    let nodes = redis_nodes(&server, 1, DEFAULT_HISTORY).await;
    assert_eq!(health(&server).len(), 1);
    drop(nodes);
    let deadline = Instant::now() + WITHIN;
    while !health(&server).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the subscriber connection outlived its bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A URL that cannot be parsed is a configuration error, not an outage.
#[tokio::test]
async fn redis_bad_url_is_a_config_error() {
    let pool = deadpool_redis::Config::from_url("redis://127.0.0.1:1/")
        .builder()
        .unwrap()
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap();
    let result = RedisBus::connect(pool, RedisBusConfig::new("not a url", "banter")).await;
    assert!(matches!(result, Err(BusError::Config(_))), "{result:?}");
}
