//! Direct messages, tokens, the publish API and plain-text mode, across two
//! nodes on one real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::ServerFrame;
use common::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "test-secret";

fn token(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two nodes on one Redis with tokens and the publish API on.
async fn pair(f: impl Fn(&mut Config)) -> (TestNode, TestNode, banter_testkit::RedisServer) {
    let redis = banter_testkit::RedisServer::start();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let mut c = config(id, Some(&redis.url()));
        c.auth.jwt_secret = SECRET.into();
        c.auth.api_key = "k3y".into();
        c.server.handshake_timeout_ms = 1000;
        f(&mut c);
        nodes.push(TestNode::start(c).await);
    }
    let b = nodes.pop().unwrap();
    (nodes.pop().unwrap(), b, redis)
}

async fn ws_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    match tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await {
        Ok((_, res)) => res.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn direct_messages_across_nodes_to_every_connection() {
    let (a, b, _redis) = pair(|_| {}).await;
    let bob = token(json!({"sub":"bob","name":"Bob"}), SECRET);
    let mut bob1 = a.client(&format!("token={bob}")).await;
    let mut bob2 = b.client(&format!("token={bob}")).await;
    assert_eq!(
        (bob1.user.id.as_str(), bob2.user.id.as_str()),
        ("bob", "bob")
    );
    let mut ann = b.client("name=Ann").await;

    ann.send(json!({"type":"dm","to":"bob","text":"psst","ref":"d1"}))
        .await;
    let id = match ann
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Ack { id, reference } => {
            assert_eq!(reference, Some("d1".into()));
            id
        }
        other => panic!("{other:?}"),
    };
    for bob in [&mut bob1, &mut bob2] {
        match bob.recv_until(|f| matches!(f, ServerFrame::Dm(_))).await {
            ServerFrame::Dm(dm) => {
                assert_eq!(
                    (dm.id.clone(), dm.text.as_str(), dm.to.as_str()),
                    (id.clone(), "psst", "bob")
                );
                assert_eq!(dm.from, ann.user);
            }
            _ => unreachable!(),
        }
    }

    // A user who is online nowhere (not a guest) gets it later: stored and
    // acked (tests/dialogs.rs follows it to their return).
    ann.send(json!({"type":"dm","to":"nobody-here","text":"hello?","ref":"d2"}))
        .await;
    match ann
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Ack { reference, .. } => assert_eq!(reference, Some("d2".into())),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tokens_in_the_query_and_in_the_auth_frame() {
    let (a, _b, _redis) = pair(|c| c.auth.anonymous = false).await;
    let good = token(
        json!({"sub":"auth0|42","name":"Zoë","exp": now() + 600}),
        SECRET,
    );
    let c = a.client(&format!("token={good}")).await;
    assert_eq!(
        (c.user.id.as_str(), c.user.name.as_str()),
        ("auth0|42", "Zoë")
    );

    // Refused before the upgrade: 401.
    let wrong_key = token(json!({"sub":"x","exp": now() + 600}), "not-the-secret");
    let expired = token(json!({"sub":"x","exp": now() - 3600}), SECRET);
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg":"none","typ":"JWT"})),
        b64(json!({"sub":"x"}))
    );
    let hs512 = encode(
        &Header::new(jsonwebtoken::Algorithm::HS512),
        &json!({"sub":"x"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bad_sub = token(json!({"sub":"has space"}), SECRET);
    for bad in [
        wrong_key.as_str(),
        expired.as_str(),
        none.as_str(),
        hs512.as_str(),
        bad_sub.as_str(),
        "garbage",
        "",
    ] {
        assert_eq!(
            ws_status(a.addr, &format!("/ws?token={bad}")).await,
            401,
            "token {bad:?}"
        );
    }

    // Anonymous off, no token: nothing until a good `auth` frame, then welcome.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", a.addr))
        .await
        .unwrap();
    ws.send(WsMessage::text(
        json!({"type":"auth","token":good}).to_string(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame: ServerFrame = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert!(
        matches!(frame, ServerFrame::Welcome { ref user, .. } if user.id.as_str() == "auth0|42"),
        "{frame:?}"
    );

    // A bad auth frame, another first frame, or none at all: close 4001.
    for first in [
        Some(json!({"type":"auth","token": expired})),
        Some(json!({"type":"join","room":"x"})),
        None,
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", a.addr))
            .await
            .unwrap();
        let mut c = Client::unwelcomed(ws);
        if let Some(f) = first {
            c.send(f).await;
        }
        assert_eq!(c.expect_close().await, 4001);
    }
}

#[tokio::test]
async fn a_token_on_a_node_without_a_secret_is_refused() {
    let node = TestNode::start(config("nosecret", None)).await;
    let t = token(json!({"sub":"x"}), "whatever");
    assert_eq!(ws_status(node.addr, &format!("/ws?token={t}")).await, 401);
}

#[tokio::test]
async fn the_publish_api() {
    let (a, b, _redis) = pair(|_| {}).await;
    let mut c = b.client("").await;
    c.join("news").await;
    let body = r#"{"text":"deploy at 5","from":"ops bot"}"#;
    let bearer = [
        ("Authorization", "Bearer k3y"),
        ("Content-Type", "application/json"),
    ];
    let (code, resp) = http(a.addr, "POST", "/api/rooms/news/messages", &bearer, body)
        .await
        .unwrap();
    assert_eq!(code, 202, "{resp}");
    let id = serde_json::from_str::<serde_json::Value>(&resp).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = c.next_message().await;
    assert_eq!(
        (
            m.id.as_str(),
            m.text.as_str(),
            m.from.id.as_str(),
            m.from.name.as_str()
        ),
        (id.as_str(), "deploy at 5", "system", "ops bot")
    );
    let (code, _) = http(
        a.addr,
        "POST",
        "/api/rooms/news/messages",
        &bearer,
        r#"{"text":"plain"}"#,
    )
    .await
    .unwrap();
    assert_eq!(code, 202);
    assert_eq!(c.next_message().await.from.name.as_str(), "system");

    for auth in [
        ("Authorization", "Bearer wrong"),
        ("Authorization", "k3y"),
        ("X-Nothing", ""),
    ] {
        assert_eq!(
            http(a.addr, "POST", "/api/rooms/news/messages", &[auth], body)
                .await
                .unwrap()
                .0,
            401,
            "{auth:?}"
        );
    }
    assert_eq!(
        http(
            a.addr,
            "POST",
            "/api/rooms/bad%20room/messages",
            &bearer,
            body
        )
        .await
        .unwrap()
        .0,
        400
    );
    assert_eq!(
        http(
            a.addr,
            "POST",
            "/api/rooms/news/messages",
            &bearer,
            "not json"
        )
        .await
        .unwrap()
        .0,
        400
    );
    assert_eq!(
        http(a.addr, "GET", "/api/rooms/news/messages", &bearer, "")
            .await
            .unwrap()
            .0,
        405
    );

    let off = TestNode::start(config("off", None)).await;
    assert_eq!(
        http(off.addr, "POST", "/api/rooms/news/messages", &bearer, body)
            .await
            .unwrap()
            .0,
        404,
        "API off"
    );
}

async fn line<
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
>(
    ws: &mut S,
) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Text(t) => return t.as_str().to_owned(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn plain_text_mode_talks_with_a_json_client_on_another_node() {
    let (a, b, _redis) = pair(|_| {}).await;
    let mut ann = a.client("name=Ann").await;
    ann.join("plain").await;
    ann.say("plain", "before you came").await;

    let (mut tex, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/text?room=plain&name=Tex", b.addr))
            .await
            .unwrap();
    assert_eq!(
        line(&mut tex).await,
        "Ann: before you came",
        "recent history first"
    );
    ann.say("plain", "hello tex").await;
    assert_eq!(line(&mut tex).await, "Ann: hello tex");

    tex.send(WsMessage::text("hi ann\n")).await.unwrap();
    let m = ann
        .recv_until(|f| matches!(f, ServerFrame::Message(m) if m.text == "hi ann"))
        .await;
    assert!(matches!(m, ServerFrame::Message(m) if m.from.name.as_str() == "Tex"));
    assert_eq!(
        line(&mut tex).await,
        "Tex: hi ann",
        "its own line comes back like everyone's"
    );

    assert_eq!(
        ws_status(b.addr, "/text?name=x").await,
        400,
        "a room is required"
    );
    assert_eq!(ws_status(b.addr, "/text?room=bad%20room").await, 400);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
