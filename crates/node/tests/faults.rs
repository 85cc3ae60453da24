//! Faults caused for real: Redis killed and restarted, nodes SIGTERMed and
//! SIGKILLed. Nothing is lost silently; presence heals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{ErrorCode, PresenceEvent, ServerFrame};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn redis_outage_answers_unavailable_and_delivery_resumes_without_reconnecting() {
    let mut p = Pair::redis().await;
    let mut ann = p.a.client("name=Ann").await;
    let mut bob = p.b.client("name=Bob").await;
    ann.join("ops").await;
    bob.join("ops").await;
    let id = ann.say("ops", "before").await;
    assert_eq!(bob.next_message().await.id, id);

    p.redis.as_mut().unwrap().stop();
    for node in [&p.a, &p.b] {
        eventually("readyz 503 while Redis is down", async || {
            matches!(http(node.addr, "GET", "/readyz", &[], "").await, Ok((503, body)) if body.contains("bus down"))
        })
        .await;
    }
    let (_, metrics) = http(p.a.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        metrics.contains("banter_bus_up{node=\"node-a\"} 0"),
        "{metrics}"
    );
    // Sockets stay open; a send is refused with its ref, never dropped silently.
    ann.send(json!({"type":"send","room":"ops","text":"during","ref":"lost?"}))
        .await;
    match ann
        .recv_until(|f| matches!(f, ServerFrame::Error { .. } | ServerFrame::Ack { .. }))
        .await
    {
        ServerFrame::Error {
            code: ErrorCode::Unavailable,
            reference,
            ..
        } => assert_eq!(reference, Some("lost?".into())),
        other => panic!("expected error unavailable, got {other:?}"),
    }

    p.redis.as_mut().unwrap().restart();
    let back = Instant::now();
    // Within 5 s of Redis returning, cross-node delivery works again on the same sockets.
    let mut delivered = false;
    while back.elapsed() < Duration::from_secs(5) {
        ann.send(json!({"type":"send","room":"ops","text":"after","ref":"again"}))
            .await;
        if let ServerFrame::Ack { id, .. } = ann
            .recv_until(|f| matches!(f, ServerFrame::Error { .. } | ServerFrame::Ack { .. }))
            .await
        {
            let m = bob
                .recv_until(|f| matches!(f, ServerFrame::Message(m) if m.text == "after"))
                .await;
            assert!(matches!(m, ServerFrame::Message(m) if m.id == id));
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        delivered,
        "no cross-node delivery within 5 s of Redis returning"
    );
    for node in [&p.a, &p.b] {
        eventually("ready again", async || {
            matches!(
                http(node.addr, "GET", "/readyz", &[], "").await,
                Ok((200, _))
            )
        })
        .await;
    }
    let (_, metrics) = http(p.b.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        !metrics.contains("banter_bus_reconnects_total{node=\"node-b\"} 0"),
        "{metrics}"
    );
    // Redis lost everything (no persistence): the nodes put their members back.
    eventually("presence re-registered", async || {
        matches!(http(p.a.addr, "GET", "/api/rooms/ops/presence", &[], "").await, Ok((200, b)) if b.contains("\"count\":2"))
    })
    .await;
}

#[tokio::test]
async fn sigterm_closes_1001_announces_leaves_and_exits_0() {
    let redis = banter_testkit::RedisServer::start();
    let mut a = NodeProcess::start("term-a", &redis.url(), &[]).await;
    let b = TestNode::start(config("term-b", Some(&redis.url()))).await;
    let mut on_a = Client::connect(a.addr, "name=Leaving").await;
    on_a.join("shared").await;
    let mut on_b = b.client("name=Staying").await;
    on_b.join("shared").await;
    let leaving = on_a.user.id.clone();

    a.signal("TERM");
    assert_eq!(on_a.expect_close().await, 1001);
    assert_eq!(on_b.leave_of(&leaving).await, 1);
    assert_eq!(a.exit_code().await, Some(0));
    let (_, body) = http(b.addr, "GET", "/api/rooms/shared/presence", &[], "")
        .await
        .unwrap();
    assert!(body.contains("\"count\":1"), "{body}");
}

#[tokio::test]
async fn a_sigkilled_nodes_users_leave_within_the_ttl() {
    const TTL_MS: u64 = 6_000;
    let redis = banter_testkit::RedisServer::start();
    let a = NodeProcess::start(
        "kill-a",
        &redis.url(),
        &[("BANTER__PRESENCE__TTL_MS", "6000")],
    )
    .await;
    let mut c = config("kill-b", Some(&redis.url()));
    c.presence.ttl_ms = TTL_MS;
    let b = TestNode::start(c).await;
    let mut ghosts = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(a.addr, &format!("name=ghost{i}")).await;
        c.join("haunted").await;
        ghosts.push(c);
    }
    let mut survivor = b.client("name=Survivor").await;
    let (_, count) = survivor.join("haunted").await;
    assert_eq!(count, 4);

    a.signal("KILL");
    let killed = Instant::now();
    let mut gone = std::collections::HashSet::new();
    while gone.len() < ghosts.len() {
        let diff = tokio::time::timeout(
            Duration::from_millis(TTL_MS),
            survivor.recv_until(|f| {
                matches!(
                    f,
                    ServerFrame::Presence {
                        event: PresenceEvent::Diff { .. },
                        ..
                    }
                )
            }),
        )
        .await
        .expect("the leaves arrive within the ttl");
        if let ServerFrame::Presence {
            event: PresenceEvent::Diff { left, .. },
            ..
        } = diff
        {
            gone.extend(left.into_iter().map(|u| u.id));
        }
    }
    for g in &ghosts {
        assert!(gone.contains(&g.user.id), "each ghost left");
    }
    assert!(
        killed.elapsed() < Duration::from_millis(TTL_MS),
        "{:?}",
        killed.elapsed()
    );
    let (users, count) = survivor.who("haunted").await;
    assert_eq!((users, count), (vec![survivor.user.clone()], 1));
    drop(ghosts);
}
