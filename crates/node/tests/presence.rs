//! Presence at scale, as members see it: the first page in `joined` and
//! the exact count, `who` pages that cover everyone once, changes merged
//! into at most one `diff` per interval, one order across nodes, a stalled
//! node's users coming back, and a leave storm that costs Redis linear work.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::{PresenceEvent, ServerFrame, User, UserId};
use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Two nodes on one Redis with `f` applied to their config.
async fn redis_pair(f: impl Fn(&mut Config)) -> (TestNode, TestNode, banter_testkit::RedisServer) {
    let redis = banter_testkit::RedisServer::start();
    let mut nodes = Vec::new();
    for id in ["node-a", "node-b"] {
        let mut c = config(id, Some(&redis.url()));
        f(&mut c);
        nodes.push(TestNode::start(c).await);
    }
    let b = nodes.pop().unwrap();
    (nodes.pop().unwrap(), b, redis)
}

/// What a member believes from the diffs it applied.
#[derive(Default)]
struct View {
    users: BTreeMap<UserId, User>,
    count: usize,
}

impl View {
    fn apply(&mut self, f: &ServerFrame) -> bool {
        match f {
            ServerFrame::Presence {
                event: PresenceEvent::Diff { joined, left },
                count,
                ..
            } => {
                for u in left {
                    self.users.remove(&u.id);
                }
                for u in joined {
                    self.users.insert(u.id.clone(), u.clone());
                }
                self.count = *count;
                true
            }
            _ => false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn who_pages_cover_every_member_once() {
    let (a, b, _redis) = redis_pair(|c| c.presence.list_limit = 5).await;
    let mut everyone = BTreeSet::new();
    let mut clients = Vec::new();
    for i in 0..13 {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut c = node.client(&format!("name=m{i}")).await;
        let (users, count) = c.join("paged").await;
        assert!(users.len() <= 5, "joined lists the first page only");
        assert_eq!(count, i + 1, "the count is exact");
        everyone.insert(c.user.id.clone());
        clients.push(c);
    }
    let asker = &mut clients[0];
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut who = json!({"type":"who","room":"paged"});
        if let Some(c) = &cursor {
            who["cursor"] = json!(c);
        }
        asker.send(who).await;
        match asker
            .recv_until(|f| {
                matches!(
                    f,
                    ServerFrame::Presence {
                        event: PresenceEvent::Snapshot { .. },
                        ..
                    }
                )
            })
            .await
        {
            ServerFrame::Presence {
                event:
                    PresenceEvent::Snapshot {
                        users,
                        cursor: next,
                    },
                count,
                ..
            } => {
                assert_eq!(count, 13);
                assert!(users.len() <= 5);
                seen.extend(users.into_iter().map(|u| u.id));
                match next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(seen.len(), 13, "nobody twice");
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        everyone,
        "everyone once"
    );

    // The HTTP route pages the same way.
    let (mut listed, mut cursor) = (BTreeSet::new(), String::new());
    loop {
        let path = format!("/api/rooms/paged/presence?limit=4&cursor={cursor}");
        let (code, body) = http(b.addr, "GET", &path, &[], "").await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["count"], 13);
        for u in v["users"].as_array().unwrap() {
            assert!(
                listed.insert(u["id"].as_str().unwrap().to_owned()),
                "twice: {u}"
            );
        }
        match v["cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(listed.len(), 13);
}

/// In a room of hundreds, a newcomer's `joined` lists the first page and
/// the exact count: it stays small whatever the room's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joined_stays_small_in_a_big_room() {
    let node = TestNode::start(config("solo", None)).await;
    let mut members = Vec::new();
    for i in 0..300 {
        let mut c = node
            .client(&format!("name=member-with-a-long-name-{i}"))
            .await;
        c.join("big").await;
        members.push(c);
    }
    let mut last = node.client("name=last").await;
    last.send(json!({"type":"join","room":"big"})).await;
    let raw = loop {
        let raw = last.recv_raw().await;
        if raw.starts_with(r#"{"type":"joined""#) {
            break raw;
        }
    };
    assert!(raw.len() < 16 * 1024, "joined is {} bytes", raw.len());
    let joined: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(joined["count"], 301);
    assert_eq!(
        joined["users"].as_array().unwrap().len(),
        100,
        "presence.list_limit"
    );
}

/// A newcomer whose id sorts after the first page still finds itself in its
/// `joined`: first, the list still within `presence.list_limit`.
#[tokio::test]
async fn the_joiner_is_in_its_own_joined() {
    let node = TestNode::start({
        let mut c = config("solo", None);
        c.presence.list_limit = 3;
        c.auth.jwt_secret = "presence-secret".into();
        c
    })
    .await;
    let mut early = Vec::new();
    for id in ["a1", "a2", "a3", "a4"] {
        let mut c = node.client(&format!("token={}", token(id, id))).await;
        c.join("r").await;
        early.push(c);
    }
    let mut zed = node.client(&format!("token={}", token("z9", "Zed"))).await;
    let (users, count) = zed.join("r").await;
    assert_eq!(count, 5);
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(ids, ["z9", "a1", "a2"], "the joiner first, then the page");
}

/// While a room fills, each member gets at most one presence frame per
/// interval (the first change at once, the rest merged), whichever node the
/// newcomers are on; the merged diffs add up to who is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filling_room_sends_one_diff_per_interval() {
    let (a, b, _redis) = redis_pair(|c| c.presence.diff_interval_ms = 1_000).await;
    let mut watcher = a.client("name=watcher").await;
    watcher.join("filling").await;
    let mut view = View::default();
    view.users
        .insert(watcher.user.id.clone(), watcher.user.clone());
    let started = Instant::now();
    let mut members = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut c = node.client(&format!("name=m{i}")).await;
        c.join("filling").await;
        members.push(c);
    }
    let joined_in = started.elapsed();
    let (mut frames, mut first_at) = (Vec::new(), None);
    while view.count < 41 {
        let f = watcher.recv().await;
        if view.apply(&f) {
            first_at.get_or_insert(started.elapsed());
            frames.push(started.elapsed());
        }
    }
    let everyone: BTreeSet<_> = members
        .iter()
        .map(|m| m.user.id.clone())
        .chain([watcher.user.id.clone()])
        .collect();
    assert_eq!(
        view.users.keys().cloned().collect::<BTreeSet<_>>(),
        everyone
    );
    // The joins took `joined_in`; one frame per started second, plus the first.
    let allowed = 2 + joined_in.as_secs() as usize;
    assert!(
        frames.len() <= allowed,
        "{} diffs in {joined_in:?}: {frames:?}",
        frames.len()
    );
    assert!(
        first_at.unwrap() < Duration::from_millis(500),
        "the first change goes at once"
    );
}

fn token(sub: &str, name: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "name": name, "exp": exp}),
        &EncodingKey::from_secret(b"presence-secret"),
    )
    .unwrap()
}

/// A user hopping between nodes (one tab closes on node B as another opens
/// on node A, over and over): everyone sees one order of their joins and
/// leaves, so whoever watches ends up seeing them present, as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_moving_between_nodes_is_never_shown_gone() {
    let (a, b, _redis) = redis_pair(|c| {
        c.auth.jwt_secret = "presence-secret".into();
        c.presence.diff_interval_ms = 0;
    })
    .await;
    let mut watchers = Vec::new();
    for node in [&a, &b] {
        let mut w = node.client("name=watcher").await;
        w.join("hop").await;
        watchers.push(w);
    }
    let query = format!("token={}", token("u-hopper", "Hopper"));
    let mut tab = b.client(&query).await;
    tab.join("hop").await;
    for i in 0..20 {
        let there = if i % 2 == 0 { &a } else { &b };
        let mut next = there.client(&query).await;
        next.join("hop").await;
        tab.close().await;
        tab = next;
    }
    for w in &mut watchers {
        // Drain what came, then the last word must be "present".
        let mut view = View::default();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(300), w.recv()).await {
                Ok(f) => {
                    view.apply(&f);
                }
                Err(_) if view.count > 0 => break,
                Err(_) => {}
            }
        }
        let hopper: UserId = "u-hopper".parse().unwrap();
        let (users, count) = w.who("hop").await;
        assert!(users.iter().any(|u| u.id == hopper), "who lists the hopper");
        assert_eq!(count, 3);
        assert_eq!(view.count, 3, "the last diff's count");
    }
    drop(tab);
}

/// A node that stalls past the ttl (here SIGSTOP): the others sweep its
/// users, with their leaves. After SIGCONT its next refresh puts them back,
/// with their joins: they are connected, so they are visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_nodes_users_come_back_after_sigcont() {
    let redis = banter_testkit::RedisServer::start();
    let env = [
        ("BANTER__PRESENCE__TTL_MS", "1500"),
        ("BANTER__PRESENCE__DIFF_INTERVAL_MS", "0"),
    ];
    let stalled = NodeProcess::start("stalls", &redis.url(), &env).await;
    let mut c = config("watches", Some(&redis.url()));
    c.presence.ttl_ms = 1_500;
    c.presence.diff_interval_ms = 0;
    let live = TestNode::start(c).await;
    let mut sleeper = Client::connect(stalled.addr, "name=sleeper").await;
    sleeper.join("nap").await;
    let mut watcher = live.client("name=watcher").await;
    let (_, count) = watcher.join("nap").await;
    assert_eq!(count, 2);

    stalled.signal("STOP");
    let left = tokio::time::timeout(Duration::from_secs(6), watcher.leave_of(&sleeper.user.id))
        .await
        .expect("swept within the ttl and a refresh");
    assert_eq!(left, 1);
    stalled.signal("CONT");
    let back = tokio::time::timeout(Duration::from_secs(6), watcher.join_of(&sleeper.user.id))
        .await
        .expect("back at the stalled node's next refresh");
    assert_eq!(back, 2);
    let (_, count) = watcher.who("nap").await;
    assert_eq!(count, 2);
    drop(sleeper);
}

/// A node holding half of a big room drains (SIGTERM): its members leave
/// one by one. Each leave costs Redis a constant number of commands, and
/// none reads the whole room (it once did, to learn a count: quadratic in
/// the room's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leave_storm_costs_redis_linear_work() {
    let (a, b, redis) = redis_pair(|_| {}).await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut c = node.client(&format!("name=m{i}")).await;
        c.join("storm").await;
        clients.push(c);
    }
    let stats = |redis: &banter_testkit::RedisServer| -> BTreeMap<String, u64> {
        let info: String = tokio::task::block_in_place(|| redis.query(&["INFO", "commandstats"]));
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
            })
            .collect()
    };
    let before = stats(&redis);
    b.stop().await;
    let after = stats(&redis);
    let delta = |cmd: &str| after.get(cmd).unwrap_or(&0) - before.get(cmd).unwrap_or(&0);
    assert_eq!(
        delta("zrem"),
        200,
        "per member, its connection and its user"
    );
    assert!(
        delta("zrangebyscore") <= 2,
        "no read of the room per leave: {}",
        delta("zrangebyscore")
    );
    assert!(
        delta("zrangebylex") <= 2,
        "no page read per leave: {}",
        delta("zrangebylex")
    );
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    assert!(total < 100 * 30, "{total} commands for 100 leaves");
}
