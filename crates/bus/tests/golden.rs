//! The `message` frame both buses deliver, pinned byte for byte, with its
//! position carried beside it as data. Nodes skip the messages a recovery
//! already sent by that position, and clients read these bytes: reordering
//! `Message`'s fields or changing how the id is spliced in must fail here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use banter_bus::{Draft, Envelope, Position, Topic};
use banter_protocol::User;
use common::{memory_nodes, redis_nodes};

fn draft() -> Draft {
    Draft {
        room: "lobby".parse().unwrap(),
        from: User::parse("u-1", "Ann \"A\" Ö").unwrap(),
        text: "say \"id\":\"0-0\" \\ here\n".into(),
        ts: 1_732_380_000_123,
    }
}

/// The exact bytes of the frame for `draft()` stored at `id`.
fn expected(id: &str) -> String {
    format!(
        r#"{{"type":"message","room":"lobby","id":"{id}","from":{{"id":"u-1","name":"Ann \"A\" Ö"}},"text":"say \"id\":\"0-0\" \\ here\n","ts":1732380000123}}"#
    )
}

async fn check(node: &mut common::Node) {
    let room = Topic::Room("lobby".parse().unwrap());
    node.bus.subscribe(&room).await.unwrap();
    let stored = node.bus.publish_message(&draft()).await.unwrap();
    let Envelope {
        topic,
        position,
        presence,
        payload,
    } = common::next(node).await;
    assert!(!presence);
    assert_eq!(topic, room);
    let id = stored.id.as_str();
    assert_eq!(
        position,
        Position::parse(id),
        "the position is the ack's id"
    );
    assert_eq!(std::str::from_utf8(&payload).unwrap(), expected(id));
    assert_eq!(draft().frame(position.unwrap()), expected(id));
}

#[tokio::test]
async fn the_memory_bus_delivers_the_pinned_frame_and_its_position() {
    let mut nodes = memory_nodes(1, 10);
    check(&mut nodes[0]).await;
}

#[tokio::test]
async fn the_redis_bus_delivers_the_pinned_frame_and_its_position() {
    let server = banter_testkit::RedisServer::start();
    let mut nodes = redis_nodes(&server, 1, 10).await;
    check(&mut nodes[0]).await;
}
