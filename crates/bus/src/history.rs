//! Room history: the types both bus implementations share. A room's messages
//! are kept in publish order, capped at `history.size`, and each message's id
//! is its position: `{ms}-{seq}` as in a Redis stream, so ids grow in room
//! order and a client can resume after the last one it saw.

use banter_protocol::{Message, MessageId, RoomId, ServerFrame, User};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Messages kept per room by a bus built without saying how many.
pub const DEFAULT_HISTORY: usize = 200;

/// A position in a room's history: `{ms}-{seq}`, ordered like Redis stream ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds since the epoch when it was added.
    pub ms: u64,
    /// Order within that millisecond.
    pub seq: u64,
}

impl StreamId {
    /// Reads `{ms}-{seq}`; `None` for anything else (ids of another format).
    pub fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
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

    /// As a message id.
    pub fn to_message_id(self) -> MessageId {
        // `{digits}-{digits}` is always a valid message id.
        MessageId::try_from(self.to_string())
            .unwrap_or_else(|_| unreachable!("digits and a dash are a valid message id"))
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
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

    /// The `message` frame's JSON for this draft stored at `id`: exactly
    /// what both buses deliver (pinned byte for byte by `tests/golden.rs`).
    pub fn frame(&self, id: StreamId) -> String {
        let (head, tail) = self.frame_parts();
        format!("{head}{id}{tail}")
    }

    /// The `message` frame split around its id, so the id (known only once
    /// the message is stored, inside Redis) can be spliced in without
    /// serialising again: `head + id + tail` is the frame's JSON. This is the
    /// one place that knows where the id sits in the frame.
    pub(crate) fn frame_parts(&self) -> (String, String) {
        const PLACEHOLDER: &str = "0-0";
        let json = ServerFrame::Message(self.stamp(StreamId::default().to_message_id())).to_json();
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
    pub(crate) fn into_message(self, room: &RoomId, id: StreamId) -> Message {
        Message {
            room: room.clone(),
            id: id.to_message_id(),
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
    /// Messages after `since`, oldest first, at most `limit`.
    After {
        /// The last position the client saw.
        since: StreamId,
        /// At most this many.
        limit: usize,
    },
    /// The `limit` messages just before `before` (paging backwards).
    Before {
        /// Exclusive upper bound.
        before: StreamId,
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
    /// is here (nothing was trimmed away or cut by the limit).
    pub complete: bool,
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
        assert_eq!(a.to_string(), "5-1");
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
        let spliced = format!("{head}12-3{tail}");
        let expected = ServerFrame::Message(draft.stamp("12-3".parse().unwrap())).to_json();
        assert_eq!(spliced, expected);
    }
}
