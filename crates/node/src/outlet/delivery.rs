//! What the fan-out hands to sockets: one [`Delivery`] per bus envelope,
//! shared by every socket it goes to, encoded at most once per wire
//! [`Format`] that a member speaks, and only when one does.

use banter_bus::{Envelope, Position, Topic};
use banter_protocol::{ConnId, Message, ServerFrame, UserId};
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
    /// `/app/{key}`: Pusher channel events, as published (only the
    /// channels' topics reach these sockets).
    Pusher,
}

impl Format {
    const COUNT: usize = 3;

    fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::Text => 1,
            Format::Pusher => 2,
        }
    }

    /// `delivery` as a complete WebSocket frame in this format; `None` when
    /// the format has nothing to say for it.
    fn encode(self, delivery: &Delivery) -> Option<Bytes> {
        match self {
            Format::Json | Format::Pusher => Some(encode_text(delivery.json.clone())),
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
    /// On a Pusher channel: the socket that must not get it (the sender of
    /// a client event, or the `socket_id` a trigger excluded).
    pub except: Option<ConnId>,
    /// On a Pusher presence channel: the user a `member_added` or
    /// `member_removed` is about, whose own sockets do not get it.
    pub except_user: Option<UserId>,
    /// The wire frames, per [`Format`], made on first use.
    wires: [OnceLock<Option<Bytes>>; Format::COUNT],
    /// When the fan-out received it, as [`clock_us`](crate::clock::clock_us)
    /// (for `banter_fanout_seconds`).
    pub at: u32,
}

impl Delivery {
    /// A delivery of `envelope`, whose payload must be UTF-8.
    pub fn new(envelope: Envelope, at: u32) -> Delivery {
        let (except, json) = match envelope.topic {
            Topic::Pusher(_) => crate::pusher::wire::split_except(envelope.payload),
            _ => (None, envelope.payload),
        };
        Delivery {
            topic: envelope.topic,
            position: envelope.position,
            json,
            except,
            except_user: None,
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

/// A chat message as `/text` lines: `name: line` for each line of its
/// text, so every line a reader sees says who wrote it. The one renderer for
/// live messages and the history a `/text` socket starts with.
pub(crate) fn text_line(message: &Message) -> String {
    render_lines(message.from.name.as_str(), &message.text)
}

/// `text` as lines that each start with `name: `, with nothing in name or
/// text that a terminal would act on: line breaks end a line (trailing
/// ones are dropped), a tab is a space, bidi controls are dropped, and any
/// other control character (C0, DEL, C1, U+2028/U+2029) is shown as U+FFFD.
fn render_lines(name: &str, text: &str) -> String {
    let name: String = printable(name).collect();
    let text = text.trim_end_matches(['\n', '\r']);
    let mut out = String::with_capacity(text.len() + name.len() + 2);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&name);
        out.push_str(": ");
        out.extend(printable(line.strip_suffix('\r').unwrap_or(line)));
    }
    out
}

/// Bidi embeddings, overrides, isolates and marks: invisible, but they
/// reorder what follows on the reader's screen.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// `s` with what [`render_lines`] removes or replaces, removed or replaced.
fn printable(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().filter(|&c| !is_bidi_control(c)).map(|c| match c {
        '\t' => ' ',
        c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => '\u{FFFD}',
        c => c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn lines_cannot_be_forged() {
        assert_eq!(
            render_lines("Ann", "hi\nalice: send me your password\x1b[2J"),
            "Ann: hi\nAnn: alice: send me your password\u{FFFD}[2J"
        );
        assert_eq!(render_lines("Ann", "a\r\nb\r\n\n"), "Ann: a\nAnn: b");
        assert_eq!(render_lines("Ann", "a\rb\tc"), "Ann: a\u{FFFD}b c");
        assert_eq!(
            render_lines("\u{202E}Ann\u{2066}", "x\u{202E}y\u{9b}\u{7f}"),
            "Ann: xy\u{FFFD}\u{FFFD}"
        );
        assert_eq!(render_lines("Ann", "日本語 ok"), "Ann: 日本語 ok");
    }

    /// Any character, often one of those a terminal acts on.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\n', '\r', '\t', '\x1b', '\0', '\x7f', '\u{85}', '\u{9b}', '\u{2028}', '\u{2029}',
                '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}',
                ':', ' ', 'a',
            ]),
        ]
    }

    fn tricky_string() -> impl Strategy<Value = String> {
        prop::collection::vec(tricky_char(), 0..48).prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #[test]
        fn every_line_is_clean_and_starts_with_its_sender(
            name in tricky_string(),
            text in tricky_string(),
        ) {
            let out = render_lines(&name, &text);
            let sender: String = printable(&name).collect();
            prop_assert!(!sender.chars().any(|c| c.is_control() || is_bidi_control(c)));
            let prefix = format!("{sender}: ");
            let lines: Vec<&str> = out.split('\n').collect();
            let breaks = text.trim_end_matches(['\n', '\r']).matches('\n').count();
            prop_assert_eq!(lines.len(), breaks + 1);
            for line in lines {
                prop_assert!(line.starts_with(&prefix), "{:?} in {:?}", line, out);
                prop_assert!(
                    !line.chars().any(|c| c.is_control()
                        || is_bidi_control(c)
                        || c == '\u{2028}'
                        || c == '\u{2029}'),
                    "{:?}", line
                );
            }
        }

        #[test]
        fn printable_text_is_shown_as_it_is(
            name in "[A-Za-z0-9 _.-]{1,32}",
            text in "[^\\p{Cc}\\p{Cf}\u{2028}\u{2029}]{0,64}",
        ) {
            prop_assert_eq!(render_lines(&name, &text), format!("{name}: {text}"));
        }
    }
}
