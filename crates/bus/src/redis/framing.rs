//! What a Redis channel carries: a frame's JSON, and for a stored message a
//! small header with its history position before it:
//!
//! ```text
//! @k3f9a2x1:1732380000000-0\n{"type":"message","room":"lobby","id":"k3f9a2x1:1732380000000-0",...}
//! ```
//!
//! The store-and-publish script writes the header (`lua/publish_message.lua`),
//! and so does a user's mailbox (`lua/deliver.lua`, its position in the mailbox);
//! the subscriber strips it here, with a `Bytes` slice that copies nothing, so
//! the node learns the position as data and never looks inside the JSON for it.
//! A presence change, published by the presence scripts, starts with `!`
//! (what follows is the presence store's own encoding). Everything else
//! (typing) is published as bare JSON, which always starts with `{`.

use crate::history::Position;
use bytes::Bytes;

/// The first byte of a positioned payload.
const HEADER: u8 = b'@';
/// The first byte of a presence change.
const PRESENCE: u8 = b'!';

/// What a published payload holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Framed {
    /// A stored message's position.
    pub position: Option<Position>,
    /// A presence change.
    pub presence: bool,
    /// The frame (or change), its header stripped.
    pub payload: Bytes,
}

/// Splits a published payload into what its header says and the rest. A
/// header that cannot be read gives the payload back as it came: the caller
/// drops it.
pub(super) fn decode(payload: Bytes) -> Result<Framed, Bytes> {
    match payload.first() {
        Some(&PRESENCE) => {
            return Ok(Framed {
                position: None,
                presence: true,
                payload: payload.slice(1..),
            });
        }
        Some(&HEADER) => {}
        _ => {
            return Ok(Framed {
                position: None,
                presence: false,
                payload,
            });
        }
    }
    let Some(end) = payload.iter().position(|&b| b == b'\n') else {
        return Err(payload);
    };
    let position = std::str::from_utf8(&payload[1..end])
        .ok()
        .and_then(Position::parse);
    match position {
        Some(position) => Ok(Framed {
            position: Some(position),
            presence: false,
            payload: payload.slice(end + 1..),
        }),
        None => Err(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_stripped_without_copying() {
        let payload = Bytes::from_static(b"@e1:17-3\n{\"type\":\"message\"}");
        let framed = decode(payload.clone()).unwrap();
        assert_eq!(framed.position, Position::parse("e1:17-3"));
        assert!(!framed.presence);
        assert_eq!(&framed.payload[..], b"{\"type\":\"message\"}");
        assert_eq!(
            framed.payload.as_ptr(),
            payload[9..].as_ptr(),
            "a slice, not a copy"
        );
    }

    #[test]
    fn bare_json_has_no_position_and_bad_headers_are_refused() {
        let bare = Bytes::from_static(b"{\"type\":\"typing\"}");
        let framed = decode(bare.clone()).unwrap();
        assert_eq!(
            (framed.position, framed.presence, framed.payload),
            (None, false, bare)
        );
        let change = decode(Bytes::from_static(b"!+3\n{}")).unwrap();
        assert!(change.presence);
        assert_eq!(&change.payload[..], b"+3\n{}");
        assert!(decode(Bytes::from_static(b"@e1:17-3{}")).is_err());
        assert!(
            decode(Bytes::from_static(b"@17-3\n{}")).is_err(),
            "no epoch"
        );
    }
}
