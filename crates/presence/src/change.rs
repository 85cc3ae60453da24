//! A presence change as the store publishes it on the room's topic (the bus
//! marks it as a presence change and strips its own header): `+{count}\n`
//! or `-{count}\n`, then the user as JSON. `+` is the user's first live
//! connection in the room, `-` their last going; `count` is how many users
//! the room has after it. Encoded here and in the Redis scripts
//! (`lua/announce.lua`), decoded only here.

use banter_protocol::User;
use bytes::Bytes;

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// True for a join, false for a leave.
    pub joined: bool,
    /// Who.
    pub user: User,
    /// The room's users after the change.
    pub count: usize,
}

impl Change {
    /// The published form.
    pub fn encode(&self) -> Bytes {
        let sign = if self.joined { '+' } else { '-' };
        let user = serde_json::to_string(&self.user).unwrap_or_default();
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
        let user = serde_json::from_slice(&payload[end + 1..]).ok()?;
        Some(Change {
            joined,
            user,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_rest() {
        let change = Change {
            joined: false,
            user: User::parse("u1", "Ann \"A\"").unwrap(),
            count: 41,
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
    }
}
