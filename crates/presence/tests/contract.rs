//! The `Presence` contract, run against both implementations: every
//! scenario is one generic async fn, called once with `MemoryPresence` and
//! once with `RedisPresence` on a real `redis-server`. What only the Redis
//! implementation promises (its keys, an outage) is in redis_presence.rs.
//!
//! Expiry scenarios use real time with short ttls (Redis keeps its own
//! clock), and each test is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::HashMap;
use std::time::Duration;

use banter_protocol::{ConnId, RoomId, User};
use tokio::time::{Instant, sleep, sleep_until};

/// Ttl for scenarios that do not wait for expiry: nothing expires in them.
const LONG: Duration = Duration::from_secs(60);

/// Defines `memory_<name>` and `redis_<name>` tests for each scenario.
macro_rules! contract {
    ($($name:ident: $ttl:expr;)*) => {
        mod memory {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                bounded(super::$name(Backend::memory($ttl))).await;
            })*
        }
        mod redis {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                bounded(super::$name(Backend::redis($ttl))).await;
            })*
        }
    };
}

contract! {
    first_join_and_last_leave: LONG;
    users_sorted_unique_and_rooms_independent: LONG;
    entry_without_refresh_expires: Duration::from_millis(300);
    refreshed_entry_stays: Duration::from_millis(300);
    sweep_reports_each_departure_once: Duration::from_millis(1000);
    swept_entry_is_not_resurrected: Duration::from_millis(600);
    dead_and_live_twins_pair_events: Duration::from_millis(600);
    abandoned_room_is_forgotten: Duration::from_millis(200);
}

/// A user with two connections joins with the first and leaves with the
/// last; the same connection twice, or an absent one, changes nothing.
async fn first_join_and_last_leave(b: Backend) {
    let p = b.node();
    let lobby = room("lobby");
    let ann = user("u-ann", "Ann");
    let (a1, a2) = (member("a1", &ann), member("a2", &ann));

    assert!(p.join(&lobby, &a1).await.unwrap(), "first connection joins");
    assert!(!p.join(&lobby, &a2).await.unwrap(), "second does not");
    assert!(
        !p.join(&lobby, &a1).await.unwrap(),
        "same connection again does not"
    );
    assert_eq!(p.users(&lobby).await.unwrap(), vec![ann.clone()]);

    assert!(
        !p.leave(&lobby, &a1).await.unwrap(),
        "one connection remains"
    );
    assert_eq!(p.users(&lobby).await.unwrap(), vec![ann.clone()]);
    assert!(
        p.leave(&lobby, &a2).await.unwrap(),
        "last connection leaves"
    );
    assert!(!p.leave(&lobby, &a2).await.unwrap(), "already gone");
    assert!(
        !p.leave(&lobby, &member("nope", &ann)).await.unwrap(),
        "never joined"
    );
    assert!(!p.leave(&room("empty"), &a1).await.unwrap(), "unknown room");
    assert!(p.users(&lobby).await.unwrap().is_empty());

    assert!(
        p.join(&lobby, &a1).await.unwrap(),
        "joins again after leaving"
    );
}

/// `users` lists each user once, by name then id; rooms do not mix.
async fn users_sorted_unique_and_rooms_independent(b: Backend) {
    let (n1, n2) = (b.node(), b.node());
    let (lobby, side) = (room("lobby"), room("side.room-2"));
    let carol = user("u3", "Carol");
    let bob = user("u1", "Bob");
    let ann = user("u2", "Ann");
    let sam_b = user("s-b", "Sam");
    let sam_a = user("s-a", "Sam");

    n1.join(&lobby, &member("c1", &carol)).await.unwrap();
    n2.join(&lobby, &member("b1", &bob)).await.unwrap();
    n1.join(&lobby, &member("sb", &sam_b)).await.unwrap();
    n2.join(&lobby, &member("b2", &bob)).await.unwrap();
    n1.join(&lobby, &member("an", &ann)).await.unwrap();
    n2.join(&lobby, &member("sa", &sam_a)).await.unwrap();
    assert!(
        n2.join(&side, &member("b3", &bob)).await.unwrap(),
        "first in this room"
    );

    let want = vec![ann.clone(), bob.clone(), carol, sam_a, sam_b];
    assert_eq!(n1.users(&lobby).await.unwrap(), want);
    assert_eq!(
        n2.users(&lobby).await.unwrap(),
        want,
        "every node sees the same"
    );
    assert_eq!(n1.users(&side).await.unwrap(), vec![bob.clone()]);
    assert!(n1.users(&room("nobody")).await.unwrap().is_empty());

    assert!(n2.leave(&side, &member("b3", &bob)).await.unwrap());
    assert!(n1.users(&side).await.unwrap().is_empty());
    assert_eq!(
        n1.users(&lobby).await.unwrap(),
        want,
        "the other room is untouched"
    );
}

/// A node that never refreshes: its member vanishes from `users` after the
/// ttl, even before anyone sweeps.
async fn entry_without_refresh_expires(b: Backend) {
    let p = b.node();
    let lobby = room("lobby");
    let ann = user("u-ann", "Ann");
    let start = Instant::now();
    p.join(&lobby, &member("a1", &ann)).await.unwrap();
    if start.elapsed() < Duration::from_millis(200) {
        assert_eq!(p.users(&lobby).await.unwrap(), vec![ann]);
    }
    sleep_until(start + Duration::from_millis(400)).await;
    assert!(
        p.users(&lobby).await.unwrap().is_empty(),
        "expired after the ttl"
    );
}

/// A node refreshing every ttl/3 keeps its member for many ttls, and a
/// refresh with nothing expired reports nobody.
async fn refreshed_entry_stays(b: Backend) {
    let p = b.node();
    let lobby = room("lobby");
    let ann = user("u-ann", "Ann");
    let a1 = member("a1", &ann);
    p.join(&lobby, &a1).await.unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        sleep(Duration::from_millis(100)).await;
        assert!(p.refresh(&[entry(&lobby, &a1)]).await.unwrap().is_empty());
        assert_eq!(p.users(&lobby).await.unwrap(), vec![ann.clone()]);
    }
    assert!(p.refresh(&[]).await.unwrap().is_empty());
}

/// Node A dies; nodes B and C sweep the same rooms at the same moment.
/// Every user of A who has no live connection left is reported exactly once
/// (by one of them), a user still connected through B is not reported.
async fn sweep_reports_each_departure_once(b: Backend) {
    let (a, nb, nc) = (b.node(), b.node(), b.node());
    let (lobby, side, quiet) = (room("lobby"), room("side"), room("quiet"));
    let twin = user("u-twin", "Twin");
    let bea = user("u-bea", "Bea");
    let cid = user("u-cid", "Cid");

    let start = Instant::now();
    let mut gone_expected = Vec::new();
    for i in 0..40 {
        let u = user(&format!("u{i:02}"), &format!("User {i:02}"));
        a.join(&lobby, &member(&format!("a{i}"), &u)).await.unwrap();
        a.join(&lobby, &member(&format!("a{i}-tab2"), &u))
            .await
            .unwrap();
        gone_expected.push((lobby.clone(), u.clone()));
        if i % 4 == 0 {
            a.join(&side, &member(&format!("s{i}"), &u)).await.unwrap();
            gone_expected.push((side.clone(), u));
        }
    }
    a.join(&lobby, &member("a-twin", &twin)).await.unwrap();
    // Only A is in `quiet`: nobody refreshes it, nobody reports it.
    a.join(&quiet, &member("q1", &twin)).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "setup too slow"
    );

    // B and C join after A's entries were written, so at 1.15 ttl A's
    // entries are expired and theirs still have about half a ttl.
    sleep_until(start + Duration::from_millis(550)).await;
    let (b_twin, b_bea, c_cid) = (
        member("b-twin", &twin),
        member("b-bea", &bea),
        member("c-cid", &cid),
    );
    nb.join(&lobby, &b_twin).await.unwrap();
    nb.join(&lobby, &b_bea).await.unwrap();
    nb.join(&side, &member("b-side", &bea)).await.unwrap();
    nc.join(&lobby, &c_cid).await.unwrap();
    nc.join(&side, &member("c-side", &cid)).await.unwrap();
    let b_entries = vec![
        entry(&lobby, &b_twin),
        entry(&lobby, &b_bea),
        (side.clone(), "b-side".parse().unwrap()),
    ];
    let c_entries = vec![
        entry(&lobby, &c_cid),
        (side.clone(), "c-side".parse().unwrap()),
    ];

    sleep_until(start + Duration::from_millis(1150)).await;
    let (from_b, from_c) = tokio::join!(nb.refresh(&b_entries), nc.refresh(&c_entries));
    let mut reported = from_b.unwrap();
    reported.extend(from_c.unwrap());
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "sweep too slow to judge"
    );

    let mut counts: HashMap<(RoomId, User), usize> = HashMap::new();
    for d in reported {
        *counts.entry(d).or_default() += 1;
    }
    for (d, n) in &counts {
        assert_eq!(*n, 1, "{d:?} reported {n} times");
    }
    let mut got: Vec<_> = counts.into_keys().collect();
    let key = |d: &(RoomId, User)| (d.0.to_string(), d.1.id.to_string());
    got.sort_by_key(key);
    gone_expected.sort_by_key(key);
    assert_eq!(
        got, gone_expected,
        "each of A's users, once per room; never Twin"
    );

    assert_eq!(
        nb.users(&lobby).await.unwrap(),
        vec![bea.clone(), cid.clone(), twin.clone()]
    );
    assert_eq!(nb.users(&side).await.unwrap(), vec![bea, cid]);
    assert!(
        nb.refresh(&b_entries).await.unwrap().is_empty(),
        "a second sweep finds nothing"
    );
}

/// A node that stalled past the ttl and was swept does not bring its entry
/// back by refreshing it: its leave was already announced.
async fn swept_entry_is_not_resurrected(b: Backend) {
    let (stalled, live) = (b.node(), b.node());
    let lobby = room("lobby");
    let ann = user("u-ann", "Ann");
    let bob = user("u-bob", "Bob");
    let (a1, b1) = (member("a1", &ann), member("b1", &bob));

    let start = Instant::now();
    stalled.join(&lobby, &a1).await.unwrap();
    sleep_until(start + Duration::from_millis(300)).await;
    live.join(&lobby, &b1).await.unwrap();
    sleep_until(start + Duration::from_millis(700)).await;
    assert_eq!(
        live.refresh(&[entry(&lobby, &b1)]).await.unwrap(),
        vec![(lobby.clone(), ann.clone())]
    );

    assert!(
        stalled
            .refresh(&[entry(&lobby, &a1)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(live.users(&lobby).await.unwrap(), vec![bob]);
    assert!(!stalled.leave(&lobby, &a1).await.unwrap(), "already gone");
    assert!(
        stalled.join(&lobby, &a1).await.unwrap(),
        "a new join is a join"
    );
}

/// A user with a dead connection (crashed node, expired, not yet swept) and
/// a live one: joins and leaves stay paired, one of each, whichever of the
/// sweep and the leave comes first.
async fn dead_and_live_twins_pair_events(b: Backend) {
    let (dead, live) = (b.node(), b.node());
    let (r1, r2) = (room("r1"), room("r2"));
    let ann = user("u-ann", "Ann");
    let zed = user("u-zed", "Zed");

    let start = Instant::now();
    assert!(dead.join(&r1, &member("d1", &ann)).await.unwrap());
    assert!(dead.join(&r2, &member("d2", &ann)).await.unwrap());
    sleep_until(start + Duration::from_millis(700)).await;
    assert!(dead.users(&r1).await.unwrap().is_empty(), "expired");

    // r1: Ann reconnects before the sweep. Her join was announced and never
    // her leave, so this is no new join, and the sweep reports nothing.
    let l1 = member("l1", &ann);
    assert!(!live.join(&r1, &l1).await.unwrap());
    assert_eq!(live.users(&r1).await.unwrap(), vec![ann.clone()]);
    assert!(live.refresh(&[entry(&r1, &l1)]).await.unwrap().is_empty());
    assert!(live.leave(&r1, &l1).await.unwrap(), "her last connection");

    // r2: her live connection closes first; the sweep then announces her
    // leave, once.
    let l2 = member("l2", &ann);
    let z2 = member("z2", &zed);
    assert!(!live.join(&r2, &l2).await.unwrap());
    assert!(live.join(&r2, &z2).await.unwrap());
    assert!(
        !live.leave(&r2, &l2).await.unwrap(),
        "the dead entry still holds her"
    );
    assert_eq!(
        live.refresh(&[entry(&r2, &z2)]).await.unwrap(),
        vec![(r2.clone(), ann)]
    );
    assert!(live.refresh(&[entry(&r2, &z2)]).await.unwrap().is_empty());
    assert_eq!(live.users(&r2).await.unwrap(), vec![zed]);
}

/// A room whose only node died, with nobody left to sweep it, is forgotten
/// 2 × ttl after its last join or refresh: the same user coming back later
/// is a first join again.
async fn abandoned_room_is_forgotten(b: Backend) {
    let p = b.node();
    let lobby = room("lobby");
    let ann = user("u-ann", "Ann");
    let start = Instant::now();
    assert!(p.join(&lobby, &member("a1", &ann)).await.unwrap());
    sleep_until(start + Duration::from_millis(500)).await;
    assert!(p.join(&lobby, &member("a2", &ann)).await.unwrap());
    assert_eq!(p.users(&lobby).await.unwrap(), vec![ann]);
}

/// A refresh covering many rooms (more than one Redis round trip's worth)
/// sweeps and reports every room, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_of_many_rooms_sweeps_them_all() {
    // Long enough that no room's keys expire (2×ttl) while 300 entries are joined.
    let ttl = Duration::from_millis(1000);
    for (name, backend) in [
        ("memory", Backend::memory(ttl)),
        ("redis", Backend::redis(ttl)),
    ] {
        let (dead, live) = (backend.node(), backend.node());
        let mut entries = Vec::new();
        for i in 0..150 {
            let r = room(&format!("many{i}"));
            let ghost = user(&format!("ghost{i}"), "Ghost");
            dead.join(&r, &member(&format!("d{i}"), &ghost))
                .await
                .unwrap();
            live.join(&r, &member(&format!("l{i}"), &user("alive", "Alive")))
                .await
                .unwrap();
            entries.push((r, format!("l{i}").parse::<ConnId>().unwrap()));
        }
        sleep(ttl + Duration::from_millis(100)).await;
        let departed = live.refresh(&entries).await.unwrap();
        assert_eq!(departed.len(), 150, "{name}: one departure per room");
        for (r, u) in &departed {
            assert_eq!(
                u.id.as_str(),
                format!("ghost{}", &r.as_str()[4..]),
                "{name}"
            );
        }
        for (r, _) in &entries {
            assert_eq!(
                live.users(r).await.unwrap(),
                vec![user("alive", "Alive")],
                "{name} {r}"
            );
        }
    }
}
