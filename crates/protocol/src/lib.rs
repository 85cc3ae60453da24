//! Banter's wire contract: every frame a client and a node exchange over `/ws`,
//! the error and close codes, and the validated ids and names that may reach
//! Redis keys and channels.
//!
//! # Layout
//!
//! - [`ids`]: `RoomId`, `UserId`, `ConnId`, `MessageId`, `DisplayName`, `Ref` —
//!   validated once, on the way in, so nothing unchecked is ever used to build a
//!   key or a channel name.
//! - [`frames`]: `ClientFrame` (what a client may send) and `ServerFrame`
//!   (what a node sends), as internally tagged serde enums, plus [`decode`],
//!   which turns any text into a frame or an [`ErrorCode`].
//! - [`codes`]: `ErrorCode` (a reply that keeps the socket) and `CloseReason`
//!   (the end of a socket, owning its close code).
//!
//! The crate has no I/O: the node, the bus and the load generator all share it.

pub mod codes;
pub mod frames;
pub mod ids;

pub use codes::{CloseReason, ErrorCode};
pub use frames::{
    ClientFrame, DialogEntry, DirectMessage, FrameError, Limits, Message, PresenceEvent,
    ServerFrame, decode, decode_any,
};
pub use ids::{ChannelName, ConnId, DisplayName, IdError, MessageId, Ref, RoomId, User, UserId};
