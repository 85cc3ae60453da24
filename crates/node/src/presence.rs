//! Presence as members see it: the changes each room's presence store
//! publishes (one per user coming or going, in the room's order) merged
//! into one `diff` per room at most every `presence.diff_interval_ms`, the
//! first change after a quiet interval at once; in rooms over
//! `presence.events_max_members`, the count alone.
//!
//! Every node sees a room's changes in the same order and merges them the
//! same way, so however the intervals fall, members see one sequence of
//! states: a user who left on one node and came back on another is never
//! shown gone.

use banter_presence::{Change, Page};
use banter_protocol::{PresenceEvent, RoomId, ServerFrame, User, UserId};
use std::collections::{BTreeMap, HashMap};
use tokio::time::{Duration, Instant};

/// A page of a room's users as a `presence` snapshot frame.
pub(crate) fn snapshot(room: &RoomId, page: Page) -> ServerFrame {
    ServerFrame::Presence {
        room: room.clone(),
        count: page.count,
        event: PresenceEvent::Snapshot {
            users: page.users,
            cursor: page.next,
        },
    }
}

/// One room's changes since its last diff.
#[derive(Debug)]
struct Pending {
    /// Users who came (and have not gone again) since the last diff.
    joined: BTreeMap<UserId, User>,
    /// Users who went (and have not come back) since the last diff.
    left: BTreeMap<UserId, User>,
    /// The room's count after the newest change.
    count: usize,
    /// The count the last diff carried.
    sent_count: Option<usize>,
    /// When the last diff went out.
    sent_at: Option<Instant>,
    /// When the next diff is due, if one waits.
    due: Option<Instant>,
}

/// The merging of every local room's presence changes.
#[derive(Debug)]
pub(crate) struct Diffs {
    interval: Duration,
    max_members: usize,
    rooms: HashMap<RoomId, Pending>,
}

impl Diffs {
    pub fn new(interval: Duration, max_members: usize) -> Diffs {
        Diffs {
            interval,
            max_members,
            rooms: HashMap::new(),
        }
    }

    /// Takes one change of `room` into account; the diff to send now, when
    /// the room was quiet for an interval.
    pub fn add(&mut self, room: &RoomId, change: Change, now: Instant) -> Option<ServerFrame> {
        let pending = self.rooms.entry(room.clone()).or_insert_with(|| Pending {
            joined: BTreeMap::new(),
            left: BTreeMap::new(),
            count: change.count,
            sent_count: None,
            sent_at: None,
            due: None,
        });
        let Change {
            joined,
            user,
            count,
            ..
        } = change;
        pending.count = count;
        let (added, removed) = if joined {
            (&mut pending.joined, &mut pending.left)
        } else {
            (&mut pending.left, &mut pending.joined)
        };
        // Gone and back (or back and gone) within one diff: nothing happened.
        if removed.remove(&user.id).is_none() {
            added.insert(user.id.clone(), user);
        }
        if pending.due.is_some() {
            return None;
        }
        let quiet = pending
            .sent_at
            .is_none_or(|at| now.duration_since(at) >= self.interval);
        if quiet {
            return self.flush(room, now);
        }
        let due = pending.sent_at.map_or(now, |at| at + self.interval);
        pending.due = Some(due);
        None
    }

    /// When the next diff is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.rooms.values().filter_map(|p| p.due).min()
    }

    /// The diffs due by `now`, and forgets rooms quiet for a while.
    pub fn take_due(&mut self, now: Instant) -> Vec<(RoomId, ServerFrame)> {
        let due: Vec<RoomId> = self
            .rooms
            .iter()
            .filter(|(_, p)| p.due.is_some_and(|d| d <= now))
            .map(|(r, _)| r.clone())
            .collect();
        let frames = due
            .into_iter()
            .filter_map(|room| self.flush(&room, now).map(|f| (room, f)))
            .collect();
        let forget_after = self.interval * 2;
        self.rooms.retain(|_, p| {
            p.due.is_some()
                || p.sent_at
                    .is_none_or(|at| now.duration_since(at) < forget_after)
        });
        frames
    }

    /// The room's merged diff, if anything changed since the last.
    fn flush(&mut self, room: &RoomId, now: Instant) -> Option<ServerFrame> {
        let pending = self.rooms.get_mut(room)?;
        pending.due = None;
        let joined = std::mem::take(&mut pending.joined);
        let left = std::mem::take(&mut pending.left);
        if joined.is_empty() && left.is_empty() && pending.sent_count == Some(pending.count) {
            return None;
        }
        pending.sent_at = Some(now);
        pending.sent_count = Some(pending.count);
        let named = pending.count <= self.max_members;
        let users = |m: BTreeMap<UserId, User>| {
            if named {
                m.into_values().collect()
            } else {
                Vec::new()
            }
        };
        Some(ServerFrame::Presence {
            room: room.clone(),
            event: PresenceEvent::Diff {
                joined: users(joined),
                left: users(left),
            },
            count: pending.count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(joined: bool, id: &str, count: usize) -> Change {
        Change {
            joined,
            user: User::parse(id, id).unwrap(),
            count,
            info: None,
        }
    }

    fn diff(frame: Option<ServerFrame>) -> (Vec<String>, Vec<String>, usize) {
        match frame {
            Some(ServerFrame::Presence {
                event: PresenceEvent::Diff { joined, left },
                count,
                ..
            }) => (
                joined.into_iter().map(|u| u.id.to_string()).collect(),
                left.into_iter().map(|u| u.id.to_string()).collect(),
                count,
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_change_goes_at_once_the_rest_merge_into_one_diff() {
        let room: RoomId = "r".parse().unwrap();
        let mut diffs = Diffs::new(Duration::from_secs(1), 1000);
        let t0 = Instant::now();
        assert_eq!(
            diff(diffs.add(&room, change(true, "a", 1), t0)),
            (vec!["a".into()], vec![], 1)
        );
        // Within the interval: merged, due one interval after the last diff.
        for (i, id) in ["b", "c", "d"].iter().enumerate() {
            assert!(diffs.add(&room, change(true, id, 2 + i), t0).is_none());
        }
        assert!(
            diffs.add(&room, change(false, "c", 3), t0).is_none(),
            "c came and went"
        );
        assert!(diffs.add(&room, change(false, "a", 2), t0).is_none());
        assert_eq!(diffs.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(diffs.take_due(t0 + Duration::from_millis(999)).is_empty());
        let due = diffs.take_due(t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 1);
        assert_eq!(
            diff(Some(due.into_iter().next().unwrap().1)),
            (vec!["b".into(), "d".into()], vec!["a".into()], 2)
        );
        assert_eq!(diffs.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn big_rooms_get_counts_and_nothing_changed_sends_nothing() {
        let room: RoomId = "big".parse().unwrap();
        let mut diffs = Diffs::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(
            diff(diffs.add(&room, change(true, "a", 3), t0)),
            (vec![], vec![], 3)
        );
        diffs.add(&room, change(true, "b", 4), t0);
        diffs.add(&room, change(false, "b", 3), t0);
        assert!(
            diffs.take_due(t0 + Duration::from_secs(1)).is_empty(),
            "back where it was"
        );
    }
}
