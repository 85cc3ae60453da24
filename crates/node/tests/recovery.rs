//! History and recovery: a client that keeps losing its connection and comes
//! back to another node misses nothing and sees nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{Message, MessageId, ServerFrame};
use common::*;
use serde_json::json;
use std::time::Duration;

/// Joins with `since` and returns (history, recovered).
async fn join_since(c: &mut Client, room: &str, since: Option<&MessageId>) -> (Vec<Message>, bool) {
    let mut frame = json!({"type":"join","room":room});
    if let Some(s) = since {
        frame["since"] = json!(s);
    }
    c.send(frame).await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Joined {
            history, recovered, ..
        } => (history, recovered),
        other => panic!("{other:?}"),
    }
}

/// One client publishes 400 messages steadily on node A while another
/// reconnects again and again, alternating nodes, joining with `since`: what
/// it received, concatenated, is every message exactly once, in order.
async fn recovery_under_load(p: Pair) {
    const TOTAL: usize = 400;
    let mut publisher = p.a.client("name=pub").await;
    publisher.join("live").await;
    let mut reader = p.b.client("name=reader").await;
    let (history, _) = join_since(&mut reader, "live", None).await;
    assert!(history.is_empty());

    let sender = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(TOTAL);
        for i in 0..TOTAL {
            ids.push(publisher.say("live", &format!("m{i}")).await);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        ids
    });

    let mut got: Vec<Message> = Vec::new();
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < TOTAL {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {} of {TOTAL}",
            got.len()
        );
        // Read live for a little while (or until done)...
        let until = tokio::time::Instant::now() + Duration::from_millis(60 + 17 * (reconnects % 5));
        while got.len() < TOTAL {
            let Ok(frame) = tokio::time::timeout_at(until, reader.recv()).await else {
                break;
            };
            if let ServerFrame::Message(m) = frame {
                got.push(m);
            }
        }
        if got.len() >= TOTAL {
            break;
        }
        // ...then lose the connection, miss some messages, come back to the other node.
        reader.close().await;
        tokio::time::sleep(Duration::from_millis(40)).await;
        reconnects += 1;
        let node = if reconnects % 2 == 1 { &p.a } else { &p.b };
        reader = node.client("name=reader").await;
        let since = got.last().map(|m| m.id.clone());
        let (history, recovered) = join_since(&mut reader, "live", since.as_ref()).await;
        assert!(
            recovered || since.is_none(),
            "the room still holds everything missed"
        );
        got.extend(history);
    }
    let sent = sender.await.unwrap();
    assert!(reconnects >= 10, "only {reconnects} reconnects");
    let received: Vec<MessageId> = got.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        received.len(),
        sent.len(),
        "exactly once: no loss, no duplicate"
    );
    assert_eq!(received, sent, "in order");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.text, format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_load_redis() {
    recovery_under_load(Pair::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_load_redis_cluster() {
    recovery_under_load(Pair::redis_cluster().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_load_memory() {
    recovery_under_load(Pair::memory().await).await;
}

#[tokio::test]
async fn a_trimmed_history_is_not_recovered() {
    let redis = banter_testkit::RedisServer::start();
    for url in [None, Some(redis.url())] {
        let mut cfg = config("trim", url.as_deref());
        cfg.history.size = 5;
        let node = TestNode::start(cfg).await;
        let mut c = node.client("").await;
        c.join("small").await;
        let first = c.say("small", "first").await;
        // Redis trims whole stream nodes (100 entries): say enough for either.
        let mut last = first.clone();
        for i in 0..250 {
            last = c.say("small", &format!("{i}")).await;
        }
        let mut again = node.client("").await;
        let (history, recovered) = join_since(&mut again, "small", Some(&first)).await;
        assert!(!recovered, "{url:?}: messages after `first` were trimmed");
        assert_eq!(history.last().map(|m| &m.id), Some(&last));
        assert!(history.len() >= 5);
        // Recent enough: recovered.
        let since = &history[history.len() - 3].id;
        let (recent, recovered) = join_since(&mut again, "small", Some(since)).await;
        assert!(recovered, "{url:?}");
        assert_eq!(recent.len(), 2);
        node.stop().await;
    }
}

#[tokio::test]
async fn join_shows_recent_history_and_history_pages_backwards() {
    let p = Pair::redis().await;
    let mut c = p.a.client("").await;
    c.join("paged").await;
    let mut ids = Vec::new();
    for i in 0..80 {
        ids.push(c.say("paged", &format!("p{i}")).await);
    }
    let mut late = p.b.client("").await;
    let (history, recovered) = join_since(&mut late, "paged", None).await;
    assert!(!recovered, "no since: not a recovery");
    assert_eq!(
        history.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        ids[30..],
        "the last 50, oldest first"
    );

    late.send(json!({"type":"history","room":"paged","before":ids[30],"limit":20}))
        .await;
    match late
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await
    {
        ServerFrame::History { messages, .. } => {
            assert_eq!(
                messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
                ids[10..30]
            );
        }
        _ => unreachable!(),
    }
    late.send(json!({"type":"history","room":"paged","limit":1000}))
        .await;
    match late
        .recv_until(|f| matches!(f, ServerFrame::History { .. }))
        .await
    {
        ServerFrame::History { messages, .. } => {
            assert_eq!(messages.len(), 80, "capped at 200, 80 exist")
        }
        _ => unreachable!(),
    }

    let since = ids[70].as_str();
    let (code, body) = http(
        p.b.addr,
        "GET",
        &format!("/api/rooms/paged/history?limit=5&since={since}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["room"], "paged");
    let got: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[71..76].iter().map(|i| i.as_str()).collect::<Vec<_>>()
    );
    let (_, body) = http(p.a.addr, "GET", "/api/rooms/paged/history?limit=2", &[], "")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"][1]["text"], "p79");
    assert_eq!(
        http(
            p.a.addr,
            "GET",
            "/api/rooms/paged/history?since=nope",
            &[],
            ""
        )
        .await
        .unwrap()
        .0,
        400
    );
    assert_eq!(
        http(p.a.addr, "GET", "/api/rooms/bad%20room/history", &[], "")
            .await
            .unwrap()
            .0,
        400
    );
}

/// A join's history is read while its presence is written: over a Redis a
/// round trip of 400 ms away, joining a room the node already subscribes
/// waits one round trip, not one for presence and one more for history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_waits_one_redis_round_trip() {
    const RTT: Duration = Duration::from_millis(400);
    let redis = banter_testkit::RedisServer::start();
    let proxy = banter_testkit::Proxy::start(([127, 0, 0, 1], redis.port()).into());
    let node = TestNode::start(config("far", Some(&proxy.redis_url()))).await;
    let mut first = node.client("name=first").await;
    first.join("far").await;
    first.say("far", "hello").await;
    let mut second = node.client("name=second").await;

    proxy.set_delay(RTT);
    let started = tokio::time::Instant::now();
    let (history, _) = join_since(&mut second, "far", None).await;
    let took = started.elapsed();
    assert_eq!(history.len(), 1, "the history came with the join");
    assert_eq!(history[0].text, "hello");
    assert!(took >= RTT, "the delay applies: {took:?}");
    assert!(took < RTT * 7 / 4, "one round trip, not two: {took:?}");
}
