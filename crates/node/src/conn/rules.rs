//! What a client may ask for and say, shared by the socket commands and the
//! HTTP room API: one check per rule.

use banter_protocol::{ErrorCode, User};

/// `join` without `since`, and `history` without `limit`, return this many
/// recent messages.
pub(crate) const RECENT_HISTORY: usize = 50;
/// `history` frames and the HTTP history route return at most this many.
pub(crate) const HISTORY_LIMIT: usize = 200;
/// A recovery (`join` with `since`) reads up to `history.size` plus this
/// many messages: Redis trims streams approximately (`MAXLEN ~`), keeping
/// up to about a hundred more than asked, and what is kept is recoverable.
pub(crate) const TRIM_SLACK: usize = 200;

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
