//! What a Redis channel carries: a frame's JSON, and for a stored message a
//! small header with its history position before it:
//!
//! ```text
//! @k3f9a2x1:1732380000000-0\n{"type":"message","room":"lobby","id":"k3f9a2x1:1732380000000-0",...}
//! ```
//!
//! The store-and-publish script writes the header (`lua/publish_message.lua`);
//! the subscriber strips it here, with a `Bytes` slice that copies nothing, so
//! the node learns the position as data and never looks inside the JSON for it.
//! Everything else (presence, typing, direct messages) is published as bare
//! JSON, which always starts with `{`.

use crate::history::Position;
use bytes::Bytes;

/// The first byte of a positioned payload.
const HEADER: u8 = b'@';

/// Splits a published payload into its position (if it has a header) and
/// the frame. A header that cannot be read yields `None` for the position
/// and the payload as it came: the caller counts it as a bad payload.
pub(super) fn decode(payload: Bytes) -> Result<(Option<Position>, Bytes), Bytes> {
    if payload.first() != Some(&HEADER) {
        return Ok((None, payload));
    }
    let Some(end) = payload.iter().position(|&b| b == b'\n') else {
        return Err(payload);
    };
    let position = std::str::from_utf8(&payload[1..end])
        .ok()
        .and_then(Position::parse);
    match position {
        Some(position) => Ok((Some(position), payload.slice(end + 1..))),
        None => Err(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_stripped_without_copying() {
        let payload = Bytes::from_static(b"@e1:17-3\n{\"type\":\"message\"}");
        let (position, frame) = decode(payload.clone()).unwrap();
        assert_eq!(position, Position::parse("e1:17-3"));
        assert_eq!(&frame[..], b"{\"type\":\"message\"}");
        assert_eq!(frame.as_ptr(), payload[9..].as_ptr(), "a slice, not a copy");
    }

    #[test]
    fn bare_json_has_no_position_and_bad_headers_are_refused() {
        let bare = Bytes::from_static(b"{\"type\":\"typing\"}");
        assert_eq!(decode(bare.clone()), Ok((None, bare)));
        assert!(decode(Bytes::from_static(b"@e1:17-3{}")).is_err());
        assert!(
            decode(Bytes::from_static(b"@17-3\n{}")).is_err(),
            "no epoch"
        );
    }
}
