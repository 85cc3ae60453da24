//! Nothing lost silently, end to end: members keep every acked message,
//! live and once and in order, while the nodes' subscriber connections are
//! cut; what history cannot give back reaches them as `gap`; a restarted
//! single node never vouches for ids of before; a DM is never acked into
//! the void.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{ErrorCode, MessageId, ServerFrame};
use common::*;
use serde_json::json;
use std::time::Duration;

/// The report's scenario: two nodes on one Redis, a publisher on node A
/// sending about 250 messages a second, three members on node B, and
/// `CLIENT KILL TYPE pubsub` twice during the stream. No send is refused
/// (Redis stored every one), and every member gets every acked message,
/// live, once and in order, without rejoining.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_subscribers_lose_nothing_and_refuse_nothing() {
    let p = Pair::redis().await;
    let mut members = Vec::new();
    for name in ["m1", "m2", "m3"] {
        let mut m = p.b.client(&format!("name={name}")).await;
        m.join("stream").await;
        members.push(m);
    }
    let mut publisher = p.a.client("name=pub").await;
    publisher.join("stream").await;
    let redis = p.redis.as_ref().unwrap();

    let sender = tokio::spawn(async move {
        let (mut acked, mut refused) = (Vec::new(), 0);
        let mut tick = tokio::time::interval(Duration::from_millis(4));
        for n in 0..450 {
            tick.tick().await;
            publisher
                .send(json!({"type":"send","room":"stream","text":format!("n{n}"),"ref":n}))
                .await;
            match publisher
                .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
                .await
            {
                ServerFrame::Ack { id, .. } => acked.push(id),
                _ => refused += 1,
            }
        }
        (acked, refused)
    });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = tokio::task::block_in_place(|| redis.client_kill_pubsub());
        assert!(killed >= 1);
    }
    let (acked, refused) = sender.await.unwrap();
    assert_eq!(
        refused, 0,
        "Redis stored everything: nothing may be refused"
    );
    for m in &mut members {
        let mut got: Vec<MessageId> = Vec::new();
        while got.len() < acked.len() {
            got.push(m.next_message().await.id);
        }
        assert_eq!(got, acked, "every acked message, once, in order");
        let more = tokio::time::timeout(Duration::from_millis(300), m.next_message()).await;
        assert!(more.is_err(), "nothing twice: {more:?}");
    }
    let (_, metrics) = http(p.b.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(metrics.contains("banter_bus_gaps_total{outcome=\"repaired\",node=\"node-b\"}"));
    assert!(metrics.contains("banter_bus_lag_seconds{node=\"node-b\"}"));
}

/// With `history.size = 0` nothing can be repaired: an interrupted
/// subscription reaches the room's members as a `gap` frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hole_history_cannot_fill_reaches_members_as_gap() {
    let redis = banter_testkit::RedisServer::start();
    let mut c = config("node-a", Some(&redis.url()));
    c.history.size = 0;
    let node = TestNode::start(c).await;
    let mut ann = node.client("name=Ann").await;
    ann.join("quiet").await;
    tokio::task::block_in_place(|| redis.client_kill_pubsub());
    let gap = ann
        .recv_until(|f| matches!(f, ServerFrame::Gap { .. }))
        .await;
    assert_eq!(
        gap,
        ServerFrame::Gap {
            room: Some("quiet".parse().unwrap()),
            with: None
        }
    );
    let id = ann.say("quiet", "after").await;
    assert_eq!(ann.next_message().await.id, id, "live delivery goes on");
    let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
    // The room's hole only: Ann's own topic is repaired from her mailbox.
    assert!(
        metrics.contains("banter_bus_gaps_total{outcome=\"unrepaired\",node=\"node-a\"} 1"),
        "{metrics}"
    );
}

/// A lone node keeps history in memory, which a restart loses: a `since`
/// from before the restart must not be taken for a position of the new
/// history (it would hide what was lost).
#[tokio::test]
async fn a_restarted_single_node_does_not_vouch_for_ids_of_before() {
    let first = TestNode::start(config("solo", None)).await;
    let mut ann = first.client("name=Ann").await;
    ann.join("lobby").await;
    let seen = ann.say("lobby", "seen").await;
    ann.say("lobby", "lost in the restart").await;
    ann.close().await;
    first.stop().await;

    let second = TestNode::start(config("solo", None)).await;
    let mut bob = second.client("name=Bob").await;
    bob.join("lobby").await;
    let after = bob.say("lobby", "after the restart").await;
    let mut ann = second.client("name=Ann").await;
    ann.send(json!({"type":"join","room":"lobby","since":seen}))
        .await;
    match ann
        .recv_until(|f| matches!(f, ServerFrame::Joined { .. }))
        .await
    {
        ServerFrame::Joined {
            recovered, history, ..
        } => {
            assert!(!recovered, "a message was lost: never recovered: true");
            assert_eq!(
                history.iter().map(|m| &m.id).collect::<Vec<_>>(),
                [&after],
                "what the new history holds"
            );
        }
        _ => unreachable!(),
    }
}

/// A guest's id dies with its last connection: a DM to a guest who just
/// left is soon `not_found` (once their node has let go of their topic, a
/// moment after the close), on one node and across nodes, and never
/// delivered to anyone else.
#[tokio::test]
async fn a_dm_to_a_guest_who_just_left_is_not_found() {
    for p in [
        Pair::memory().await,
        Pair::redis().await,
        Pair::redis_cluster().await,
    ] {
        let mut ann = p.a.client("name=Ann").await;
        let bob = p.b.client("name=Bob").await;
        let bob_id = bob.user.id.clone();
        bob.close().await;
        eventually("the guest is not found", async || {
            ann.send(json!({"type":"dm","to":bob_id,"text":"still there?","ref":1}))
                .await;
            let answer = ann
                .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
                .await;
            matches!(
                answer,
                ServerFrame::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            )
        })
        .await;
    }
}
