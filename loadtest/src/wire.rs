//! The hot path: the text a publisher sends and the few fields a receiver
//! needs, found without a full JSON parse.
//!
//! A bench message's text is `P:S:T:` followed by `x` padding to the wanted
//! size, where `P` is the publisher's number, `S` its sequence number and `T`
//! the *intended* send time in µs since the run's epoch (one process, so one
//! `Instant` base). Only ASCII digits, colons and `x`: nothing JSON escapes,
//! so the text can be found verbatim in the node's `message` frame.

use std::fmt::Write as _;

/// The bench fields of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The publisher's number.
    pub publisher: u32,
    /// Its sequence number, from 0.
    pub seq: u64,
    /// Intended send time, µs since the run's epoch.
    pub t_us: u64,
}

/// The text for `stamp`, padded with `x` to `size` bytes (never shorter than
/// the stamp itself).
pub fn encode_text(stamp: Stamp, size: usize) -> String {
    let mut s = String::with_capacity(size.max(32));
    let _ = write!(s, "{}:{}:{}:", stamp.publisher, stamp.seq, stamp.t_us);
    while s.len() < size {
        s.push('x');
    }
    s
}

/// A complete `send` frame for `stamp` in `room`, with `ref` = the sequence number.
pub fn send_frame(room: &str, stamp: Stamp, size: usize) -> String {
    let text = encode_text(stamp, size);
    let mut f = String::with_capacity(text.len() + room.len() + 48);
    let _ = write!(
        f,
        r#"{{"type":"send","room":"{room}","text":"{text}","ref":{}}}"#,
        stamp.seq
    );
    f
}

const MESSAGE_PREFIX: &str = r#"{"type":"message""#;
const TEXT_KEY: &str = r#""text":""#;

/// Whether `frame` is a `message` frame.
#[inline]
pub fn is_message(frame: &str) -> bool {
    frame.starts_with(MESSAGE_PREFIX)
}

/// The stamp inside a node's `message` frame, or `None` when `frame` is not
/// a message or its text is not a bench stamp.
#[inline]
pub fn parse_message(frame: &str) -> Option<Stamp> {
    if !is_message(frame) {
        return None;
    }
    let at = frame.find(TEXT_KEY)? + TEXT_KEY.len();
    parse_stamp(frame.as_bytes().get(at..)?)
}

/// The stamp at the start of `b` (`P:S:T:`).
pub fn parse_stamp(b: &[u8]) -> Option<Stamp> {
    let (publisher, b) = digits(b)?;
    let (seq, b) = digits(b)?;
    let (t_us, _) = digits(b)?;
    Some(Stamp {
        publisher: u32::try_from(publisher).ok()?,
        seq,
        t_us,
    })
}

/// A decimal number followed by `:`; returns it and what follows the colon.
#[inline]
fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut n: u64 = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?,
            b':' if i > 0 => return Some((n, &b[i + 1..])),
            _ => return None,
        }
    }
    None
}

/// What a publisher needs from a frame addressed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `ack` with a numeric `ref`.
    Ack(u64),
    /// `error` with its code and numeric `ref`, if any.
    Error(String, Option<u64>),
    /// Anything else (messages, presence, ...).
    Other,
}

/// Sorts a frame for a publisher; only `error` frames get a full JSON parse.
pub fn parse_reply(frame: &str) -> Reply {
    if let Some(rest) = frame.strip_prefix(r#"{"type":"ack""#) {
        return rest
            .find(r#""ref":"#)
            .and_then(|at| {
                let tail = rest.as_bytes().get(at + 6..)?;
                let end = tail.iter().position(|c| !c.is_ascii_digit())?;
                std::str::from_utf8(&tail[..end]).ok()?.parse().ok()
            })
            .map_or(Reply::Other, Reply::Ack);
    }
    if frame.starts_with(r#"{"type":"error""#) {
        #[derive(serde::Deserialize)]
        struct E<'a> {
            #[serde(borrow)]
            code: std::borrow::Cow<'a, str>,
            #[serde(rename = "ref")]
            reference: Option<serde_json::Value>,
        }
        return match serde_json::from_str::<E<'_>>(frame) {
            Ok(e) => Reply::Error(e.code.into_owned(), e.reference.and_then(|r| r.as_u64())),
            Err(_) => Reply::Error("unparsable".into(), None),
        };
    }
    Reply::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_protocol::{Message, ServerFrame, User};

    fn stamp() -> Stamp {
        Stamp {
            publisher: 3,
            seq: 12345,
            t_us: 987_654_321,
        }
    }

    #[test]
    fn text_is_padded_and_round_trips_through_a_real_message_frame() {
        let text = encode_text(stamp(), 100);
        assert_eq!(text.len(), 100);
        let frame = ServerFrame::Message(Message {
            room: "bench".parse().unwrap(),
            id: "1732380000000-a-0".parse().unwrap(),
            from: User::parse("g-1", "guest-0001").unwrap(),
            text,
            ts: 1,
        })
        .to_json();
        assert_eq!(parse_message(&frame), Some(stamp()));
    }

    #[test]
    fn short_sizes_keep_the_stamp() {
        assert_eq!(encode_text(stamp(), 0), "3:12345:987654321:");
    }

    #[test]
    fn send_frame_is_a_valid_client_frame() {
        let f = send_frame("bench", stamp(), 40);
        let decoded = banter_protocol::decode(&f).unwrap();
        assert!(matches!(decoded, banter_protocol::ClientFrame::Send { .. }));
    }

    #[test]
    fn non_messages_and_foreign_texts_are_skipped() {
        assert_eq!(parse_message(r#"{"type":"presence","room":"a"}"#), None);
        assert_eq!(
            parse_message(r#"{"type":"message","room":"a","text":"hello","ts":1}"#),
            None
        );
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse_reply(r#"{"type":"ack","ref":42,"id":"1-a-0"}"#),
            Reply::Ack(42)
        );
        assert_eq!(
            parse_reply(r#"{"type":"error","code":"rate_limited","message":"slow down","ref":7}"#),
            Reply::Error("rate_limited".into(), Some(7))
        );
        assert_eq!(parse_reply(r#"{"type":"pong"}"#), Reply::Other);
    }
}
