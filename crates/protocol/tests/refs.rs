//! A numeric `ref` is echoed exactly as the client wrote it, however large.
//! That takes serde_json's `arbitrary_precision` (numbers kept as their
//! text) and a `decode` that reads `ref` outside serde's buffering of the
//! tagged frame enum, which has no 128-bit integers.
#![allow(clippy::unwrap_used)]

use banter_protocol::{ClientFrame, ServerFrame, decode};

#[test]
fn integer_refs_beyond_64_bits_are_echoed_exactly() {
    for raw in [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",
        "18446744073709551615",
        "-9223372036854775809",
        "0",
        "12.50",
        "1.7976931348623157e+309",
    ] {
        let frame = decode(&format!(r#"{{"type":"ping","ref":{raw}}}"#)).unwrap();
        let ClientFrame::Ping { reference } = frame else {
            panic!("{raw}: not a ping");
        };
        let pong = ServerFrame::Pong { reference }.to_json();
        assert!(pong.contains(&format!(r#""ref":{raw}"#)), "{raw}: {pong}");
    }
}
