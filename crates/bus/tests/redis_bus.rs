//! The Redis bus's own promises, beyond the contract both buses keep
//! (contract.rs): exact channels, no patterns, surviving an outage, a killed
//! subscriber connection and a silent one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_bus::DEFAULT_HISTORY;
use common::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use banter_bus::{Bus, BusError, BusStatus, RedisBus, RedisBusConfig};
use banter_testkit::RedisServer;
use bytes::Bytes;
use deadpool_redis::Runtime;

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

/// Redis goes away: status down and not writable, publishes refused fast. It comes back on
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
        // Down, and known to be unwritable once a reconnect has failed.
        wait_status(node, |s| !s.up && !s.writable).await;
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
    let killed = tokio::task::block_in_place(|| server.client_kill_pubsub());
    assert!(killed >= 1, "no subscriber connection to kill");
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
            writable: true,
            reconnects: 0,
            shards: None
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
    let paused =
        tokio::task::block_in_place(|| server.command(&["CLIENT", "PAUSE", "1500", "ALL"]));
    assert_eq!(paused, banter_testkit::redis::Value::Okay);
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
    assert!(matches!(result, Err(BusError::Url(_))), "{result:?}");
}

/// A bus with the production unsubscribe delay (short here) on `server`.
async fn delayed_bus(server: &RedisServer, delay: Duration) -> Node {
    let pool = deadpool_redis::Config::from_url(server.url())
        .builder()
        .unwrap()
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap();
    let config = RedisBusConfig {
        probe_interval: PROBE,
        unsubscribe_delay: delay,
        ..RedisBusConfig::new(server.url(), "banter")
    };
    let (bus, inbox) = RedisBus::connect(pool, config).await.unwrap();
    let node = Node {
        bus: Arc::new(bus),
        inbox,
    };
    wait_status(&node, |s| s.up).await;
    node
}

fn calls(server: &RedisServer, command: &str) -> u64 {
    let info: String = tokio::task::block_in_place(|| server.query(&["INFO", "commandstats"]));
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The bus counts references: a room stays subscribed while any is held
/// (two members, one leaves), goes a moment after the last (so a member who
/// comes right back causes no churn), and rooms that go together go in one
/// UNSUBSCRIBE. A user's topic goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_references_keep_topics_and_idle_rooms_go_together() {
    let server = RedisServer::start();
    let node = delayed_bus(&server, Duration::from_millis(300)).await;
    let channels = |server: &RedisServer| {
        tokio::task::block_in_place(|| server.pubsub_channels("banter:*:*"))
            .into_iter()
            .filter(|c| !c.starts_with("banter:health:"))
            .collect::<Vec<_>>()
    };
    let rooms: Vec<_> = (0..50).map(|i| room(&format!("r{i:02}"))).collect();
    for r in &rooms {
        node.bus.subscribe(r).await.unwrap();
    }
    node.bus.subscribe(&rooms[0]).await.unwrap(); // a second member of r00
    node.bus.subscribe(&user("u1")).await.unwrap();
    assert_eq!(channels(&server).len(), 51);

    node.bus.unsubscribe(&user("u1")).await.unwrap();
    assert_eq!(channels(&server).len(), 50, "a user's topic goes at once");

    for r in &rooms {
        node.bus.unsubscribe(r).await.unwrap();
    }
    node.bus.subscribe(&rooms[1]).await.unwrap(); // back within the delay
    assert_eq!(channels(&server).len(), 50, "rooms go a moment later");
    let before = calls(&server, "unsubscribe");
    let deadline = Instant::now() + Duration::from_secs(5);
    while channels(&server).len() > 2 {
        assert!(Instant::now() < deadline, "{:?}", channels(&server));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        channels(&server),
        ["banter:room:r00", "banter:room:r01"],
        "still referenced"
    );
    // Rooms that went idle together go in one UNSUBSCRIBE (two, when a
    // check falls between them), never one command each.
    let unsubscribes = calls(&server, "unsubscribe") - before;
    assert!(
        (1..=2).contains(&unsubscribes),
        "48 idle rooms, {unsubscribes} UNSUBSCRIBEs"
    );
}

/// Redis refuses one topic of many subscribed together (an ACL that does
/// not allow its channel): that one subscribe gets the refusal, the others
/// asked in the same `SUBSCRIBE` are asked again alone and are in place,
/// and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_topic_does_not_take_the_others_of_its_batch_with_it() {
    let server = RedisServer::start();
    let admin = redis::Client::open(server.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "limited",
            "on",
            ">pw",
            "~*",
            "+@all",
            "resetchannels",
            "&banter:health:*",
            "&banter:room:ok-*",
        ])
        .exec_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://limited:pw@127.0.0.1:{}/", server.port());
    let (bus, inbox) = redis_bus(&url, DEFAULT_HISTORY).await;
    let topics: Vec<_> = ["ok-1", "no", "ok-2", "ok-3"]
        .iter()
        .map(|r| room(r))
        .collect();
    let results = futures_util::future::join_all(topics.iter().map(|t| bus.subscribe(t))).await;
    assert!(results[1].is_err(), "the refused topic: {:?}", results[1]);
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 1) {
        assert!(r.is_ok(), "{:?}: {r:?}", topics[i]);
    }
    let publisher = redis_nodes(&server, 1, DEFAULT_HISTORY).await.remove(0);
    for t in [&topics[0], &topics[2], &topics[3]] {
        publish(&publisher, t, "hi").await;
    }
    let mut node = Node {
        bus: Arc::new(bus),
        inbox,
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut node).await.topic);
    }
    got.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        got,
        [topics[0].clone(), topics[2].clone(), topics[3].clone()]
    );
    assert!(node.bus.status().borrow().up, "the link stayed up");
}

/// Messages sent together on one Redis are stored and published in batches
/// (one script call for many): 100 rooms written at once by 100 senders,
/// 10 messages each, take fewer calls than messages; every message is
/// acked with its own position, reaches the subscriber once and in its
/// room's order; and a room whose history key Redis refuses (a string where
/// a stream should be) fails its own messages alone, never the others of
/// their batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_together_are_batched_each_in_order_and_a_refused_one_fails_alone() {
    use banter_bus::Draft;
    use banter_protocol::User;
    use std::collections::HashMap;

    const ROOMS: usize = 100;
    const EACH: usize = 10;
    let server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 2, DEFAULT_HISTORY).await;
    for r in 0..ROOMS {
        nodes[0]
            .bus
            .subscribe(&room(&format!("r{r}")))
            .await
            .unwrap();
    }
    let _: String =
        tokio::task::block_in_place(|| server.query(&["SET", "banter:history:bad", "x"]));
    let before = calls(&server, "evalsha");
    let draft = |room: &str, text: String| Draft {
        room: room.parse().unwrap(),
        from: User::parse("u1", "Ann").unwrap(),
        text,
        ts: 42,
    };
    let mut senders = Vec::new();
    for r in 0..ROOMS {
        let bus = nodes[1].bus.clone();
        let name = format!("r{r}");
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let message = bus.publish_message(&draft(&name, format!("{i}"))).await;
                ids.push(message.expect("a good room's message is stored").id);
            }
            ids
        }));
    }
    let bus = nodes[1].bus.clone();
    let refused = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for i in 0..EACH {
            outcomes.push(bus.publish_message(&draft("bad", format!("{i}"))).await);
        }
        outcomes
    });
    let mut acked = HashMap::new();
    for (r, sender) in senders.into_iter().enumerate() {
        let ids = tokio::time::timeout(WITHIN, sender).await.unwrap().unwrap();
        assert_eq!(ids.len(), EACH);
        acked.insert(format!("r{r}"), ids);
    }
    let refused = tokio::time::timeout(WITHIN, refused)
        .await
        .unwrap()
        .unwrap();
    assert!(
        refused.iter().all(Result::is_err),
        "a refused room's messages fail: {refused:?}"
    );
    let calls = calls(&server, "evalsha") - before;
    assert!(
        calls < (ROOMS * EACH) as u64,
        "{calls} script calls for {} messages: nothing was batched",
        ROOMS * EACH
    );

    // Each room's messages arrive once, in the order sent, with the ids acked.
    let mut seen: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for _ in 0..ROOMS * EACH {
        let envelope = next(&mut nodes[0]).await;
        let frame: serde_json::Value = serde_json::from_slice(&envelope.payload).unwrap();
        let room = frame["room"].as_str().unwrap().to_owned();
        let text = frame["text"].as_str().unwrap().to_owned();
        let id = frame["id"].as_str().unwrap().to_owned();
        seen.entry(room).or_default().push((text, id));
    }
    assert_eq!(seen.len(), ROOMS);
    for (room, got) in seen {
        let texts: Vec<String> = got.iter().map(|(t, _)| t.clone()).collect();
        let expected: Vec<String> = (0..EACH).map(|i| i.to_string()).collect();
        assert_eq!(texts, expected, "{room}'s messages, once and in order");
        let ids: Vec<String> = got.iter().map(|(_, id)| id.clone()).collect();
        let acked: Vec<String> = acked[&room].iter().map(ToString::to_string).collect();
        assert_eq!(ids, acked, "{room}'s delivered ids are the acked ones");
    }
}
