//! The Pusher front door at the protocol level (the real pusher-js and the
//! `pusher` SDK run in e2e/pusher.test.js): the handshake and its refusals,
//! Pusher's close codes for a slow consumer and a drain, and the signed API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sha2::Sha256;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const KEY: &str = "k3y";
const SECRET: &str = "s3cret";

fn with_pusher(c: &mut Config) {
    c.pusher.app_id = "7".into();
    c.pusher.key = KEY.into();
    c.pusher.secret = SECRET.into();
}

async fn node(f: impl Fn(&mut Config)) -> TestNode {
    let mut c = config("p", None);
    with_pusher(&mut c);
    f(&mut c);
    TestNode::start(c).await
}

async fn open(addr: SocketAddr, path: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
    )
    .await
    .unwrap()
    .unwrap();
    ws
}

/// The next text frame as JSON (pings and subscription counts skipped);
/// `Err` on a close, with its code.
async fn next(ws: &mut Ws) -> Result<Value, u16> {
    loop {
        let frame = next_any(ws).await?;
        if frame["event"] != "pusher_internal:subscription_count" {
            return Ok(frame);
        }
    }
}

/// The next text frame as JSON (pings skipped); `Err` on a close, with its code.
async fn next_any(ws: &mut Ws) -> Result<Value, u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(WsMessage::Close(c))) => return Err(c.map_or(1005, |c| u16::from(c.code))),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// `data`, which Pusher sends as a string holding JSON.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        other => other.clone(),
    }
}

async fn subscribe(ws: &mut Ws, channel: &str) {
    ws.send(WsMessage::text(
        json!({"event":"pusher:subscribe","data":{"channel":channel}}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        let f = next(ws).await.unwrap();
        if f["event"] == "pusher_internal:subscription_succeeded" {
            assert_eq!(f["channel"], channel);
            return;
        }
    }
}

/// POST /apps/7/events, signed as the Pusher SDKs sign.
async fn trigger(addr: SocketAddr, secret: &str, channel: &str, event: &str, payload: &str) -> u16 {
    let body = json!({"name": event, "channels": [channel], "data": payload}).to_string();
    let md5 = hex::encode(Md5::digest(body.as_bytes()));
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!("auth_key={KEY}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("POST\n/apps/7/events\n{query}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let path = format!("/apps/7/events?{query}&auth_signature={sig}");
    let (code, _) = http(
        addr,
        "POST",
        &path,
        &[("content-type", "application/json")],
        &body,
    )
    .await
    .unwrap();
    code
}

#[tokio::test]
async fn the_handshake_names_the_socket_and_refuses_a_wrong_key_or_protocol() {
    let n = node(|_| {}).await;
    let mut ws = open(n.addr, &format!("/app/{KEY}?protocol=7&client=js")).await;
    let hello = next(&mut ws).await.unwrap();
    assert_eq!(hello["event"], "pusher:connection_established");
    let d = data(&hello);
    let id = d["socket_id"].as_str().unwrap();
    let (a, b) = id.split_once('.').unwrap();
    assert!(
        a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()),
        "{id}"
    );
    assert_eq!(d["activity_timeout"], 30);
    ws.send(WsMessage::text(r#"{"event":"pusher:ping","data":{}}"#))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await.unwrap()["event"], "pusher:pong");

    let mut wrong = open(n.addr, "/app/nope?protocol=7").await;
    let err = next(&mut wrong).await.unwrap();
    assert_eq!(
        (err["event"].as_str(), err["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(4001))
    );
    assert_eq!(next(&mut wrong).await, Err(4001));

    let mut old = open(n.addr, &format!("/app/{KEY}?protocol=3")).await;
    assert_eq!(next(&mut old).await.unwrap()["data"]["code"], 4007);
    assert_eq!(next(&mut old).await, Err(4007));

    // A browser page of the app's own site may connect (pusher-js always
    // talks to another host than its page's).
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/app/{KEY}?protocol=7", n.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://shop.example".parse().unwrap());
    let (mut cross, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        next(&mut cross).await.unwrap()["event"],
        "pusher:connection_established"
    );

    // Off without a key: 404.
    let off = TestNode::start(config("off", None)).await;
    let (code, _) = http(off.addr, "GET", "/app/k3y", &[], "").await.unwrap();
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_bad_signature_is_401_and_a_good_one_reaches_the_subscriber() {
    let n = node(|_| {}).await;
    let mut ws = open(n.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut ws).await.unwrap();
    subscribe(&mut ws, "news").await;
    assert_eq!(trigger(n.addr, "wrong", "news", "e", "x").await, 401);
    assert_eq!(trigger(n.addr, SECRET, "news", "e", "hello").await, 200);
    let f = next(&mut ws).await.unwrap();
    assert_eq!(
        (
            f["event"].as_str(),
            f["channel"].as_str(),
            f["data"].as_str()
        ),
        (Some("e"), Some("news"), Some("hello"))
    );
}

/// A Pusher subscriber that stops reading is closed alone with 4100 (pusher-js
/// comes back after a second); the one that reads gets every event in order.
#[tokio::test]
async fn a_slow_pusher_consumer_alone_is_closed_4100() {
    const N: usize = 600;
    let n = node(|c| c.limits.outbound_queue = 64).await;
    let mut slow = open(n.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut slow).await.unwrap();
    subscribe(&mut slow, "firehose").await;
    let mut reader = open(n.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut reader).await.unwrap();
    subscribe(&mut reader, "firehose").await;
    let text = "y".repeat(9000);
    let addr = n.addr;
    let read_all = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N {
            let f = next(&mut reader).await.unwrap();
            got.push(
                f["data"]
                    .as_str()
                    .unwrap()
                    .split(':')
                    .next()
                    .unwrap()
                    .to_owned(),
            );
        }
        got
    });
    for i in 0..N {
        assert_eq!(
            trigger(addr, SECRET, "firehose", "e", &format!("{i}:{text}")).await,
            200
        );
    }
    let got = tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        (0..N).map(|i| i.to_string()).collect::<Vec<_>>(),
        "every event, in order"
    );
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next())
            .await
            .unwrap()
        {
            Some(Ok(WsMessage::Close(c))) => break c.map_or(1005, |c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4100);
}

/// A drain tells Pusher clients 4200: come back at once (elsewhere).
#[tokio::test]
async fn a_drain_closes_pusher_sockets_with_4200() {
    let n = node(|_| {}).await;
    let mut ws = open(n.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut ws).await.unwrap();
    subscribe(&mut ws, "x").await;
    let stop = tokio::spawn(n.stop());
    assert_eq!(next(&mut ws).await, Err(4200));
    stop.await.unwrap();
}

/// GET /apps/{id}/channels{/name}, signed.
async fn query(addr: SocketAddr, path: &str) -> (u16, Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Parameters of the path (here only ones after `auth_*` in order: the
    // signed query is sorted by key).
    let (path, extra) = path.split_once('?').unwrap_or((path, ""));
    let mut query = format!("auth_key={KEY}&auth_timestamp={ts}&auth_version=1.0");
    if !extra.is_empty() {
        query = format!("{query}&{extra}");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("GET\n{path}\n{query}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let (code, body) = http(
        addr,
        "GET",
        &format!("{path}?{query}&auth_signature={sig}"),
        &[],
        "",
    )
    .await
    .unwrap();
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Across two nodes: an event triggered on one reaches a subscriber on the
/// other, and the channel queries on either see the channel occupied.
async fn across_nodes(p: Pair) {
    let mut ws = open(p.a.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut ws).await.unwrap();
    subscribe(&mut ws, "orders").await;
    for i in 0..20 {
        assert_eq!(
            trigger(p.b.addr, SECRET, "orders", "created", &i.to_string()).await,
            200
        );
    }
    for i in 0..20 {
        assert_eq!(
            next(&mut ws).await.unwrap()["data"],
            i.to_string(),
            "in order"
        );
    }
    for node in [&p.a, &p.b] {
        let (code, list) = query(node.addr, "/apps/7/channels").await;
        assert_eq!(code, 200);
        assert!(list["channels"].get("orders").is_some(), "{list}");
        let (_, one) = query(node.addr, "/apps/7/channels/orders").await;
        assert_eq!(one["occupied"], true);
        let (_, none) = query(node.addr, "/apps/7/channels/nobody-here").await;
        assert_eq!(none["occupied"], false);
    }
    // Subscription counts add up over the nodes, reach every subscriber as
    // `pusher_internal:subscription_count`, and follow a socket that goes.
    let mut on_b = open(p.b.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut on_b).await.unwrap();
    subscribe(&mut on_b, "orders").await;
    let mut twin = open(p.a.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut twin).await.unwrap();
    subscribe(&mut twin, "orders").await;
    for socket in [&mut ws, &mut on_b, &mut twin] {
        count_reaches(socket, "orders", 3).await;
    }
    for node in [&p.a, &p.b] {
        let (_, one) = query(node.addr, "/apps/7/channels/orders?info=subscription_count").await;
        assert_eq!(one["subscription_count"], 3, "{one}");
        let (_, list) = query(node.addr, "/apps/7/channels?info=subscription_count").await;
        assert_eq!(
            list["channels"]["orders"]["subscription_count"], 3,
            "{list}"
        );
    }
    twin.close(None).await.unwrap();
    for socket in [&mut ws, &mut on_b] {
        count_reaches(socket, "orders", 2).await;
    }
}

/// Reads `socket` until a subscription count of `channel` says `n` (the
/// counts before it may be any, each node writes its own at most once per
/// diff interval).
async fn count_reaches(socket: &mut Ws, channel: &str, n: u64) {
    loop {
        let frame = next_any(socket).await.unwrap();
        if frame["event"] == "pusher_internal:subscription_count" {
            assert_eq!(frame["channel"], channel);
            if data(&frame)["subscription_count"] == n {
                return;
            }
        }
    }
}

#[tokio::test]
async fn across_nodes_redis() {
    across_nodes(Pair::redis_with(with_pusher).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes_redis_cluster() {
    across_nodes(Pair::redis_cluster_with(with_pusher).await).await;
}

#[tokio::test]
async fn across_nodes_memory() {
    across_nodes(Pair::memory_with(with_pusher).await).await;
}

/// When a node's subscription to a channel was interrupted for longer than
/// the channel's stream holds, the hole cannot be repaired and the Pusher
/// protocol cannot say so: its subscribers there are sent away with 4200
/// (pusher-js reconnects at once and resubscribes), never left with a silent
/// hole. A shorter interruption is repaired (every event, in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hole_the_stream_cannot_fill_sends_subscribers_away_with_4200() {
    let redis = banter_testkit::RedisServer::start();
    let proxy = banter_testkit::Proxy::start(([127, 0, 0, 1], redis.port()).into());
    let mut direct = config("direct", Some(&redis.url()));
    with_pusher(&mut direct);
    let a = TestNode::start(direct).await;
    let mut via = config("via", Some(&proxy.redis_url()));
    with_pusher(&mut via);
    let b = TestNode::start(via).await;
    let mut ws = open(b.addr, &format!("/app/{KEY}?protocol=7")).await;
    next(&mut ws).await.unwrap();
    subscribe(&mut ws, "busy").await;

    // A short cut: repaired.
    proxy.cut();
    for i in 0..50 {
        assert_eq!(
            trigger(a.addr, SECRET, "busy", "e", &format!("short-{i}")).await,
            200
        );
    }
    proxy.restore();
    for i in 0..50 {
        assert_eq!(
            next(&mut ws).await.unwrap()["data"],
            format!("short-{i}"),
            "repaired, in order"
        );
    }

    // A long one: more than the channel's stream keeps (2,000).
    proxy.cut();
    for i in 0..2300 {
        assert_eq!(
            trigger(a.addr, SECRET, "busy", "e", &format!("long-{i}")).await,
            200
        );
    }
    proxy.restore();
    let code = loop {
        match next(&mut ws).await {
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert_eq!(code, 4200);
}
