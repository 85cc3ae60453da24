//! Gap repair: when a topic's subscription was interrupted (the subscriber
//! connection dropped or was found dead, or the node fell too far behind),
//! what was published meanwhile is read from the room's history and handed
//! to the inbox, in order and once, before newer live envelopes of that
//! topic, which are held until then. What history cannot give back (trimmed,
//! lost with its epoch, `history.size = 0`, a user's topic, which has no
//! history) is announced with [`BusEvent::Gap`].
//!
//! Each topic's [`Cursor`] says where its delivery stands: the newest
//! position handed to the inbox, or the room's newest when it was
//! subscribed. Live envelopes at or before it are duplicates and dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;

use super::Keyspace;
use super::commands::Commands;
use super::history::{self, Mode, Raw, Retention};
use crate::history::{Epoch, Position, StreamId};
use crate::{BusError, BusEvent, Envelope, Topic};

/// Messages read from history per round trip.
const PAGE: usize = 256;
/// Live envelopes held per topic while it is repaired. Past it, stored
/// messages are dropped and read again from history; events without a
/// position (presence, typing) are lost.
const HELD_LIMIT: usize = 1024;
/// History reads in flight at once (a reconnect repairs every room).
const MAX_READS: usize = 16;
/// A failed history read is tried again after this.
const RETRY: Duration = Duration::from_millis(500);

/// Where a topic's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// Wanted, not yet subscribed on a live connection: nothing to repair.
    Pending,
    /// Subscribed, with no history to repair from (a user's topic, or a room
    /// whose history could not be read when it was subscribed): an
    /// interruption is a gap.
    Unknown,
    /// Subscribed: everything after this in the room's history is yet to be
    /// delivered. `epoch: None`: the room had no history; `id: None`: its
    /// stream was empty.
    At {
        /// The history's epoch.
        epoch: Option<Epoch>,
        /// The newest position delivered (or seen when subscribed).
        id: Option<StreamId>,
    },
}

impl Cursor {
    /// A topic whose delivery cannot be repaired.
    pub fn live_without_history() -> Cursor {
        Cursor::Unknown
    }

    /// A room subscribed when its history looked like `raw`.
    pub fn at_newest(raw: &Raw) -> Cursor {
        Cursor::At {
            epoch: raw.epoch,
            id: raw.newest,
        }
    }

    /// Takes an envelope's position into account: `false` when it was
    /// already delivered (a duplicate, to drop).
    pub fn advance(&mut self, position: Option<Position>) -> bool {
        let Some(p) = position else {
            return true;
        };
        if let Cursor::At {
            epoch: Some(epoch),
            id: Some(id),
        } = *self
            && epoch == p.epoch
            && p.id <= id
        {
            return false;
        }
        *self = Cursor::At {
            epoch: Some(p.epoch),
            id: Some(p.id),
        };
        true
    }
}

/// One repair in progress.
#[derive(Debug, Default)]
struct Active {
    /// Live envelopes that arrived meanwhile, in order.
    held: VecDeque<Envelope>,
    /// Some stored messages were dropped from `held`: read history again.
    overflowed: bool,
    /// Messages handed over from history.
    repaired: usize,
    /// A gap was announced for this interruption already.
    announced: bool,
}

/// What a repair does after a step.
enum Next {
    /// Read history after this, after a delay.
    Read(StreamId, Duration),
    /// Start a new epoch after this one, then go on from this position.
    Bump(Epoch, Option<StreamId>),
    /// Caught up: release what was held.
    End,
    /// The topic is gone (unsubscribed): forget the repair.
    Drop,
}

/// What one step of a repair came back with.
pub(super) enum Step {
    Read(Result<Raw, BusError>),
    Bumped(Result<Option<Epoch>, BusError>, Option<StreamId>),
}

/// The repairs of one connection; dropped with it (a later connection
/// starts them again from the cursors).
pub(super) struct Repairs {
    commands: Arc<Commands>,
    names: Keyspace,
    retention: Retention,
    active: HashMap<Topic, Active>,
    /// Reads waiting for one of the [`MAX_READS`] slots.
    queued: VecDeque<(Topic, StreamId, Duration)>,
    steps: JoinSet<(Topic, Step)>,
}

impl Repairs {
    pub fn new(commands: Arc<Commands>, names: Keyspace, retention: Retention) -> Repairs {
        Repairs {
            commands,
            names,
            retention,
            active: HashMap::new(),
            queued: VecDeque::new(),
            steps: JoinSet::new(),
        }
    }

    /// Starts repairing `topic`, whose delivery stood at `cursor` when its
    /// subscription was interrupted.
    pub fn start(&mut self, topic: Topic, cursor: Cursor, out: &mut VecDeque<BusEvent>) {
        match (cursor, &topic) {
            (Cursor::Pending, _) => {}
            (Cursor::Unknown, _) => out.push_back(BusEvent::Gap(topic)),
            (Cursor::At { .. }, _) if self.kept(&topic) == 0 => {
                out.push_back(BusEvent::Gap(topic));
            }
            (Cursor::At { id, .. }, _) => {
                self.active.insert(topic.clone(), Active::default());
                self.read(topic, id.unwrap_or_default(), Duration::ZERO);
            }
        }
    }

    /// Holds a live envelope of a topic under repair; gives back the others.
    pub fn hold(&mut self, envelope: Envelope) -> Option<Envelope> {
        let Some(active) = self.active.get_mut(&envelope.topic) else {
            return Some(envelope);
        };
        if active.held.len() < HELD_LIMIT {
            active.held.push_back(envelope);
        } else if envelope.position.is_some() {
            // In history: the next read brings it back.
            active.overflowed = true;
        } else {
            tracing::warn!(topic = ?envelope.topic, "an event dropped while its topic was repaired");
        }
        None
    }

    /// Stops repairing a topic that was unsubscribed.
    pub fn forget(&mut self, topic: &Topic) {
        self.active.remove(topic);
        self.queued.retain(|(t, _, _)| t != topic);
    }

    /// The next finished step.
    pub async fn next(&mut self) -> Option<(Topic, Step)> {
        loop {
            match self.steps.join_next().await? {
                Ok(done) => return Some(done),
                Err(e) => tracing::warn!(error = %e, "redis bus: a repair step failed"),
            }
        }
    }

    /// Takes a finished step further: hands what it read to `out`, and
    /// either reads on or ends the repair, releasing what was held.
    pub fn finish_step(
        &mut self,
        (topic, step): (Topic, Step),
        cursors: &mut BTreeMap<Topic, Cursor>,
        out: &mut VecDeque<BusEvent>,
    ) {
        let next = match cursors.get_mut(&topic) {
            Some(cursor) if self.active.contains_key(&topic) => {
                self.advance(&topic, step, cursor, out)
            }
            _ => Next::Drop,
        };
        match next {
            Next::Read(after, delay) => self.read(topic, after, delay),
            Next::Bump(seen, newest) => self.bump(topic, seen, newest),
            Next::End => {
                if let Some(cursor) = cursors.get_mut(&topic) {
                    self.end(&topic, cursor, out);
                }
            }
            Next::Drop => {
                self.active.remove(&topic);
            }
        }
        self.fill_slots();
    }

    /// What one step means for the repair of `topic`, whose delivery
    /// stands at `cursor`.
    fn advance(
        &mut self,
        topic: &Topic,
        step: Step,
        cursor: &mut Cursor,
        out: &mut VecDeque<BusEvent>,
    ) -> Next {
        let Cursor::At { epoch, id } = *cursor else {
            return Next::Drop;
        };
        let from = id.unwrap_or_default();
        let raw = match step {
            Step::Read(Ok(raw)) => raw,
            Step::Read(Err(e)) => {
                tracing::warn!(?topic, error = %e, "redis bus: repair read failed; retrying");
                return Next::Read(from, RETRY);
            }
            Step::Bumped(Ok(now), newest) => {
                *cursor = Cursor::At {
                    epoch: now,
                    id: newest,
                };
                return Next::Read(newest.unwrap_or_default(), Duration::ZERO);
            }
            Step::Bumped(Err(e), _) => {
                // Announced already; the old epoch stays: go on from there.
                tracing::warn!(?topic, error = %e, "redis bus: could not start a new epoch");
                return Next::Read(from, RETRY);
            }
        };
        let kept = self.kept(topic);
        let Some(active) = self.active.get_mut(topic) else {
            return Next::Drop;
        };
        let mut announce = || {
            if !std::mem::replace(&mut active.announced, true) {
                out.push_back(BusEvent::Gap(topic.clone()));
            }
        };
        let epoch = match (epoch, raw.epoch) {
            // The history was lost (and maybe begun anew) since: what it
            // held is gone; what the new one holds was all missed.
            (Some(seen), Some(now)) if seen != now => {
                announce();
                *cursor = Cursor::At {
                    epoch: Some(now),
                    id: None,
                };
                return Next::Read(StreamId::default(), Duration::ZERO);
            }
            (Some(_), None) => {
                announce();
                *cursor = Cursor::At {
                    epoch: None,
                    id: None,
                };
                return Next::End;
            }
            (None, None) => return Next::End,
            (_, Some(now)) => now,
        };
        match id {
            // Newer than anything kept: the history lost entries this node
            // already delivered (a failover to a replica that lacked them).
            Some(at) if raw.newest.is_none_or(|n| n < at) => {
                announce();
                tracing::warn!(
                    ?topic,
                    "redis bus: history lost entries already delivered; starting a new epoch"
                );
                return Next::Bump(epoch, raw.newest);
            }
            // Trimmed past where delivery stood.
            Some(at) if raw.oldest.is_some_and(|o| o > at) => announce(),
            // Empty when subscribed, full now: some of it may be trimmed.
            None if raw.len >= kept => announce(),
            _ => {}
        }
        let page_full = raw.entries.len() >= PAGE;
        for (sid, record) in raw.entries {
            let position = Position { epoch, id: sid };
            if cursor.advance(Some(position)) {
                match stored(topic, position, &record) {
                    Some(envelope) => {
                        out.push_back(BusEvent::Envelope(envelope));
                        active.repaired += 1;
                    }
                    None => tracing::warn!(?topic, %sid, "an unreadable stored entry skipped"),
                }
            }
        }
        let next = match *cursor {
            Cursor::At { id, .. } => id.unwrap_or_default(),
            _ => StreamId::default(),
        };
        if page_full || std::mem::take(&mut active.overflowed) {
            Next::Read(next, Duration::ZERO)
        } else {
            Next::End
        }
    }

    /// Ends a repair: what was held goes out after what history gave, once.
    fn end(&mut self, topic: &Topic, cursor: &mut Cursor, out: &mut VecDeque<BusEvent>) {
        let Some(active) = self.active.remove(topic) else {
            return;
        };
        for envelope in active.held {
            if cursor.advance(envelope.position) {
                out.push_back(BusEvent::Envelope(envelope));
            }
        }
        if active.repaired > 0 {
            out.push_back(BusEvent::Repaired {
                topic: topic.clone(),
                messages: active.repaired,
            });
        }
    }

    /// Reads `topic`'s history after `after`, after `delay`.
    fn read(&mut self, topic: Topic, after: StreamId, delay: Duration) {
        self.queued.push_back((topic, after, delay));
        self.fill_slots();
    }

    fn fill_slots(&mut self) {
        while self.steps.len() < MAX_READS {
            let Some((topic, after, delay)) = self.queued.pop_front() else {
                return;
            };
            let (commands, names) = (self.commands.clone(), self.names.clone());
            self.steps.spawn(async move {
                tokio::time::sleep(delay).await;
                let raw =
                    history::read_raw(&commands, &names, &topic, Mode::After(after), PAGE).await;
                (topic, Step::Read(raw))
            });
        }
    }

    /// Starts a new epoch for `topic`'s room, from `seen`.
    fn bump(&mut self, topic: Topic, seen: Epoch, newest: Option<StreamId>) {
        let (commands, names) = (self.commands.clone(), self.names.clone());
        self.steps.spawn(async move {
            let now = history::bump_epoch(&commands, &names, &topic, seen).await;
            (topic, Step::Bumped(now, newest))
        });
    }
}

/// A stored publish as the envelope it was delivered in: the same frame,
/// byte for byte, at the same position. A room's history keeps messages
/// (the frame is built again from the record); a user's mailbox keeps the
/// frames themselves.
fn stored(topic: &Topic, position: Position, record: &str) -> Option<Envelope> {
    let payload = match topic {
        Topic::Room(room) => {
            let record: crate::history::Record = serde_json::from_str(record).ok()?;
            Bytes::from(record.into_draft(room).frame(position))
        }
        Topic::User(_) | Topic::Pusher(_) => Bytes::copy_from_slice(record.as_bytes()),
    };
    Some(Envelope {
        topic: topic.clone(),
        position: Some(position),
        presence: false,
        payload,
    })
}

impl Repairs {
    /// How many entries `topic`'s stream keeps.
    fn kept(&self, topic: &Topic) -> usize {
        match topic {
            Topic::Room(_) => self.retention.size,
            Topic::User(_) | Topic::Pusher(_) => super::dialogs::stream_size(topic),
        }
    }
}
