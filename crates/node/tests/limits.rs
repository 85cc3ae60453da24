//! Limits, close codes, heartbeats, slow consumers and origins on one node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{ErrorCode, ServerFrame};
use common::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

async fn node_with(f: impl FnOnce(&mut Config)) -> TestNode {
    let mut c = config("lim", None);
    f(&mut c);
    TestNode::start(c).await
}

#[tokio::test]
async fn a_message_over_max_frame_bytes_closes_1009() {
    let node = node_with(|c| c.limits.max_frame_bytes = 1024).await;
    let mut c = node.client("").await;
    c.send(json!({"type":"ping","ref":"x".repeat(900)})).await; // under the limit: fine
    assert!(matches!(
        c.recv().await,
        ServerFrame::Error { .. } | ServerFrame::Pong { .. }
    ));
    c.send_text(&"x".repeat(1025)).await;
    assert_eq!(c.expect_close().await, 1009);
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let node = node_with(|_| {}).await;
    let mut c = node.client("").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_ws(WsMessage::Frame(frame)).await;
    assert_eq!(c.expect_close().await, 1007);
}

#[tokio::test]
async fn a_binary_frame_closes_1003() {
    let node = node_with(|_| {}).await;
    let mut c = node.client("").await;
    c.send_ws(WsMessage::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.expect_close().await, 1003);
}

#[tokio::test]
async fn more_rooms_than_max_rooms_is_too_many_rooms() {
    let node = node_with(|c| c.limits.max_rooms = 2).await;
    let mut c = node.client("").await;
    c.join("r1").await;
    c.join("r2").await;
    c.send(json!({"type":"join","room":"r3"})).await;
    let e = c
        .recv_until(|f| matches!(f, ServerFrame::Error { .. }))
        .await;
    assert!(
        matches!(
            e,
            ServerFrame::Error {
                code: ErrorCode::TooManyRooms,
                ..
            }
        ),
        "{e:?}"
    );
    // Leaving one makes room; joining a room again is not a new room.
    c.join("r2").await;
    c.send(json!({"type":"leave","room":"r1"})).await;
    c.recv_until(|f| matches!(f, ServerFrame::Left { .. }))
        .await;
    c.join("r3").await;
}

#[tokio::test]
async fn over_the_rate_frames_are_refused_and_a_flood_closes_1008() {
    let node = node_with(|c| {
        c.limits.rate_per_sec = 5;
        c.limits.burst = 5;
    })
    .await;
    let mut c = node.client("").await;
    for i in 0..10 {
        c.send(json!({"type":"ping","ref":i})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..10 {
        match c.recv().await {
            ServerFrame::Pong { .. } => pongs += 1,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                reference,
                ..
            } => {
                assert!(reference.is_some(), "the refusal carries the frame's ref");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pongs, 5, "the burst passes");
    assert_eq!(limited, 5);
    let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        metrics.contains("banter_rate_limited_total{node=\"lim\"} 5"),
        "{metrics}"
    );

    // A sustained flood (far over 3x the rate) is closed with 1008.
    let mut flood = node.client("").await;
    for _ in 0..400 {
        flood.send_text(r#"{"type":"ping"}"#).await;
    }
    assert_eq!(flood.expect_close().await, 1008);
}

#[tokio::test]
async fn max_connections_refuses_upgrades_with_503() {
    let node = node_with(|c| c.server.max_connections = 2).await;
    let _a = node.client("").await;
    let _b = node.client("").await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.addr))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(res) => assert_eq!(res.status(), 503),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = node_with(|c| c.server.handshake_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap(); // and never the rest
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("the node must drop the connection");
    assert!(read.is_ok() || read.is_err(), "closed (EOF or reset)");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The node still serves everyone else.
    node.client("").await;
}

#[tokio::test]
async fn idle_clients_are_closed_1001_and_pongs_keep_sockets_alive() {
    let node = node_with(|c| {
        c.heartbeat.ping_interval_ms = 100;
        c.heartbeat.idle_timeout_ms = 400;
    })
    .await;
    // This client answers pings (tungstenite does while we read).
    let mut alive = node.client("").await;
    alive.expect_silence(Duration::from_millis(1200)).await;
    alive.send(json!({"type":"ping","ref":"still"})).await;
    assert!(matches!(alive.recv().await, ServerFrame::Pong { .. }));

    // This one stops reading, so it never pongs: closed with 1001.
    let mut silent = node.client("").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(silent.expect_close().await, 1001);
}

#[tokio::test]
async fn a_slow_consumer_alone_is_closed_4002_and_the_others_get_everything() {
    const N: usize = 4000;
    let node = node_with(|c| {
        c.limits.outbound_queue = 64;
        c.limits.max_text_chars = 8000;
    })
    .await;
    let mut slow = node.client("name=slow").await;
    slow.join("busy").await;
    let mut reader = node.client("name=reader").await;
    reader.join("busy").await;
    let mut publisher = node.client("name=pub").await;
    publisher.join("busy").await;

    // The slow client reads nothing until the node has given up on it; then
    // it finds its backlog followed by the close frame.
    let addr = node.addr;
    let slow_closed = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, m) = http(addr, "GET", "/metrics", &[], "").await.unwrap();
            if m.contains("banter_slow_consumers_total{node=\"lim\"} 1") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slow consumer was never closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slow.expect_close().await
    });
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let read_all = tokio::spawn(async move {
        let mut got = Vec::with_capacity(N);
        while got.len() < N {
            got.push(reader.next_message().await.text);
            progress.send_replace(got.len());
        }
        got
    });
    // The publisher reads its own echoes concurrently: it is not the slow one.
    let (mut tx, mut rx) = futures_util::StreamExt::split(publisher.ws);
    tokio::spawn(async move { while futures_util::StreamExt::next(&mut rx).await.is_some() {} });
    let text = "y".repeat(7000);
    for batch in 0..N / 20 {
        for i in batch * 20..(batch + 1) * 20 {
            let frame = json!({"type":"send","room":"busy","text":format!("{i}:{text}")});
            futures_util::SinkExt::send(&mut tx, WsMessage::text(frame.to_string()))
                .await
                .unwrap();
        }
        // Paced by a reader that keeps up: only the client that stopped reading falls behind.
        let want = (batch + 1) * 20;
        tokio::time::timeout(WAIT, seen.wait_for(|n| *n >= want))
            .await
            .expect("the reader keeps up")
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .unwrap()
        .unwrap();
    for (i, t) in got.iter().enumerate() {
        assert!(t.starts_with(&format!("{i}:")), "message {i} in order");
    }
    assert_eq!(slow_closed.await.unwrap(), 4002);
    let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
    assert!(
        metrics.contains("banter_slow_consumers_total{node=\"lim\"} 1"),
        "only the slow one: {metrics}"
    );
}

/// A client that stops reading for a while fills its socket buffers, so the
/// node queues what the kernel does not take. Once it reads again it gets
/// every message whole and in order, and the answer to a frame it sent
/// meanwhile comes after them.
#[tokio::test]
async fn a_client_that_pauses_reading_gets_everything_whole_and_in_order() {
    // 7 MB: more than Linux lets a socket buffer (net.ipv4.tcp_wmem's 4 MiB
    // maximum), within the default queue of 1,024 frames and within the
    // bytes this test allows a client to have queued.
    const N: usize = 1000;
    let node = node_with(|c| {
        c.limits.max_text_chars = 8000;
        c.limits.outbound_bytes = 16 << 20;
    })
    .await;
    // A small receive window: the node's writes stop being taken early.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.addr).await.unwrap();
    let url = format!("ws://{}/ws?name=paused", node.addr);
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let mut paused = Client::unwelcomed(ws);
    assert!(matches!(paused.recv().await, ServerFrame::Welcome { .. }));
    paused.join("burst").await;
    let mut publisher = node.client("name=pub").await;
    publisher.join("burst").await;

    let (mut tx, mut rx) = futures_util::StreamExt::split(publisher.ws);
    tokio::spawn(async move { while futures_util::StreamExt::next(&mut rx).await.is_some() {} });
    let text = "z".repeat(7000);
    for i in 0..N {
        let frame = json!({"type":"send","room":"burst","text":format!("{i}:{text}")});
        futures_util::SinkExt::send(&mut tx, WsMessage::text(frame.to_string()))
            .await
            .unwrap();
    }
    // Every message was handed to both sockets (written or queued) ...
    eventually("all messages handed to the sockets", async || {
        let (_, m) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("banter_messages_delivered_total{node=\"lim\"} "))
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|v| v >= 2 * N)
    })
    .await;
    // ... and they cannot all be in the kernel's buffers.
    paused.send(json!({"type":"ping","ref":"after"})).await;
    let mut got = Vec::with_capacity(N);
    loop {
        match paused.recv().await {
            ServerFrame::Message(m) => got.push(m.text),
            ServerFrame::Pong { reference } => {
                let reference = reference.map(|r| serde_json::to_value(r).unwrap());
                assert_eq!(reference, Some(json!("after")));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(got.len(), N, "every message before the reply");
    for (i, t) in got.iter().enumerate() {
        assert_eq!(t, &format!("{i}:{text}"), "message {i} whole and in order");
    }
}

#[tokio::test]
async fn origins_same_host_by_default_and_lists() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    async fn status(addr: std::net::SocketAddr, origin: Option<&str>) -> u16 {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((_, res)) => res.status().as_u16(),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    }
    let node = node_with(|_| {}).await;
    let own = format!("http://{}", node.addr);
    assert_eq!(
        status(node.addr, None).await,
        101,
        "no Origin: not a browser, allowed"
    );
    assert_eq!(status(node.addr, Some(&own)).await, 101, "same host");
    assert_eq!(status(node.addr, Some("http://evil.example")).await, 403);

    let listed =
        node_with(|c| c.server.allowed_origins = vec!["https://chat.example".into()]).await;
    assert_eq!(status(listed.addr, Some("https://chat.example")).await, 101);
    assert_eq!(
        status(listed.addr, Some(&format!("http://{}", listed.addr))).await,
        403
    );

    let any = node_with(|c| c.server.allowed_origins = vec!["*".into()]).await;
    assert_eq!(status(any.addr, Some("http://anything.example")).await, 101);
}

#[tokio::test]
async fn random_frames_never_break_the_socket_or_the_node() {
    use rand::{RngExt, SeedableRng};
    let node = node_with(|_| {}).await;
    let mut c = node.client("").await;
    c.join("lobby").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let types = [
        "join", "leave", "send", "dm", "typing", "who", "history", "ping", "auth", "nope",
    ];
    let values = [
        json!(null),
        json!(1),
        json!(-1),
        json!(1e300),
        json!("lobby"),
        json!("bad room"),
        json!(""),
        json!("x".repeat(5000)),
        json!([1, 2]),
        json!({"a": {}}),
        json!(true),
        json!("\u{0}\u{7}"),
    ];
    let keys = [
        "room", "text", "ref", "to", "since", "before", "limit", "token",
    ];
    for _ in 0..300 {
        let mut frame = serde_json::Map::new();
        frame.insert(
            "type".into(),
            json!(types[rng.random_range(0..types.len())]),
        );
        for _ in 0..rng.random_range(0..4) {
            frame.insert(
                keys[rng.random_range(0..keys.len())].into(),
                values[rng.random_range(0..values.len())].clone(),
            );
        }
        c.send(serde_json::Value::Object(frame)).await;
    }
    c.send(json!({"type":"ping","ref":"end"})).await;
    c.recv_until(|f| matches!(f, ServerFrame::Pong { reference: Some(r) } if *r == "end".into()))
        .await;
    let mut other = node.client("").await;
    other.send(json!({"type":"ping","ref":1})).await;
    assert!(matches!(other.recv().await, ServerFrame::Pong { .. }));
}
