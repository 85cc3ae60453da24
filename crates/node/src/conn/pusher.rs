//! What a Pusher socket's frames do: subscribe (public, `private-` with an
//! auth string), unsubscribe, ping, and client events (`client-*`, on
//! private channels the socket is subscribed to, never echoed to it).

use std::collections::BTreeMap;

use banter_presence::{Member, Page};
use banter_protocol::{ChannelName, ConnId, DisplayName, User, UserId};
use serde_json::{Value, json};
use std::sync::Arc;

use super::Session;
use crate::pusher::{
    ACTIVITY_TIMEOUT_S, Kind, MAX_CHANNELS, MAX_EVENT_BYTES, MAX_PRESENCE_MEMBERS,
    MAX_USER_INFO_BYTES, auth_ok, client_event, error, frame, published, subscription_error, topic,
};

/// A Pusher socket's own state.
#[derive(Debug, Default)]
pub(crate) struct PusherState {
    /// The channels it is subscribed to, with who it is on presence ones.
    pub channels: BTreeMap<ChannelName, Option<UserId>>,
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
                let channel_data = data
                    .get("channel_data")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let given = data.get("auth").and_then(Value::as_str).unwrap_or("");
                if !auth_ok(
                    &config.key,
                    &config.secret,
                    socket_id,
                    name,
                    Some(channel_data),
                    given,
                ) {
                    return subscription_error(
                        name,
                        "AuthError",
                        "invalid signature: the connection is unauthorized",
                        401,
                    );
                }
                return match presence_member(&self.member.conn, channel_data) {
                    Ok(member) => self.subscribe(channel, Some(member)).await,
                    Err(why) => subscription_error(name, "AuthError", why, 4009),
                };
            }
        }
        self.subscribe(channel, None).await
    }

    /// Subscribes the socket (and on a presence channel records `member`).
    async fn subscribe(&mut self, channel: ChannelName, member: Option<Member>) -> String {
        let name = channel.as_str().to_owned();
        let name = name.as_str();
        let state = self.pusher.get_or_insert_default();
        if state.channels.contains_key(&channel) {
            return frame(
                "pusher_internal:subscription_succeeded",
                Some(name),
                &json!({}),
            );
        }
        if state.channels.len() >= MAX_CHANNELS {
            return subscription_error(name, "LimitReached", "too many channels", 4004);
        }
        let node = self.node.clone();
        let hub = &node.inner.hub;
        let presence = member.is_some();
        let user = member.as_ref().map(|m| m.user.id.clone());
        match hub
            .subscribe_channel(
                &channel,
                &self.member.conn,
                member,
                MAX_PRESENCE_MEMBERS + 1,
            )
            .await
        {
            Ok(None) => subscription_error(name, "ServerError", "the socket is closing", 503),
            Ok(Some(page)) if presence && page.count > MAX_PRESENCE_MEMBERS => {
                hub.unsubscribe_channel(&channel, &self.member.conn).await;
                subscription_error(
                    name,
                    "LimitReached",
                    "the presence channel has its 100 members",
                    4100,
                )
            }
            Ok(Some(page)) => {
                self.pusher
                    .get_or_insert_default()
                    .channels
                    .insert(channel, user);
                let data = if presence {
                    presence_data(&page)
                } else {
                    json!({})
                };
                frame("pusher_internal:subscription_succeeded", Some(name), &data)
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
            .is_some_and(|s| s.channels.remove(channel).is_some());
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
        let Some(user) = self.pusher.as_ref().and_then(|s| s.channels.get(&name)) else {
            return Some(error(
                4009,
                "client event on a channel you are not subscribed to",
            ));
        };
        let user = user.clone();
        let data = match data {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if data.len() > MAX_EVENT_BYTES {
            return Some(error(4301, "client event data over 10 KB"));
        }
        // On a presence channel the others learn who sent it.
        let frame = client_event(event, channel, data, user.as_ref().map(UserId::as_str));
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
        for channel in state.channels.into_keys() {
            hub.unsubscribe_channel(&channel, &self.member.conn).await;
        }
    }
}

/// Who a socket is on a presence channel, from its `channel_data`
/// (`{"user_id": .., "user_info": ..}`, as the app's auth endpoint signed it).
fn presence_member(conn: &ConnId, channel_data: &str) -> Result<Member, &'static str> {
    let data: Value = serde_json::from_str(channel_data).map_err(|_| "channel_data is not JSON")?;
    let id = match data.get("user_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("channel_data has no user_id"),
    };
    let id = UserId::try_from(id)
        .map_err(|_| "user_id must be 1-128 characters of A-Z a-z 0-9 _ . @ : | + -")?;
    let info = match data.get("user_info") {
        None | Some(Value::Null) => None,
        Some(info) => {
            let info = info.to_string();
            if info.len() > MAX_USER_INFO_BYTES {
                return Err("user_info over 1 KB");
            }
            Some(Arc::from(info))
        }
    };
    let name = DisplayName::try_from(String::from("pusher"))
        .unwrap_or_else(|_| unreachable!("a valid display name"));
    Ok(Member {
        conn: conn.clone(),
        user: User { id, name },
        info,
    })
}

/// A presence channel's `subscription_succeeded` data: its members, each
/// once, with their `user_info`.
fn presence_data(page: &Page) -> Value {
    let ids: Vec<&str> = page.users.iter().map(|u| u.id.as_str()).collect();
    let hash: serde_json::Map<String, Value> = page
        .users
        .iter()
        .map(|u| {
            let info = page
                .info
                .get(&u.id)
                .and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or(Value::Null);
            (u.id.to_string(), info)
        })
        .collect();
    json!({"presence": {"ids": ids, "hash": hash, "count": page.count}})
}
