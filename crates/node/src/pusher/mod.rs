//! The Pusher front door: the Pusher Channels protocol 7 on `/app/{key}`
//! and the Pusher HTTP API on `/apps/{app_id}/...`, on the same bus, hub and
//! fan-out as Banter's own protocol.
//!
//! A Pusher channel is a bus topic of its own ([`Topic::Pusher`]): a node
//! subscribes it while it has a subscriber of it, every event published on
//! it reaches every node in one order, and it is kept briefly in the
//! channel's stream so that an interrupted subscription is repaired (as a
//! user's mailbox is). What is published is `{socket_id}\n{frame}`: the
//! socket the event must skip (a client event's sender, or the trigger's
//! `socket_id`; empty for none), then the Pusher frame, ready to send; the
//! fan-out splits the two once per event ([`split_except`]).
//!
//! - this file: channel kinds, limits, signatures, socket ids, member events;
//! - `wire.rs`: the frames, and what a node publishes on a channel;
//! - [`api`]: the HTTP API (trigger, batch trigger, channel queries);
//! - [`tally`]: subscription counts over the cluster;
//! - `conn/pusher.rs`: what a Pusher socket's frames do.

pub(crate) mod api;
pub(crate) mod tally;
pub(crate) mod wire;

pub(crate) use wire::{client_event, error, frame, published, subscription_error};

use banter_bus::Topic;
use banter_protocol::{ChannelName, ConnId};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// The most bytes of an event's `data` (a trigger's, a client event's):
/// Pusher's limit.
pub(crate) const MAX_EVENT_BYTES: usize = 10 * 1024;
/// The most channels one trigger names: Pusher's limit.
pub(crate) const MAX_TRIGGER_CHANNELS: usize = 100;
/// The most events in one batch trigger: Pusher's limit.
pub(crate) const MAX_BATCH: usize = 10;
/// The most members of a presence channel: Pusher's limit.
pub(crate) const MAX_PRESENCE_MEMBERS: usize = 100;
/// The most bytes of a presence member's `user_info`: Pusher's limit.
pub(crate) const MAX_USER_INFO_BYTES: usize = 1024;
/// The most channels one socket may subscribe.
pub(crate) const MAX_CHANNELS: usize = 100;
/// The client's ping interval when nothing else is said (seconds), as
/// `activity_timeout` tells pusher-js.
pub(crate) const ACTIVITY_TIMEOUT_S: u64 = 30;

/// What kind of channel a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Public,
    Private,
    Presence,
}

impl Kind {
    pub fn of(channel: &str) -> Kind {
        if channel.starts_with("private-") {
            Kind::Private
        } else if channel.starts_with("presence-") {
            Kind::Presence
        } else {
            Kind::Public
        }
    }
}

/// A presence change of a Pusher presence channel as the delivery of its
/// `pusher_internal:member_added` or `member_removed`, for every subscriber
/// but the user's own sockets.
pub(crate) fn member_event(
    channel: &ChannelName,
    change: &banter_presence::Change,
    topic: Topic,
    at: u32,
) -> crate::outlet::Delivery {
    let id = change.user.id.as_str();
    let (event, data) = if change.joined {
        let info: Value = change
            .info
            .as_deref()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(Value::Null);
        (
            "pusher_internal:member_added",
            json!({"user_id": id, "user_info": info}),
        )
    } else {
        ("pusher_internal:member_removed", json!({"user_id": id}))
    };
    // No socket to skip (no `{socket_id}\n` line): the user's are, below.
    let mut delivery = node_event(topic, frame(event, Some(channel.as_str()), &data), at);
    delivery.except_user = Some(change.user.id.clone());
    delivery
}

/// A channel's subscription count over the cluster as the delivery of its
/// `pusher_internal:subscription_count`, for every subscriber.
pub(crate) fn count_event(
    channel: &ChannelName,
    count: usize,
    topic: Topic,
    at: u32,
) -> crate::outlet::Delivery {
    let data = json!({ "subscription_count": count });
    let event = "pusher_internal:subscription_count";
    node_event(topic, frame(event, Some(channel.as_str()), &data), at)
}

/// A Pusher frame the node made (not published as a channel's event) as a
/// delivery to the channel's subscribers.
fn node_event(topic: Topic, frame: String, at: u32) -> crate::outlet::Delivery {
    let envelope = banter_bus::Envelope {
        topic,
        position: None,
        presence: false,
        payload: Bytes::from(frame),
    };
    crate::outlet::Delivery::new(envelope, at)
}

/// The topic of a channel.
pub(crate) fn topic(channel: &ChannelName) -> Topic {
    Topic::Pusher(channel.clone())
}

/// A Pusher socket id: `{digits}.{digits}`, unique in the cluster (random),
/// and a valid connection id.
pub(crate) fn socket_id() -> ConnId {
    use rand::RngExt;
    let mut rng = rand::rng();
    let id = format!(
        "{}.{}",
        rng.random_range(1_000_000_000u64..10_000_000_000),
        rng.random_range(1_000_000_000u64..10_000_000_000)
    );
    ConnId::try_from(id).unwrap_or_else(|_| unreachable!("digits and a dot are a valid id"))
}

/// HMAC-SHA256 of `message` with `secret`, in lower-case hex.
pub(crate) fn sign(secret: &str, message: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        unreachable!("HMAC takes a key of any length");
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `given` is the right auth string (`key:signature`) of a private
/// or presence subscription: the signature of `socket_id:channel`, plus
/// `:channel_data` for presence. Compared in constant time.
pub(crate) fn auth_ok(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    given: &str,
) -> bool {
    use subtle::ConstantTimeEq;
    let message = match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    };
    let expected = format!("{key}:{}", sign(secret, &message));
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::wire::split_except;
    use super::*;

    #[test]
    fn auth_strings_match_pushers_documented_example() {
        // From Pusher's docs ("Generating the authentication signature"):
        // key 278d425bdf160c739803, secret 7ad3773142a6692b25b8,
        // socket 1234.1234, channel private-foobar.
        let sig = sign("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(auth_ok(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1234",
            "private-foobar",
            None,
            &format!("278d425bdf160c739803:{sig}")
        ));
        assert!(!auth_ok(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "1234.1235",
            "private-foobar",
            None,
            &format!("278d425bdf160c739803:{sig}")
        ));
    }

    #[test]
    fn the_skipped_socket_is_split_off_without_a_copy() {
        let c: ConnId = "12.34".parse().unwrap();
        let p = published(Some(&c), r#"{"event":"e"}"#);
        let (except, frame) = split_except(p);
        assert_eq!(except, Some(c));
        assert_eq!(&frame[..], br#"{"event":"e"}"#);
        let (none, frame) = split_except(published(None, "{}"));
        assert_eq!((none, &frame[..]), (None, &b"{}"[..]));
    }

    #[test]
    fn frames_carry_data_as_a_string() {
        let f: Value = serde_json::from_str(&frame("e", Some("c"), &json!({"a": 1}))).unwrap();
        assert_eq!(f, json!({"event":"e","channel":"c","data":"{\"a\":1}"}));
        let f: Value = serde_json::from_str(&frame("e", None, &json!("raw"))).unwrap();
        assert_eq!(f, json!({"event":"e","data":"raw"}));
    }
}
