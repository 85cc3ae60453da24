//! `rediss://`: nodes reach a real `redis-server` over TLS, and trust it
//! only through the system's trust store (here `SSL_CERT_FILE`, which
//! names the CA that signed the server's certificate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::time::Duration;

#[tokio::test]
async fn two_nodes_chat_through_a_redis_over_tls() {
    let redis = banter_testkit::RedisServer::start_tls();
    let ca = redis.ca_file().display().to_string();
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let a = NodeProcess::start("tls-a", &redis.tls_url(), &env).await;
    let b = NodeProcess::start("tls-b", &redis.tls_url(), &env).await;
    let mut ann = Client::connect(a.addr, "name=Ann").await;
    let mut bob = Client::connect(b.addr, "name=Bob").await;
    ann.join("secure").await;
    let (_, count) = bob.join("secure").await;
    assert_eq!(count, 2, "presence crosses the nodes over TLS");

    let id = ann.say("secure", "over tls").await;
    let got = bob.next_message().await;
    assert_eq!((got.id, got.text.as_str()), (id, "over tls"));
    // It was stored in this Redis (read back through its plain port).
    let keys: Vec<String> = redis.query(&["KEYS", "banter:history:*secure*"]);
    assert!(!keys.is_empty(), "no history stream for the room");
}

#[tokio::test]
async fn a_node_that_does_not_trust_the_certificate_never_gets_ready() {
    let redis = banter_testkit::RedisServer::start_tls();
    // No SSL_CERT_FILE: the system's roots do not hold the test CA.
    let node = NodeProcess::spawn("tls-untrusted", &redis.tls_url(), &[]);
    let addr = node.addr;
    eventually("node serving", async || {
        http(addr, "GET", "/healthz", &[], "").await.is_ok()
    })
    .await;
    for _ in 0..10 {
        let (status, body) = http(addr, "GET", "/readyz", &[], "").await.unwrap();
        assert_eq!(status, 503, "ready on an untrusted certificate: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn two_nodes_chat_through_a_redis_cluster_over_tls() {
    let cluster = banter_testkit::RedisCluster::start_tls(3, 0);
    let ca = cluster.ca_file().display().to_string();
    let env = [
        ("SSL_CERT_FILE", ca.as_str()),
        ("BANTER__REDIS__MODE", "cluster"),
    ];
    let a = NodeProcess::start("tlsc-a", &cluster.tls_url(), &env).await;
    let b = NodeProcess::start("tlsc-b", &cluster.tls_url(), &env).await;
    // Every shard's subscriber link is up, over TLS to the TLS ports.
    for node in [&a, &b] {
        eventually("banter_bus_shards_up 3", async || {
            let (_, metrics) = http(node.addr, "GET", "/metrics", &[], "").await.unwrap();
            metrics
                .lines()
                .any(|l| l.starts_with("banter_bus_shards_up") && l.ends_with(" 3"))
        })
        .await;
    }
    let mut ann = Client::connect(a.addr, "name=Ann").await;
    let mut bob = Client::connect(b.addr, "name=Bob").await;
    // Rooms on every shard (their names hash to different slots).
    for room in ["tls-0", "tls-1", "tls-2", "tls-3", "tls-4", "tls-5"] {
        ann.join(room).await;
        let (_, count) = bob.join(room).await;
        assert_eq!(count, 2, "{room}: presence crosses the nodes");
        let id = ann.say(room, room).await;
        let got = bob.next_message().await;
        assert_eq!((got.id, got.text.as_str()), (id, room));
    }
}
