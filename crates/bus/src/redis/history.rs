//! Room history in Redis: one stream per room ([`Keyspace::history`]),
//! capped with `XADD MAXLEN ~ size`, and its epoch beside it in
//! `{stream}:epoch`. Storing and publishing a message is one
//! Lua script (`lua/publish_message.lua`), so the stream order is the live
//! order and the id the ack carries is the stream position in its epoch.

use super::Keyspace;
use super::commands::Commands;
use super::commands::Conn;
use super::shards::Replication;
use crate::history::{Draft, Epoch, HistoryPage, HistoryQuery, Position, Record, StreamId};
use crate::{BusError, Topic};
use banter_protocol::{Message, RoomId};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use std::sync::LazyLock;
use std::time::Duration;

/// Stores and publishes one message: see the script's own comment.
static PUBLISH_MESSAGE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/publish_message.lua")));

/// Reads a range with what tells whether it is whole: see the script.
static READ_HISTORY: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/read_history.lua")));

/// Starts a new epoch if the caller's is still current: see the script.
static BUMP_EPOCH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/bump_epoch.lua")));

/// How long a stored message waits for a replica's copy (`WAIT`) on Redis
/// Cluster before the sender is told `unavailable`: replication on a healthy
/// shard takes well under a millisecond. A `WAIT` holds the node's
/// connection to that primary while it waits, so this also bounds how long
/// a replica that is resynchronising stalls the shard's other commands.
const REPLICA_WAIT: Duration = Duration::from_millis(200);

/// How much history a room keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Retention {
    /// Messages kept per room (0 = none).
    pub size: usize,
    /// A room's history expires this long after its last message (zero: never).
    pub ttl: Duration,
}

/// The stream and epoch keys of a topic.
fn keys(names: &Keyspace, topic: &Topic) -> [String; 2] {
    let stream = names.stream(topic);
    let epoch = format!("{stream}:epoch");
    [stream, epoch]
}

/// What storing and publishing one message sends Redis, apart from the
/// room's retention: built once per message, for the one-message script
/// (Redis Cluster) or for a batch ([`super::publisher`], one Redis).
#[derive(Debug)]
pub(super) struct Prepared {
    pub stream: String,
    pub epoch: String,
    /// The record to store (JSON: from, text, ts).
    pub record: String,
    pub channel: String,
    /// The `message` frame's JSON up to its id, and after it.
    pub head: String,
    pub tail: String,
    /// A fresh epoch, used if the room has none.
    pub fresh: String,
}

impl Prepared {
    pub(super) fn new(names: &Keyspace, draft: &Draft) -> Result<Prepared, BusError> {
        let record = serde_json::to_string(&draft.to_record()).map_err(BusError::Encode)?;
        let (head, tail) = draft.frame_parts();
        let topic = Topic::Room(draft.room.clone());
        let [stream, epoch] = keys(names, &topic);
        Ok(Prepared {
            stream,
            epoch,
            record,
            channel: names.channel(&topic),
            head,
            tail,
            fresh: Epoch::random().to_string(),
        })
    }

    /// About how many bytes this sends Redis.
    pub(super) fn size(&self) -> usize {
        self.stream.len()
            + self.epoch.len()
            + self.record.len()
            + self.channel.len()
            + self.head.len()
            + self.tail.len()
            + self.fresh.len()
    }
}

impl Retention {
    /// The trim strategy: `MAXLEN ~ 0` may keep a whole radix node, and no
    /// history means exactly none.
    pub(super) fn trim(&self) -> &'static str {
        if self.size == 0 { "=" } else { "~" }
    }

    pub(super) fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }
}

/// The message `draft` becomes once Redis stored it as `epoch`, `id`.
pub(super) fn stamped(draft: &Draft, epoch: &str, id: &str) -> Result<Message, BusError> {
    let position = match (Epoch::parse(epoch), StreamId::parse(id)) {
        (Some(epoch), Some(id)) => Position { epoch, id },
        _ => return Err(BusError::Unexpected(format!("a position `{epoch}:{id}`"))),
    };
    Ok(draft.stamp(position.to_message_id()))
}

/// Stores `draft` in its room's stream and publishes it with one script
/// call of its own (Redis Cluster, where a script's keys are in one slot),
/// then waits for a replica's copy where the slot has one. See the module
/// docs.
pub(super) async fn publish_message(
    commands: &Commands,
    names: &Keyspace,
    retention: Retention,
    replication: Option<&Replication>,
    draft: &Draft,
) -> Result<Message, BusError> {
    let prepared = Prepared::new(names, draft)?;
    let publish = names.publish_command();
    let slot = super::keyspace::slot(&prepared.stream);
    let replicated = replication.is_some_and(|r| r.replicated(slot));
    let invocation = || {
        let mut invocation = PUBLISH_MESSAGE.prepare_invoke();
        invocation
            .key(&prepared.stream)
            .key(&prepared.epoch)
            .arg(retention.trim())
            .arg(retention.size)
            .arg(&prepared.record)
            .arg(&prepared.channel)
            .arg(&prepared.head)
            .arg(&prepared.tail)
            .arg(&prepared.fresh)
            .arg(retention.ttl_ms())
            .arg(publish);
        invocation
    };
    let (epoch, id): (String, String) = commands
        .run(|mut conn| async move { invocation().invoke_async(&mut conn).await })
        .await?;
    if replicated {
        confirm_replica(commands, slot).await?;
    }
    stamped(draft, &epoch, &id)
}

/// Waits for a replica of `slot`'s primary to confirm what was just written
/// there (`WAIT 1`); [`BusError::NotReplicated`] when none does in time.
/// Sent apart from the write, so that the client library's retry of a WAIT
/// that failed (a primary demoted while it waited) never runs the write a
/// second time on the new primary.
pub(super) async fn confirm_replica(commands: &Commands, slot: u16) -> Result<(), BusError> {
    let wait_ms = u64::try_from(REPLICA_WAIT.as_millis()).unwrap_or(u64::MAX);
    let copies: i64 = commands
        .run(|conn| async move {
            let Conn::Cluster(mut conn) = conn else {
                return Ok(1);
            };
            let mut wait = redis::cmd("WAIT");
            wait.arg(1).arg(wait_ms);
            let primary = Route::new(slot, SlotAddr::Master);
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary));
            let copies = conn.route_command(wait, route).await?;
            Ok(redis::from_redis_value::<i64>(copies)?)
        })
        .await?;
    if copies < 1 {
        return Err(BusError::NotReplicated);
    }
    Ok(())
}

/// What one read of a room's stream saw.
#[derive(Debug, Default)]
pub(crate) struct Raw {
    /// The history's epoch; `None` when it has none (nothing stored, or lost).
    pub epoch: Option<Epoch>,
    /// The oldest and newest entries kept.
    pub oldest: Option<StreamId>,
    pub newest: Option<StreamId>,
    /// How many entries the stream holds.
    pub len: usize,
    /// The entries read (as stored), in the order the mode reads them.
    pub entries: Vec<(StreamId, String)>,
}

/// Which way a [`read_raw`] reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Oldest first, after an id.
    After(StreamId),
    /// Newest first, before an id.
    Before(StreamId),
    /// Newest first, from the end.
    Latest,
}

/// Reads up to `count` entries of `topic`'s stream with its epoch and bounds.
pub(crate) async fn read_raw(
    commands: &Commands,
    names: &Keyspace,
    topic: &Topic,
    mode: Mode,
    count: usize,
) -> Result<Raw, BusError> {
    read_stream(commands, keys(names, topic), mode, count).await
}

/// Reads up to `count` entries of a stream (and its epoch key) with its
/// epoch and bounds.
pub(crate) async fn read_stream(
    commands: &Commands,
    [stream, epoch]: [String; 2],
    mode: Mode,
    count: usize,
) -> Result<Raw, BusError> {
    let (mode, id) = match mode {
        Mode::After(id) => ("after", id.to_string()),
        Mode::Before(id) => ("before", id.to_string()),
        Mode::Latest => ("latest", String::from("+")),
    };
    let flat: Vec<redis::Value> = commands
        .run(|mut conn| async move {
            READ_HISTORY
                .key(stream)
                .key(epoch)
                .arg(mode)
                .arg(id)
                .arg(count)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    let mut items = flat.into_iter();
    let mut text = || {
        items
            .next()
            .and_then(|v| redis::from_redis_value::<String>(v).ok())
    };
    let mut raw = Raw {
        epoch: text().as_deref().and_then(Epoch::parse),
        oldest: text().as_deref().and_then(StreamId::parse),
        newest: text().as_deref().and_then(StreamId::parse),
        len: text().and_then(|n| n.parse().ok()).unwrap_or(0),
        entries: Vec::new(),
    };
    while let (Some(id), Some(record)) = (text(), text()) {
        match StreamId::parse(&id) {
            Some(id) => raw.entries.push((id, record)),
            None => tracing::warn!(%id, "an entry with an unreadable id skipped"),
        }
    }
    Ok(raw)
}

/// Reads a room's history. See [`HistoryQuery`].
pub(super) async fn read(
    commands: &Commands,
    names: &Keyspace,
    room: &RoomId,
    query: HistoryQuery,
) -> Result<HistoryPage, BusError> {
    let (mode, count) = match query {
        HistoryQuery::Latest { limit } => (Mode::Latest, limit),
        HistoryQuery::Before { before, limit } => (Mode::Before(before.id), limit),
        // One more than asked, to know whether the limit cut anything.
        HistoryQuery::After { since, limit } => (Mode::After(since.id), limit + 1),
    };
    let topic = Topic::Room(room.clone());
    let mut raw = read_raw(commands, names, &topic, mode, count).await?;
    let Some(epoch) = raw.epoch else {
        return Ok(HistoryPage::default());
    };
    let ours = |p: Position| p.epoch == epoch;
    let entries: Vec<(StreamId, Record)> = std::mem::take(&mut raw.entries)
        .into_iter()
        .filter_map(|(id, record)| match serde_json::from_str(&record) {
            Ok(record) => Some((id, record)),
            Err(_) => {
                tracing::warn!(%room, %id, "unreadable history entry skipped");
                None
            }
        })
        .collect();
    let message =
        |(id, record): (StreamId, Record)| record.into_message(room, Position { epoch, id });
    let mut page = HistoryPage {
        messages: Vec::new(),
        complete: false,
        epoch: Some(epoch),
        newest: raw.newest.map(|id| Position { epoch, id }),
    };
    match query {
        HistoryQuery::After { since, .. } | HistoryQuery::Before { before: since, .. }
            if !ours(since) => {}
        HistoryQuery::After { since, limit } => {
            let cut = entries.len() > limit;
            page.messages = entries.into_iter().take(limit).map(message).collect();
            // `since` is still kept, so nothing after it was trimmed; and the
            // limit cut nothing. When `since` itself is gone we cannot tell
            // whether anything followed it: say incomplete, never wrongly complete.
            page.complete = raw.oldest.is_some_and(|first| since.id >= first) && !cut;
        }
        HistoryQuery::Latest { .. } | HistoryQuery::Before { .. } => {
            page.messages = entries.into_iter().rev().map(message).collect();
        }
    }
    Ok(page)
}

/// Starts a new epoch for `topic`'s stream unless another node already did;
/// returns the epoch now in force.
pub(crate) async fn bump_epoch(
    commands: &Commands,
    names: &Keyspace,
    topic: &Topic,
    seen: Epoch,
) -> Result<Option<Epoch>, BusError> {
    let [_, epoch] = keys(names, topic);
    let now: Option<String> = commands
        .run(|mut conn| async move {
            BUMP_EPOCH
                .key(epoch)
                .arg(seen.to_string())
                .arg(Epoch::random().to_string())
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    Ok(now.as_deref().and_then(Epoch::parse))
}
