//! History does not live for ever: a room's stream and epoch expire in
//! Redis `history.ttl_ms` after its last message (refreshed by every
//! message), and the in-memory bus forgets an idle room's history the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::ServerFrame;
use common::*;
use serde_json::json;

/// Redis: every message sets the room's history keys to expire after
/// `history.ttl_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_history_expires_after_its_ttl() {
    let redis = banter_testkit::RedisServer::start();
    let mut c = config("keep", Some(&redis.url()));
    c.history.ttl_ms = 60_000;
    let node = TestNode::start(c).await;
    let mut ann = node.client("name=Ann").await;
    ann.join("r").await;
    ann.say("r", "hello").await;
    let ttl = |key: &str| -> i64 { tokio::task::block_in_place(|| redis.query(&["PTTL", key])) };
    for key in ["banter:history:r", "banter:history:r:epoch"] {
        let left = ttl(key);
        assert!(left > 50_000 && left <= 60_000, "{key}: {left} ms left");
    }
    node.stop().await;
}

/// In memory: a room nobody wrote to for `history.ttl_ms` has no history,
/// and an id from before recovers nothing.
#[tokio::test]
async fn memory_history_is_forgotten_after_its_ttl() {
    let mut c = config("keep", None);
    c.history.ttl_ms = 200;
    let node = TestNode::start(c).await;
    let mut ann = node.client("name=Ann").await;
    ann.join("r").await;
    let id = ann.say("r", "hello").await;
    eventually("the room's history is forgotten", async || {
        let (_, body) = http(node.addr, "GET", "/api/rooms/r/history", &[], "")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["messages"].as_array().unwrap().is_empty()
    })
    .await;
    let mut back = node.client("name=back").await;
    back.send(json!({"type":"join","room":"r","since":id}))
        .await;
    match back
        .recv_until(|f| matches!(f, ServerFrame::Joined { .. }))
        .await
    {
        ServerFrame::Joined { recovered, .. } => assert!(!recovered),
        _ => unreachable!(),
    }
}
