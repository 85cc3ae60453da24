//! What a client may ask for and say, shared by the socket commands and the
//! HTTP room API: one check per rule.

use banter_protocol::{ErrorCode, User};
use serde::Serialize;

/// `join` without `since`, and `history` without `limit`, return this many
/// recent messages.
pub(crate) const RECENT_HISTORY: usize = 50;
/// `history` frames and the HTTP history route return at most this many.
pub(crate) const HISTORY_LIMIT: usize = 200;
/// A recovery (`join` with `since`) reads up to `history.size` plus this
/// many messages: Redis trims streams approximately (`MAXLEN ~`), keeping
/// up to about a hundred more than asked, and what is kept is recoverable.
pub(crate) const TRIM_SLACK: usize = 200;

/// The most bytes of messages one reply carries (`joined.history`, a
/// `history` page, the HTTP history route): a 60-byte request must not pull
/// megabytes. Past it the oldest are left out (the client pages on).
pub(crate) const REPLY_BYTES: usize = 256 * 1024;
/// A history reply costs the rate limit one more token per this many bytes
/// it carries: requests are charged by what they cost.
pub(crate) const BYTES_PER_TOKEN: usize = 16 * 1024;
/// Rooms one connection may join per minute beyond its `limits.max_rooms`
/// (which it may join at once, as a reconnecting client does): every room
/// brought into being leaves keys in Redis until they expire.
pub(crate) const ROOMS_PER_MINUTE: usize = 30;
/// Different users one connection may write direct messages to per minute:
/// every new dialog leaves keys in Redis until it expires.
pub(crate) const PEERS_PER_MINUTE: usize = 30;
/// `dialogs` lists at most this many, most recent first.
pub(crate) const DIALOGS_LIMIT: usize = 50;

/// Keeps the newest of `messages` (oldest first) that fit in [`REPLY_BYTES`]:
/// them, `true` when some were left out, and what it costs the rate limit.
pub(crate) fn fit<T: Serialize>(mut messages: Vec<T>) -> (Vec<T>, bool, f64) {
    let (keep, bytes) = fitting(messages.iter().rev());
    let cut = keep < messages.len();
    messages.drain(..messages.len() - keep);
    (messages, cut, (bytes / BYTES_PER_TOKEN) as f64)
}

/// Keeps the oldest of `messages` (oldest first) that fit in
/// [`REPLY_BYTES`] (a page read forward from `since`: the client goes on
/// from the last it got).
pub(crate) fn fit_oldest<T: Serialize>(mut messages: Vec<T>) -> Vec<T> {
    let (keep, _) = fitting(messages.iter());
    messages.truncate(keep);
    messages
}

/// How many of `messages`, in the order given, fit in [`REPLY_BYTES`],
/// and their bytes. The first always does, so paging never stalls on one
/// message larger than that.
fn fitting<'a, T: Serialize + 'a>(messages: impl Iterator<Item = &'a T>) -> (usize, usize) {
    let (mut keep, mut bytes) = (0, 0);
    for m in messages {
        let size = serde_json::to_string(m).map_or(REPLY_BYTES, |j| j.len() + 1);
        if keep > 0 && bytes + size > REPLY_BYTES {
            break;
        }
        bytes += size;
        keep += 1;
    }
    (keep, bytes)
}

/// Whether a chat text may be sent: not empty, at most `max_chars`
/// characters. The one check behind `send`, `dm` and the publish API.
pub(crate) fn check_text(text: &str, max_chars: usize) -> Result<(), (ErrorCode, &'static str)> {
    if text.chars().count() > max_chars {
        return Err((ErrorCode::TooLarge, "text too long"));
    }
    if text.trim().is_empty() {
        return Err((ErrorCode::BadRequest, "text is empty"));
    }
    Ok(())
}

/// The identity of server-published messages (`POST /api/rooms/{room}/messages`).
pub(crate) fn system_user(name: Option<&str>) -> Option<User> {
    let name = name.unwrap_or("system").parse().ok()?;
    Some(User {
        id: "system".parse().ok()?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_protocol::Message;

    #[test]
    fn big_replies_keep_their_newest_messages() {
        let message = |i: usize| Message {
            room: "r".parse().unwrap(),
            id: format!("e:{i}-0").parse().unwrap(),
            from: User::parse("u", "U").unwrap(),
            text: "x".repeat(4_000),
            ts: 1,
        };
        let (small, cut, cost) = fit((0..10).map(message).collect());
        assert_eq!((small.len(), cut, cost), (10, false, 2.0));
        let (big, cut, _) = fit((0..200).map(message).collect());
        assert!(cut && big.len() < 70 && big.len() > 50, "{}", big.len());
        assert_eq!(
            big.last().unwrap().id.as_str(),
            "e:199-0",
            "the newest stay"
        );
        let forward = fit_oldest((0..200).map(message).collect());
        assert_eq!(forward.len(), big.len());
        assert_eq!(forward[0].id.as_str(), "e:0-0", "the oldest stay");
        let huge = Message {
            text: "y".repeat(REPLY_BYTES),
            ..message(7)
        };
        let (one, cut, _) = fit(vec![message(6), huge]);
        assert!(cut);
        assert_eq!(one.len(), 1, "one message too big for a reply still comes");
    }
}
