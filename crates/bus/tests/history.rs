//! History contract, run against `MemoryBus` and real Redis: the message id is
//! the history position, history order is live order, and recovery knows when
//! it is incomplete.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use banter_bus::{Draft, HistoryQuery, Position, Topic};
use banter_protocol::{Message, ServerFrame, User};
use banter_testkit::RedisServer;
use std::time::Duration;

fn draft(text: &str) -> Draft {
    Draft {
        room: "hist".parse().unwrap(),
        from: User::parse("u1", "Ann").unwrap(),
        text: text.into(),
        ts: 42,
    }
}

async fn say(node: &Node, text: &str) -> Message {
    node.bus.publish_message(&draft(text)).await.unwrap()
}

fn sid(m: &Message) -> Position {
    Position::parse(m.id.as_str()).expect("ids are history positions")
}

/// Whether `a` comes before `b` in one history (same epoch).
fn before(a: &Message, b: &Message) -> bool {
    sid(b).after(sid(a)) == Some(true)
}

async fn received(node: &mut Node) -> Message {
    let env = next(node).await;
    match serde_json::from_slice::<ServerFrame>(&env.payload).unwrap() {
        ServerFrame::Message(m) => m,
        other => panic!("{other:?}"),
    }
}

macro_rules! contract {
    ($point:ident, $nodes:expr, $size:expr) => {
        mod $point {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$point(memory_nodes($nodes, $size)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = RedisServer::start();
                super::$point(redis_nodes(&server, $nodes, $size).await).await;
            }
        }
    };
}

contract!(the_published_frame_is_the_returned_message, 2, 50);
contract!(publish_counts_receiving_nodes, 2, 50);
contract!(pages_latest_before_after, 1, 50);
contract!(history_order_is_live_order, 2, 500);
contract!(trimmed_history_is_incomplete, 1, 5);
contract!(no_history_keeps_nothing, 1, 0);

async fn the_published_frame_is_the_returned_message(mut nodes: Vec<Node>) {
    let topic = Topic::Room("hist".parse().unwrap());
    nodes[1].bus.subscribe(&topic).await.unwrap();
    let first = say(&nodes[0], "one \"quoted\" <b>").await;
    let second = say(&nodes[0], "two").await;
    assert!(before(&first, &second), "ids grow in room order");
    assert_eq!(received(&mut nodes[1]).await, first);
    assert_eq!(received(&mut nodes[1]).await, second);
    assert_eq!(first.text, "one \"quoted\" <b>");
    assert_eq!(first.from, User::parse("u1", "Ann").unwrap());
}

async fn publish_counts_receiving_nodes(nodes: Vec<Node>) {
    let topic = Topic::User("ann".parse().unwrap());
    assert_eq!(
        nodes[0].bus.publish(&topic, "x".into()).await.unwrap(),
        0,
        "nobody listens"
    );
    for n in &nodes {
        n.bus.subscribe(&topic).await.unwrap();
    }
    assert_eq!(nodes[0].bus.publish(&topic, "x".into()).await.unwrap(), 2);
}

async fn pages_latest_before_after(nodes: Vec<Node>) {
    let room = "hist".parse().unwrap();
    let bus = &nodes[0].bus;
    let empty = bus
        .history(&room, HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert!(empty.messages.is_empty());
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(say(&nodes[0], &format!("m{i}")).await);
    }
    let latest = bus
        .history(&room, HistoryQuery::Latest { limit: 3 })
        .await
        .unwrap();
    assert_eq!(latest.messages, sent[2..], "the newest, oldest first");
    let before = bus
        .history(
            &room,
            HistoryQuery::Before {
                before: sid(&sent[3]),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(before.messages, sent[1..3]);
    let after = bus
        .history(
            &room,
            HistoryQuery::After {
                since: sid(&sent[1]),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert_eq!(after.messages, sent[2..]);
    assert!(after.complete, "nothing after since was trimmed");
    let cut = bus
        .history(
            &room,
            HistoryQuery::After {
                since: sid(&sent[0]),
                limit: 2,
            },
        )
        .await
        .unwrap();
    assert_eq!(cut.messages, sent[1..3]);
    assert!(!cut.complete, "the limit cut some");
    let none = bus
        .history(
            &room,
            HistoryQuery::After {
                since: sid(&sent[4]),
                limit: 100,
            },
        )
        .await
        .unwrap();
    assert!(none.messages.is_empty() && none.complete);
}

async fn history_order_is_live_order(mut nodes: Vec<Node>) {
    let topic = Topic::Room("hist".parse().unwrap());
    nodes[0].bus.subscribe(&topic).await.unwrap();
    let (a, b) = (nodes[0].bus.clone(), nodes[1].bus.clone());
    let ta = tokio::spawn(async move {
        for i in 0..100 {
            a.publish_message(&draft(&format!("a{i}"))).await.unwrap();
        }
    });
    let tb = tokio::spawn(async move {
        for i in 0..100 {
            b.publish_message(&draft(&format!("b{i}"))).await.unwrap();
        }
    });
    let mut live = Vec::new();
    for _ in 0..200 {
        live.push(received(&mut nodes[0]).await);
    }
    ta.await.unwrap();
    tb.await.unwrap();
    let stored = nodes[1]
        .bus
        .history(
            &"hist".parse().unwrap(),
            HistoryQuery::Latest { limit: 200 },
        )
        .await
        .unwrap();
    assert_eq!(stored.messages, live);
    assert!(live.windows(2).all(|w| before(&w[0], &w[1])));
}

async fn trimmed_history_is_incomplete(nodes: Vec<Node>) {
    let room = "hist".parse().unwrap();
    let first = say(&nodes[0], "first").await;
    // Redis trims approximately (whole nodes of 100 entries): send enough.
    let mut last = first.clone();
    for i in 0..300 {
        last = say(&nodes[0], &format!("{i}")).await;
    }
    let page = nodes[0]
        .bus
        .history(
            &room,
            HistoryQuery::After {
                since: sid(&first),
                limit: 1000,
            },
        )
        .await
        .unwrap();
    assert!(!page.complete, "messages after `first` were trimmed");
    assert_eq!(page.messages.last(), Some(&last));
    let recent = nodes[0]
        .bus
        .history(&room, HistoryQuery::Latest { limit: 3 })
        .await
        .unwrap();
    let since = sid(&recent.messages[0]);
    let page = nodes[0]
        .bus
        .history(&room, HistoryQuery::After { since, limit: 1000 })
        .await
        .unwrap();
    assert!(page.complete);
    assert_eq!(page.messages, recent.messages[1..]);
}

async fn no_history_keeps_nothing(nodes: Vec<Node>) {
    let room = "hist".parse().unwrap();
    let a = say(&nodes[0], "a").await;
    let b = say(&nodes[0], "b").await;
    assert!(before(&a, &b), "ids still grow");
    let page = nodes[0]
        .bus
        .history(&room, HistoryQuery::Latest { limit: 10 })
        .await
        .unwrap();
    assert!(page.messages.is_empty());
    let page = nodes[0]
        .bus
        .history(
            &room,
            HistoryQuery::After {
                since: sid(&a),
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert!(
        !page.complete,
        "with no history, recovery is never complete"
    );
}

/// A command already sent may have been executed: a slow Redis must not turn
/// a stored message into a reported failure (a client retry would duplicate
/// it). redis-rs's default 500 ms response timeout did exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_slow_not_an_error_redis() {
    let server = RedisServer::start();
    let nodes = redis_nodes(&server, 1, 50).await;
    say(&nodes[0], "warm").await; // the shared connection is open
    let port = server.port();
    let pause = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"CLIENT PAUSE 1500 WRITE\r\n").unwrap();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
    });
    pause.await.unwrap();
    let started = std::time::Instant::now();
    let stored = nodes[0]
        .bus
        .publish_message(&draft("during the pause"))
        .await
        .expect("slow, not failed");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "Redis really was paused: {:?}",
        started.elapsed()
    );
    // The pause also silenced the probe, so the bus may flap while it
    // reconnects: read the history once it takes reads again (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let room = "hist".parse().unwrap();
        match nodes[0]
            .bus
            .history(&room, HistoryQuery::Latest { limit: 1 })
            .await
        {
            Ok(page) => break page,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "history unreadable after the pause: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(page.messages, vec![stored]);
}
