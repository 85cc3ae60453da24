//! The Pusher frames the node writes, and what it publishes on a channel's
//! topic: `{socket_id}\n{frame}` (see the module docs of `pusher`).

use banter_protocol::ConnId;
use bytes::Bytes;
use serde_json::{Value, json};

/// A frame with the given event and data (`data` as Pusher sends it: a JSON
/// string holding JSON), on `channel` if any.
pub(crate) fn frame(event: &str, channel: Option<&str>, data: &Value) -> String {
    let data = match data {
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    };
    let mut f = json!({ "event": event, "data": data });
    if let Some(channel) = channel {
        f["channel"] = Value::String(channel.to_owned());
    }
    f.to_string()
}

/// A client event as the other subscribers get it: with the sender's
/// `user_id` on a presence channel.
pub(crate) fn client_event(
    event: &str,
    channel: &str,
    data: String,
    user_id: Option<&str>,
) -> String {
    let mut f = json!({ "event": event, "channel": channel, "data": data });
    if let Some(user_id) = user_id {
        f["user_id"] = Value::String(user_id.to_owned());
    }
    f.to_string()
}

/// A `pusher:error` frame (its data an object, as Pusher sends it).
pub(crate) fn error(code: u16, message: &str) -> String {
    json!({"event": "pusher:error", "data": {"code": code, "message": message}}).to_string()
}

/// A `pusher:subscription_error` frame for `channel`.
pub(crate) fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": kind, "error": message, "status": status},
    })
    .to_string()
}

/// What a node publishes on a channel's topic: the socket to skip (or
/// none), then the frame.
pub(crate) fn published(except: Option<&ConnId>, frame: &str) -> Bytes {
    let except = except.map_or("", |c| c.as_str());
    Bytes::from(format!("{except}\n{frame}"))
}

/// Splits a published payload into the socket to skip and the frame,
/// copying nothing. A payload without the line is all frame.
pub(crate) fn split_except(payload: Bytes) -> (Option<ConnId>, Bytes) {
    match payload.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let except = std::str::from_utf8(&payload[..at])
                .ok()
                .filter(|s| !s.is_empty())
                .and_then(|s| ConnId::try_from(s.to_owned()).ok());
            (except, payload.slice(at + 1..))
        }
        None => (None, payload),
    }
}
