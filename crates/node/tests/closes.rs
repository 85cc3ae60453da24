//! How sockets end, and what a client may cost: a client's close is
//! answered and nothing follows it; a drain reaches every socket within a
//! second; a protocol violation is answered 1002; a slow consumer sees its
//! 4002 after whole frames; nothing of a room follows `left`; history is
//! charged by what it costs and capped in bytes; new rooms per minute are
//! capped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{ErrorCode, ServerFrame};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn node_with(f: impl FnOnce(&mut Config)) -> TestNode {
    let mut c = config("closes", None);
    f(&mut c);
    TestNode::start(c).await
}

/// A client closes with 1000: the node answers with a close frame and sends
/// nothing after the client's close (not even the presence change its own
/// leave makes), so the client sees a clean close.
#[tokio::test]
async fn a_clients_close_is_answered_and_nothing_follows_it() {
    let node = node_with(|c| c.presence.diff_interval_ms = 0).await;
    let mut bob = node.client("name=Bob").await;
    bob.join("room").await;
    let mut ann = node.client("name=Ann").await;
    ann.join("room").await;
    // Ann's own arrival reaches both, so only what follows the close is left.
    bob.join_of(&ann.user.id).await;
    let ann_id = ann.user.id.clone();
    ann.join_of(&ann_id).await;
    ann.ws
        .send(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let mut after = Vec::new();
    let code = loop {
        match tokio::time::timeout(WAIT, ann.ws.next())
            .await
            .expect("an answer")
        {
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(other)) => after.push(other),
            Some(Err(e)) => panic!("no clean close: {e}"),
            None => panic!("the socket ended without answering the close"),
        }
    };
    assert_eq!(code, Some(1000));
    assert!(
        after.is_empty(),
        "frames after the client's close: {after:?}"
    );
    assert!(ann.ws.next().await.is_none(), "then the connection ends");
    assert_eq!(bob.leave_of(&ann.user.id).await, 1, "and Ann leaves");
}

/// SIGTERM (here, the node's shutdown): every socket gets 1001 within a
/// second, those still waiting for their `auth` frame included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_every_socket_within_a_second() {
    let node = node_with(|c| {
        c.auth.anonymous = false;
        c.auth.jwt_secret = "s".into();
    })
    .await;
    let url = format!("ws://{}/ws", node.addr);
    let (mut waiting, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let started = Instant::now();
    let stop = tokio::spawn(node.stop());
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(2), waiting.next())
            .await
            .expect("closed within the wait")
        {
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    stop.await.unwrap();
}

/// A socket whose request waits on a Redis that hangs still gets its 1001
/// within a second of the drain: the close does not wait on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_wait_for_a_request_stuck_on_redis() {
    let redis = banter_testkit::RedisServer::start();
    let node = TestNode::start(config("stuck", Some(&redis.url()))).await;
    let mut c = node.client("name=c").await;
    c.join("r").await;
    tokio::task::block_in_place(|| redis.pause());
    c.send(json!({"type":"send","room":"r","text":"into the void","ref":1}))
        .await;
    // The send is on its way to the hung Redis.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stop = tokio::spawn(node.stop());
    let code = c.expect_close().await;
    let took = started.elapsed();
    tokio::task::block_in_place(|| redis.resume());
    assert_eq!(code, 1001);
    assert!(took < Duration::from_secs(1), "{took:?}");
    stop.await.unwrap();
}

/// While a node drains, `/readyz` answers 503 (load balancers need the
/// answer, not a refused connection) until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_503_while_draining() {
    let node = node_with(|_| {}).await;
    let addr = node.addr;
    // A client that never answers the close keeps the drain busy a moment.
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut silent = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), silent)
        .await
        .unwrap()
        .0;
    let _ = silent.next().await; // welcome
    let stop = tokio::spawn(node.stop());
    let mut saw_503 = false;
    for _ in 0..50 {
        match http(addr, "GET", "/readyz", &[], "").await {
            Ok((503, body)) => {
                assert!(body.contains("draining"), "{body}");
                saw_503 = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("refused while draining: {e}"),
        }
    }
    assert!(saw_503);
    stop.await.unwrap();
    drop(silent);
}

/// After `left`, nothing of the room arrives, not even what was held while
/// the leave was being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_of_a_room_follows_left() {
    let node = node_with(|_| {}).await;
    let mut flood = node.client("name=flood").await;
    flood.join("busy").await;
    let flooding = tokio::spawn(async move {
        for i in 0..3_000 {
            flood
                .send(json!({"type":"send","room":"busy","text":format!("m{i}")}))
                .await;
        }
        flood
    });
    let mut c = node.client("name=leaver").await;
    for _ in 0..20 {
        c.join("busy").await;
        c.send(json!({"type":"leave","room":"busy"})).await;
        c.recv_until(|f| matches!(f, ServerFrame::Left { .. }))
            .await;
        c.send(json!({"type":"ping","ref":"after"})).await;
        loop {
            match c.recv().await {
                ServerFrame::Pong { .. } => break,
                ServerFrame::Message(m) => panic!("a message of a room already left: {m:?}"),
                _ => {}
            }
        }
    }
    drop(flooding.await);
}

/// Each connection may bring only so many new rooms into being per
/// minute (`limits.max_rooms`, as a reconnect joins them all, plus 30);
/// rooms it was in lately do not count again.
#[tokio::test]
async fn new_rooms_per_connection_are_capped() {
    let node = node_with(|c| c.limits.max_rooms = 4).await;
    let mut c = node.client("").await;
    for i in 0..34 {
        c.join(&format!("r{i}")).await;
        c.send(json!({"type":"leave","room":format!("r{i}")})).await;
        c.recv_until(|f| matches!(f, ServerFrame::Left { .. }))
            .await;
    }
    c.send(json!({"type":"join","room":"r34"})).await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::Error { .. } | ServerFrame::Joined { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::RateLimited),
        other => panic!("the 35th new room of the minute: {other:?}"),
    }
    c.join("r0").await; // one of the minute's own: fine
}

/// A 60-byte `history` request cannot pull megabytes: the reply is capped
/// in bytes (the newest messages kept), and each page of many messages is
/// charged to the rate limit by what it costs.
#[tokio::test]
async fn history_is_capped_in_bytes_and_charged_by_its_cost() {
    let node = node_with(|c| {
        c.limits.max_text_chars = 4_000;
        c.limits.rate_per_sec = 20;
        c.limits.burst = 40;
        c.auth.api_key = "key".into();
    })
    .await;
    // 200 messages of 4,000 characters, from the server side (no rate limit).
    let body = json!({"text": "x".repeat(4_000)}).to_string();
    let mut last = None;
    for _ in 0..200 {
        let auth = [("Authorization", "Bearer key")];
        let (code, reply) = http(node.addr, "POST", "/api/rooms/big/messages", &auth, &body)
            .await
            .unwrap();
        assert_eq!(code, 202, "{reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        last = v["id"].as_str().map(str::to_owned);
    }
    let mut reader = node.client("name=r").await;
    reader.join("big").await;
    reader
        .send(json!({"type":"history","room":"big","limit":200}))
        .await;
    let raw = loop {
        let raw = reader.recv_raw().await;
        if raw.starts_with(r#"{"type":"history""#) {
            break raw;
        }
    };
    assert!(raw.len() <= 300 * 1024, "a reply of {} bytes", raw.len());
    let page: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert!(messages.len() < 200);
    assert_eq!(
        messages.last().unwrap()["id"].as_str(),
        last.as_deref(),
        "the newest are kept"
    );
    let mut refused = 0;
    for _ in 0..5 {
        reader
            .send(json!({"type":"history","room":"big","limit":200}))
            .await;
        let answer = reader
            .recv_until(|f| matches!(f, ServerFrame::History { .. } | ServerFrame::Error { .. }))
            .await;
        if let ServerFrame::Error { code, .. } = answer {
            assert_eq!(code, ErrorCode::RateLimited);
            refused += 1;
        }
    }
    assert!(
        refused >= 2,
        "big pages cost more than one token each: {refused} refused"
    );
}

/// Opens a raw WebSocket to `addr` by hand (to send what no library would).
async fn raw_socket(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        seen.push(b[0]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 101"));
    tcp
}

/// The close code in the frames a raw socket reads until EOF.
async fn close_code(tcp: &mut TcpStream) -> Option<u16> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut all)).await;
    let mut at = 0;
    while at + 2 <= all.len() {
        let opcode = all[at] & 0x0f;
        let (len, head) = match all[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([all[at + 2], all[at + 3]])),
                4,
            ),
            127 => return None,
            n => (usize::from(n), 2),
        };
        if opcode == 8 && len >= 2 {
            return Some(u16::from_be_bytes([all[at + head], all[at + head + 1]]));
        }
        at += head + len;
    }
    None
}

/// A frame that breaks RFC 6455 (a reserved bit, a reserved opcode, an
/// unmasked client frame) is answered with close 1002, not a bare EOF.
#[tokio::test]
async fn protocol_violations_are_answered_1002() {
    let node = node_with(|_| {}).await;
    let masked = |first: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    };
    for (what, frame) in [
        ("RSV1 set", masked(0x81 | 0x40, b"{}")),
        ("reserved opcode", masked(0x83, b"{}")),
        ("unmasked", vec![0x81, 2, b'{', b'}']),
    ] {
        let mut tcp = raw_socket(node.addr).await;
        tcp.write_all(&frame).await.unwrap();
        assert_eq!(close_code(&mut tcp).await, Some(1002), "{what}");
    }
}

/// A slow consumer is cut with 4002, and sees it: when it reads again it
/// finds whole frames, then the close frame, however long it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_sees_its_4002_after_whole_frames() {
    let node = node_with(|c| {
        c.limits.outbound_queue = 32;
        c.limits.max_text_chars = 8_000;
    })
    .await;
    // A small receive window, so the kernel holds little of the backlog.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.addr).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", node.addr), tcp)
        .await
        .unwrap();
    let mut slow = Client::unwelcomed(ws);
    slow.recv().await; // welcome
    slow.join("busy").await;
    let mut publisher = node.client("name=pub").await;
    publisher.join("busy").await;
    let text = "y".repeat(7_000);
    let (mut tx, mut rx) = publisher.ws.split();
    tokio::spawn(async move { while rx.next().await.is_some() {} });
    // Far more than the kernel buffers for it: its queue overflows.
    for i in 0..2_000 {
        let frame = json!({"type":"send","room":"busy","text":format!("{i}:{text}")});
        tx.send(WsMessage::text(frame.to_string())).await.unwrap();
    }
    // Longer than the node lingers over a close: the client reads nothing.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let started = Instant::now();
    assert_eq!(
        slow.expect_close().await,
        4002,
        "whole frames, then the close"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A client that stops reading is cut once the bytes queued to it pass
/// `limits.outbound_bytes`, however few frames they are; when it reads
/// again it finds whole frames, then 4002.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_is_cut_when_its_queued_bytes_pass_outbound_bytes() {
    let node = node_with(|c| {
        c.limits.outbound_queue = 100_000;
        c.limits.outbound_bytes = 256 * 1024;
        c.limits.max_text_chars = 8_000;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(node.addr).await.unwrap();
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", node.addr), tcp)
        .await
        .unwrap();
    let mut slow = Client::unwelcomed(ws);
    slow.recv().await; // welcome
    slow.join("busy").await;
    let mut publisher = node.client("name=pub").await;
    publisher.join("busy").await;
    let text = "y".repeat(7_000);
    let (mut tx, mut rx) = publisher.ws.split();
    tokio::spawn(async move { while rx.next().await.is_some() {} });
    // 7 MB in 1,000 frames: far fewer frames than the queue allows, more
    // bytes than the kernel and the byte limit hold together.
    for i in 0..1_000 {
        let frame = json!({"type":"send","room":"busy","text":format!("{i}:{text}")});
        tx.send(WsMessage::text(frame.to_string())).await.unwrap();
    }
    eventually("the slow reader is cut", async || {
        let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
        metrics.contains("banter_slow_consumers_total{node=\"closes\"} 1")
    })
    .await;
    assert_eq!(slow.expect_close().await, 4002);
}

/// `before` and `since` must be message ids (`bad_request`, HTTP 400); a
/// `since` from the future recovers nothing (`recovered: false`).
#[tokio::test]
async fn positions_must_be_ids_and_a_future_since_recovers_nothing() {
    let node = node_with(|_| {}).await;
    let mut c = node.client("name=c").await;
    c.join("r").await;
    let id = c.say("r", "one").await;
    c.send(json!({"type":"history","room":"r","before":"yesterday"}))
        .await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::History { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    let (code, body) = http(
        node.addr,
        "GET",
        "/api/rooms/r/history?since=yesterday",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    // The same epoch, a position far ahead of the room.
    let (epoch, position) = id.as_str().split_once(':').unwrap();
    let (ms, _) = position.split_once('-').unwrap();
    let ahead = format!("{epoch}:{}-0", ms.parse::<u64>().unwrap() + 3_600_000);
    let mut back = node.client("name=back").await;
    back.send(json!({"type":"join","room":"r","since":ahead}))
        .await;
    match back
        .recv_until(|f| matches!(f, ServerFrame::Joined { .. }))
        .await
    {
        ServerFrame::Joined {
            recovered, history, ..
        } => {
            assert!(!recovered, "a since from the future recovers nothing");
            assert_eq!(history.len(), 1, "the recent messages instead");
        }
        _ => unreachable!(),
    }
}

/// The HTTP history route is capped in bytes like a socket's reply: the
/// newest without `since`, the oldest after it (so the caller goes on).
#[tokio::test]
async fn http_history_is_capped_in_bytes() {
    let node = node_with(|c| {
        c.limits.max_text_chars = 4_000;
        c.auth.api_key = "key".into();
    })
    .await;
    let body = json!({"text": "x".repeat(4_000)}).to_string();
    let mut ids = Vec::new();
    for _ in 0..200 {
        let auth = [("Authorization", "Bearer key")];
        let (code, reply) = http(node.addr, "POST", "/api/rooms/big/messages", &auth, &body)
            .await
            .unwrap();
        assert_eq!(code, 202, "{reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let page = |path: String| async move {
        let (code, reply) = http(node.addr, "GET", &path, &[], "").await.unwrap();
        assert_eq!(code, 200, "{reply}");
        assert!(
            reply.len() <= 300 * 1024,
            "a reply of {} bytes",
            reply.len()
        );
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let latest = page("/api/rooms/big/history?limit=200".into()).await;
    assert!(latest.len() < 200);
    assert_eq!(latest.last(), ids.last(), "the newest are kept");
    let forward = page(format!("/api/rooms/big/history?limit=200&since={}", ids[0])).await;
    assert!(forward.len() < 199);
    assert_eq!(
        forward[0], ids[1],
        "forward from since, the oldest are kept"
    );
}
