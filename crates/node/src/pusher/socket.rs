//! What a Pusher socket's frames do: subscribe (public, `private-` with an
//! auth string), unsubscribe, ping, and client events (`client-*`, on
//! private channels the socket is subscribed to, never echoed to it).

use std::collections::BTreeSet;

use banter_protocol::ChannelName;
use serde_json::{Value, json};

use super::{
    ACTIVITY_TIMEOUT_S, Kind, MAX_CHANNELS, MAX_EVENT_BYTES, auth_ok, error, frame, published,
    subscription_error, topic,
};
use crate::conn::Session;

/// A Pusher socket's own state.
#[derive(Debug, Default)]
pub(crate) struct PusherState {
    /// The channels it is subscribed to.
    pub channels: BTreeSet<ChannelName>,
}

/// The first frame of a Pusher socket.
pub(crate) fn connection_established(socket_id: &str) -> String {
    let data = json!({"socket_id": socket_id, "activity_timeout": ACTIVITY_TIMEOUT_S});
    frame("pusher:connection_established", None, &data)
}

impl Session {
    /// One text frame of a Pusher socket: the reply to write, if any.
    pub(crate) async fn on_pusher(&mut self, text: &str, allowed: bool) -> Option<String> {
        let Ok(Value::Object(f)) = serde_json::from_str::<Value>(text) else {
            return Some(error(4200, "a frame is a JSON object with an event"));
        };
        let Some(event) = f.get("event").and_then(Value::as_str) else {
            return Some(error(4200, "a frame is a JSON object with an event"));
        };
        if !allowed {
            return Some(error(4301, "too many messages: slow down"));
        }
        // `data` comes as an object, or as a string holding one.
        let data = match f.get("data") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => Value::Null,
        };
        match event {
            "pusher:ping" => Some(frame("pusher:pong", None, &json!({}))),
            "pusher:pong" => None,
            "pusher:subscribe" => Some(self.pusher_subscribe(&data).await),
            "pusher:unsubscribe" => {
                if let Some(channel) = data
                    .get("channel")
                    .and_then(Value::as_str)
                    .and_then(|c| c.parse::<ChannelName>().ok())
                {
                    self.pusher_unsubscribe(&channel).await;
                }
                None
            }
            e if e.starts_with("client-") => {
                let channel = f.get("channel").and_then(Value::as_str).unwrap_or("");
                let data = f.get("data").cloned().unwrap_or(Value::Null);
                self.client_event(e, channel, data).await
            }
            // Other events are not the client's to send: ignored, as Pusher does.
            _ => None,
        }
    }

    async fn pusher_subscribe(&mut self, data: &Value) -> String {
        let name = data.get("channel").and_then(Value::as_str).unwrap_or("");
        let Ok(channel) = name.parse::<ChannelName>() else {
            return subscription_error(name, "InvalidChannel", "invalid channel name", 4009);
        };
        let config = &self.node.config().pusher;
        let socket_id = self.member.conn.as_str();
        match Kind::of(name) {
            Kind::Public => {}
            Kind::Private => {
                let given = data.get("auth").and_then(Value::as_str).unwrap_or("");
                if !auth_ok(&config.key, &config.secret, socket_id, name, None, given) {
                    return subscription_error(
                        name,
                        "AuthError",
                        "invalid signature: the connection is unauthorized",
                        401,
                    );
                }
            }
            Kind::Presence => {
                return subscription_error(
                    name,
                    "UnsupportedError",
                    "presence channels are not served by this node yet",
                    501,
                );
            }
        }
        let state = self.pusher.get_or_insert_default();
        if state.channels.contains(&channel) {
            return frame(
                "pusher_internal:subscription_succeeded",
                Some(name),
                &json!({}),
            );
        }
        if state.channels.len() >= MAX_CHANNELS {
            return subscription_error(name, "LimitReached", "too many channels", 4004);
        }
        let hub = &self.node.inner.hub;
        match hub.subscribe_channel(&channel, &self.member.conn).await {
            Ok(_) => {
                self.pusher.get_or_insert_default().channels.insert(channel);
                frame(
                    "pusher_internal:subscription_succeeded",
                    Some(name),
                    &json!({}),
                )
            }
            Err(e) => {
                tracing::warn!(channel = name, error = %e, "pusher subscribe failed");
                subscription_error(name, "ServerError", "cannot subscribe now, try again", 503)
            }
        }
    }

    async fn pusher_unsubscribe(&mut self, channel: &ChannelName) {
        let removed = self
            .pusher
            .as_mut()
            .is_some_and(|s| s.channels.remove(channel));
        if removed {
            let hub = &self.node.inner.hub;
            hub.unsubscribe_channel(channel, &self.member.conn).await;
        }
    }

    /// A `client-*` event: to every other subscriber of the channel, on
    /// every node; only on private channels the socket is subscribed to.
    async fn client_event(&mut self, event: &str, channel: &str, data: Value) -> Option<String> {
        let Ok(name) = channel.parse::<ChannelName>() else {
            return Some(error(4009, "client event on an invalid channel"));
        };
        if Kind::of(channel) == Kind::Public {
            return Some(error(
                4301,
                "client events are only allowed on private and presence channels",
            ));
        }
        if !self
            .pusher
            .as_ref()
            .is_some_and(|s| s.channels.contains(&name))
        {
            return Some(error(
                4009,
                "client event on a channel you are not subscribed to",
            ));
        }
        let data = match data {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if data.len() > MAX_EVENT_BYTES {
            return Some(error(4301, "client event data over 10 KB"));
        }
        let frame = frame(event, Some(channel), &Value::String(data));
        let payload = published(Some(&self.member.conn), &frame);
        match self
            .node
            .inner
            .bus
            .publish_stored(&topic(&name), payload)
            .await
        {
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(channel, error = %e, "client event not published");
                Some(error(4201, "the event was not sent: try again"))
            }
        }
    }

    /// Unsubscribes every channel: the Pusher part of a session's cleanup.
    pub(crate) async fn pusher_cleanup(&mut self) {
        let Some(state) = self.pusher.take() else {
            return;
        };
        let hub = &self.node.inner.hub;
        for channel in state.channels {
            hub.unsubscribe_channel(&channel, &self.member.conn).await;
        }
    }
}
