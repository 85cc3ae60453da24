//! What only `RedisPresence` promises, on a real `redis-server`: its keys
//! (prefixed, expiring), a room nobody sweeps vanishing, an outage that is
//! an error and then recovers, and a leave that costs O(1), not O(room).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use banter_presence::Presence;
use banter_testkit::RedisServer;
use tokio::time::{Instant, sleep};

fn keys(server: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = server.query(&["KEYS", "*"]);
    keys.sort();
    keys
}

/// Keys live under the configured prefix and expire with 2 × ttl.
#[tokio::test]
async fn redis_keys_are_prefixed_and_expire() {
    bounded(async {
        let server = RedisServer::start();
        let p = redis_presence(&server, "banter-x", Duration::from_secs(10));
        let lobby = room("lobby");
        let ann = user("u-ann", "Ann");
        let a1 = member("a1", &ann);
        p.join(&lobby, &a1).await.unwrap();
        assert_eq!(
            keys(&server),
            [
                "banter-x:presence:lobby",
                "banter-x:presence:lobby:counts",
                "banter-x:presence:lobby:names",
                "banter-x:presence:lobby:roster",
                "banter-x:presence:lobby:roster:page",
                "banter-x:presence:lobby:users",
            ]
        );
        for k in keys(&server) {
            let ms: i64 = server.query(&["PTTL", &k]);
            assert!(ms > 10_000 && ms <= 20_000, "{k} pttl {ms}");
        }
        let json: String = server.query(&["HGET", "banter-x:presence:lobby:users", "a1"]);
        assert_eq!(json, r#"{"id":"u-ann","name":"Ann"}"#);
        p.leave(&lobby, &a1).await.unwrap();
        let left: Vec<String> = keys(&server);
        assert_eq!(
            left,
            ["banter-x:presence:lobby:left"],
            "only the tombstone stays, expiring"
        );
        let ms: i64 = server.query(&["PTTL", "banter-x:presence:lobby:left"]);
        assert!(ms > 0 && ms <= 10_000, "{ms}");
    })
    .await;
}

/// A room whose every node died: nobody sweeps it, its keys expire.
#[tokio::test]
async fn redis_abandoned_room_vanishes() {
    bounded(async {
        let server = RedisServer::start();
        let p = redis_presence(&server, PREFIX, Duration::from_millis(200));
        p.join(&room("lost"), &member("a1", &user("u-ann", "Ann")))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !keys(&server).is_empty() {
            assert!(
                Instant::now() < deadline,
                "keys stayed: {:?}",
                keys(&server)
            );
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Presence errors instead of hanging when Redis is gone, and works again
/// once it is back (scripts are reloaded after the restart flushed them).
#[tokio::test]
async fn redis_outage_is_an_error_then_recovers() {
    bounded(async {
        let mut server = RedisServer::start();
        let p = redis_presence(&server, PREFIX, Duration::from_secs(10));
        let lobby = room("lobby");
        let ann = user("u-ann", "Ann");
        let a1 = member("a1", &ann);
        p.join(&lobby, &a1).await.unwrap();

        server.stop();
        assert!(p.page(&lobby, None, 10).await.is_err());
        assert!(p.refresh(&[entry(&lobby, &a1)]).await.is_err());

        server.restart();
        let deadline = Instant::now() + Duration::from_secs(5);
        // The restart lost everything: a refresh puts the member back.
        while let Err(e) = p.refresh(&[entry(&lobby, &a1)]).await {
            assert!(Instant::now() < deadline, "no recovery: {e}");
            sleep(Duration::from_millis(50)).await;
        }
        let page = p.page(&lobby, None, 10).await.unwrap();
        assert_eq!((page.users, page.count), (vec![ann], 1));
    })
    .await;
}

/// Draining a big room costs Redis linear work: each leave is a constant
/// number of commands, whatever the room's size (it once read the whole
/// room to learn a count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_leave_costs_the_same_in_a_big_room() {
    bounded(async {
        let server = RedisServer::start();
        let p = redis_presence(&server, PREFIX, Duration::from_secs(60));
        let calls = |server: &RedisServer| -> u64 {
            let info: String = server.query(&["INFO", "commandstats"]);
            info.lines()
                .filter_map(|l| l.strip_prefix("cmdstat_"))
                .filter(|l| {
                    !l.starts_with("info:")
                        && !l.starts_with("evalsha:")
                        && !l.starts_with("script")
                })
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        };
        let mut per_leave = Vec::new();
        for size in [10usize, 1_000] {
            let r = room(&format!("big{size}"));
            let members: Vec<_> = (0..size)
                .map(|i| member(&format!("c{size}-{i}"), &user(&format!("u{i}"), "U")))
                .collect();
            for m in &members {
                p.join(&r, m).await.unwrap();
            }
            let before = calls(&server);
            for m in members.iter().take(10) {
                p.leave(&r, m).await.unwrap();
            }
            per_leave.push((calls(&server) - before) / 10);
        }
        assert_eq!(
            per_leave[0], per_leave[1],
            "commands per leave, room of 10 vs 1000: {per_leave:?}"
        );
    })
    .await;
}

/// A roster change the page-keeping code does not see (an older node's
/// script during a rolling upgrade, a hand edit) is not hidden by the first
/// page Redis keeps: the roster's size gives it away.
#[tokio::test]
async fn redis_a_foreign_change_is_not_hidden_by_the_kept_page() {
    bounded(async {
        let server = RedisServer::start();
        let p = redis_presence(&server, "banter-f", Duration::from_secs(10));
        let hall = room("hall");
        for n in ["10", "20", "30"] {
            let m = member(&format!("c{n}"), &user(&format!("u{n}"), n));
            p.join(&hall, &m).await.unwrap();
        }
        let first = async || {
            let page = p.page(&hall, None, 2).await.unwrap();
            let ids: Vec<String> = page.users.iter().map(|u| u.id.to_string()).collect();
            (ids, page.count)
        };
        assert_eq!(first().await, (vec!["u10".into(), "u20".into()], 3));
        let kept: i64 = server.query(&["EXISTS", "banter-f:presence:hall:roster:page"]);
        assert_eq!(kept, 1, "the first page is kept");
        // What an older node's join writes: nothing about the kept page.
        let _: i64 = server.query(&["ZADD", "banter-f:presence:hall:roster", "0", "u00"]);
        let json = r#"{"id":"u00","name":"Old"}"#;
        let _: i64 = server.query(&["HSET", "banter-f:presence:hall:names", "u00", json]);
        assert_eq!(first().await, (vec!["u00".into(), "u10".into()], 4));
    })
    .await;
}
