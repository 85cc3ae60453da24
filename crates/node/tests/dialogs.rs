//! Stored dialogs across two nodes: offline delivery with unread counts,
//! read receipts, `dm_history` paging, guests, and a DM sent while the
//! recipient's node resubscribes. Every scenario runs on memory, one real
//! Redis and a real Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{DirectMessage, ErrorCode, MessageId, ServerFrame};
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use std::time::Duration;

const SECRET: &str = "dialog-secret";

fn with_tokens(c: &mut Config) {
    c.auth.jwt_secret = SECRET.into();
}

fn token(sub: &str, name: &str) -> String {
    let claims = json!({"sub": sub, "name": name});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn login(node: &TestNode, sub: &str, name: &str) -> Client {
    node.client(&format!("token={}", token(sub, name))).await
}

/// Sends a DM and returns the ack's id (panics on an error).
async fn dm(c: &mut Client, to: &str, text: &str) -> MessageId {
    c.send(json!({"type":"dm","to":to,"text":text,"ref":text}))
        .await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::Ack { id, .. } => id,
        other => panic!("dm {text:?} refused: {other:?}"),
    }
}

async fn next_dm(c: &mut Client) -> DirectMessage {
    match c.recv_until(|f| matches!(f, ServerFrame::Dm(_))).await {
        ServerFrame::Dm(m) => m,
        _ => unreachable!(),
    }
}

/// `(with, unread, last text)` of each dialog, most recent first.
async fn dialogs(c: &mut Client) -> Vec<(String, usize, String)> {
    c.send(json!({"type":"dialogs"})).await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::Dialogs { .. }))
        .await
    {
        ServerFrame::Dialogs { dialogs } => dialogs
            .into_iter()
            .map(|d| (d.with.id.to_string(), d.unread, d.last.text))
            .collect(),
        _ => unreachable!(),
    }
}

async fn dm_history(c: &mut Client, query: serde_json::Value) -> Vec<String> {
    let mut frame = json!({"type":"dm_history"});
    for (k, v) in query.as_object().unwrap() {
        frame[k] = v.clone();
    }
    c.send(frame).await;
    match c
        .recv_until(|f| matches!(f, ServerFrame::DmHistory { .. } | ServerFrame::Error { .. }))
        .await
    {
        ServerFrame::DmHistory { messages, .. } => messages.into_iter().map(|m| m.text).collect(),
        other => panic!("{other:?}"),
    }
}

/// Ann writes to Bob while he is offline; he comes back on the other node,
/// finds the dialog with the right unread count and its history; reads it;
/// Ann, on her node, gets the receipt; an older id never moves it back.
async fn offline_delivery_and_receipts(p: Pair) {
    let mut ann = login(&p.a, "ann", "Ann").await;
    let mut ann_tab = login(&p.a, "ann", "Ann").await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(dm(&mut ann, "bob", text).await);
    }
    // Ann's other tab sees what she wrote.
    for text in ["one", "two", "three"] {
        assert_eq!(next_dm(&mut ann_tab).await.text, text);
    }
    let mut bob = login(&p.b, "bob", "Bob").await;
    assert_eq!(dialogs(&mut bob).await, [("ann".into(), 3, "three".into())]);
    assert_eq!(dialogs(&mut ann).await, [("bob".into(), 0, "three".into())]);
    // The same list over HTTP, for Bob's token only.
    let route = "/api/users/bob/dialogs";
    let as_bob = format!("Bearer {}", token("bob", "Bob"));
    let (code, body) = http(p.a.addr, "GET", route, &[("authorization", &as_bob)], "")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["dialogs"][0]["with"]["id"], "ann", "{body}");
    assert_eq!(v["dialogs"][0]["with"]["name"], "Ann", "{body}");
    assert_eq!(v["dialogs"][0]["unread"], 3, "{body}");
    assert_eq!(v["dialogs"][0]["last"]["text"], "three", "{body}");
    let as_ann = format!("Bearer {}", token("ann", "Ann"));
    for headers in [vec![("authorization", as_ann.as_str())], vec![]] {
        let (code, _) = http(p.b.addr, "GET", route, &headers, "").await.unwrap();
        assert_eq!(code, 401, "another user's dialogs are not theirs to read");
    }
    assert_eq!(
        dm_history(&mut bob, json!({"with":"ann"})).await,
        ["one", "two", "three"]
    );
    // Bob answers: Ann gets it live, on the other node.
    let reply = dm(&mut bob, "ann", "hi Ann").await;
    let got = next_dm(&mut ann).await;
    assert_eq!((got.id, got.from.id.as_str()), (reply.clone(), "bob"));
    assert_eq!(
        dialogs(&mut ann).await,
        [("bob".into(), 1, "hi Ann".into())]
    );

    // Bob reads up to "two": one unread left; Ann's receipt crosses nodes.
    bob.send(json!({"type":"read","with":"ann","id":ids[1]}))
        .await;
    for c in [&mut ann, &mut bob] {
        match c
            .recv_until(|f| matches!(f, ServerFrame::Read { .. }))
            .await
        {
            ServerFrame::Read { by, with, id } => {
                assert_eq!(
                    (by.id.as_str(), with.as_str(), &id),
                    ("bob", "ann", &ids[1])
                );
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(dialogs(&mut bob).await[0].1, 1, "one unread after the read");
    // An older id does not move it back (no receipt, unread unchanged).
    bob.send(json!({"type":"read","with":"ann","id":ids[0]}))
        .await;
    bob.send(json!({"type":"read","with":"ann","id":ids[2]}))
        .await;
    match bob
        .recv_until(|f| matches!(f, ServerFrame::Read { .. }))
        .await
    {
        ServerFrame::Read { id, .. } => assert_eq!(id, ids[2], "the older id sent no receipt"),
        _ => unreachable!(),
    }
    assert_eq!(dialogs(&mut bob).await[0].1, 0);
    // Reading again, or past what is there, never goes below zero.
    bob.send(json!({"type":"read","with":"ann","id":ids[2]}))
        .await;
    assert_eq!(
        dialogs(&mut bob).await[0].1,
        0,
        "unread never goes negative"
    );
    // An id that is not in the dialog: not_found.
    bob.send(json!({"type":"read","with":"ann","id":reply.as_str().replace(':', "x:")}))
        .await;
    let err = bob
        .recv_until(|f| matches!(f, ServerFrame::Error { .. }))
        .await;
    assert!(
        matches!(
            err,
            ServerFrame::Error {
                code: ErrorCode::NotFound | ErrorCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn offline_delivery_and_receipts_memory() {
    offline_delivery_and_receipts(Pair::memory_with(with_tokens).await).await;
}

#[tokio::test]
async fn offline_delivery_and_receipts_redis() {
    offline_delivery_and_receipts(Pair::redis_with(with_tokens).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_delivery_and_receipts_redis_cluster() {
    offline_delivery_and_receipts(Pair::redis_cluster_with(with_tokens).await).await;
}

/// `dm_history` pages backwards with `before` and catches up with `after`.
async fn history_pages(p: Pair) {
    let mut ann = login(&p.a, "ann", "Ann").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(dm(&mut ann, "carol", &format!("m{i}")).await);
    }
    let mut carol = login(&p.b, "carol", "Carol").await;
    assert_eq!(
        dm_history(&mut carol, json!({"with":"ann","limit":3})).await,
        ["m4", "m5", "m6"]
    );
    assert_eq!(
        dm_history(&mut carol, json!({"with":"ann","limit":3,"before":ids[4]})).await,
        ["m1", "m2", "m3"]
    );
    assert_eq!(
        dm_history(&mut carol, json!({"with":"ann","limit":3,"before":ids[1]})).await,
        ["m0"]
    );
    assert_eq!(
        dm_history(&mut carol, json!({"with":"ann","after":ids[4]})).await,
        ["m5", "m6"]
    );
    assert_eq!(
        dm_history(&mut carol, json!({"with":"ann","after":ids[6]})).await,
        Vec::<String>::new()
    );
    // The same dialog, seen from Ann's side.
    assert_eq!(
        dm_history(&mut ann, json!({"with":"carol","limit":2})).await,
        ["m5", "m6"]
    );
    // A dialog nobody wrote in is empty, not an error.
    assert!(
        dm_history(&mut carol, json!({"with":"nobody"}))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn history_pages_memory() {
    history_pages(Pair::memory_with(with_tokens).await).await;
}

#[tokio::test]
async fn history_pages_redis() {
    history_pages(Pair::redis_with(with_tokens).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_redis_cluster() {
    history_pages(Pair::redis_cluster_with(with_tokens).await).await;
}

/// A guest's id dies with its connections: a DM to an offline guest is
/// `not_found`; to an online one it is stored and delivered.
async fn guests(p: Pair) {
    let mut ann = login(&p.a, "ann", "Ann").await;
    let mut guest = p.b.client("name=Gus").await;
    let gid = guest.user.id.to_string();
    assert!(gid.starts_with("g-"), "{gid}");
    dm(&mut ann, &gid, "hello guest").await;
    assert_eq!(next_dm(&mut guest).await.text, "hello guest");
    guest.close().await;
    eventually("the guest is gone", async || {
        ann.send(json!({"type":"dm","to":gid,"text":"still there?"}))
            .await;
        matches!(
            ann.recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
                .await,
            ServerFrame::Error {
                code: ErrorCode::NotFound,
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn guests_memory() {
    guests(Pair::memory_with(with_tokens).await).await;
}

#[tokio::test]
async fn guests_redis() {
    guests(Pair::redis_with(with_tokens).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_redis_cluster() {
    guests(Pair::redis_cluster_with(with_tokens).await).await;
}

/// DMs sent while the recipient's node has lost its subscriber connection
/// (`CLIENT KILL TYPE pubsub`) reach him live, once and in order, from his
/// mailbox: no `gap`, no reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dms_sent_while_the_recipients_node_resubscribes_are_not_lost() {
    let p = Pair::redis_with(with_tokens).await;
    let redis = p.redis.as_ref().unwrap();
    let mut ann = login(&p.a, "ann", "Ann").await;
    let mut bob = login(&p.b, "bob", "Bob").await;
    let mut acked = Vec::new();
    for round in 0..3 {
        // (Once the subscribers came back from the previous round.)
        eventually("a subscriber connection to cut", async || {
            tokio::task::block_in_place(|| redis.client_kill_pubsub()) >= 1
        })
        .await;
        for i in 0..20 {
            acked.push(dm(&mut ann, "bob", &format!("r{round}-{i}")).await);
        }
    }
    let mut got = Vec::new();
    while got.len() < acked.len() {
        match bob
            .recv_until(|f| matches!(f, ServerFrame::Dm(_) | ServerFrame::Gap { .. }))
            .await
        {
            ServerFrame::Dm(m) => got.push(m.id),
            other => panic!("a hole instead of a repair: {other:?}"),
        }
    }
    assert_eq!(got, acked, "every DM once, in order");
    let more = tokio::time::timeout(Duration::from_millis(300), bob.recv()).await;
    assert!(
        !matches!(more, Ok(ServerFrame::Dm(_))),
        "nothing twice: {more:?}"
    );
}

/// Over the per-minute budget of new dialogs a connection is refused, and
/// dialogs it already has are not counted again.
#[tokio::test]
async fn new_dialogs_per_minute_are_bounded() {
    let p = Pair::memory_with(with_tokens).await;
    let mut ann = login(&p.a, "ann", "Ann").await;
    let mut refused = None;
    for i in 0..40 {
        ann.send(json!({"type":"dm","to":format!("user{i}"),"text":"hi"}))
            .await;
        if let ServerFrame::Error { code, .. } = ann
            .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await
        {
            assert_eq!(code, ErrorCode::RateLimited);
            refused = Some(i);
            break;
        }
    }
    assert_eq!(refused, Some(30), "30 new dialogs a minute, then refused");
    dm(&mut ann, "user3", "an old one is fine").await;
}

/// A dialog without a message for `history.dialog_ttl_ms` is gone: from
/// both users' lists and its history.
async fn dialogs_expire(p: Pair) {
    let mut ann = login(&p.a, "ann", "Ann").await;
    dm(&mut ann, "dora", "soon gone").await;
    assert_eq!(dialogs(&mut ann).await.len(), 1);
    eventually("the dialog expired", async || {
        dialogs(&mut ann).await.is_empty()
    })
    .await;
    let mut dora = login(&p.b, "dora", "Dora").await;
    assert!(dialogs(&mut dora).await.is_empty());
    assert!(
        dm_history(&mut dora, json!({"with":"ann"}))
            .await
            .is_empty()
    );
}

fn short_dialogs(c: &mut Config) {
    with_tokens(c);
    c.history.dialog_ttl_ms = 400;
}

#[tokio::test]
async fn dialogs_expire_memory() {
    let network = banter_bus::MemoryNetwork::new().with_dialogs(200, Duration::from_millis(400));
    dialogs_expire(Pair::memory_on(network, short_dialogs).await).await;
}

#[tokio::test]
async fn dialogs_expire_redis() {
    dialogs_expire(Pair::redis_with(short_dialogs).await).await;
}
