//! What only `RedisPresence` promises, on a real `redis-server`: its keys
//! (prefixed, expiring, cleaned up), a room nobody sweeps vanishing, and an
//! outage that is an error, then recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use banter_presence::{Presence, RedisPresence};
use banter_testkit::RedisServer;
use tokio::time::{Instant, sleep};

async fn redis_node(server: &RedisServer, prefix: &str, ttl: Duration) -> RedisPresence {
    let pool = deadpool_redis::Config::from_url(server.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool");
    RedisPresence::new(pool, prefix, ttl)
}

fn keys(server: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = server.query(&["KEYS", "*"]);
    keys.sort();
    keys
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server.query(&["PTTL", key])
}

/// Keys live under the configured prefix, expire with 2 × ttl, and go away
/// when the last member leaves.
#[tokio::test]
async fn redis_keys_are_prefixed_and_expire() {
    bounded(async {
        let server = RedisServer::start();
        let p = redis_node(&server, "banter-x", Duration::from_secs(10)).await;
        let lobby = room("lobby");
        let ann = user("u-ann", "Ann");
        let a1 = member("a1", &ann);
        p.join(&lobby, &a1).await.unwrap();

        assert_eq!(
            keys(&server),
            vec![
                "banter-x:presence:lobby",
                "banter-x:presence:lobby:counts",
                "banter-x:presence:lobby:users",
            ]
        );
        for k in keys(&server) {
            let ms = pttl(&server, &k);
            assert!(ms > 10_000 && ms <= 20_000, "{k} pttl {ms}");
        }
        let json: String = server.query(&["HGET", "banter-x:presence:lobby:users", "a1"]);
        assert!(json.contains(r#"{"id":"u-ann","name":"Ann"}"#), "{json}");

        p.leave(&lobby, &a1).await.unwrap();
        assert!(
            keys(&server).is_empty(),
            "left nothing behind: {:?}",
            keys(&server)
        );
    })
    .await;
}

/// A room whose only node died vanishes from Redis after 2 × ttl, with
/// nobody sweeping it; a later join of the same user is a first join.
#[tokio::test]
async fn redis_abandoned_room_vanishes() {
    bounded(async {
        let server = RedisServer::start();
        let ttl = Duration::from_millis(200);
        let p = redis_node(&server, "t", ttl).await;
        let lobby = room("lobby");
        let ann = user("u-ann", "Ann");
        assert!(p.join(&lobby, &member("a1", &ann)).await.unwrap());
        assert_eq!(keys(&server).len(), 3);

        let deadline = Instant::now() + Duration::from_secs(5);
        while !keys(&server).is_empty() {
            assert!(
                Instant::now() < deadline,
                "keys stayed: {:?}",
                keys(&server)
            );
            sleep(Duration::from_millis(50)).await;
        }
        assert!(p.join(&lobby, &member("a2", &ann)).await.unwrap());
    })
    .await;
}

/// Presence errors instead of hanging when Redis is gone, and works again
/// once it is back (scripts are reloaded after the restart flushed them).
#[tokio::test]
async fn redis_outage_is_an_error_then_recovers() {
    bounded(async {
        let mut server = RedisServer::start();
        let p = redis_node(&server, "t", Duration::from_secs(10)).await;
        let lobby = room("lobby");
        let ann = user("u-ann", "Ann");
        let a1 = member("a1", &ann);
        p.join(&lobby, &a1).await.unwrap();

        server.stop();
        assert!(p.users(&lobby).await.is_err());
        assert!(p.refresh(&[entry(&lobby, &a1)]).await.is_err());

        server.restart();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match p.join(&lobby, &a1).await {
                Ok(first) => {
                    assert!(first, "the restart lost everything: a first join");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
            }
            sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(p.users(&lobby).await.unwrap(), vec![ann]);
        assert!(p.refresh(&[entry(&lobby, &a1)]).await.unwrap().is_empty());
    })
    .await;
}
