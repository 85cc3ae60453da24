//! [`Keyspace`]: the names of every key and channel the Redis bus and
//! presence use, in one place.
//!
//! On one Redis, a room's names are `{prefix}:room:{room}` (its channel),
//! `{prefix}:history:{room}` (its stream) and `{prefix}:presence:{room}`
//! (the base of its presence keys). On Redis Cluster the room is wrapped in a
//! hash tag, `{prefix}:room:{lobby}` with the braces, so that a room's
//! channel, stream, epoch and presence keys hash to one slot: the
//! store-and-publish script and the presence scripts touch them atomically on
//! one shard, and rooms spread over the shards by their names. The scripts
//! publish with `SPUBLISH` there (sharded pub/sub: a message goes to the
//! shard that owns the room, not to every node of the cluster).

use std::fmt::Display;
use std::sync::Arc;

use banter_protocol::{RoomId, UserId};

use crate::Topic;

/// See the module docs. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Arc<str>,
    cluster: bool,
}

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

impl Keyspace {
    /// Names for one Redis: every name starts with `{prefix}:`.
    pub fn standalone(prefix: impl Into<String>) -> Keyspace {
        Keyspace {
            prefix: Arc::from(prefix.into()),
            cluster: false,
        }
    }

    /// Names for Redis Cluster: the same, with each room or user in a hash tag.
    pub fn cluster(prefix: impl Into<String>) -> Keyspace {
        Keyspace {
            prefix: Arc::from(prefix.into()),
            cluster: true,
        }
    }

    /// Whether the names are for Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The command that publishes to a topic's channel: `SPUBLISH` on a
    /// cluster, `PUBLISH` on one Redis.
    pub fn publish_command(&self) -> &'static str {
        if self.cluster { "SPUBLISH" } else { "PUBLISH" }
    }

    /// `{prefix}:{kind}:{name}`, the name in a hash tag on a cluster.
    fn name(&self, kind: &str, name: impl Display) -> String {
        if self.cluster {
            format!("{}:{kind}:{{{name}}}", self.prefix)
        } else {
            format!("{}:{kind}:{name}", self.prefix)
        }
    }

    /// The channel a topic is published on.
    pub fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(r) => self.name("room", r),
            Topic::User(u) => self.name("user", u),
            Topic::Pusher(c) => self.name("pusher", c),
        }
    }

    /// A `PUBSUB CHANNELS` pattern that matches every Pusher channel's name.
    pub fn pusher_pattern(&self) -> String {
        self.name("pusher", "*")
    }

    /// The inverse of [`channel`](Self::channel); `None` for anything else.
    pub fn topic(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix(&*self.prefix)?.strip_prefix(':')?;
        let (kind, name) = rest.split_once(':')?;
        let name = if self.cluster {
            name.strip_prefix('{')?.strip_suffix('}')?
        } else {
            name
        };
        match kind {
            "room" => name.parse().ok().map(Topic::Room),
            "user" => name.parse().ok().map(Topic::User),
            "pusher" => name.parse().ok().map(Topic::Pusher),
            _ => None,
        }
    }

    /// A room's history stream (its epoch is `{stream}:epoch`).
    pub fn history(&self, room: &RoomId) -> String {
        self.name("history", room)
    }

    /// The stream a topic's stored publishes are kept in: a room's history,
    /// a user's mailbox (`{prefix}:inbox:{user}`, the direct messages and
    /// receipts delivered to them lately, which gap repair reads), or a
    /// Pusher channel's recent events (`{prefix}:pusher-log:{channel}`).
    pub fn stream(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => self.history(room),
            Topic::User(user) => self.name("inbox", user),
            Topic::Pusher(channel) => self.name("pusher-log", channel),
        }
    }

    /// The base of the keys of the dialog of two users (`{base}` is its
    /// stream, `{base}:epoch` and `{base}:meta` the rest):
    /// `{prefix}:dialog:{a}/{b}`, the ids in order (`/` is in no user id).
    pub fn dialog(&self, a: &UserId, b: &UserId) -> String {
        let (a, b) = crate::dialogs::pair(a, b);
        self.name("dialog", format_args!("{a}/{b}"))
    }

    /// A user's list of dialogs: a sorted set of the other users, scored by
    /// the time of the dialog's last message.
    pub fn dialogs(&self, user: &UserId) -> String {
        self.name("dialogs", user)
    }

    /// The base of a room's presence keys (the others are `{base}:{what}`).
    pub fn presence(&self, room: &RoomId) -> String {
        self.name("presence", room)
    }

    /// The base of a topic's presence keys: a room's, or a Pusher presence
    /// channel's (`{prefix}:pusher-presence:{channel}`), in the topic's slot.
    pub fn presence_of(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(room) => self.presence(room),
            Topic::User(user) => self.name("user-presence", user),
            Topic::Pusher(channel) => self.name("pusher-presence", channel),
        }
    }

    /// A health channel of this node: `{prefix}:health:{id}`; on a cluster,
    /// with a hash tag chosen to land in `slot` (so a probe proves the
    /// connection to the shard that owns the slot).
    pub fn health(&self, id: &str, slot: u16) -> String {
        if self.cluster {
            format!("{}:health:{{{}}}:{id}", self.prefix, tag_for_slot(slot))
        } else {
            format!("{}:health:{id}", self.prefix)
        }
    }
}

/// The hash slot of a key or shard channel (CRC16 of its hash tag, or of the
/// whole name when it has none, modulo [`SLOTS`]).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let after = &bytes[open + 1..];
        let close = after.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &after[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS
}

/// A short hash tag whose slot is `slot`: the first of `s0`, `s1`, ... that
/// hashes there (found by search, a few thousand CRCs at most).
fn tag_for_slot(slot: u16) -> String {
    (0u32..)
        .map(|i| format!("s{i}"))
        .find(|tag| self::slot(tag) == slot % SLOTS)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use banter_protocol::UserId;

    #[test]
    fn a_rooms_names_share_one_slot_on_a_cluster() {
        let keys = Keyspace::cluster("banter");
        let room: RoomId = "lobby".parse().unwrap();
        let channel = keys.channel(&Topic::Room(room.clone()));
        assert_eq!(channel, "banter:room:{lobby}");
        assert_eq!(keys.history(&room), "banter:history:{lobby}");
        let epoch = format!("{}:epoch", keys.history(&room));
        let presence = format!("{}:users", keys.presence(&room));
        let s = slot(&channel);
        assert_eq!(s, slot("lobby"));
        assert_eq!([slot(&epoch), slot(&presence)], [s, s]);
        assert_eq!(keys.topic(&channel), Some(Topic::Room(room)));
    }

    #[test]
    fn names_on_one_redis_have_no_tags() {
        let keys = Keyspace::standalone("banter");
        let room: RoomId = "r1".parse().unwrap();
        let user: UserId = "u-1".parse().unwrap();
        assert_eq!(keys.channel(&Topic::Room(room.clone())), "banter:room:r1");
        assert_eq!(keys.channel(&Topic::User(user.clone())), "banter:user:u-1");
        assert_eq!(keys.topic("banter:user:u-1"), Some(Topic::User(user)));
        assert_eq!(keys.topic("banter:room:{r1}"), None);
        assert_eq!(keys.topic("other:room:r1"), None);
        assert_eq!(keys.publish_command(), "PUBLISH");
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
        for s in [0, 1, 5_000, 16_383] {
            assert_eq!(slot(&Keyspace::cluster("p").health("x", s)), s);
        }
    }
}
