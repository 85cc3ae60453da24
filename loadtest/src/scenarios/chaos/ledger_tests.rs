//! Synthetic logs with a known answer: the accounting must classify them
//! exactly, and never call a silent loss announced.

use super::*;

/// Publisher `p`'s message `seq` in room 0, sent at `t - 50`, acked at `t`.
fn acked(p: u32, seq: u64, t: u64) -> Acked {
    Acked {
        key: (p, seq),
        room: 0,
        sent_us: t - 50,
        ack_us: t,
    }
}

fn live(key: Key, at_us: u64) -> Event {
    Event::Receipt {
        room: 0,
        at_us,
        key,
        via: Via::Live,
    }
}

fn joined(at_us: u64, since: bool, recovered: bool) -> Event {
    Event::Joined {
        room: 0,
        at_us,
        since,
        recovered,
    }
}

/// Publisher 0's seq 0..=10, acked at 1000 + 100·seq.
fn one_publisher() -> Vec<Acked> {
    (0..=10).map(|s| acked(0, s, 1000 + 100 * s)).collect()
}

#[test]
fn a_loss_a_duplicate_a_reorder_and_announced_holes_are_told_apart() {
    let a = vec![
        joined(500, false, false),
        live((0, 0), 1010),
        live((0, 1), 1110),
        live((0, 2), 1210),
        // A gap read before seq 3 was even acked cannot cover it: 3 is lost.
        Event::Gap {
            room: 0,
            at_us: 1250,
        },
        live((0, 4), 1410),
        live((0, 4), 1420), // duplicate
        live((0, 6), 1610),
        live((0, 5), 1620), // reordered
        // Seq 7 (acked at 1700) never comes; a gap read after its ack and
        // before anything acked later covers it.
        Event::Gap {
            room: 0,
            at_us: 1750,
        },
        live((0, 8), 1850),
        // Re-join with since: seq 9 recovered from history.
        joined(1950, true, true),
        Event::Receipt {
            room: 0,
            at_us: 1950,
            key: (0, 9),
            via: Via::History,
        },
        // Seq 10 (acked at 2000) missing, announced by recovered: false.
        joined(2100, true, false),
    ];
    let b: Vec<Event> = std::iter::once(joined(500, false, false))
        .chain((0..=10).map(|s| live((0, s), 1005 + 100 * s)))
        .collect();
    let acc = account(&one_publisher(), &[], 1, &[a, b], Some(1600));
    let a = acc.per_subscriber[0];
    assert_eq!(a.expected, 11);
    assert_eq!(
        (a.live, a.recovered, a.announced, a.lost),
        (7, 1, 2, 1),
        "{a:?}"
    );
    assert_eq!((a.duplicated, a.reordered), (1, 1), "{a:?}");
    assert_eq!(acc.lost_examples, vec![(0, 0, 3)]);
    assert_eq!(acc.lost_messages.iter().collect::<Vec<_>>(), [&(0, (0, 3))]);
    let b = acc.per_subscriber[1];
    assert_eq!((b.expected, b.live, b.lost, b.reordered), (11, 11, 0, 0));
    assert_eq!(acc.total.lost, 1);
    // Seq 7 (sent at 1650) never reached a; seq 8 reached both by 1850.
    assert_eq!(acc.resume_us, Some(250));
    // a read nothing new from 1620 (seq 5) to 1850 (seq 8): seq 7 is missing.
    assert_eq!(acc.longest_silence_us, 230);
}

#[test]
fn a_notice_after_a_later_message_covers_nothing() {
    let a = vec![
        joined(500, false, false),
        live((0, 0), 1010),
        live((0, 2), 1210), // 1 skipped silently...
        Event::Gap {
            room: 0,
            at_us: 1300,
        }, // ...and the gap comes too late to count
    ];
    let acks = [acked(0, 0, 1000), acked(0, 1, 1100), acked(0, 2, 1200)];
    let acc = account(&acks, &[], 1, &[a], None);
    assert_eq!(acc.total.lost, 1);
    assert_eq!(acc.total.announced, 0);
}

#[test]
fn messages_acked_before_the_join_are_not_expected() {
    let a = vec![joined(1150, false, false), live((0, 2), 1210)];
    let acks = [acked(0, 0, 1000), acked(0, 1, 1100), acked(0, 2, 1200)];
    let acc = account(&acks, &[], 1, &[a], None);
    assert_eq!(
        (acc.total.expected, acc.total.live, acc.total.lost),
        (1, 1, 0)
    );
}

#[test]
fn subscribers_that_disagree_on_the_order_of_two_publishers_are_caught() {
    let acks = [acked(0, 0, 1000), acked(1, 0, 1001)];
    let x = vec![
        joined(500, false, false),
        live((0, 0), 1100),
        live((1, 0), 1101),
    ];
    let y = vec![
        joined(500, false, false),
        live((1, 0), 1100),
        live((0, 0), 1101),
    ];
    let acc = account(&acks, &[], 1, &[x.clone(), y], None);
    assert_eq!(acc.total.reordered, 1, "{acc:?}");
    assert_eq!(acc.total.lost, 0);
    // Agreeing subscribers: nothing.
    let acc = account(&acks, &[], 1, &[x.clone(), x], None);
    assert_eq!(acc.total.reordered, 0);
}

#[test]
fn a_three_way_disagreement_through_the_publisher_order_is_caught() {
    // Publisher 0 acked (0,0) before (0,1); s1 read (0,1) before (1,0) and
    // s2 read (1,0) before (0,0): no one order fits all three.
    let acks = [acked(0, 0, 1000), acked(0, 1, 1100), acked(1, 0, 1050)];
    let s1 = vec![
        joined(500, false, false),
        live((0, 1), 1200),
        live((1, 0), 1201),
    ];
    let s2 = vec![
        joined(500, false, false),
        live((1, 0), 1200),
        live((0, 0), 1201),
    ];
    let acc = account(&acks, &[], 1, &[s1, s2], None);
    assert!(acc.total.reordered >= 1, "{acc:?}");
}

#[test]
fn unacked_and_refused_reads_are_counted_apart() {
    let acks = [acked(0, 0, 1000)];
    let a = vec![
        joined(500, false, false),
        live((0, 0), 1010),
        live((0, 1), 1110), // never answered
        live((0, 2), 1210), // refused, yet delivered
    ];
    let acc = account(&acks, &[(0, 2)], 1, &[a], None);
    assert_eq!((acc.total.unacked_read, acc.total.refused_read), (2, 1));
    assert_eq!((acc.total.expected, acc.total.live), (1, 1));
}

#[test]
fn rooms_are_accounted_apart() {
    let mut acks = one_publisher();
    acks.push(Acked {
        key: (1, 0),
        room: 1,
        sent_us: 1000,
        ack_us: 1050,
    });
    // Subscriber reads room 0 fully; room 1's message is missing, and a gap
    // for room 0 does not cover it.
    let mut a = vec![
        joined(500, false, false),
        Event::Joined {
            room: 1,
            at_us: 500,
            since: false,
            recovered: false,
        },
    ];
    a.extend((0..=10).map(|s| live((0, s), 1005 + 100 * s)));
    a.push(Event::Gap {
        room: 0,
        at_us: 3000,
    });
    let acc = account(&acks, &[], 2, &[a], None);
    assert_eq!(
        (acc.total.expected, acc.total.live, acc.total.lost),
        (12, 11, 1)
    );
}
