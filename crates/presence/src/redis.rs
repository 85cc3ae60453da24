//! [`RedisPresence`]: presence shared by every node of a cluster.
//!
//! Per room, six keys, all under the room's presence base
//! ([`Keyspace::presence`]: `{prefix}:presence:{room}`, on Redis Cluster with
//! the room in a hash tag, so a room's keys and channel share one slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{prefix}:presence:{room}` | sorted set | conn id, score = expiry (ms since epoch) |
//! | `…:users` | hash | conn id → user JSON |
//! | `…:counts` | hash | user id → how many of the set's conns are theirs |
//! | `…:roster` | sorted set (score 0) | the user ids present, read in pages by id |
//! | `…:names` | hash | user id → user JSON, for the pages |
//! | `…:left` | sorted set | conns that left, and when: a refresh must not bring them back |
//! | `…:roster:page` | hash | the first page as last read: `limit`, the roster's `size`, and the users' JSON array (`page`); dropped by any change of a user who sorts into it, and not used once the roster's size differs (`lua/page_of.lua`); lives no longer than the roster |
//! | `…:tally` | hash | node → `count:expiry` of its sockets subscribed (a Pusher channel's subscription count, `lua/tally.lua`); `=` → the total last published |
//!
//! Every change is one Lua script (`lua/*.lua`), so it is atomic, and it
//! publishes the change on the room's channel itself (`lua/announce.lua`),
//! so every node sees one room's changes in one order. The per-user count
//! makes `join` and `leave` O(1) instead of a scan of the room, and pairs
//! events: a user joins when the count goes 0 → 1 and leaves when it
//! returns to 0, by `leave` or by a sweep, whichever removes their last
//! entry. An entry that has expired but is not swept yet still counts.
//!
//! All keys get a PEXPIRE of 2 × ttl on every join and refresh, so a room
//! whose nodes all died (nobody left to sweep it) vanishes from Redis.
//!
//! Expiry uses each node's wall clock: nodes whose clocks disagree by more
//! than the ttl would sweep each other's live entries.

use std::sync::Arc;
use std::time::Duration;

use banter_bus::Topic;
use banter_bus::redis::{Commands, Conn, Keyspace};
use banter_protocol::{User, UserId};
use redis::{FromRedisValue, Script, Value};
use std::collections::{BTreeMap, HashMap};

use crate::memory::{duration_ms, group_by_room, now_ms};
use crate::{Member, Page, Presence, PresenceError};

/// Presence in Redis, shared by every node that uses the same Redis and key
/// prefix. Cheap to clone: the pool and the scripts are shared.
#[derive(Clone)]
pub struct RedisPresence {
    /// The bus's command connection (shared, multiplexed).
    commands: Arc<Commands>,
    /// The bus's names of keys and channels: a room's changes are published
    /// on the room's channel, where its messages go.
    names: Keyspace,
    /// How long an entry lives after its last join or refresh, in ms.
    ttl_ms: u64,
    /// Built once; each is sent by hash (EVALSHA) and loaded on NOSCRIPT,
    /// e.g. after a Redis restart.
    scripts: Arc<Scripts>,
    /// The last full page read of each big room, parsed (see [`Pages`]).
    pages: Arc<Pages>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("names", &self.names)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Scripts {
    join: Script,
    leave: Script,
    page: Script,
    refresh: Script,
    tally: Script,
}

/// Rooms refreshed per Redis round trip (see `refresh`).
const REFRESH_CHUNK: usize = 64;

impl RedisPresence {
    /// Presence over the bus's `commands` with the bus's `names` (keys under
    /// `{prefix}:presence:`, each room's changes published on its channel),
    /// with entries that expire `ttl` after their last join or refresh
    /// (`presence.ttl_ms`). Does no I/O.
    pub fn new(commands: Arc<Commands>, names: Keyspace, ttl: Duration) -> RedisPresence {
        let publish = format!("local PUBLISH = '{}'\n", names.publish_command());
        let shared = [
            publish.as_str(),
            include_str!("lua/user_id.lua"),
            include_str!("lua/announce.lua"),
            include_str!("lua/page_of.lua"),
        ]
        .concat();
        let script = |body: &str| Script::new(&format!("{shared}{body}"));
        RedisPresence {
            commands,
            names,
            ttl_ms: duration_ms(ttl),
            scripts: Arc::new(Scripts {
                join: script(include_str!("lua/join.lua")),
                leave: script(include_str!("lua/leave.lua")),
                page: Script::new(
                    &[
                        include_str!("lua/page_of.lua"),
                        include_str!("lua/page.lua"),
                    ]
                    .concat(),
                ),
                refresh: script(include_str!("lua/refresh.lua")),
                tally: Script::new(&format!("{publish}{}", include_str!("lua/tally.lua"))),
            }),
            pages: Arc::default(),
        }
    }

    /// The room's six keys, in the scripts' order: set, users, counts,
    /// roster, names, left (see the module docs).
    fn keys(&self, room: &Topic) -> [String; 6] {
        let set = self.names.presence_of(room);
        let more = |k: &str| format!("{set}:{k}");
        [
            set.clone(),
            more("users"),
            more("counts"),
            more("roster"),
            more("names"),
            more("left"),
        ]
    }

    /// The topic's subscription counts (see `lua/tally.lua`), beside its
    /// presence keys (in their slot on a cluster, with the channel).
    fn tally_key(&self, topic: &Topic) -> String {
        format!("{}:tally", self.names.presence_of(topic))
    }

    /// The room's channel, where its changes are published.
    fn channel(&self, room: &Topic) -> String {
        self.names.channel(room)
    }

    /// Runs `command` on the bus's command connection.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, PresenceError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        self.commands.run(command).await.map_err(PresenceError::Bus)
    }

    /// The key expiry: long enough to outlive every live entry, short
    /// enough that a room abandoned by crashed nodes does not linger.
    fn key_ttl_ms(&self) -> u64 {
        self.ttl_ms.saturating_mul(2)
    }
}

/// Rooms whose last full page is kept parsed (see [`Pages`]).
const PAGES_KEPT: usize = 256;

/// The last full page (more users than asked) read of each big room, kept
/// with the exact reply it was parsed from. While a big room fills, nearly
/// every join reads the same first page (a newcomer's id rarely sorts into
/// it), and checking every user of it again cost a tenth of the node. A
/// reply is reused only when it is byte for byte the one parsed, so a page
/// is never staler than what Redis answered. Bounded by [`PAGES_KEPT`]
/// rooms; when full, it starts over.
#[derive(Debug, Default)]
struct Pages {
    rooms: std::sync::Mutex<HashMap<String, Arc<Parsed>>>,
}

/// A page's users as parsed from `json`.
#[derive(Debug)]
struct Parsed {
    json: Vec<u8>,
    users: Vec<User>,
    info: BTreeMap<UserId, Arc<str>>,
}

impl Pages {
    /// The users of `json`, a page script's array, from `names`'s hash.
    fn read(&self, names: &str, json: Vec<u8>, limit: usize) -> Result<Arc<Parsed>, PresenceError> {
        let kept = self.lock().get(names).cloned();
        if let Some(kept) = kept.filter(|kept| kept.json == json) {
            return Ok(kept);
        }
        let stored: Vec<crate::Stored> = serde_json::from_slice(&json)
            .map_err(|_| PresenceError::Corrupt(format!("an unreadable user entry in {names}")))?;
        let mut users = Vec::with_capacity(stored.len());
        let mut info = BTreeMap::new();
        for entry in stored {
            let (user, extra) = entry.into_parts();
            if let Some(extra) = extra {
                info.insert(user.id.clone(), extra);
            }
            users.push(user);
        }
        let full = users.len() > limit;
        let parsed = Arc::new(Parsed { json, users, info });
        if full {
            let mut rooms = self.lock();
            if rooms.len() >= PAGES_KEPT && !rooms.contains_key(names) {
                rooms.clear();
            }
            rooms.insert(names.to_owned(), parsed.clone());
        }
        Ok(parsed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Parsed>>> {
        // The map is whole after any panic: each change is one insert or clear.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A page script's reply (`{count, "[json,…]"}`, one user more than `limit`
/// when another page follows) as a [`Page`]; `names` names the hash it came
/// from.
fn page_from(
    pages: &Pages,
    reply: Vec<Value>,
    names: &str,
    limit: usize,
) -> Result<Page, PresenceError> {
    let mut items = reply.into_iter();
    let count = items
        .next()
        .and_then(|v| usize::from_redis_value(v).ok())
        .unwrap_or(0);
    let json = match items.next() {
        Some(Value::BulkString(json)) => json,
        Some(Value::SimpleString(json)) => json.into_bytes(),
        _ => {
            return Err(PresenceError::Corrupt(format!(
                "an unreadable page of {names}"
            )));
        }
    };
    let parsed = pages.read(names, json, limit)?;
    let users: Vec<User> = parsed.users.iter().take(limit).cloned().collect();
    let next = if parsed.users.len() > limit {
        users.last().map(|u| u.id.to_string())
    } else {
        None
    };
    let info = parsed
        .info
        .iter()
        .filter(|(id, _)| users.iter().any(|u| &u.id == *id))
        .map(|(id, info)| (id.clone(), info.clone()))
        .collect();
    Ok(Page {
        users,
        count,
        next,
        info,
    })
}

#[async_trait::async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: &Topic, member: &Member) -> Result<(), PresenceError> {
        self.join_page(room, member, 0).await.map(drop)
    }

    async fn join_page(
        &self,
        room: &Topic,
        member: &Member,
        limit: usize,
    ) -> Result<Page, PresenceError> {
        let json = member.stored_json();
        let keys = self.keys(room);
        let mut invocation = self.scripts.join.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(member.conn.as_str())
            .arg(now_ms().saturating_add(self.ttl_ms))
            .arg(json)
            .arg(member.user.id.as_str())
            .arg(self.key_ttl_ms())
            .arg(self.channel(room))
            // One more than asked, to know whether another page follows.
            .arg(limit.saturating_add(1));
        let reply: Vec<Value> = self
            .run(|mut con| async move { invocation.invoke_async(&mut con).await })
            .await?;
        page_from(&self.pages, reply, &keys[4], limit)
    }

    async fn leave(&self, room: &Topic, member: &Member) -> Result<(), PresenceError> {
        let mut invocation = self.scripts.leave.prepare_invoke();
        let keys = self.keys(room);
        for key in &keys {
            invocation.key(key);
        }
        invocation
            .arg(member.conn.as_str())
            .arg(now_ms())
            .arg(self.ttl_ms)
            .arg(self.channel(room));
        let last: i64 = self
            .run(|mut con| async move { invocation.invoke_async(&mut con).await })
            .await?;
        if last < 0 {
            return Err(PresenceError::Corrupt(format!(
                "{} held no readable user for {}",
                keys[1], member.conn
            )));
        }
        Ok(())
    }

    async fn page(
        &self,
        room: &Topic,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, PresenceError> {
        let keys = self.keys(room);
        // One more than asked, to know whether another page follows.
        let mut invocation = self.scripts.page.prepare_invoke();
        invocation
            .key(&keys[3])
            .key(&keys[4])
            .arg(after.unwrap_or(""))
            .arg(limit.saturating_add(1));
        let reply: Vec<Value> = self
            .run(|mut con| async move { invocation.invoke_async(&mut con).await })
            .await?;
        page_from(&self.pages, reply, &keys[4], limit)
    }

    async fn tally(&self, topic: &Topic, node: &str, local: usize) -> Result<usize, PresenceError> {
        let now = now_ms();
        let mut invocation = self.scripts.tally.prepare_invoke();
        invocation
            .key(self.tally_key(topic))
            .arg(node)
            .arg(local)
            .arg(now.saturating_add(self.ttl_ms))
            .arg(now)
            .arg(self.key_ttl_ms())
            .arg(self.channel(topic));
        let total: usize = self
            .run(|mut con| async move { invocation.invoke_async(&mut con).await })
            .await?;
        Ok(total)
    }

    async fn tallied(&self, topic: &Topic) -> Result<usize, PresenceError> {
        let key = self.tally_key(topic);
        let all: std::collections::HashMap<String, String> = self
            .run(
                |mut con| async move { redis::cmd("HGETALL").arg(key).query_async(&mut con).await },
            )
            .await?;
        let now = now_ms();
        Ok(all
            .iter()
            .filter(|(node, _)| node.as_str() != "=")
            .filter_map(|(_, value)| {
                let (n, expiry) = value.split_once(':')?;
                let (n, expiry) = (n.parse::<usize>().ok()?, expiry.parse::<u64>().ok()?);
                (expiry >= now).then_some(n)
            })
            .sum())
    }

    async fn refresh(&self, entries: &[(Topic, Member)]) -> Result<(), PresenceError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let groups = group_by_room(entries);
        let mut invocations = Vec::with_capacity(groups.len());
        for (room, members) in &groups {
            let mut inv = self.scripts.refresh.prepare_invoke();
            for key in self.keys(room) {
                inv.key(key);
            }
            inv.arg(now)
                .arg(now.saturating_add(self.ttl_ms))
                .arg(self.key_ttl_ms())
                .arg(self.channel(room));
            for member in members {
                inv.arg(member.conn.as_str())
                    .arg(member.stored_json())
                    .arg(member.user.id.as_str());
            }
            invocations.push(inv);
        }
        // A few rooms per round trip, not all of them in one: Redis runs a
        // client's whole pipeline before serving anyone else, and one
        // pipeline of thousands of scripts stalled every publish behind it
        // (the rooms benchmark's p99). A pipeline does not load scripts on
        // NOSCRIPT by itself, so each starts with SCRIPT LOAD (a no-op when
        // the script is cached).
        for (rooms, invocations) in groups
            .chunks(REFRESH_CHUNK)
            .zip(invocations.chunks(REFRESH_CHUNK))
        {
            let replies: Vec<Value> = if self.names.is_cluster() {
                // A cluster pipeline must not mix slots: one script per
                // room, all in flight at once (each loads itself on NOSCRIPT).
                let each = invocations.iter().map(|inv| {
                    self.run(
                        move |mut con| async move { inv.invoke_async::<Value>(&mut con).await },
                    )
                });
                futures_util::future::try_join_all(each).await?
            } else {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.scripts.refresh).ignore();
                for inv in invocations {
                    pipe.invoke_script(inv);
                }
                self.run(|mut con| async move { pipe.query_async(&mut con).await })
                    .await?
            };
            for ((room, _), reply) in rooms.iter().zip(replies) {
                let (corrupt, restored, departed) = <(i64, i64, i64)>::from_redis_value(reply)
                    .map_err(|e| PresenceError::Redis(e.into()))?;
                if corrupt > 0 {
                    tracing::warn!(
                        ?room,
                        corrupt,
                        "swept presence entries without a readable user"
                    );
                }
                if restored > 0 {
                    tracing::info!(
                        ?room,
                        restored,
                        "presence entries swept while this node stalled are back"
                    );
                }
                if departed > 0 {
                    tracing::info!(
                        ?room,
                        departed,
                        "swept users of a node that stopped refreshing"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(count: i64, json: &str) -> Vec<Value> {
        vec![
            Value::Int(count),
            Value::BulkString(json.as_bytes().to_vec()),
        ]
    }

    #[test]
    fn a_page_reads_its_users_and_their_info_in_order() {
        let json = r#"[{"id":"a","name":"Ann"},{"id":"b","name":"Bob","info":{"x":[1, 2]}},{"id":"c","name":"Cy","info":null}]"#;
        let page = page_from(&Pages::default(), reply(7, json), "names", 2).expect("a page");
        let ids: Vec<&str> = page.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(page.count, 7);
        // The third user says another page follows; the cursor is the last listed.
        assert_eq!(page.next.as_deref(), Some("b"));
        let info: Vec<(&str, &str)> = page
            .info
            .iter()
            .map(|(id, info)| (id.as_str(), &**info))
            .collect();
        assert_eq!(info, [("b", r#"{"x":[1, 2]}"#)]);
    }

    #[test]
    fn a_last_page_has_no_cursor_and_an_empty_room_no_users() {
        let page = page_from(
            &Pages::default(),
            reply(1, r#"[{"id":"a","name":"Ann"}]"#),
            "names",
            2,
        )
        .expect("a page");
        assert_eq!((page.users.len(), page.next), (1, None));
        let empty = page_from(&Pages::default(), reply(0, "[]"), "names", 2).expect("a page");
        assert_eq!((empty.users.len(), empty.count), (0, 0));
    }

    #[test]
    fn a_kept_page_serves_only_the_reply_it_was_parsed_from() {
        let pages = Pages::default();
        let ab = r#"[{"id":"a","name":"Ann"},{"id":"b","name":"Bob"}]"#;
        let first = page_from(&pages, reply(2, ab), "names", 1).expect("a page");
        assert_eq!(first.users[0].id.as_str(), "a");
        assert_eq!(pages.lock().len(), 1, "a full page is kept");
        // The same reply again: the same users, the count as answered.
        let again = page_from(&pages, reply(3, ab), "names", 1).expect("a page");
        assert_eq!((again.users, again.count), (first.users, 3));
        // Another reply for the room is read afresh, never the kept one.
        let cb = r#"[{"id":"c","name":"Cy"},{"id":"b","name":"Bob"}]"#;
        let changed = page_from(&pages, reply(2, cb), "names", 1).expect("a page");
        assert_eq!(changed.users[0].id.as_str(), "c");
        assert!(page_from(&pages, reply(2, "[nonsense"), "names", 1).is_err());
        // A page that is not full (a small room) is not kept.
        let small = Pages::default();
        page_from(&small, reply(1, r#"[{"id":"a","name":"Ann"}]"#), "names", 1).expect("a page");
        assert!(small.lock().is_empty());
    }

    #[test]
    fn the_kept_pages_are_bounded() {
        let pages = Pages::default();
        let ab = r#"[{"id":"a","name":"Ann"},{"id":"b","name":"Bob"}]"#;
        for room in 0..PAGES_KEPT + 10 {
            page_from(&pages, reply(2, ab), &format!("room{room}"), 1).expect("a page");
            assert!(pages.lock().len() <= PAGES_KEPT);
        }
    }

    #[test]
    fn an_unreadable_entry_is_corrupt_not_skipped() {
        for json in [
            r#"[{"id":"a","name":"Ann"},{"id":"b"}]"#,
            r#"[{"id":"not valid!","name":"Ann"}]"#,
            "[nonsense",
        ] {
            let e = page_from(&Pages::default(), reply(2, json), "names", 0).expect_err(json);
            assert!(matches!(e, PresenceError::Corrupt(_)), "{json}: {e}");
        }
        assert!(matches!(
            page_from(&Pages::default(), vec![Value::Int(2)], "names", 5),
            Err(PresenceError::Corrupt(_))
        ));
    }
}
