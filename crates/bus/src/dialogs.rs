//! Dialogs: the stored direct messages between two users. Each pair of
//! users has one dialog, a bounded stream like a room's history (with its
//! own epoch, so its ids are positions as room ids are), the position each
//! of the two has read up to, and a place in both users' lists of dialogs.
//!
//! A direct message is delivered on the topics of both users
//! ([`Topic::User`](crate::Topic)), so every connection of the sender and
//! of the recipient, on any node, gets it; so does a `read` receipt.

use banter_protocol::{DirectMessage, MessageId, ServerFrame, User, UserId};
use serde::{Deserialize, Serialize};

use crate::history::Position;

/// Direct messages kept per dialog by a bus built without saying how many.
pub const DEFAULT_DIALOG_SIZE: usize = 200;
/// How long a dialog lives after its last message, unless told: 7 days.
pub const DEFAULT_DIALOG_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Whether an id is a guest's: guests get `g-` ids, which no token may
/// claim, and which do not outlive their connection.
pub fn is_guest(id: &UserId) -> bool {
    id.as_str().starts_with("g-")
}

/// A direct message before the bus gives it its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmDraft {
    /// The sender, stamped by the node.
    pub from: User,
    /// The recipient.
    pub to: UserId,
    /// The text.
    pub text: String,
    /// Milliseconds since the epoch, stamped by the node.
    pub ts: u64,
}

/// What a dialog entry stores: the message without its id (the position is the id).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DmRecord {
    pub from: User,
    pub to: UserId,
    pub text: String,
    pub ts: u64,
}

impl DmDraft {
    pub(crate) fn to_record(&self) -> DmRecord {
        DmRecord {
            from: self.from.clone(),
            to: self.to.clone(),
            text: self.text.clone(),
            ts: self.ts,
        }
    }
}

impl DmRecord {
    pub(crate) fn into_message(self, position: Position) -> DirectMessage {
        DirectMessage {
            id: position.to_message_id(),
            from: self.from,
            to: self.to,
            text: self.text,
            ts: self.ts,
        }
    }
}

/// A `read` receipt as the bus stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMark {
    /// Who read.
    pub by: User,
    /// The other user of the dialog.
    pub with: UserId,
    /// How far `by` has now read (never older than before).
    pub id: MessageId,
    /// Whether this call moved it (an older or equal id does not).
    pub moved: bool,
}

/// The two users of a dialog in a fixed order, so both name it alike.
pub(crate) fn pair<'a>(a: &'a UserId, b: &'a UserId) -> (&'a UserId, &'a UserId) {
    if a.as_str() <= b.as_str() {
        (a, b)
    } else {
        (b, a)
    }
}

/// The name shown for a user the dialog never heard name themselves: the
/// id, cut to a display name's length.
pub(crate) fn fallback_name(id: &UserId) -> User {
    let short: String = id.as_str().chars().take(32).collect();
    User {
        id: id.clone(),
        name: short
            .parse()
            .unwrap_or_else(|_| banter_protocol::DisplayName::guest(0)),
    }
}

/// The users a dialog's events go to: both, or one for a dialog with oneself.
pub(crate) fn both<'a>(a: &'a UserId, b: &'a UserId) -> Vec<&'a UserId> {
    if a == b { vec![a] } else { vec![a, b] }
}

/// The `read` frame of a receipt.
pub(crate) fn read_frame(mark: &ReadMark) -> ServerFrame {
    ServerFrame::Read {
        by: mark.by.clone(),
        with: mark.with.clone(),
        id: mark.id.clone(),
    }
}
