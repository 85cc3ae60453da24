//! Room history: the types both bus implementations share. A room's messages
//! are kept in publish order, capped at `history.size`, and each message's id
//! is its position: `{ms}-{seq}` as in a Redis stream, so ids grow in room
//! order and a client can resume after the last one it saw.

use banter_protocol::{Message, MessageId, RoomId, ServerFrame, User};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Messages kept per room by a bus built without saying how many.
pub const DEFAULT_HISTORY: usize = 200;

/// A position in a room's stream: `{ms}-{seq}`, ordered like Redis stream ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds since the epoch when it was added.
    pub ms: u64,
    /// Order within that millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Reads `{ms}-{seq}`; `None` for anything else.
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return None;
        }
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id after `self` for a message added at `now_ms`.
    pub fn next(self, now_ms: u64) -> StreamId {
        if now_ms > self.ms {
            StreamId { ms: now_ms, seq: 0 }
        } else {
            StreamId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Which life of a room's history a position belongs to. A history that is
/// lost (Redis restarted without persistence, flushed, failed over to a
/// replica that lacks the newest entries; a single node restarted) starts a
/// new epoch, so an id from before can never pass for a position in what
/// came after: recovery from it says `recovered: false` instead of leaving a
/// silent hole. Written as up to 13 characters of `[0-9a-z]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Epoch(u64);

impl Epoch {
    /// A fresh epoch: 8 random base-36 characters (about 2.8 × 10^12 values).
    pub fn random() -> Epoch {
        const SPAN: u64 = 36u64.pow(8);
        Epoch(rand::random::<u64>() % SPAN)
    }

    /// Reads the base-36 form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Epoch> {
        if s.is_empty()
            || s.len() > 13
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return None;
        }
        u64::from_str_radix(s, 36).ok().map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = [0u8; 13];
        let (mut n, mut at) = (self.0, digits.len());
        loop {
            at -= 1;
            let d = (n % 36) as u8;
            digits[at] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            n /= 36;
            if n == 0 {
                break;
            }
        }
        f.write_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"))
    }
}

/// A message's place in its room's history: the history's epoch and the
/// position in its stream. This is the message id clients see, as
/// `{epoch}:{ms}-{seq}` (to them an opaque string). Positions compare only
/// within one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The history's life.
    pub epoch: Epoch,
    /// The place in its stream.
    pub id: StreamId,
}

impl Position {
    /// Reads `{epoch}:{ms}-{seq}`; `None` for anything else (ids of another form).
    pub fn parse(s: &str) -> Option<Position> {
        let (epoch, id) = s.split_once(':')?;
        Some(Position {
            epoch: Epoch::parse(epoch)?,
            id: StreamId::parse(id)?,
        })
    }

    /// Whether `self` comes after `other` in one history; `None` when they
    /// are of different epochs (nothing can be said).
    pub fn after(self, other: Position) -> Option<bool> {
        (self.epoch == other.epoch).then(|| self.id > other.id)
    }

    /// As a message id.
    pub fn to_message_id(self) -> MessageId {
        // `{base36}:{digits}-{digits}` is always a valid message id.
        MessageId::try_from(self.to_string())
            .unwrap_or_else(|_| unreachable!("an epoch and a stream id make a valid message id"))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.id)
    }
}

/// A chat message before the bus gives it its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// The room it is said in.
    pub room: RoomId,
    /// The sender, stamped by the node.
    pub from: User,
    /// The text.
    pub text: String,
    /// Milliseconds since the epoch, stamped by the node.
    pub ts: u64,
}

/// What a history entry stores: the message without its room (the key says
/// it) and without its id (the position is the id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub from: User,
    pub text: String,
    pub ts: u64,
}

impl Draft {
    /// The stored form.
    pub(crate) fn to_record(&self) -> Record {
        Record {
            from: self.from.clone(),
            text: self.text.clone(),
            ts: self.ts,
        }
    }

    /// The message with its id.
    pub fn stamp(&self, id: MessageId) -> Message {
        Message {
            room: self.room.clone(),
            id,
            from: self.from.clone(),
            text: self.text.clone(),
            ts: self.ts,
        }
    }

    /// The `message` frame's JSON for this draft stored at `position`:
    /// exactly what both buses deliver (pinned byte for byte by
    /// `tests/golden.rs`).
    pub fn frame(&self, position: Position) -> String {
        let (head, tail) = self.frame_parts();
        format!("{head}{position}{tail}")
    }

    /// The `message` frame split around its id, so the id (known only once
    /// the message is stored, inside Redis) can be spliced in without
    /// serialising again: `head + id + tail` is the frame's JSON. This is the
    /// one place that knows where the id sits in the frame.
    pub(crate) fn frame_parts(&self) -> (String, String) {
        const PLACEHOLDER: &str = "0:0-0";
        #[allow(clippy::expect_used)]
        let placeholder = MessageId::try_from(PLACEHOLDER.to_owned()).expect("a valid id");
        let json = ServerFrame::Message(self.stamp(placeholder)).to_json();
        // `type` and `room` come before `id`, and a room name holds no quote,
        // so the first `"id":"0-0"` is the id field.
        let marker = format!("\"id\":\"{PLACEHOLDER}\"");
        match json.find(&marker) {
            Some(at) => {
                let split = at + "\"id\":\"".len();
                (
                    json[..split].to_owned(),
                    json[split + PLACEHOLDER.len()..].to_owned(),
                )
            }
            None => unreachable!("a message frame always has its id field"),
        }
    }
}

impl Record {
    /// The draft this record was stored from, said in `room`.
    pub(crate) fn into_draft(self, room: &RoomId) -> Draft {
        Draft {
            room: room.clone(),
            from: self.from,
            text: self.text,
            ts: self.ts,
        }
    }

    pub(crate) fn into_message(self, room: &RoomId, position: Position) -> Message {
        Message {
            room: room.clone(),
            id: position.to_message_id(),
            from: self.from,
            text: self.text,
            ts: self.ts,
        }
    }
}

/// Which part of a room's history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The newest `limit` messages.
    Latest {
        /// At most this many.
        limit: usize,
    },
    /// Messages after `since`, oldest first, at most `limit`. A `since` of
    /// another epoch than the history's reads nothing, incomplete.
    After {
        /// The last position the client saw.
        since: Position,
        /// At most this many.
        limit: usize,
    },
    /// The `limit` messages just before `before` (paging backwards); none
    /// for a `before` of another epoch.
    Before {
        /// Exclusive upper bound.
        before: Position,
        /// At most this many.
        limit: usize,
    },
}

/// A slice of a room's history, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<Message>,
    /// For [`HistoryQuery::After`]: true when every message after `since`
    /// is here (same epoch, nothing trimmed away or cut by the limit).
    pub complete: bool,
    /// The history's current epoch; `None` when the room has none (nothing
    /// was ever stored, or it expired).
    pub epoch: Option<Epoch>,
    /// The newest position the history holds, if any.
    pub newest: Option<Position>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_parse() {
        let a = StreamId::parse("5-1").unwrap();
        assert!(a < StreamId::parse("5-2").unwrap());
        assert!(a < StreamId::parse("6-0").unwrap());
        assert_eq!(a.next(5), StreamId { ms: 5, seq: 2 });
        assert_eq!(
            a.next(4),
            StreamId { ms: 5, seq: 2 },
            "a clock going back keeps order"
        );
        assert_eq!(a.next(9), StreamId { ms: 9, seq: 0 });
        assert_eq!(StreamId::parse("x-1"), None);
        assert_eq!(StreamId::parse("+5-1"), None);
        assert_eq!(a.to_string(), "5-1");
    }

    #[test]
    fn positions_carry_their_epoch() {
        let epoch = Epoch::parse("k3f9a2x1").unwrap();
        assert_eq!(epoch.to_string(), "k3f9a2x1");
        assert_eq!(Epoch::parse("0").unwrap().to_string(), "0");
        assert_eq!(Epoch::parse("K3"), None, "lower case only");
        let p = Position::parse("k3f9a2x1:17-3").unwrap();
        assert_eq!(p.to_string(), "k3f9a2x1:17-3");
        assert_eq!(p.id, StreamId { ms: 17, seq: 3 });
        let later = Position::parse("k3f9a2x1:18-0").unwrap();
        assert_eq!(later.after(p), Some(true));
        assert_eq!(p.after(later), Some(false));
        let other = Position::parse("zz:18-0").unwrap();
        assert_eq!(other.after(p), None, "no order across epochs");
        assert_eq!(Position::parse("17-3"), None, "an id without its epoch");
        for _ in 0..100 {
            let e = Epoch::random();
            assert_eq!(Epoch::parse(&e.to_string()), Some(e));
        }
    }

    #[test]
    fn frame_parts_splice_into_the_frame() {
        let draft = Draft {
            room: "lobby".parse().unwrap(),
            from: User::parse("u1", "Ann").unwrap(),
            text: "say \"id\":\"0-0\" here".into(),
            ts: 7,
        };
        let (head, tail) = draft.frame_parts();
        let spliced = format!("{head}e1:12-3{tail}");
        let expected = ServerFrame::Message(draft.stamp("e1:12-3".parse().unwrap())).to_json();
        assert_eq!(spliced, expected);
    }
}
