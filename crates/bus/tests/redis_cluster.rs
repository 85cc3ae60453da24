//! The Redis bus on a real Redis Cluster (`redis-server --cluster-enabled
//! yes`, joined by `redis-cli --cluster create`): sharded pub/sub only, a
//! room's channel on the primary that owns its slot, rooms spread over the
//! shards; and under traffic, a primary killed (its replica takes over) or
//! a slot moved to another primary loses nothing acked silently and
//! duplicates nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use banter_bus::redis::{Keyspace, slot};
use banter_bus::{BusEvent, Draft, Position, Topic};
use banter_protocol::{RoomId, User};
use banter_testkit::{NODE_TIMEOUT_MS, RedisCluster};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::time::timeout;

fn draft(room: &RoomId, n: usize) -> Draft {
    Draft {
        room: room.clone(),
        from: User::parse("u1", "Ann").unwrap(),
        text: format!("m{n}"),
        ts: 1,
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Each room's channel is a shard channel on the primary that owns its
/// slot, and nowhere a classic channel; 30 rooms land on all three shards;
/// a stored message reaches a node on another connection with its position,
/// and its history is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_shard_channels_spread_over_the_primaries() {
    let cluster = RedisCluster::start(3, 0);
    let mut nodes = cluster_nodes(&cluster, 2, 100).await;
    let names = Keyspace::cluster("banter");
    let rooms: Vec<RoomId> = (0..30).map(|i| format!("r{i}").parse().unwrap()).collect();
    for r in &rooms {
        nodes[1]
            .bus
            .subscribe(&Topic::Room(r.clone()))
            .await
            .unwrap();
    }
    let primaries = blocking(|| cluster.primaries());
    assert_eq!(primaries.len(), 3);
    let mut per_primary: BTreeMap<u16, usize> = BTreeMap::new();
    for r in &rooms {
        let channel = names.channel(&Topic::Room(r.clone()));
        let owner = blocking(|| cluster.primary_of(&channel));
        *per_primary.entry(owner).or_default() += 1;
        for &port in &primaries {
            let shard: Vec<String> = blocking(|| {
                cluster
                    .query(port, &["PUBSUB", "SHARDCHANNELS", &channel])
                    .unwrap()
            });
            assert_eq!(
                shard.len(),
                usize::from(port == owner),
                "{channel} on {port}"
            );
        }
    }
    assert_eq!(
        per_primary.len(),
        3,
        "rooms on every shard: {per_primary:?}"
    );
    for &port in &primaries {
        let classic: Vec<String> =
            blocking(|| cluster.query(port, &["PUBSUB", "CHANNELS", "*"]).unwrap());
        assert!(
            classic.is_empty(),
            "classic channels on {port}: {classic:?}"
        );
    }

    let sent = nodes[0]
        .bus
        .publish_message(&draft(&rooms[7], 1))
        .await
        .unwrap();
    let got = next(&mut nodes[1]).await;
    assert_eq!(got.topic, Topic::Room(rooms[7].clone()));
    assert_eq!(got.position, Position::parse(sent.id.as_str()));
    let history = nodes[0]
        .bus
        .history(&rooms[7], banter_bus::HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert_eq!(history.messages, [sent]);
}

/// What the subscribing node saw, per room, and when.
#[derive(Default)]
struct Seen {
    positions: HashMap<RoomId, Vec<Position>>,
    gaps: HashSet<RoomId>,
    /// When each envelope arrived, per room.
    arrivals: HashMap<RoomId, Vec<Instant>>,
}

/// Publishes on `rooms` round-robin from `publisher` for `run`, while
/// `fault` runs on a blocking thread `after` into it; collects what
/// `subscriber` receives. Returns the acked positions per room, what was
/// seen, and when the traffic stopped.
async fn traffic(
    publisher: Node,
    mut subscriber: Node,
    rooms: Vec<RoomId>,
    run: Duration,
    after: Duration,
    fault: impl FnOnce() + Send + 'static,
) -> (HashMap<RoomId, Vec<Position>>, Seen, Instant) {
    for r in &rooms {
        subscriber
            .bus
            .subscribe(&Topic::Room(r.clone()))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Open loop, as clients send: one publish every 4 ms whatever the
    // earlier ones are waiting for, so a stalled primary has many in its
    // socket when it goes on.
    let publishing = {
        let (rooms, stop) = (rooms.clone(), stop.clone());
        let publisher = Arc::new(publisher);
        tokio::spawn(async move {
            let mut sends = tokio::task::JoinSet::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let room = rooms[n % rooms.len()].clone();
                n += 1;
                let publisher = publisher.clone();
                sends.spawn(async move {
                    let sent = timeout(
                        Duration::from_secs(10),
                        publisher.bus.publish_message(&draft(&room, n)),
                    )
                    .await;
                    // An error is an unacked message: it may or may not arrive.
                    match sent {
                        Ok(Ok(m)) => Some((room, Position::parse(m.id.as_str()).unwrap())),
                        _ => None,
                    }
                });
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            let mut acked: HashMap<RoomId, Vec<Position>> = HashMap::new();
            while let Some(done) = sends.join_next().await {
                if let Some((room, position)) = done.unwrap() {
                    acked.entry(room).or_default().push(position);
                }
            }
            acked
        })
    };
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let receiving = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(event) = subscriber.inbox.recv().await {
                let mut seen = seen.lock().unwrap();
                match event {
                    BusEvent::Envelope(e) => {
                        let Topic::Room(room) = e.topic else { continue };
                        seen.arrivals
                            .entry(room.clone())
                            .or_default()
                            .push(Instant::now());
                        seen.positions
                            .entry(room)
                            .or_default()
                            .push(e.position.expect("a stored message"));
                    }
                    BusEvent::Gap(Topic::Room(room)) => {
                        seen.gaps.insert(room);
                    }
                    _ => {}
                }
            }
            // Keeps the node (and its bus) alive until aborted.
            drop(subscriber);
        })
    };
    tokio::time::sleep(after).await;
    tokio::task::spawn_blocking(fault).await.unwrap();
    tokio::time::sleep(run.saturating_sub(after)).await;
    stop.store(true, Ordering::Relaxed);
    let ended = Instant::now();
    let acked = publishing.await.unwrap();
    // Repairs may still be bringing what was missed: wait (bounded) until
    // every acked message is there or its room had a gap.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !complete(&acked, &seen.lock().unwrap()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiving.abort();
    let _ = receiving.await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (acked, seen, ended)
}

/// Whether every acked message arrived, or its room had a gap.
fn complete(acked: &HashMap<RoomId, Vec<Position>>, seen: &Seen) -> bool {
    acked.iter().all(|(room, sent)| {
        seen.gaps.contains(room)
            || seen
                .positions
                .get(room)
                .is_some_and(|got| sent.iter().all(|p| got.contains(p)))
    })
}

/// Every acked message reached the subscriber, unless a `Gap` said
/// otherwise for its room; nothing twice; in order.
fn assert_no_silent_loss(acked: &HashMap<RoomId, Vec<Position>>, seen: &Seen) {
    let mut total = 0;
    for (room, sent) in acked {
        let got = seen.positions.get(room).cloned().unwrap_or_default();
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{room}: a message arrived twice");
        let in_epoch_order = got
            .windows(2)
            .all(|w| w[0].epoch != w[1].epoch || w[0].id < w[1].id);
        assert!(in_epoch_order, "{room}: out of order");
        if seen.gaps.contains(room) {
            continue;
        }
        let missing: Vec<_> = sent.iter().filter(|p| !unique.contains(p)).collect();
        assert!(
            missing.is_empty(),
            "{room}: {} acked messages lost silently: {missing:?}",
            missing.len()
        );
        total += sent.len();
    }
    assert!(total > 100, "too little traffic got through: {total}");
}

/// SIGKILL of a primary under traffic: its replica takes over; every acked
/// message reaches the other node (or a `gap` says otherwise), once and in
/// order; delivery on the killed shard's rooms resumes within
/// `cluster-node-timeout` + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_loses_nothing_silently() {
    let cluster = RedisCluster::start(3, 1);
    let nodes = cluster_nodes(&cluster, 2, 1_000).await;
    let names = Keyspace::cluster("banter");
    let rooms: Vec<RoomId> = (0..9).map(|i| format!("k{i}").parse().unwrap()).collect();
    let owner =
        |r: &RoomId| blocking(|| cluster.primary_of(&names.channel(&Topic::Room(r.clone()))));
    let victim = owner(&rooms[0]);
    let on_victim: Vec<RoomId> = rooms
        .iter()
        .filter(|r| owner(r) == victim)
        .cloned()
        .collect();
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let killed = Arc::new(std::sync::Mutex::new(None));
    let (c, k) = (cluster.clone(), killed.clone());
    let (acked, seen, ended) = traffic(
        a,
        b,
        rooms,
        Duration::from_secs(9),
        Duration::from_secs(2),
        move || {
            let mut cluster = c.lock().unwrap();
            *k.lock().unwrap() = Some(Instant::now());
            cluster.kill(victim);
            cluster.wait_failover(victim, 3);
        },
    )
    .await;
    assert_no_silent_loss(&acked, &seen);
    let killed = killed.lock().unwrap().expect("killed");
    let limit = Duration::from_millis(NODE_TIMEOUT_MS) + Duration::from_secs(5);
    // The longest silence on the killed shard's rooms from the kill to the
    // end of the traffic (the end counts: a room that never came back, or
    // stopped again, is silent until then) is how long delivery stopped.
    for room in &on_victim {
        let arrivals = &seen.arrivals[room];
        assert!(
            arrivals.iter().any(|t| *t > killed),
            "{room}: delivery resumed after the kill ({} arrivals, none after it; {} acked; gap: {}; \
             the traffic went on {:?} after the kill)",
            arrivals.len(),
            acked.get(room).map_or(0, Vec::len),
            seen.gaps.contains(room),
            ended.duration_since(killed),
        );
        // From the last arrival before the kill, as a client saw it.
        let before = arrivals.iter().copied().rfind(|t| *t <= killed);
        let marks: Vec<Instant> = std::iter::once(before.unwrap_or(killed))
            .chain(arrivals.iter().copied().filter(|t| *t > killed))
            .chain(std::iter::once(ended))
            .collect();
        let stopped = marks
            .windows(2)
            .map(|w| w[1].saturating_duration_since(w[0]))
            .max()
            .unwrap_or_default();
        eprintln!("{room}: delivery stopped for {stopped:?}");
        assert!(
            stopped <= limit,
            "{room}: delivery stopped for {stopped:?} (limit {limit:?})"
        );
    }
}

/// A slot moved between primaries (`redis-cli --cluster reshard`) under
/// traffic: Redis unsubscribes the moved rooms' channels; the node
/// resubscribes them where they now live and repairs; nothing acked is lost
/// or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_traffic_loses_nothing() {
    let cluster = RedisCluster::start(3, 0);
    let nodes = cluster_nodes(&cluster, 2, 1_000).await;
    let names = Keyspace::cluster("banter");
    let primaries = blocking(|| cluster.primaries());
    let (from, to) = (primaries[0], primaries[1]);
    // `reshard` moves the source's first slots: rooms in the first 50 of
    // `from`'s, and a few elsewhere.
    let first: i64 = {
        let slots: banter_testkit::redis::Value =
            blocking(|| cluster.query(from, &["CLUSTER", "SLOTS"]).unwrap());
        lowest_slot_of(&slots, from)
    };
    let moved: Vec<RoomId> = (0..)
        .map(|i| format!("m{i}"))
        .filter(|name| (first..first + 50).contains(&i64::from(slot(name))))
        .take(3)
        .map(|name| name.parse().unwrap())
        .collect();
    let mut rooms = moved.clone();
    rooms.extend((0..3).map(|i| format!("s{i}").parse::<RoomId>().unwrap()));
    let mut nodes = nodes.into_iter();
    let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    let (acked, seen, _) = traffic(
        a,
        b,
        rooms,
        Duration::from_secs(8),
        Duration::from_secs(2),
        move || {
            c.reshard(from, to, 50);
        },
    )
    .await;
    for room in &moved {
        let channel = names.channel(&Topic::Room(room.clone()));
        assert_eq!(
            blocking(|| cluster.primary_of(&channel)),
            to,
            "{room} moved"
        );
    }
    assert!(
        seen.gaps.is_empty(),
        "a reshard loses nothing: gaps in {:?}",
        seen.gaps
    );
    assert_no_silent_loss(&acked, &seen);
}

/// The lowest slot the primary on `port` serves, from a `CLUSTER SLOTS` reply.
fn lowest_slot_of(slots: &banter_testkit::redis::Value, port: u16) -> i64 {
    use banter_testkit::redis::Value;
    let Value::Array(ranges) = slots else {
        panic!("{slots:?}")
    };
    ranges
        .iter()
        .filter_map(|r| {
            let Value::Array(r) = r else { return None };
            let (Value::Int(lo), Value::Array(primary)) = (r.first()?, r.get(2)?) else {
                return None;
            };
            (primary.get(1) == Some(&Value::Int(i64::from(port)))).then_some(*lo)
        })
        .min()
        .expect("the primary serves slots")
}
