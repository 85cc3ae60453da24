//! [`RedisPresence`]: presence shared by every node of a cluster.
//!
//! Per room, three keys (all under `{prefix}:presence:{room}`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{prefix}:presence:{room}` | sorted set | conn id, score = expiry (ms since epoch) |
//! | `{prefix}:presence:{room}:users` | hash | conn id → user JSON `{"id":..,"name":..}` |
//! | `{prefix}:presence:{room}:counts` | hash | user id → how many of the set's conns are theirs |
//!
//! Every change is one Lua script (`lua/*.lua`), so it is atomic. The per-user count makes
//! `join` and `leave` O(1) instead of a scan of the room, and pairs events:
//! a user joins when the count goes 0 → 1 and leaves when it returns to 0,
//! by `leave` or by a sweep, whichever removes their last entry — so each
//! announced join has exactly one announced leave, even when a user's dead
//! connection (on a crashed node) and live one overlap. An entry that has
//! expired but is not swept yet still counts; `users` hides it already.
//!
//! All three keys get a PEXPIRE of 2 × ttl on every join and refresh, so a
//! room whose nodes all died (nobody left to sweep it) vanishes from Redis.
//!
//! Expiry uses each node's wall clock: nodes whose clocks disagree by more
//! than the ttl would sweep each other's live entries.

use std::sync::Arc;
use std::time::Duration;

use banter_protocol::{ConnId, RoomId, User};
use deadpool_redis::Pool;
use redis::{FromRedisValue, Script, Value};

use crate::memory::{duration_ms, group_by_room, now_ms, sorted_unique};
use crate::{Member, Presence, PresenceError};

/// Presence in Redis, shared by every node that uses the same Redis and key
/// prefix. Cheap to clone: the pool and the scripts are shared.
#[derive(Clone, Debug)]
pub struct RedisPresence {
    /// Command connections. Presence calls are a few per connection
    /// lifetime plus one refresh per node every ttl/3, so a pooled
    /// connection per call is cheap enough.
    pool: Pool,
    /// `redis.key_prefix`: every key starts with `{prefix}:`.
    prefix: Arc<str>,
    /// How long an entry lives after its last join or refresh, in ms.
    ttl_ms: u64,
    /// Built once; each is sent by hash (EVALSHA) and loaded on NOSCRIPT,
    /// e.g. after a Redis restart.
    scripts: Arc<Scripts>,
}

#[derive(Debug)]
struct Scripts {
    join: Script,
    leave: Script,
    users: Script,
    refresh: Script,
}

/// Rooms refreshed per Redis round trip (see `refresh`).
const REFRESH_CHUNK: usize = 64;

impl RedisPresence {
    /// Presence over `pool` with keys under `{key_prefix}:presence:` and
    /// entries that expire `ttl` after their last join or refresh
    /// (`presence.ttl_ms`). Does no I/O.
    pub fn new(pool: Pool, key_prefix: impl Into<String>, ttl: Duration) -> RedisPresence {
        let user_id = include_str!("lua/user_id.lua");
        let with_user_id = |body: &str| Script::new(&format!("{user_id}{body}"));
        RedisPresence {
            pool,
            prefix: Arc::from(key_prefix.into()),
            ttl_ms: duration_ms(ttl),
            scripts: Arc::new(Scripts {
                join: Script::new(include_str!("lua/join.lua")),
                leave: with_user_id(include_str!("lua/leave.lua")),
                users: Script::new(include_str!("lua/users.lua")),
                refresh: with_user_id(include_str!("lua/refresh.lua")),
            }),
        }
    }

    /// The room's sorted set, user hash and count hash.
    fn keys(&self, room: &RoomId) -> [String; 3] {
        let set = format!("{}:presence:{}", self.prefix, room);
        let users = format!("{set}:users");
        let counts = format!("{set}:counts");
        [set, users, counts]
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, PresenceError> {
        self.pool.get().await.map_err(PresenceError::Pool)
    }

    /// The key expiry: long enough to outlive every live entry, short
    /// enough that a room abandoned by crashed nodes does not linger.
    fn key_ttl_ms(&self) -> u64 {
        self.ttl_ms.saturating_mul(2)
    }
}

fn parse_user(json: &str, key: &str) -> Result<User, PresenceError> {
    serde_json::from_str(json)
        .map_err(|e| PresenceError::Corrupt(format!("user entry in {key}: {e}")))
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError> {
        let json = serde_json::to_string(&member.user)
            .map_err(|e| PresenceError::Corrupt(format!("cannot encode user: {e}")))?;
        let [set, users, counts] = self.keys(room);
        let mut con = self.connection().await?;
        let first: i64 = self
            .scripts
            .join
            .key(&set)
            .key(&users)
            .key(&counts)
            .arg(member.conn.as_str())
            .arg(now_ms().saturating_add(self.ttl_ms))
            .arg(json)
            .arg(member.user.id.as_str())
            .arg(self.key_ttl_ms())
            .invoke_async(&mut con)
            .await
            .map_err(PresenceError::Redis)?;
        Ok(first == 1)
    }

    async fn leave(&self, room: &RoomId, member: &Member) -> Result<bool, PresenceError> {
        let [set, users, counts] = self.keys(room);
        let mut con = self.connection().await?;
        let last: i64 = self
            .scripts
            .leave
            .key(&set)
            .key(&users)
            .key(&counts)
            .arg(member.conn.as_str())
            .invoke_async(&mut con)
            .await
            .map_err(PresenceError::Redis)?;
        if last < 0 {
            return Err(PresenceError::Corrupt(format!(
                "{users} held no readable user for {}",
                member.conn
            )));
        }
        Ok(last == 1)
    }

    async fn users(&self, room: &RoomId) -> Result<Vec<User>, PresenceError> {
        let [set, users, _] = self.keys(room);
        let mut con = self.connection().await?;
        let jsons: Vec<String> = self
            .scripts
            .users
            .key(&set)
            .key(&users)
            .arg(now_ms())
            .invoke_async(&mut con)
            .await
            .map_err(PresenceError::Redis)?;
        let list = jsons
            .iter()
            .map(|j| parse_user(j, &users))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(sorted_unique(list))
    }

    async fn refresh(
        &self,
        entries: &[(RoomId, ConnId)],
    ) -> Result<Vec<(RoomId, User)>, PresenceError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let groups = group_by_room(entries);
        let keys: Vec<[String; 3]> = groups.iter().map(|(room, _)| self.keys(room)).collect();
        let invocations: Vec<_> = groups
            .iter()
            .zip(&keys)
            .map(|((_, conns), [set, users, counts])| {
                let mut inv = self.scripts.refresh.key(set);
                inv.key(users)
                    .key(counts)
                    .arg(now)
                    .arg(now.saturating_add(self.ttl_ms))
                    .arg(self.key_ttl_ms());
                for conn in conns {
                    inv.arg(conn.as_str());
                }
                inv
            })
            .collect();
        // A few rooms per round trip, not all of them in one: Redis runs a
        // client's whole pipeline before serving anyone else, and one
        // pipeline of thousands of scripts stalled every publish behind it
        // (the rooms benchmark's p99). A pipeline does not load scripts on
        // NOSCRIPT by itself, so each starts with SCRIPT LOAD (a no-op when
        // the script is cached).
        let mut con = self.connection().await?;
        let mut departed = Vec::new();
        for ((groups, keys), invocations) in groups
            .chunks(REFRESH_CHUNK)
            .zip(keys.chunks(REFRESH_CHUNK))
            .zip(invocations.chunks(REFRESH_CHUNK))
        {
            let mut pipe = redis::pipe();
            pipe.load_script(&self.scripts.refresh).ignore();
            for inv in invocations {
                pipe.invoke_script(inv);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut con)
                .await
                .map_err(PresenceError::Redis)?;
            if replies.len() != groups.len() {
                return Err(PresenceError::Corrupt(format!(
                    "{} sweep replies for {} rooms",
                    replies.len(),
                    groups.len()
                )));
            }
            for (((room, _), [_, users, _]), reply) in groups.iter().zip(keys).zip(replies) {
                let (corrupt, gone) = <(i64, Vec<String>)>::from_redis_value(reply)
                    .map_err(|e| PresenceError::Redis(e.into()))?;
                if corrupt > 0 {
                    tracing::warn!(key = %users, corrupt, "swept presence entries without a readable user");
                }
                // The entries are already swept: a user that cannot be read is
                // logged and skipped rather than failing everyone else's leave.
                let mut left = Vec::with_capacity(gone.len());
                for json in &gone {
                    match parse_user(json, users) {
                        Ok(user) => left.push(user),
                        Err(e) => tracing::warn!(error = %e, "departed user not announced"),
                    }
                }
                departed.extend(
                    sorted_unique(left)
                        .into_iter()
                        .map(|u| ((*room).clone(), u)),
                );
            }
        }
        Ok(departed)
    }
}
