//! The presence contract, run against `MemoryPresence` and real Redis: each
//! user once (joins with the first connection, leaves with the last, each
//! change published once, in the room's order), pages that cover every user
//! once, entries that expire unless refreshed, sweeps that announce each
//! departure once, a stalled node's users that come back, and a left
//! connection that no stale refresh brings back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::collections::BTreeSet;
use std::time::Duration;

use banter_presence::{Page, Presence};
use tokio::time::sleep;

/// Long enough that nothing expires during a test that does not want it to.
const LONG: Duration = Duration::from_secs(60);
/// Short enough to wait out.
const SHORT: Duration = Duration::from_millis(300);
/// Long enough for 300 joins to take place well within it.
const MANY_TTL: Duration = Duration::from_millis(1_500);

macro_rules! contract {
    ($($name:ident($ttl:expr);)*) => {
        mod memory {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                bounded(super::$name(Backend::memory($ttl))).await;
            })*
        }
        mod redis {
            use super::*;
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                bounded(super::$name(Backend::redis($ttl))).await;
            })*
        }
    };
}

contract! {
    first_join_and_last_leave_are_published_once(LONG);
    pages_cover_every_user_once(LONG);
    the_first_page_follows_every_change(SHORT);
    concurrent_changes_publish_the_final_state(LONG);
    an_unrefreshed_entry_is_swept_with_its_leave(SHORT);
    two_sweepers_announce_a_departure_once(SHORT);
    a_stalled_nodes_swept_users_come_back(SHORT);
    a_left_connection_is_not_brought_back_by_a_stale_refresh(LONG);
    a_dead_twin_does_not_make_a_live_user_leave(SHORT);
    a_refresh_of_many_rooms_sweeps_them_all(MANY_TTL);
    subscription_counts_add_up_over_nodes_and_crashed_nodes_stop_counting(SHORT);
}

async fn page(p: &dyn Presence, r: &banter_bus::Topic) -> Page {
    p.page(r, None, 1000).await.unwrap()
}

async fn first_join_and_last_leave_are_published_once(b: Backend) {
    let (p, lobby) = (b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let (ann, bob) = (user("u-ann", "Ann"), user("u-bob", "Bob"));
    let (a1, a2, b1) = (member("a1", &ann), member("a2", &ann), member("b1", &bob));
    p.join(&lobby, &a1).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(true, &ann, 1)));
    p.join(&lobby, &a2).await.unwrap();
    p.join(&lobby, &a1).await.unwrap(); // the same connection again
    p.join(&lobby, &b1).await.unwrap();
    assert_eq!(
        seen.next().await,
        (lobby.clone(), change(true, &bob, 2)),
        "Ann's second tab is no news"
    );
    p.leave(&lobby, &a1).await.unwrap();
    p.leave(&lobby, &a1).await.unwrap(); // absent now: fine, no news
    let listed = page(&*p, &lobby).await;
    assert_eq!(
        (listed.count, listed.users.len()),
        (2, 2),
        "Ann is still there"
    );
    p.leave(&lobby, &a2).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(false, &ann, 1)));
    assert_eq!(
        page(&*p, &lobby).await,
        Page {
            users: vec![bob.clone()],
            count: 1,
            next: None,
            info: Default::default(),
        }
    );
    seen.quiet(Duration::from_millis(200)).await;
}

async fn pages_cover_every_user_once(b: Backend) {
    let (p, hall) = (b.node(), room("hall"));
    let mut everyone = BTreeSet::new();
    for i in 0..250 {
        let u = user(&format!("u{i:03}"), &format!("User {i}"));
        p.join(&hall, &member(&format!("c{i}"), &u)).await.unwrap();
        everyone.insert(u.id);
    }
    p.join(&room("other"), &member("x", &user("u-x", "X")))
        .await
        .unwrap();
    let (mut listed, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let page = p.page(&hall, cursor.as_deref(), 100).await.unwrap();
        assert_eq!(page.count, 250, "the count is exact on every page");
        assert!(page.users.len() <= 100);
        listed.extend(page.users.into_iter().map(|u| u.id));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed.len(), 250, "nobody twice");
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        everyone,
        "everyone once"
    );
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "in id order");
}

/// The first page after each kind of change (a join and a leave in it and
/// after it, a second connection, a sweep, a stalled node's user put back)
/// is what the room holds (Redis keeps the first page between changes).
async fn the_first_page_follows_every_change(b: Backend) {
    let (p, stalled, hall) = (b.node(), b.node(), room("hall"));
    let ids = |page: Page| -> (Vec<String>, usize) {
        let ids = page.users.iter().map(|u| u.id.to_string()).collect();
        (ids, page.count)
    };
    let first = async |p: &dyn Presence| ids(p.page(&hall, None, 2).await.unwrap());
    let mut live = Vec::new();
    for n in ["10", "20", "30", "40"] {
        let m = member(&format!("c{n}"), &user(&format!("u{n}"), n));
        p.join(&hall, &m).await.unwrap();
        live.push(m);
    }
    assert_eq!(first(&*p).await, (vec!["u10".into(), "u20".into()], 4));
    // Joins answer with the first page too, of the size asked here.
    for (n, count, what) in [("05", 5, "a join into it"), ("99", 6, "a join after it")] {
        let m = member(&format!("c{n}"), &user(&format!("u{n}"), n));
        let want = (vec!["u05".to_string(), "u10".into()], count);
        assert_eq!(
            ids(p.join_page(&hall, &m, 2).await.unwrap()),
            want,
            "{what}"
        );
        live.push(m);
        assert_eq!(first(&*p).await, want, "{what}");
    }
    p.leave(&hall, &live[0]).await.unwrap(); // u10
    live.remove(0);
    assert_eq!(
        first(&*p).await,
        (vec!["u05".into(), "u20".into()], 5),
        "a leave from it"
    );
    let second = member("c20b", &user("u20", "20"));
    p.join(&hall, &second).await.unwrap();
    live.push(second);
    assert_eq!(
        first(&*p).await,
        (vec!["u05".into(), "u20".into()], 5),
        "a second tab"
    );
    // A node that stops refreshing: its user, first in id order, is swept.
    let m01 = member("c01", &user("u01", "01"));
    stalled.join(&hall, &m01).await.unwrap();
    assert_eq!(first(&*p).await, (vec!["u01".into(), "u05".into()], 6));
    let entries: Vec<_> = live.iter().map(|m| entry(&hall, m)).collect();
    sleep(SHORT / 2).await;
    p.refresh(&entries).await.unwrap();
    sleep(SHORT / 2 + Duration::from_millis(100)).await;
    p.refresh(&entries).await.unwrap();
    assert_eq!(
        first(&*p).await,
        (vec!["u05".into(), "u20".into()], 5),
        "a sweep"
    );
    // The stalled node refreshes again: its user is back, first.
    stalled.refresh(&[entry(&hall, &m01)]).await.unwrap();
    assert_eq!(
        first(&*p).await,
        (vec!["u01".into(), "u05".into()], 6),
        "put back"
    );
}

/// Joins and leaves of one user racing on two nodes: the changes are
/// published in the order they were made, so replaying them gives what the
/// store says at the end (a leave on one node can never overtake a join on
/// another).
async fn concurrent_changes_publish_the_final_state(b: Backend) {
    let lobby = room("race");
    let mut seen = b.watch(&[&lobby]).await;
    let ann = user("u-ann", "Ann");
    let mut tasks = Vec::new();
    for n in 0..2 {
        let p = b.node();
        let (lobby, ann) = (lobby.clone(), ann.clone());
        tasks.push(tokio::spawn(async move {
            let m = member(&format!("n{n}"), &ann);
            for _ in 0..40 {
                p.join(&lobby, &m).await.unwrap();
                p.leave(&lobby, &m).await.unwrap();
            }
            p.join(&lobby, &m).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = page(&*b.node(), &lobby).await;
    assert_eq!(last.count, 1, "both tasks ended joined");
    let mut present = false;
    loop {
        let Ok((_, c)) = tokio::time::timeout(Duration::from_millis(500), seen.next()).await else {
            break;
        };
        assert_ne!(c.joined, present, "changes alternate: a join, then a leave");
        present = c.joined;
        assert_eq!(c.count, usize::from(present));
    }
    assert!(
        present,
        "replaying the changes ends where the store is: present"
    );
}

async fn an_unrefreshed_entry_is_swept_with_its_leave(b: Backend) {
    let (crashed, live, lobby) = (b.node(), b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let (ann, bob) = (user("u-ann", "Ann"), user("u-bob", "Bob"));
    let (a1, b1) = (member("a1", &ann), member("b1", &bob));
    crashed.join(&lobby, &a1).await.unwrap();
    live.join(&lobby, &b1).await.unwrap();
    seen.next().await;
    seen.next().await;
    sleep(SHORT / 2).await;
    live.refresh(&[entry(&lobby, &b1)]).await.unwrap();
    sleep(SHORT / 2 + Duration::from_millis(100)).await;
    live.refresh(&[entry(&lobby, &b1)]).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(false, &ann, 1)));
    assert_eq!(page(&*live, &lobby).await.users, vec![bob]);
}

async fn two_sweepers_announce_a_departure_once(b: Backend) {
    let (crashed, n1, n2, lobby) = (b.node(), b.node(), b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let ghost = user("u-ghost", "Ghost");
    crashed.join(&lobby, &member("g", &ghost)).await.unwrap();
    let (x, y) = (
        member("x", &user("u-x", "X")),
        member("y", &user("u-y", "Y")),
    );
    n1.join(&lobby, &x).await.unwrap();
    n2.join(&lobby, &y).await.unwrap();
    for _ in 0..3 {
        seen.next().await;
    }
    let (e1, e2) = ([entry(&lobby, &x)], [entry(&lobby, &y)]);
    // The live nodes keep refreshing (well within the ttl); the crashed one does not.
    sleep(SHORT / 2).await;
    n1.refresh(&e1).await.unwrap();
    n2.refresh(&e2).await.unwrap();
    sleep(SHORT / 2 + Duration::from_millis(100)).await;
    let (r1, r2) = tokio::join!(n1.refresh(&e1), n2.refresh(&e2));
    r1.unwrap();
    r2.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(false, &ghost, 2)));
    seen.quiet(Duration::from_millis(300)).await;
}

/// A node stalled past the ttl (SIGSTOP, a long GC, a partition): the
/// others sweep its users, with their leaves. When it refreshes again, its
/// users are back, with their joins, rather than connected but invisible.
async fn a_stalled_nodes_swept_users_come_back(b: Backend) {
    let (stalled, other, lobby) = (b.node(), b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let (ann, bob) = (user("u-ann", "Ann"), user("u-bob", "Bob"));
    let (a1, b1) = (member("a1", &ann), member("b1", &bob));
    stalled.join(&lobby, &a1).await.unwrap();
    other.join(&lobby, &b1).await.unwrap();
    seen.next().await;
    seen.next().await;
    sleep(SHORT + Duration::from_millis(100)).await;
    other.refresh(&[entry(&lobby, &b1)]).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(false, &ann, 1)));
    stalled.refresh(&[entry(&lobby, &a1)]).await.unwrap();
    assert_eq!(
        seen.next().await,
        (lobby.clone(), change(true, &ann, 2)),
        "back, with a join"
    );
    assert_eq!(page(&*other, &lobby).await.count, 2);
}

/// A refresh works from a snapshot of the node's members; a member who
/// left after it was taken must not be written back (a ghost, then a
/// second leave).
async fn a_left_connection_is_not_brought_back_by_a_stale_refresh(b: Backend) {
    let (p, lobby) = (b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let ann = user("u-ann", "Ann");
    let a1 = member("a1", &ann);
    p.join(&lobby, &a1).await.unwrap();
    let snapshot = [entry(&lobby, &a1)];
    p.leave(&lobby, &a1).await.unwrap();
    p.refresh(&snapshot).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(true, &ann, 1)));
    assert_eq!(seen.next().await, (lobby.clone(), change(false, &ann, 0)));
    seen.quiet(Duration::from_millis(200)).await;
    assert_eq!(page(&*p, &lobby).await.count, 0);
    // The same connection joining again is a join as any other.
    p.join(&lobby, &a1).await.unwrap();
    assert_eq!(seen.next().await, (lobby.clone(), change(true, &ann, 1)));
}

/// A user with a connection on a crashed node and one on a live node: the
/// dead one is swept without a leave; the user leaves with the live one.
async fn a_dead_twin_does_not_make_a_live_user_leave(b: Backend) {
    let (crashed, live, lobby) = (b.node(), b.node(), room("lobby"));
    let mut seen = b.watch(&[&lobby]).await;
    let ann = user("u-ann", "Ann");
    let (dead, alive) = (member("dead", &ann), member("alive", &ann));
    crashed.join(&lobby, &dead).await.unwrap();
    live.join(&lobby, &alive).await.unwrap();
    assert_eq!(seen.next().await.1, change(true, &ann, 1));
    sleep(SHORT / 2).await;
    live.refresh(&[entry(&lobby, &alive)]).await.unwrap();
    sleep(SHORT / 2 + Duration::from_millis(100)).await;
    live.refresh(&[entry(&lobby, &alive)]).await.unwrap();
    seen.quiet(Duration::from_millis(200)).await;
    assert_eq!(page(&*live, &lobby).await.count, 1);
    live.leave(&lobby, &alive).await.unwrap();
    assert_eq!(seen.next().await.1, change(false, &ann, 0));
}

/// One refresh over many rooms (Redis: in several round trips) sweeps
/// every one of them.
async fn a_refresh_of_many_rooms_sweeps_them_all(b: Backend) {
    let (crashed, live) = (b.node(), b.node());
    let rooms: Vec<_> = (0..150).map(|i| room(&format!("r{i}"))).collect();
    let refs: Vec<_> = rooms.iter().collect();
    let mut seen = b.watch(&refs).await;
    let (ghost, bob) = (user("u-ghost", "Ghost"), user("u-bob", "Bob"));
    let mut mine = Vec::new();
    for (i, r) in rooms.iter().enumerate() {
        crashed
            .join(r, &member(&format!("g{i}"), &ghost))
            .await
            .unwrap();
        let m = member(&format!("b{i}"), &bob);
        live.join(r, &m).await.unwrap();
        mine.push(entry(r, &m));
    }
    for _ in 0..300 {
        seen.next().await;
    }
    sleep(MANY_TTL / 2).await;
    live.refresh(&mine).await.unwrap();
    sleep(MANY_TTL / 2 + Duration::from_millis(100)).await;
    live.refresh(&mine).await.unwrap();
    let mut swept = BTreeSet::new();
    for _ in 0..150 {
        let (r, c) = seen.next().await;
        assert_eq!(c, change(false, &ghost, 1));
        swept.insert(r);
    }
    assert_eq!(swept.len(), 150);
}

async fn subscription_counts_add_up_over_nodes_and_crashed_nodes_stop_counting(b: Backend) {
    let (n1, n2, chan) = (b.node(), b.node(), room("news"));
    let mut seen = b.watch(&[&chan]).await;
    assert_eq!(n1.tally(&chan, "n1", 2).await.unwrap(), 2);
    assert_eq!(seen.tally().await, (chan.clone(), 2));
    assert_eq!(n2.tally(&chan, "n2", 3).await.unwrap(), 5);
    assert_eq!(seen.tally().await, (chan.clone(), 5));
    // The same count again is no news.
    assert_eq!(n2.tally(&chan, "n2", 3).await.unwrap(), 5);
    seen.quiet(Duration::from_millis(100)).await;
    assert_eq!(n1.tallied(&chan).await.unwrap(), 5);
    assert_eq!(n2.tally(&chan, "n2", 1).await.unwrap(), 3);
    assert_eq!(seen.tally().await, (chan.clone(), 3));
    // n1 stops re-tallying (it crashed): its 2 expire within the ttl.
    sleep(SHORT / 2).await;
    n2.tally(&chan, "n2", 1).await.unwrap();
    sleep(SHORT / 2 + Duration::from_millis(100)).await;
    assert_eq!(n2.tallied(&chan).await.unwrap(), 1, "n1's count expired");
    assert_eq!(n2.tally(&chan, "n2", 1).await.unwrap(), 1);
    assert_eq!(seen.tally().await, (chan.clone(), 1));
    assert_eq!(n2.tally(&chan, "n2", 0).await.unwrap(), 0);
    assert_eq!(seen.tally().await, (chan.clone(), 0));
    assert_eq!(n1.tallied(&chan).await.unwrap(), 0);
    // Counted again from nothing: announced again.
    assert_eq!(n1.tally(&chan, "n1", 1).await.unwrap(), 1);
    assert_eq!(seen.tally().await, (chan.clone(), 1));
}
