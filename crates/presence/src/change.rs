//! A presence change as the store publishes it on the room's topic (the bus
//! marks it as a presence change and strips its own header): `+{count}\n`
//! or `-{count}\n`, then the user as JSON. `+` is the user's first live
//! connection in the room, `-` their last going; `count` is how many users
//! the room has after it. Encoded here and in the Redis scripts
//! (`lua/announce.lua`), decoded only here.
//!
//! A topic's subscription count (how many sockets subscribe it over every
//! node, see [`crate::Presence::tally`]) is published the same way as
//! `={count}`: [`encode_tally`], [`decode_tally`].

use banter_protocol::User;
use bytes::Bytes;
use std::sync::Arc;

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// True for a join, false for a leave.
    pub joined: bool,
    /// Who.
    pub user: User,
    /// The room's users after the change.
    pub count: usize,
    /// The user's `info` in this room, if any (JSON).
    pub info: Option<Arc<str>>,
}

impl Change {
    /// The published form.
    pub fn encode(&self) -> Bytes {
        let sign = if self.joined { '+' } else { '-' };
        let user = crate::stored_json(&self.user, self.info.as_deref());
        Bytes::from(format!("{sign}{}\n{user}", self.count))
    }

    /// Reads the published form; `None` for anything else.
    pub fn decode(payload: &[u8]) -> Option<Change> {
        let joined = match payload.first()? {
            b'+' => true,
            b'-' => false,
            _ => return None,
        };
        let end = payload.iter().position(|&b| b == b'\n')?;
        let count = std::str::from_utf8(&payload[1..end]).ok()?.parse().ok()?;
        let (user, info) = crate::parse_stored(&payload[end + 1..])?;
        Some(Change {
            joined,
            user,
            count,
            info,
        })
    }
}

/// A subscription count's published form (`lua/tally.lua` writes it too).
pub fn encode_tally(count: usize) -> Bytes {
    Bytes::from(format!("={count}"))
}

/// Reads a subscription count's published form; `None` for anything else
/// (a [`Change`]).
pub fn decode_tally(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload.strip_prefix(b"=")?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_round_trip_and_are_not_changes() {
        assert_eq!(decode_tally(&encode_tally(12)), Some(12));
        assert_eq!(Change::decode(&encode_tally(12)), None);
        assert_eq!(decode_tally(b"+1\n{}"), None);
        assert_eq!(decode_tally(b"=x"), None);
    }

    #[test]
    fn round_trips_and_refuses_the_rest() {
        let change = Change {
            joined: false,
            user: User::parse("u1", "Ann \"A\"").unwrap(),
            count: 41,
            info: None,
        };
        let bytes = change.encode();
        assert_eq!(
            &bytes[..],
            br#"-41
{"id":"u1","name":"Ann \"A\""}"#
        );
        assert_eq!(Change::decode(&bytes), Some(change));
        assert_eq!(Change::decode(b"{\"type\":\"typing\"}"), None);
        assert_eq!(Change::decode(b"+x\n{}"), None);
        let with_info = Change {
            joined: true,
            user: User::parse("7", "pusher").unwrap(),
            count: 2,
            // (Keys in order: the store keeps user_info as parsed JSON.)
            info: Some(Arc::from(r#"{"n":[1,2],"name":"Ann"}"#)),
        };
        let bytes = with_info.encode();
        assert_eq!(
            &bytes[..],
            br#"+2
{"id":"7","name":"pusher","info":{"n":[1,2],"name":"Ann"}}"#
        );
        assert_eq!(Change::decode(&bytes), Some(with_info));
    }
}
