//! What the fan-out hands to sockets: one [`Delivery`] per bus envelope,
//! shared by every socket it goes to, encoded at most once per wire
//! [`Format`] that a member speaks, and only when one does.

use banter_bus::{Envelope, Position, Topic};
use banter_protocol::{Message, ServerFrame};
use bytes::Bytes;
use std::sync::OnceLock;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// How a socket wants its frames. A second protocol joins as a variant here
/// (and an arm in [`Format::encode`]); the fan-out loop does not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// `/ws`: every frame as it was published, as JSON text.
    Json,
    /// `/text`: chat messages as `name: text` lines, nothing else.
    Text,
}

impl Format {
    const COUNT: usize = 2;

    fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::Text => 1,
        }
    }

    /// `delivery` as a complete WebSocket frame in this format; `None` when
    /// the format has nothing to say for it.
    fn encode(self, delivery: &Delivery) -> Option<Bytes> {
        match self {
            Format::Json => Some(encode_text(delivery.json.clone())),
            Format::Text => line_of(&delivery.json).map(|line| encode_text(Bytes::from(line))),
        }
    }
}

/// One frame from the bus, see the module docs.
#[derive(Debug)]
pub(crate) struct Delivery {
    /// Where it was published.
    pub topic: Topic,
    /// Its position in the room's history, for stored messages.
    pub position: Option<Position>,
    /// The frame's JSON, as published (valid UTF-8: checked by the fan-out).
    json: Bytes,
    /// The wire frames, per [`Format`], made on first use.
    wires: [OnceLock<Option<Bytes>>; Format::COUNT],
    /// When the fan-out received it, as [`clock_us`](crate::clock::clock_us)
    /// (for `banter_fanout_seconds`).
    pub at: u32,
}

impl Delivery {
    /// A delivery of `envelope`, whose payload must be UTF-8.
    pub fn new(envelope: Envelope, at: u32) -> Delivery {
        Delivery {
            topic: envelope.topic,
            position: envelope.position,
            json: envelope.payload,
            wires: Default::default(),
            at,
        }
    }

    /// This delivery as a frame in `format`, encoded once for every socket
    /// that speaks it; `None` when it is not for that format.
    pub fn wire(&self, format: Format) -> Option<&Bytes> {
        self.wires[format.index()]
            .get_or_init(|| format.encode(self))
            .as_ref()
    }
}

/// A frame's bytes as a complete WebSocket text frame (a server's frames are
/// unmasked, so every socket can be sent the same bytes).
pub(crate) fn encode_text(text: Bytes) -> Bytes {
    let frame = Frame::message(text, OpCode::Data(Data::Text), true);
    let mut wire = Vec::with_capacity(frame.len());
    // Writing into a Vec cannot fail.
    let _ = frame.format(&mut wire);
    Bytes::from(wire)
}

/// A frame as a `/text` line: chat messages only, `None` for the rest.
fn line_of(json: &[u8]) -> Option<String> {
    match serde_json::from_slice::<ServerFrame>(json) {
        Ok(ServerFrame::Message(m)) => Some(text_line(&m)),
        _ => None,
    }
}

/// A chat message as a `/text` line: `name: text`. The one renderer for
/// live messages and the history a `/text` socket starts with.
pub(crate) fn text_line(message: &Message) -> String {
    format!("{}: {}", message.from.name, message.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_encoded_unmasked_with_their_length() {
        let wire = encode_text(Bytes::from_static(b"hi"));
        assert_eq!(&wire[..], &[0x81, 2, b'h', b'i']);
        let long = encode_text(Bytes::from(vec![b'x'; 300]));
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
    }

    fn delivery(json: &'static str) -> Delivery {
        let envelope = Envelope {
            topic: Topic::Room("lobby".parse().unwrap()),
            position: None,
            presence: false,
            payload: Bytes::from_static(json.as_bytes()),
        };
        Delivery::new(envelope, 0)
    }

    #[test]
    fn each_format_is_encoded_once_and_shared() {
        let d = delivery(
            r#"{"type":"message","room":"lobby","id":"1-0","from":{"id":"u","name":"Ann"},"text":"hi","ts":1}"#,
        );
        let json = d.wire(Format::Json).unwrap();
        assert_eq!(json.as_ptr(), d.wire(Format::Json).unwrap().as_ptr());
        assert_eq!(&d.wire(Format::Text).unwrap()[2..], b"Ann: hi");
        let typing = delivery(r#"{"type":"typing","room":"lobby","from":{"id":"u","name":"Ann"}}"#);
        assert!(typing.wire(Format::Json).is_some());
        assert_eq!(typing.wire(Format::Text), None, "only messages are lines");
    }
}
