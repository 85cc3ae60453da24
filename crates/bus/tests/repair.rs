//! Gap repair against real Redis: a node whose subscriber connection is cut
//! (a proxy between it and Redis drops it and refuses new ones for a while;
//! Redis itself stays up) still hands every stored message of its topics to
//! its inbox exactly once and in order, goes on storing what its own clients
//! send meanwhile, and says `Gap` where history cannot fill the hole.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use banter_bus::{
    BusEvent, DmDraft, Draft, Epoch, HistoryQuery, INBOX_CAPACITY, Position, RedisBus,
    RedisBusConfig,
};
use banter_protocol::{Message, User};
use banter_testkit::{Proxy, RedisServer};
use deadpool_redis::Runtime;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// A node whose subscriber goes through `proxy`; its pool (publishes,
/// history) talks to Redis directly.
async fn node_via(server: &RedisServer, proxy: &Proxy, history: usize, max_lag: Duration) -> Node {
    let pool = deadpool_redis::Config::from_url(server.url())
        .builder()
        .unwrap()
        .max_size(4)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap();
    let config = RedisBusConfig {
        probe_interval: PROBE,
        history_size: history,
        max_lag,
        ..RedisBusConfig::new(proxy.redis_url(), "banter")
    };
    let (bus, inbox) = RedisBus::connect(pool, config).await.unwrap();
    let node = Node {
        bus: Arc::new(bus),
        inbox,
    };
    wait_status(&node, |s| s.up).await;
    node
}

fn draft(n: usize) -> Draft {
    Draft {
        room: "fix".parse().unwrap(),
        from: User::parse("u1", "Ann").unwrap(),
        text: format!("m{n}"),
        ts: 1,
    }
}

async fn say(node: &Node, n: usize) -> Message {
    node.bus.publish_message(&draft(n)).await.unwrap()
}

/// Everything that reaches `node`'s inbox until `want` messages came (or
/// nothing more within a short while once they did).
async fn drain(node: &mut Node, want: usize) -> (Vec<Position>, Vec<BusEvent>) {
    let (mut positions, mut others) = (Vec::new(), Vec::new());
    loop {
        let wait = if positions.len() >= want {
            Duration::from_millis(300)
        } else {
            WITHIN
        };
        let Ok(event) = timeout(wait, node.inbox.recv()).await else {
            assert!(
                positions.len() >= want,
                "only {} of {want} messages arrived",
                positions.len()
            );
            return (positions, others);
        };
        match event.expect("inbox open") {
            BusEvent::Envelope(e) => positions.push(e.position.expect("a stored message")),
            other => others.push(other),
        }
    }
}

fn ids(messages: &[Message]) -> Vec<Position> {
    messages
        .iter()
        .map(|m| Position::parse(m.id.as_str()).unwrap())
        .collect()
}

/// The scenario of the bug report, on the bus: messages published while
/// the subscriber is cut reach the node once it is back, in order and once,
/// before newer live ones; the node's own publishes meanwhile are acked
/// (stored) rather than refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_cut_subscriber_missed_is_repaired_in_order_and_once() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let a = redis_nodes(&server, 1, 500).await.remove(0);
    let mut b = node_via(&server, &proxy, 500, Duration::from_secs(5)).await;
    let topic = room("fix");
    b.bus.subscribe(&topic).await.unwrap();

    let mut acked = Vec::new();
    for n in 0..20 {
        acked.push(say(&a, n).await);
    }
    for round in 0..2 {
        proxy.cut();
        wait_status(&b, |s| !s.up).await;
        for n in 0..30 {
            acked.push(say(&a, 100 * (round + 1) + n).await);
        }
        // B's own clients go on: only its subscriber is down.
        for n in 0..5 {
            let own = b.bus.publish_message(&draft(1000 + n)).await;
            acked.push(own.expect("stored although the subscriber is down"));
        }
        proxy.restore();
        wait_status(&b, |s| s.up).await;
        for n in 0..10 {
            acked.push(say(&a, 100 * (round + 1) + 50 + n).await);
        }
    }
    let (got, others) = drain(&mut b, acked.len()).await;
    assert_eq!(got, ids(&acked), "every message once, in room order");
    assert!(
        !others.iter().any(|e| matches!(e, BusEvent::Gap(_))),
        "history reached back: no gap: {others:?}"
    );
    let repaired: usize = others
        .iter()
        .map(|e| match e {
            BusEvent::Repaired { messages, .. } => *messages,
            _ => 0,
        })
        .sum();
    assert!(
        repaired >= 70,
        "the 70 missed came from history ({repaired})"
    );
}

/// When more was missed than the room keeps, the node is told: `Gap` first,
/// then what history still holds and everything after, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_history_cannot_fill_is_announced() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let a = redis_nodes(&server, 1, 10).await.remove(0);
    let mut b = node_via(&server, &proxy, 10, Duration::from_secs(5)).await;
    let topic = room("fix");
    b.bus.subscribe(&topic).await.unwrap();
    let first = say(&a, 0).await;
    assert_eq!(
        next(&mut b).await.position,
        Position::parse(first.id.as_str())
    );
    proxy.cut();
    wait_status(&b, |s| !s.up).await;
    let mut missed = Vec::new();
    for n in 1..300 {
        missed.push(say(&a, n).await);
    }
    proxy.restore();
    wait_status(&b, |s| s.up).await;
    let last = say(&a, 999).await;

    let mut seen = vec![Position::parse(first.id.as_str()).unwrap()];
    let mut gap_at = None;
    while seen.last() != Some(&ids(std::slice::from_ref(&last))[0]) {
        match timeout(WITHIN, b.inbox.recv()).await.unwrap().unwrap() {
            BusEvent::Envelope(e) => seen.push(e.position.unwrap()),
            BusEvent::Gap(t) => {
                assert_eq!(t, topic);
                gap_at.get_or_insert(seen.len());
            }
            BusEvent::Repaired { .. } => {}
        }
    }
    assert_eq!(
        gap_at,
        Some(1),
        "the gap comes right after what was seen live"
    );
    assert_eq!(seen[0], ids(std::slice::from_ref(&first))[0]);
    let all = ids(&missed);
    let kept = &seen[1..seen.len() - 1];
    assert!(
        !kept.is_empty() && kept.len() < all.len(),
        "{} kept",
        kept.len()
    );
    assert_eq!(
        kept,
        &all[all.len() - kept.len()..],
        "the newest that history kept, in order"
    );
}

/// No history to repair from (a room with `history.size = 0`): the
/// interruption is announced. A user's topic is repaired from their
/// mailbox: a direct message sent while the subscriber was cut arrives, and
/// no gap is announced for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_without_history_announce_and_user_topics_repair() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let a = redis_nodes(&server, 1, 100).await.remove(0);
    let mut b = node_via(&server, &proxy, 0, Duration::from_secs(5)).await;
    b.bus.subscribe(&room("fix")).await.unwrap();
    b.bus.subscribe(&user("u-7")).await.unwrap();
    proxy.cut();
    wait_status(&b, |s| !s.up).await;
    let sent = a
        .bus
        .send_dm(&DmDraft {
            from: User::parse("u-1", "Ann").unwrap(),
            to: "u-7".parse().unwrap(),
            text: "while you were away".into(),
            ts: 1,
        })
        .await
        .unwrap();
    proxy.restore();
    let (mut gaps, mut dms) = (Vec::new(), Vec::new());
    while gaps.is_empty() || dms.is_empty() {
        match timeout(WITHIN, b.inbox.recv()).await.unwrap().unwrap() {
            BusEvent::Gap(t) => gaps.push(t),
            BusEvent::Envelope(e) if e.topic == user("u-7") => dms.push(e),
            BusEvent::Repaired { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(gaps, [room("fix")]);
    let frame: serde_json::Value = serde_json::from_slice(&dms[0].payload).unwrap();
    assert_eq!(frame["type"], "dm");
    assert_eq!(frame["id"], sent.id.as_str());
    assert_eq!(frame["text"], "while you were away");
}

/// The history lost entries this node already delivered (what a failover to
/// a replica that lacked them looks like): announced, and the room starts a
/// new epoch, so recovering from an id of before says incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_newest_entries_start_a_new_epoch() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let a = redis_nodes(&server, 1, 100).await.remove(0);
    let mut b = node_via(&server, &proxy, 100, Duration::from_secs(5)).await;
    let topic = room("fix");
    b.bus.subscribe(&topic).await.unwrap();
    let sent: Vec<Message> = {
        let mut v = Vec::new();
        for n in 0..5 {
            v.push(say(&a, n).await);
        }
        v
    };
    let (got, _) = drain(&mut b, 5).await;
    assert_eq!(got, ids(&sent));
    proxy.cut();
    wait_status(&b, |s| !s.up).await;
    // The newest two vanish from the stream, as on a replica that lacked them.
    let [.., fourth, fifth] = &ids(&sent)[..] else {
        unreachable!()
    };
    for p in [fourth, fifth] {
        let _: i64 = server.query(&["XDEL", "banter:history:fix", &p.id.to_string()]);
    }
    proxy.restore();
    let announced = timeout(WITHIN, b.inbox.recv()).await.unwrap().unwrap();
    assert_eq!(announced, BusEvent::Gap(topic.clone()));
    let old = Position::parse(sent[2].id.as_str()).unwrap();
    let mut epoch = None;
    for _ in 0..100 {
        let page = a
            .bus
            .history(&"fix".parse().unwrap(), HistoryQuery::Latest { limit: 1 })
            .await
            .unwrap();
        if page.epoch != Some(old.epoch) {
            epoch = page.epoch;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let epoch: Epoch = epoch.expect("a new epoch");
    let page = a
        .bus
        .history(
            &"fix".parse().unwrap(),
            HistoryQuery::After {
                since: old,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        !page.complete,
        "an id of the old epoch cannot vouch for anything"
    );
    let next = say(&a, 9).await;
    assert_eq!(Position::parse(next.id.as_str()).unwrap().epoch, epoch);
}

/// Redis restarts without persistence: the history (and its epoch) is gone.
/// The subscribed node says so, and a message stored afterwards carries a
/// new epoch that no id from before matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_loses_history_is_a_new_epoch() {
    let mut server = RedisServer::start();
    let mut nodes = redis_nodes(&server, 2, 100).await;
    let topic = room("fix");
    nodes[1].bus.subscribe(&topic).await.unwrap();
    let before = say(&nodes[0], 0).await;
    assert_eq!(
        next(&mut nodes[1]).await.position,
        Position::parse(before.id.as_str())
    );
    tokio::task::block_in_place(|| server.restart());
    for node in &nodes {
        wait_status(node, |s| s.up && s.reconnects >= 1).await;
    }
    let announced = timeout(WITHIN, nodes[1].inbox.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(announced, BusEvent::Gap(topic));
    let after = say(&nodes[0], 1).await;
    let (old, new) = (
        Position::parse(before.id.as_str()).unwrap(),
        Position::parse(after.id.as_str()).unwrap(),
    );
    assert_ne!(old.epoch, new.epoch);
    let page = nodes[0]
        .bus
        .history(
            &"fix".parse().unwrap(),
            HistoryQuery::After {
                since: old,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(!page.complete && page.messages.is_empty(), "{page:?}");
}

/// A node that cannot keep up (its inbox is not read) does not buffer the
/// bus without bound: past `max_lag` it drops the subscriber connection and
/// later repairs from history, so nothing is lost and nothing repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_too_far_behind_drops_the_connection_and_repairs() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let total = INBOX_CAPACITY + 2_000;
    let a = redis_nodes(&server, 1, total + 100).await.remove(0);
    let mut b = node_via(&server, &proxy, total + 100, Duration::from_millis(500)).await;
    b.bus.subscribe(&room("fix")).await.unwrap();
    let a = Arc::new(a);
    let mut acked = Vec::with_capacity(total);
    for chunk in (0..total).collect::<Vec<_>>().chunks(200) {
        let batch = chunk.iter().map(|&n| {
            let a = a.clone();
            async move { say(&a, n).await }
        });
        acked.extend(futures_util::future::join_all(batch).await);
    }
    // Nothing read yet: the inbox is full and the node far behind.
    wait_status(&b, |s| s.reconnects >= 1).await;
    let (got, _) = drain(&mut b, total).await;
    let mut want = ids(&acked);
    want.sort_by_key(|p| p.id);
    assert_eq!(got.len(), total, "nothing lost, nothing twice");
    assert_eq!(got, want, "in room order");
}

/// A node whose fan-out keeps moving but slower than the room (it reads its
/// inbox, just not fast enough) is behind the bus all the same: the client
/// library would buffer Redis's traffic without bound. Past `max_lag` the
/// node drops the subscriber connection and repairs from history; nothing
/// is lost and nothing repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_slowly_falling_behind_drops_the_connection_and_repairs() {
    let server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let total = INBOX_CAPACITY + 4_000;
    let a = Arc::new(redis_nodes(&server, 1, total + 100).await.remove(0));
    let mut b = node_via(&server, &proxy, total + 100, Duration::from_millis(300)).await;
    b.bus.subscribe(&room("fix")).await.unwrap();
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let a = a.clone();
        let published = published.clone();
        async move {
            let mut acked = Vec::with_capacity(total);
            for chunk in (0..total).collect::<Vec<_>>().chunks(200) {
                let batch = chunk.iter().map(|&n| {
                    let a = a.clone();
                    async move { say(&a, n).await }
                });
                acked.extend(futures_util::future::join_all(batch).await);
                published.store(acked.len(), std::sync::atomic::Ordering::Release);
            }
            acked
        }
    });
    // The fan-out: two events a millisecond, never stuck, and while the
    // room is being written at least a full inbox and 2,000 more behind, so
    // messages wait in the client library however fast this machine
    // publishes (after the writing, the 2,000 wait for the inbox to drain).
    let mut got = Vec::with_capacity(total);
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    while got.len() < total {
        pace.tick().await;
        let written = published.load(std::sync::atomic::Ordering::Acquire);
        let allowed = if written == total {
            total
        } else {
            written.saturating_sub(INBOX_CAPACITY + 2_000)
        };
        for _ in 0..2 {
            if got.len() >= allowed {
                break;
            }
            let event = timeout(WITHIN, b.inbox.recv()).await;
            match event.expect("the stream goes on").expect("inbox open") {
                BusEvent::Envelope(e) => got.push(e.position.expect("a stored message")),
                BusEvent::Repaired { .. } => {}
                BusEvent::Gap(_) => panic!("history holds everything: no gap"),
            }
        }
    }
    let (rest, others) = drain(&mut b, 0).await;
    assert!(rest.is_empty(), "{} more: something came twice", rest.len());
    assert!(
        others
            .iter()
            .all(|e| matches!(e, BusEvent::Repaired { .. }))
    );
    let acked = publisher.await.unwrap();
    let status = *b.bus.status().borrow();
    assert!(
        status.reconnects >= 1,
        "the lagging connection was dropped: {status:?}"
    );
    let mut want = ids(&acked);
    want.sort_by_key(|p| p.id);
    assert_eq!(got, want, "every message once, in room order");
}
