//! One node without Redis: the embedded default is a complete chat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{ErrorCode, PresenceEvent, ServerFrame};
use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn two_clients_chat_on_one_node_without_redis() {
    let node = TestNode::start(config("solo", None)).await;
    assert_eq!(
        http(node.addr, "GET", "/readyz", &[], "").await.unwrap().0,
        200
    );
    assert_eq!(
        http(node.addr, "GET", "/healthz", &[], "").await.unwrap(),
        (200, "ok".into())
    );

    let mut ann = node.client("name=Ann").await;
    let mut bob = node.client("name=Bob&room=lobby").await;
    assert_eq!(ann.user.name.as_str(), "Ann");
    assert_eq!(ann.node, "solo");
    assert_ne!(ann.user.id, bob.user.id);
    match bob.recv().await {
        ServerFrame::Joined {
            room,
            users,
            count,
            recovered,
            ..
        } => {
            assert_eq!(room.as_str(), "lobby");
            assert_eq!(count, 1);
            assert_eq!(users, vec![bob.user.clone()]);
            assert!(!recovered);
        }
        other => panic!("?room= must join at once: {other:?}"),
    }

    let (users, count) = ann.join("lobby").await;
    assert_eq!(count, 2);
    let mut names: Vec<_> = users.iter().map(|u| u.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["Ann", "Bob"]);
    let ann_id = ann.user.id.clone();
    let ann_joined = |f: &ServerFrame| matches!(f, ServerFrame::Presence { event: PresenceEvent::Diff { joined, .. }, .. } if joined.iter().any(|u| u.id == ann_id));
    match bob.recv_until(ann_joined).await {
        ServerFrame::Presence {
            event: PresenceEvent::Diff { joined, .. },
            count,
            ..
        } => {
            assert_eq!(joined, vec![ann.user.clone()]);
            assert_eq!(count, 2);
        }
        other => panic!("{other:?}"),
    }

    // The node stamps from/id/ts; what the client writes there is ignored.
    ann.send(
        json!({"type":"send","room":"lobby","text":"hello <b>Bob</b>","ref":1,
                    "from":{"id":"admin","name":"Admin"},"id":"x","ts":1}),
    )
    .await;
    let ack = match ann
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. }))
        .await
    {
        ServerFrame::Ack { reference, id } => {
            assert_eq!(reference, Some(1u64.into()));
            id
        }
        _ => unreachable!(),
    };
    for c in [&mut bob, &mut ann] {
        let m = c.next_message().await;
        assert_eq!(m.id, ack);
        assert_eq!(m.text, "hello <b>Bob</b>");
        assert_eq!(m.from.name.as_str(), "Ann");
        assert_ne!(m.from.id.as_str(), "admin");
        assert!(m.ts > 1_600_000_000_000);
    }

    bob.send(json!({"type":"ping","ref":"p1"})).await;
    assert_eq!(
        bob.recv_until(|f| matches!(f, ServerFrame::Pong { .. }))
            .await,
        ServerFrame::Pong {
            reference: Some("p1".into())
        }
    );

    // The HTTP presence route sees both.
    let (code, body) = http(node.addr, "GET", "/api/rooms/lobby/presence", &[], "")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["room"], "lobby");
    assert_eq!(v["count"], 2);

    bob.send(json!({"type":"leave","room":"lobby"})).await;
    assert!(matches!(
        bob.recv_until(|f| matches!(f, ServerFrame::Left { .. }))
            .await,
        ServerFrame::Left { .. }
    ));
    assert_eq!(ann.leave_of(&bob.user.id).await, 1);
    node.stop().await;
}

#[tokio::test]
async fn guests_get_guest_names_and_bad_names_fall_back() {
    let node = TestNode::start(config("solo", None)).await;
    for query in [
        "",
        "name=",
        "name=%0Aevil",
        &format!("name={}", "x".repeat(40)),
    ] {
        let c = node.client(query).await;
        let name = c.user.name.as_str().to_owned();
        assert!(
            name.starts_with("guest-")
                && name.len() == 10
                && name[6..].bytes().all(|b| b.is_ascii_digit()),
            "{query}: {name}"
        );
        assert!(c.user.id.as_str().starts_with("g-"));
    }
    let c = node.client("name=%E6%97%A5%E6%9C%AC").await;
    assert_eq!(c.user.name.as_str(), "日本");
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_its_error_code_and_the_socket_stays_usable() {
    let mut cfg = config("solo", None);
    cfg.limits.max_text_chars = 10;
    let node = TestNode::start(cfg).await;
    let mut c = node.client("").await;
    c.join("lobby").await;
    // Its own presence join comes through the room like everyone else's.
    c.recv_until(|f| matches!(f, ServerFrame::Presence { .. }))
        .await;
    let cases: Vec<(String, ErrorCode)> = vec![
        ("not json".into(), ErrorCode::BadRequest),
        ("[1,2,3]".into(), ErrorCode::BadRequest),
        ("\"a string\"".into(), ErrorCode::BadRequest),
        (r#"{"no":"type"}"#.into(), ErrorCode::BadRequest),
        (r#"{"type":"dance"}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":"join"}"#.into(), ErrorCode::BadRequest),
        (
            r#"{"type":"send","room":"lobby"}"#.into(),
            ErrorCode::BadRequest,
        ),
        (
            r#"{"type":"join","room":"bad room!"}"#.into(),
            ErrorCode::BadRoom,
        ),
        (r#"{"type":"join","room":"-x"}"#.into(), ErrorCode::BadRoom),
        (
            r#"{"type":"send","room":"elsewhere","text":"hi","ref":"q"}"#.into(),
            ErrorCode::NotJoined,
        ),
        (
            r#"{"type":"send","room":"lobby","text":"01234567890"}"#.into(),
            ErrorCode::TooLarge,
        ),
        (
            r#"{"type":"leave","room":"elsewhere"}"#.into(),
            ErrorCode::NotJoined,
        ),
    ];
    for (text, want) in cases {
        c.send_text(&text).await;
        match c.recv().await {
            ServerFrame::Error { code, .. } => assert_eq!(code, want, "{text}"),
            other => panic!("{text}: expected error {want}, got {other:?}"),
        }
    }
    // The error echoes the ref when the frame had one.
    c.send_text(r#"{"type":"send","room":"elsewhere","text":"hi","ref":"q"}"#)
        .await;
    assert!(
        matches!(c.recv().await, ServerFrame::Error { reference: Some(r), .. } if r == "q".into())
    );
    // Exactly max_text_chars characters (multi-byte) is fine, and the socket still works.
    let id = c.say("lobby", "éééééééééé").await;
    assert_eq!(c.next_message().await.id, id);
    let (code, body) = http(node.addr, "GET", "/api/rooms/bad%20room/presence", &[], "")
        .await
        .unwrap();
    assert_eq!(code, 400, "{body}");
    node.stop().await;
}

#[tokio::test]
async fn routes_page_metrics_and_unknown_paths() {
    let node = TestNode::start(config("solo", None)).await;
    let (code, page) = http(node.addr, "GET", "/", &[], "").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        page.contains("<script") && page.contains("/ws"),
        "the chat page"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    assert_eq!(
        http(node.addr, "GET", "/nope", &[], "").await.unwrap().0,
        404
    );
    assert_eq!(
        http(node.addr, "POST", "/healthz", &[], "")
            .await
            .unwrap()
            .0,
        405
    );
    assert_eq!(
        http(node.addr, "GET", "/ws", &[], "").await.unwrap().0,
        400,
        "a plain GET is not an upgrade"
    );

    let mut c = node.client("room=lobby").await;
    c.recv().await;
    c.say("lobby", "counted").await;
    c.next_message().await;
    let (code, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(code, 200);
    for series in [
        "banter_connections{node=\"solo\"} 1",
        "banter_connections_total{node=\"solo\"} 1",
        "banter_messages_published_total{node=\"solo\"} 1",
        "banter_bus_up{node=\"solo\"} 1",
        "banter_rooms_local{node=\"solo\"} 1",
        "banter_frames_received_total{node=\"solo\"}",
        "banter_messages_delivered_total{node=\"solo\"}",
        "banter_publish_seconds_bucket{node=\"solo\",le=",
        "banter_fanout_seconds_bucket{node=\"solo\",le=",
        "banter_bus_reconnects_total{node=\"solo\"} 0",
        "banter_slow_consumers_total{node=\"solo\"} 0",
        "banter_rate_limited_total{node=\"solo\"} 0",
        "banter_errors_total{code=\"bad_request\",node=\"solo\"} 0",
        "banter_messages_dropped_total{reason=\"slow_consumer\",node=\"solo\"} 0",
    ] {
        assert!(metrics.contains(series), "missing {series}\n{metrics}");
    }
    node.stop().await;
}

#[tokio::test]
async fn drain_closes_clients_with_1001() {
    let node = TestNode::start(config("solo", None)).await;
    let mut c = node.client("room=lobby").await;
    c.recv().await;
    let stop = tokio::spawn(node.stop());
    assert_eq!(c.expect_close().await, 1001);
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
}
