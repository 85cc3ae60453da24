//! The frames of the `/ws` protocol (`docs/protocol.md`). Every frame is one
//! JSON object with a `"type"`; each enum variant holds exactly its own fields.

use crate::codes::ErrorCode;
use crate::ids::{DisplayName, IdError, MessageId, Ref, RoomId, User, UserId};
use serde::{Deserialize, Serialize};

/// What a client may send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate with a JWT instead of `?token=`.
    Auth {
        /// The JWT.
        token: String,
    },
    /// Enter a room; with `since`, recover what was missed after that id.
    Join {
        /// The room to enter.
        room: RoomId,
        /// The last message id the client saw in this room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<MessageId>,
    },
    /// Leave a room.
    Leave {
        /// The room to leave.
        room: RoomId,
    },
    /// Say something in a room the connection has joined.
    Send {
        /// The room, which the connection must have joined.
        room: RoomId,
        /// The chat text, at most `limits.max_text_chars` characters.
        text: String,
        /// Echoed in the `ack` or `error`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A direct message to every connection of one user.
    Dm {
        /// The receiving user's id.
        to: UserId,
        /// The text.
        text: String,
        /// Echoed in the `ack` or `error`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// List the connection's user's dialogs, most recent first.
    Dialogs,
    /// Read one dialog's stored messages.
    DmHistory {
        /// The other user of the dialog.
        with: UserId,
        /// Only messages older than this id (paging backwards).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<MessageId>,
        /// Only messages newer than this id (catching up after a reconnect).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<MessageId>,
        /// At most this many (capped at 200).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Mark a dialog read up to a message id.
    Read {
        /// The other user of the dialog.
        with: UserId,
        /// The newest message id read.
        id: MessageId,
    },
    /// "I am typing" in a room; relayed, never stored.
    Typing {
        /// The room.
        room: RoomId,
    },
    /// Ask for the room's presence snapshot.
    Who {
        /// The room.
        room: RoomId,
        /// Where the previous page of the answer ended (its `cursor`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Page backwards through a room's history.
    History {
        /// The room.
        room: RoomId,
        /// Only messages older than this id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<MessageId>,
        /// At most this many (capped at 200).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// An application-level ping, since browsers cannot send WebSocket pings.
    Ping {
        /// Echoed in the `pong`.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
}

impl ClientFrame {
    /// Every client `type`, to tell an unknown type from a malformed known one.
    pub const TYPES: [&'static str; 12] = [
        "auth",
        "join",
        "leave",
        "send",
        "dm",
        "dialogs",
        "dm_history",
        "read",
        "typing",
        "who",
        "history",
        "ping",
    ];
}

/// The limits a client should respect, announced in `welcome`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `limits.max_text_chars`.
    pub max_text_chars: usize,
    /// `limits.max_rooms`.
    pub max_rooms: usize,
    /// `limits.rate_per_sec`.
    pub rate_per_sec: u32,
}

/// A chat message in a room, as delivered live and in history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The room it was said in.
    pub room: RoomId,
    /// Stamped by the node; unique in the room.
    pub id: MessageId,
    /// Stamped by the node from the sender's identity.
    pub from: User,
    /// The text.
    pub text: String,
    /// Milliseconds since the Unix epoch, stamped by the node.
    pub ts: u64,
}

/// A direct message, delivered to every connection of `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Stamped by the node.
    pub id: MessageId,
    /// The sender.
    pub from: User,
    /// The receiving user's id.
    pub to: UserId,
    /// The text.
    pub text: String,
    /// Milliseconds since the Unix epoch, stamped by the node.
    pub ts: u64,
}

/// One dialog of a user, as `dialogs` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogEntry {
    /// The other user.
    pub with: User,
    /// The newest message of the dialog.
    pub last: DirectMessage,
    /// Messages from the other user after the position this user has read.
    pub unread: usize,
}

/// The `event` of a `presence` frame, with the fields each event carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PresenceEvent {
    /// What changed since the room's previous diff, merged: a user joins
    /// with their first connection and leaves with their last. Both lists
    /// are empty in rooms over `presence.events_max_members`: then only the
    /// count tells.
    Diff {
        /// Users who came.
        joined: Vec<User>,
        /// Users who went.
        left: Vec<User>,
    },
    /// One page of who is online (the answer to `who`).
    Snapshot {
        /// Each user once, however many connections they have.
        users: Vec<User>,
        /// Send it back in `who` for the next page; absent on the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
}

/// What a node sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Always the first frame.
    Welcome {
        /// Who the node takes this connection to be.
        user: User,
        /// The node's id.
        node: String,
        /// The server ping interval, so clients can set their own timers.
        heartbeat_ms: u64,
        /// What the client should stay within.
        limits: Limits,
    },
    /// The answer to `join`.
    Joined {
        /// The room joined.
        room: RoomId,
        /// The first page of who is online in the room (the joiner
        /// included, each user once), at most `presence.list_limit`.
        users: Vec<User>,
        /// How many users are online in the room: exact.
        count: usize,
        /// Recent messages, or those after `since`, oldest first.
        history: Vec<Message>,
        /// True when `since` was given and nothing after it was lost.
        recovered: bool,
    },
    /// The answer to `leave`.
    Left {
        /// The room left.
        room: RoomId,
    },
    /// A chat message.
    Message(Message),
    /// A direct message.
    Dm(DirectMessage),
    /// Who is online: a join, a leave, or a snapshot.
    Presence {
        /// The room.
        room: RoomId,
        /// What happened.
        #[serde(flatten)]
        event: PresenceEvent,
        /// Users online in the room after the event.
        count: usize,
    },
    /// Live delivery had a hole that history could not fill: rejoin the
    /// room (or reload the dialog) to see what is left. Without `room` or
    /// `with`: direct messages may have been missed.
    Gap {
        /// The room whose messages were missed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// The other user of the dialog whose messages were missed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<UserId>,
    },
    /// The answer to `dialogs`: most recent first.
    Dialogs {
        /// The dialogs.
        dialogs: Vec<DialogEntry>,
    },
    /// The answer to `dm_history`.
    DmHistory {
        /// The other user of the dialog.
        with: UserId,
        /// Oldest first.
        messages: Vec<DirectMessage>,
    },
    /// A user read a dialog up to `id`: sent to every connection of both users.
    Read {
        /// Who read.
        by: User,
        /// The other user of the dialog.
        with: UserId,
        /// The newest message id read.
        id: MessageId,
    },
    /// Someone is typing.
    Typing {
        /// The room.
        room: RoomId,
        /// Who is typing.
        from: User,
    },
    /// The answer to `history`.
    History {
        /// The room.
        room: RoomId,
        /// Oldest first.
        messages: Vec<Message>,
    },
    /// The bus took a `send` or `dm`.
    Ack {
        /// The client's `ref`, if it gave one.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The id the message was stamped with.
        id: MessageId,
    },
    /// The answer to `ping`.
    Pong {
        /// The client's `ref`, if it gave one.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Something the client asked for did not happen. The socket stays.
    Error {
        /// What kind of trouble.
        code: ErrorCode,
        /// For people.
        message: String,
        /// The `ref` of the frame this answers, when it had one.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
}

impl ServerFrame {
    /// The frame as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and
        // no custom `Serialize` returns an error.
        #[allow(clippy::expect_used)]
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        ServerFrame::Error {
            code: e.code,
            message: e.message,
            reference: e.reference,
        }
    }
}

/// A client frame the node could not take, as the `error` reply it earns.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameError {
    /// The error code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// The frame's `ref`, when it had a valid one.
    pub reference: Option<Ref>,
}

impl FrameError {
    /// An error without a `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
        }
    }
}

/// Decodes one text frame from a client. Any input yields a frame or an
/// error code, never a panic:
///
/// - not JSON, not an object, no string `type`: `bad_request`
/// - a `type` that is not a client frame: `unknown_type`
/// - a `room` that is not a valid room name: `bad_room`
/// - a missing or wrongly typed field: `bad_request`
///
/// Fields that are not listed for a type are ignored.
pub fn decode(text: &str) -> Result<ClientFrame, FrameError> {
    match decode_common(text) {
        Some(frame) => Ok(frame),
        None => decode_any(text),
    }
}

/// The frames clients send most (`send`, `join`), read straight into their
/// fields: no `serde_json::Value` of the frame built and taken apart again,
/// which was most of a chat message's decoding. `None` for anything else
/// and for anything it does not read cleanly (a bad field, a duplicate key,
/// an escaped `type`): [`decode_any`] then answers, with its exact error.
/// So `Some` only where [`decode_any`] gives the same frame.
fn decode_common(text: &str) -> Option<ClientFrame> {
    #[derive(Deserialize)]
    struct Common<'a> {
        #[serde(rename = "type", borrow)]
        ty: &'a str,
        room: Option<RoomId>,
        text: Option<String>,
        since: Option<MessageId>,
        #[serde(rename = "ref")]
        reference: Option<serde_json::Value>,
    }
    let common: Common<'_> = serde_json::from_str(text).ok()?;
    match common.ty {
        "send" => {
            let reference = match common.reference {
                None => None,
                Some(r) => Some(Ref::try_from(r).ok()?),
            };
            Some(ClientFrame::Send {
                room: common.room?,
                text: common.text?,
                reference,
            })
        }
        "join" => Some(ClientFrame::Join {
            room: common.room?,
            since: common.since,
        }),
        _ => None,
    }
}

/// [`decode`] for any frame, through a `serde_json::Value`.
#[doc(hidden)]
pub fn decode_any(text: &str) -> Result<ClientFrame, FrameError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "a frame is a JSON object",
        ));
    };
    // The ref is read here and put back into the frame below: serde buffers
    // a tagged enum's fields without 128-bit integers, so a numeric ref
    // beyond 64 bits (kept exactly, serde_json's `arbitrary_precision`)
    // would not pass through it.
    let given_ref = map.remove("ref").filter(|r| !r.is_null());
    let reference = given_ref.clone().and_then(|r| Ref::try_from(r).ok());
    let fail = |code, message: String| FrameError {
        code,
        message,
        reference: reference.clone(),
    };
    let ty = match map.get("type") {
        Some(serde_json::Value::String(t)) => t.as_str(),
        _ => {
            return Err(fail(
                ErrorCode::BadRequest,
                "missing string field `type`".into(),
            ));
        }
    };
    if !ClientFrame::TYPES.contains(&ty) {
        return Err(fail(
            ErrorCode::UnknownType,
            format!("unknown type `{ty:.32}`"),
        ));
    }
    if let Some(serde_json::Value::String(room)) = map.get("room")
        && let Err(e) = room.parse::<RoomId>()
    {
        return Err(fail(ErrorCode::BadRoom, e.to_string()));
    }
    let mut frame: ClientFrame = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| fail(ErrorCode::BadRequest, e.to_string()))?;
    if let ClientFrame::Send { reference: r, .. }
    | ClientFrame::Dm { reference: r, .. }
    | ClientFrame::Ping { reference: r } = &mut frame
    {
        if given_ref.is_some() && reference.is_none() {
            return Err(fail(ErrorCode::BadRequest, IdError::Ref.to_string()));
        }
        *r = reference;
    }
    Ok(frame)
}

impl From<IdError> for FrameError {
    fn from(e: IdError) -> Self {
        let code = if e == IdError::Room {
            ErrorCode::BadRoom
        } else {
            ErrorCode::BadRequest
        };
        FrameError::new(code, e.to_string())
    }
}

/// Convenience for tests and tools that build users by hand.
impl User {
    /// A user from raw parts; fails like the wire would.
    pub fn parse(id: &str, name: &str) -> Result<User, IdError> {
        Ok(User {
            id: id.parse()?,
            name: name.parse::<DisplayName>()?,
        })
    }
}
