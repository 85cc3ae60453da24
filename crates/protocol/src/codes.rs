//! The two tiers of trouble a client can meet: an [`ErrorCode`] is a reply and
//! the socket stays; a [`CloseReason`] ends the socket and owns its close code.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` frame. An error frame never closes the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or wrongly typed field.
    BadRequest,
    /// A `type` the node does not know.
    UnknownType,
    /// A room name that does not match `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
    BadRoom,
    /// `send`, `typing` or `leave` of a room this connection has not joined.
    NotJoined,
    /// A chat text over `limits.max_text_chars`.
    TooLarge,
    /// A join beyond `limits.max_rooms`.
    TooManyRooms,
    /// Over the per-connection token bucket; the frame was dropped.
    RateLimited,
    /// The target (a user for `dm`) is not online anywhere.
    NotFound,
    /// A token that is missing, bad or not allowed here.
    Unauthorized,
    /// The bus cannot take the message now (Redis down). Never a silent drop.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for metrics that pre-register one series per code.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::BadRoom,
        ErrorCode::NotJoined,
        ErrorCode::TooLarge,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::Unavailable,
    ];

    /// The code as it appears on the wire and in the `code` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node closes a socket. Each reason owns exactly one close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The conversation ended normally. (A client's own close is answered
    /// with its own code; the node has no reason of its own to send 1000.)
    Normal,
    /// The node is draining (SIGTERM/SIGINT).
    ShuttingDown,
    /// No frame (pong included) from the client for `heartbeat.idle_timeout_ms`.
    IdleTimeout,
    /// A binary frame: the protocol is JSON text only.
    Binary,
    /// A frame that breaks RFC 6455 (reserved bits or opcodes, an unmasked
    /// client frame, a bad continuation, an oversized control frame, a bad
    /// close code).
    Protocol,
    /// A text frame that is not valid UTF-8.
    InvalidUtf8,
    /// Sustained flooding past the rate limit.
    Policy,
    /// A WebSocket message over `limits.max_frame_bytes`.
    TooBig,
    /// Something broke on the node's side.
    Internal,
    /// An `auth` frame with a bad or missing token.
    Unauthorized,
    /// The client's outbound queue overflowed: it does not read fast enough.
    SlowConsumer,
    /// Pusher: the app key of `/app/{key}` is not this cluster's (4001).
    PusherUnknownApp,
    /// Pusher: a `protocol` version the node does not speak (4007).
    PusherProtocol,
    /// Pusher: the client should come back at once, elsewhere if it can
    /// (4200): a drain, an internal error.
    PusherReconnect,
    /// Pusher: over capacity, come back after a while (4100): a slow consumer.
    PusherOverCapacity,
    /// Pusher: no pong (nor anything) from the client in time (4201).
    PusherPongTimeout,
    /// Pusher: a violation of the protocol or its limits; do not come back
    /// unchanged (4009): flooding, a message too big.
    PusherPolicy,
}

impl CloseReason {
    /// The WebSocket close code sent for this reason.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::ShuttingDown | CloseReason::IdleTimeout => 1001,
            CloseReason::Protocol => 1002,
            CloseReason::Binary => 1003,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::Policy => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Internal => 1011,
            CloseReason::Unauthorized => 4001,
            CloseReason::SlowConsumer => 4002,
            CloseReason::PusherUnknownApp => 4001,
            CloseReason::PusherProtocol => 4007,
            CloseReason::PusherReconnect => 4200,
            CloseReason::PusherOverCapacity => 4100,
            CloseReason::PusherPongTimeout => 4201,
            CloseReason::PusherPolicy => 4009,
        }
    }

    /// The reason a Pusher client is given instead (Pusher's codes tell
    /// pusher-js whether and when to reconnect).
    pub fn for_pusher(self) -> CloseReason {
        match self {
            CloseReason::ShuttingDown | CloseReason::Internal => CloseReason::PusherReconnect,
            CloseReason::IdleTimeout => CloseReason::PusherPongTimeout,
            CloseReason::SlowConsumer => CloseReason::PusherOverCapacity,
            CloseReason::Policy | CloseReason::TooBig | CloseReason::Binary => {
                CloseReason::PusherPolicy
            }
            other => other,
        }
    }

    /// The close frame's reason text: short, stable, meant for logs and clients.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ShuttingDown => "shutting down",
            CloseReason::IdleTimeout => "idle timeout",
            CloseReason::Binary => "binary frames are not supported",
            CloseReason::Protocol => "protocol error",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::Policy => "flooding",
            CloseReason::TooBig => "message too big",
            CloseReason::Internal => "internal error",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::PusherUnknownApp => "App key not in this cluster",
            CloseReason::PusherProtocol => "unsupported protocol version",
            CloseReason::PusherReconnect => "reconnect",
            CloseReason::PusherOverCapacity => "over capacity",
            CloseReason::PusherPongTimeout => "pong reply not received",
            CloseReason::PusherPolicy => "policy violation",
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.code())
    }
}
