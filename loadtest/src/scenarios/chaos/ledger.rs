//! The accounting of a chaos round, as a pure function of what the
//! publishers and the subscribers logged: every acked message is, for each
//! subscriber of its room that could have seen it, exactly one of delivered
//! live, recovered (in a `joined.history`), announced (a `gap` or a
//! `recovered: false` covers it) or lost. Duplicates and reorders are counted
//! beside. Message ids are never looked at: messages are told apart by the
//! publisher and sequence number their bench text carries.
//!
//! Times are µs since the round's epoch, on the tool's one clock.

use super::order;
use serde::Serialize;
use std::collections::HashMap;

/// A message: (publisher number, its sequence number).
pub type Key = (u32, u64);

/// Messages lost silently, once each: (room index, message).
pub type LostSet = std::collections::BTreeSet<(usize, Key)>;

/// A message a publisher saw acked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// Which message.
    pub key: Key,
    /// Index of its room.
    pub room: usize,
    /// When the publisher wrote it.
    pub sent_us: u64,
    /// When the publisher read its `ack`.
    pub ack_us: u64,
}

/// How a message reached a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Via {
    /// A live `message` frame.
    Live,
    /// Inside the `history` of a `joined`.
    History,
}

/// One thing a subscriber read, in the order it read them. A `joined` comes
/// before the receipts of its own history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A `joined` for `room`.
    Joined {
        /// Room index.
        room: usize,
        /// When it was read.
        at_us: u64,
        /// Whether the join carried `since`.
        since: bool,
        /// Its `recovered` field.
        recovered: bool,
    },
    /// A message of `room` (a bench text).
    Receipt {
        /// Room index.
        room: usize,
        /// When it was read.
        at_us: u64,
        /// Which message.
        key: Key,
        /// Live or from history.
        via: Via,
    },
    /// A `gap` notice for `room`.
    Gap {
        /// Room index.
        room: usize,
        /// When it was read.
        at_us: u64,
    },
}

/// The classification of (subscriber, message) pairs, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Acked messages the subscriber should have got (acked after it joined).
    pub expected: u64,
    /// Of those, first read live.
    pub live: u64,
    /// Of those, first read in a `joined.history`.
    pub recovered: u64,
    /// Of those, never read but covered by a notice.
    pub announced: u64,
    /// Of those, never read and not covered: silent losses.
    pub lost: u64,
    /// Extra reads of a message already read (any message).
    pub duplicated: u64,
    /// Messages read after one that comes later in the room's order.
    pub reordered: u64,
    /// Distinct messages read that their publisher never saw acked.
    pub unacked_read: u64,
    /// Of those, ones the node had refused with an `error`.
    pub refused_read: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.expected += o.expected;
        self.live += o.live;
        self.recovered += o.recovered;
        self.announced += o.announced;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.unacked_read += o.unacked_read;
        self.refused_read += o.refused_read;
    }
}

/// The whole round's accounting.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Accounting {
    /// All subscribers together.
    pub total: Tally,
    /// One per subscriber.
    pub per_subscriber: Vec<Tally>,
    /// A few silent losses, as (subscriber, publisher, seq), for a look in the logs.
    pub lost_examples: Vec<(usize, u32, u64)>,
    /// Every message some subscriber lost silently, once, with its room.
    pub lost_messages: LostSet,
    /// From `resume_from_us` to the first moment a message sent after it
    /// had reached every subscriber of its room (the slowest room), µs.
    pub resume_us: Option<u64>,
    /// The longest time any subscriber went without reading a new message
    /// of a room, between its first and last read there, µs.
    pub longest_silence_us: u64,
}

/// What one subscriber read of one room.
#[derive(Debug, Default)]
pub(super) struct RoomView {
    /// Time of its first `joined`: membership starts here.
    pub(super) joined_at: Option<u64>,
    /// First read of each message: (position, time, how).
    pub(super) first: HashMap<Key, (usize, u64, Via)>,
    /// Messages in the order first read.
    pub(super) order: Vec<Key>,
    /// Notices, by position: (position, time).
    notices: Vec<(usize, u64)>,
    duplicated: u64,
}

fn views(events: &[Event], rooms: usize) -> Vec<RoomView> {
    let mut v: Vec<RoomView> = (0..rooms).map(|_| RoomView::default()).collect();
    for (pos, e) in events.iter().enumerate() {
        match *e {
            Event::Joined {
                room,
                at_us,
                since,
                recovered,
            } => {
                let Some(r) = v.get_mut(room) else { continue };
                r.joined_at.get_or_insert(at_us);
                if since && !recovered {
                    r.notices.push((pos, at_us));
                }
            }
            Event::Gap { room, at_us } => {
                if let Some(r) = v.get_mut(room) {
                    r.notices.push((pos, at_us));
                }
            }
            Event::Receipt {
                room,
                at_us,
                key,
                via,
            } => {
                let Some(r) = v.get_mut(room) else { continue };
                match r.first.entry(key) {
                    std::collections::hash_map::Entry::Occupied(_) => r.duplicated += 1,
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert((pos, at_us, via));
                        r.order.push(key);
                    }
                }
            }
        }
    }
    v
}

/// Classifies everything. `subscribers[s]` is subscriber `s`'s event log;
/// `refused` lists messages the node answered with an `error`.
pub fn account(
    acked: &[Acked],
    refused: &[Key],
    rooms: usize,
    subscribers: &[Vec<Event>],
    resume_from_us: Option<u64>,
) -> Accounting {
    let by_key: HashMap<Key, &Acked> = acked.iter().map(|a| (a.key, a)).collect();
    let refused: std::collections::HashSet<Key> = refused.iter().copied().collect();
    // Each room's acked messages in ack order, for "acked later than it".
    let mut room_acked: Vec<Vec<&Acked>> = vec![Vec::new(); rooms];
    for a in acked {
        if let Some(r) = room_acked.get_mut(a.room) {
            r.push(a);
        }
    }
    for r in &mut room_acked {
        r.sort_by_key(|a| (a.ack_us, a.key));
    }
    let all_views: Vec<Vec<RoomView>> = subscribers.iter().map(|e| views(e, rooms)).collect();
    let ranks: Vec<HashMap<Key, usize>> = (0..rooms)
        .map(|r| order::room_ranks(all_views.iter().map(|v| &v[r]), &room_acked[r]))
        .collect();
    let mut out = Accounting::default();
    for (s, views) in all_views.iter().enumerate() {
        let mut t = Tally::default();
        for (r, view) in views.iter().enumerate() {
            let lost = (&mut out.lost_examples, &mut out.lost_messages);
            classify((s, r), view, &room_acked[r], &mut t, lost);
            t.duplicated += view.duplicated;
            t.reordered += order::reordered(view, &ranks[r], &by_key);
            let times = view
                .order
                .iter()
                .filter_map(|k| view.first.get(k).map(|f| f.1));
            let silence = times
                .fold((None::<u64>, 0), |(prev, max), at| {
                    (
                        Some(at),
                        prev.map_or(max, |p| max.max(at.saturating_sub(p))),
                    )
                })
                .1;
            out.longest_silence_us = out.longest_silence_us.max(silence);
            for k in &view.order {
                if !by_key.contains_key(k) {
                    t.unacked_read += 1;
                    t.refused_read += u64::from(refused.contains(k));
                }
            }
        }
        out.total += t;
        out.per_subscriber.push(t);
    }
    out.resume_us = resume_from_us.and_then(|from| resume(from, &all_views, &room_acked));
    out
}

/// Sorts the acked messages of room `r` for subscriber `s`.
fn classify(
    (s, r): (usize, usize),
    view: &RoomView,
    acked: &[&Acked],
    t: &mut Tally,
    (examples, lost): (&mut Vec<(usize, u32, u64)>, &mut LostSet),
) {
    let Some(joined_at) = view.joined_at else {
        return;
    };
    // later[i]: the earliest position at which the subscriber read any
    // message acked at or after acked[i] (usize::MAX: none).
    let mut later = vec![usize::MAX; acked.len() + 1];
    for i in (0..acked.len()).rev() {
        let here = view.first.get(&acked[i].key).map_or(usize::MAX, |f| f.0);
        later[i] = later[i + 1].min(here);
    }
    // Notices by position with the latest time among them so far.
    let mut notice_max_at = Vec::with_capacity(view.notices.len());
    let mut max_at = 0;
    for &(_, at) in &view.notices {
        max_at = max_at.max(at);
        notice_max_at.push(max_at);
    }
    for a in acked {
        if a.ack_us <= joined_at {
            continue; // acked before it joined: it could not have seen it
        }
        t.expected += 1;
        match view.first.get(&a.key) {
            Some((_, _, Via::Live)) => t.live += 1,
            Some((_, _, Via::History)) => t.recovered += 1,
            None => {
                // A notice covers it only if read after its ack and before
                // any message of the room acked later than it.
                let j = acked.partition_point(|b| b.ack_us <= a.ack_us);
                let bound = later[j];
                let n = view.notices.partition_point(|&(pos, _)| pos < bound);
                if n > 0 && notice_max_at[n - 1] > a.ack_us {
                    t.announced += 1;
                } else {
                    t.lost += 1;
                    lost.insert((r, a.key));
                    if examples.len() < 20 {
                        examples.push((s, a.key.0, a.key.1));
                    }
                }
            }
        }
    }
}

/// Time to resume: per room, the earliest moment some message sent at or
/// after `from` had been read by every subscriber; the slowest room counts.
fn resume(from: u64, views: &[Vec<RoomView>], room_acked: &[Vec<&Acked>]) -> Option<u64> {
    let mut worst = 0;
    for (r, acked) in room_acked.iter().enumerate() {
        let members: Vec<&RoomView> = views
            .iter()
            .map(|v| &v[r])
            .filter(|v| v.joined_at.is_some())
            .collect();
        if members.is_empty() {
            continue;
        }
        let best = acked
            .iter()
            .filter(|a| a.sent_us >= from)
            .filter_map(|a| {
                members
                    .iter()
                    .map(|v| v.first.get(&a.key).map(|f| f.1))
                    .try_fold(0u64, |m, at| at.map(|at| m.max(at)))
            })
            .min()?;
        worst = worst.max(best.saturating_sub(from));
    }
    Some(worst)
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
