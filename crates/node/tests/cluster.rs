//! Two nodes sharing a bus and presence: every scenario runs on one real
//! Redis (started by the test), on a real Redis Cluster of three primaries,
//! and on one in-memory network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{PresenceEvent, ServerFrame};
use common::*;
use serde_json::json;
use std::collections::HashMap;

async fn message_crosses_nodes(p: Pair) {
    let mut ann = p.a.client("name=Ann").await;
    let mut bob = p.b.client("name=Bob").await;
    assert_eq!((ann.node.as_str(), bob.node.as_str()), ("node-a", "node-b"));
    ann.join("lobby").await;
    bob.join("lobby").await;
    ann.send(
        json!({"type":"send","room":"lobby","text":"hi from A","ref":"k",
                    "from":{"id":"someone-else","name":"Mallory"}}),
    )
    .await;
    let ack = match ann
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. }))
        .await
    {
        ServerFrame::Ack { id, .. } => id,
        _ => unreachable!(),
    };
    let m = bob.next_message().await;
    assert_eq!(m.id, ack, "the ack's id is the delivered id");
    assert_eq!(m.from, ann.user, "from is stamped by node A");
    assert_eq!(m.text, "hi from A");
    assert_eq!(m.room.as_str(), "lobby");
    // And the reverse direction.
    let mine = ann.next_message().await;
    assert_eq!(mine.id, ack, "the sender receives its own message too");
    let id = bob.say("lobby", "hi from B").await;
    let m = ann.next_message().await;
    assert_eq!((m.id, m.from), (id, bob.user.clone()));
}

#[tokio::test]
async fn message_crosses_nodes_redis() {
    message_crosses_nodes(Pair::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_crosses_nodes_redis_cluster() {
    message_crosses_nodes(Pair::redis_cluster().await).await;
}

#[tokio::test]
async fn message_crosses_nodes_memory() {
    message_crosses_nodes(Pair::memory().await).await;
}

/// Two senders on different nodes, readers on both: one order for everyone,
/// and each sender's messages in its own order.
async fn one_room_one_order(p: Pair) {
    const EACH: usize = 100;
    let mut readers = Vec::new();
    for (i, node) in [&p.a, &p.b, &p.a, &p.b].into_iter().enumerate() {
        let mut c = node.client(&format!("name=reader{i}")).await;
        c.join("order").await;
        readers.push(c);
    }
    let mut senders = Vec::new();
    for (name, node) in [("s1", &p.a), ("s2", &p.b)] {
        let mut c = node.client(&format!("name={name}")).await;
        c.join("order").await;
        senders.push(c);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let name = c.user.name.as_str().to_owned();
                for i in 0..EACH {
                    c.say("order", &format!("{name}:{i}")).await;
                }
                c
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for mut r in readers {
        let mut seq = Vec::new();
        while seq.len() < 2 * EACH {
            seq.push(r.next_message().await.text);
        }
        sequences.push(seq);
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in &sequences[1..] {
        assert_eq!(s, &sequences[0], "every reader sees the same sequence");
    }
    let mut next: HashMap<&str, usize> = HashMap::new();
    for text in &sequences[0] {
        let (who, i) = text.split_once(':').unwrap();
        let expected = next.entry(who).or_insert(0);
        assert_eq!(
            i.parse::<usize>().unwrap(),
            *expected,
            "{who}'s messages in order"
        );
        *expected += 1;
    }
    assert_eq!(next.values().sum::<usize>(), 2 * EACH);
}

#[tokio::test]
async fn one_room_one_order_redis() {
    one_room_one_order(Pair::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_room_one_order_redis_cluster() {
    one_room_one_order(Pair::redis_cluster().await).await;
}

#[tokio::test]
async fn one_room_one_order_memory() {
    one_room_one_order(Pair::memory().await).await;
}

async fn presence_across_nodes(p: Pair) {
    let mut ann = p.a.client("name=Ann").await;
    let (users, count) = ann.join("hall").await;
    assert_eq!((users, count), (vec![ann.user.clone()], 1));

    let mut bob = p.b.client("name=Bob").await;
    let (mut users, count) = bob.join("hall").await;
    assert_eq!(count, 2);
    users.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    assert_eq!(
        users,
        vec![ann.user.clone(), bob.user.clone()],
        "each user once"
    );

    let bob_id = bob.user.id.clone();
    let bob_joined = |f: &ServerFrame| matches!(f, ServerFrame::Presence { event: PresenceEvent::Diff { joined, .. }, .. } if joined.iter().any(|u| u.id == bob_id));
    match ann.recv_until(bob_joined).await {
        ServerFrame::Presence {
            event: PresenceEvent::Diff { joined, left },
            count,
            room,
        } => {
            assert_eq!(
                (joined, left, count, room.as_str()),
                (vec![bob.user.clone()], vec![], 2, "hall")
            );
        }
        other => panic!("{other:?}"),
    }

    for c in [&mut ann, &mut bob] {
        let (users, count) = c.who("hall").await;
        assert_eq!((users.len(), count), (2, 2));
    }
    for node in [&p.a, &p.b] {
        let (code, body) = http(node.addr, "GET", "/api/rooms/hall/presence", &[], "")
            .await
            .unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["count"], 2, "{body}");
        assert_eq!(v["users"].as_array().unwrap().len(), 2);
    }

    // Bob's socket closes: Ann, on the other node, sees him leave.
    let bob_user = bob.user.clone();
    bob.close().await;
    assert_eq!(ann.leave_of(&bob_user.id).await, 1);
    let (_, body) = http(p.b.addr, "GET", "/api/rooms/hall/presence", &[], "")
        .await
        .unwrap();
    assert!(body.contains("\"count\":1"), "{body}");
}

#[tokio::test]
async fn presence_across_nodes_redis() {
    presence_across_nodes(Pair::redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_nodes_redis_cluster() {
    presence_across_nodes(Pair::redis_cluster().await).await;
}

#[tokio::test]
async fn presence_across_nodes_memory() {
    presence_across_nodes(Pair::memory().await).await;
}

/// A node subscribes a room's channel with its first local member, drops it
/// after the last leaves, and never subscribes a pattern.
#[tokio::test]
async fn a_node_subscribes_only_rooms_with_local_members() {
    let p = Pair::redis().await;
    let redis = p.redis.as_ref().unwrap();
    assert!(redis.pubsub_channels("banter:room:*").is_empty());

    let mut ann = p.a.client("").await;
    ann.join("r1").await;
    let mut bob = p.b.client("").await;
    bob.join("r2").await;
    assert_eq!(
        redis.pubsub_channels("banter:room:*"),
        ["banter:room:r1", "banter:room:r2"]
    );
    // One subscriber each: node B does not receive r1, nor A r2.
    assert_eq!(
        redis.numsub(&["banter:room:r1", "banter:room:r2"]),
        [("banter:room:r1".into(), 1), ("banter:room:r2".into(), 1)]
    );
    assert_eq!(redis.numpat(), 0, "no pattern subscriptions");

    // A second local member does not subscribe again; the last one leaving unsubscribes.
    let mut ann2 = p.a.client("").await;
    ann2.join("r1").await;
    ann.send(json!({"type":"leave","room":"r1"})).await;
    ann.recv_until(|f| matches!(f, ServerFrame::Left { .. }))
        .await;
    let ann2_topic = format!("banter:user:{}", ann2.user.id);
    assert!(redis.pubsub_channels("banter:user:*").contains(&ann2_topic));
    ann2.close().await;
    eventually("r1 unsubscribed", async || {
        redis.pubsub_channels("banter:room:*") == ["banter:room:r2"]
    })
    .await;
    // So is the user topic (direct messages) of a user with no socket left.
    eventually("the closed user's topic unsubscribed", async || {
        !redis.pubsub_channels("banter:user:*").contains(&ann2_topic)
    })
    .await;

    // Joining again subscribes again, and messages flow.
    ann.join("r1").await;
    assert_eq!(
        redis.pubsub_channels("banter:room:*"),
        ["banter:room:r1", "banter:room:r2"]
    );
    let id = ann.say("r1", "back").await;
    assert_eq!(ann.next_message().await.id, id);
    assert_eq!(redis.numpat(), 0);
}
