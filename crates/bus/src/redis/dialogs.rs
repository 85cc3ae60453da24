//! Dialogs in Redis ([`Keyspace::dialog`]): per pair of users a stream
//! capped at `history.dialog_size` with its epoch and a meta hash (names,
//! read positions), all expiring `history.dialog_ttl_ms` after the last
//! message; per user a sorted set of the other users ([`Keyspace::dialogs`]).
//!
//! A direct message is stored first (`lua/dm_store.lua`), then delivered to
//! each of the two users through their mailbox (`lua/deliver.lua`): a short
//! stream per user that is published atomically with each frame, so a node
//! whose subscription was interrupted repairs a user's topic from it as it
//! repairs a room's from its history. On Redis Cluster the dialog, and each
//! user, live in their own slot; the steps are separate commands there, and
//! the dialog's write waits for a replica as a room's does.

use std::sync::LazyLock;
use std::time::Duration;

use banter_protocol::{DialogEntry, DirectMessage, ServerFrame, User, UserId};
use futures_util::future::join_all;

use super::Keyspace;
use super::commands::Commands;
use super::history::{self, Mode};
use super::shards::Replication;
use crate::dialogs::{DmDraft, DmRecord, ReadMark, both, fallback_name, read_frame};
use crate::history::{Epoch, HistoryQuery, Position, StreamId};
use crate::{BusError, Topic};

static DM_STORE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/dm_store.lua")));
static DELIVER: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/deliver.lua")));
static SUMMARY: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/dialog_summary.lua")));
static READ: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/dialog_read.lua")));

/// Frames a user's mailbox keeps: what gap repair can give back after an
/// interruption of their topic.
pub(crate) const MAILBOX_SIZE: usize = 256;
/// Events a Pusher channel's stream keeps (a busy channel fills a user's
/// mailbox size in well under a second): what gap repair can give back.
pub(crate) const PUSHER_LOG_SIZE: usize = 2000;
/// A Pusher channel's stream outlives its last event by this much.
const PUSHER_LOG_TTL: Duration = Duration::from_secs(600);

/// How many frames `topic`'s stream keeps (a room's history aside).
pub(crate) fn stream_size(topic: &Topic) -> usize {
    match topic {
        Topic::Pusher(_) => PUSHER_LOG_SIZE,
        _ => MAILBOX_SIZE,
    }
}

fn stream_ttl(topic: &Topic) -> Duration {
    match topic {
        Topic::Pusher(_) => PUSHER_LOG_TTL,
        _ => MAILBOX_TTL,
    }
}
/// A mailbox outlives its last frame by this much: repair needs seconds.
const MAILBOX_TTL: Duration = Duration::from_secs(3600);

/// How many direct messages a dialog keeps, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DialogRetention {
    pub size: usize,
    pub ttl: Duration,
}

/// What the dialog functions need.
pub(crate) struct Dialogs<'a> {
    pub commands: &'a Commands,
    pub names: &'a Keyspace,
    pub replication: Option<&'a Replication>,
    pub retention: DialogRetention,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, BusError> {
    serde_json::to_string(value).map_err(BusError::Encode)
}

impl Dialogs<'_> {
    fn keys(&self, a: &UserId, b: &UserId) -> [String; 3] {
        let base = self.names.dialog(a, b);
        [
            base.clone(),
            format!("{base}:epoch"),
            format!("{base}:meta"),
        ]
    }

    /// Stores `draft`, lists the dialog for both users, delivers it to both.
    pub async fn send(&self, draft: &DmDraft) -> Result<DirectMessage, BusError> {
        let (from, to) = (&draft.from.id, &draft.to);
        let keys = self.keys(from, to);
        let record = json(&draft.to_record())?;
        let sender = json(&draft.from)?;
        let ttl = millis(self.retention.ttl);
        let size = self.retention.size.max(1);
        let fresh = Epoch::random().to_string();
        let slot = super::keyspace::slot(&keys[0]);
        let (epoch, sid): (String, String) = self
            .commands
            .run(|mut conn| async move {
                DM_STORE
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg("~")
                    .arg(size)
                    .arg(&record)
                    .arg(from.as_str())
                    .arg(&sender)
                    .arg(&fresh)
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if self.replication.is_some_and(|r| r.replicated(slot)) {
            history::confirm_replica(self.commands, slot).await?;
        }
        let position = parse_position(&epoch, &sid)?;
        let message = draft.to_record().into_message(position);
        let now = crate::now_ms();
        let listed = both(from, to).into_iter().map(|user| {
            let other = if user == from { to } else { from };
            self.list(user, other, now, ttl)
        });
        for listed in join_all(listed).await {
            // Stored: a list that missed it shows it after the next message.
            if let Err(e) = listed {
                tracing::warn!(error = %e, "a dialog list was not updated");
            }
        }
        self.deliver_to_both(from, to, &ServerFrame::Dm(message.clone()))
            .await;
        Ok(message)
    }

    /// Puts `other` first in `user`'s list of dialogs.
    async fn list(
        &self,
        user: &UserId,
        other: &UserId,
        now: u64,
        ttl: u64,
    ) -> Result<(), BusError> {
        let list = self.names.dialogs(user);
        self.commands
            .run(|mut conn| async move {
                redis::pipe()
                    .zadd(&list, other.as_str(), now)
                    .ignore()
                    .pexpire(&list, ttl as i64)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    /// Delivers a frame to both users' mailboxes. The message it tells of is
    /// stored already: a delivery that fails is logged (the users find it in
    /// `dialogs` and `dm_history`), not an error.
    async fn deliver_to_both(&self, a: &UserId, b: &UserId, frame: &ServerFrame) {
        let payload = frame.to_json();
        let deliveries = both(a, b)
            .into_iter()
            .map(|user| self.deliver(user, &payload));
        for delivered in join_all(deliveries).await {
            if let Err(e) = delivered {
                tracing::warn!(error = %e, "a direct message or receipt was not delivered live");
            }
        }
    }

    /// Keeps `payload` in `user`'s mailbox and publishes it on their topic.
    async fn deliver(&self, user: &UserId, payload: &str) -> Result<usize, BusError> {
        deliver(
            self.commands,
            self.names,
            &Topic::User(user.clone()),
            payload,
        )
        .await
    }

    /// A page of the dialog of `me` and `with`, oldest first.
    pub async fn history(
        &self,
        me: &UserId,
        with: &UserId,
        query: HistoryQuery,
    ) -> Result<Vec<DirectMessage>, BusError> {
        let [stream, epoch, _] = self.keys(me, with);
        let keys = [stream, epoch];
        let (mode, limit) = match query {
            HistoryQuery::Latest { limit } => (Mode::Latest, limit),
            HistoryQuery::Before { before, limit } => (Mode::Before(before.id), limit),
            HistoryQuery::After { since, limit } => (Mode::After(since.id), limit),
        };
        let mut raw = history::read_stream(self.commands, keys.clone(), mode, limit).await?;
        let Some(now) = raw.epoch else {
            return Ok(Vec::new());
        };
        let foreign = match query {
            HistoryQuery::Latest { .. } => false,
            HistoryQuery::Before { before, .. } => before.epoch != now,
            HistoryQuery::After { since, .. } => since.epoch != now,
        };
        if foreign {
            if matches!(query, HistoryQuery::Before { .. }) {
                return Ok(Vec::new());
            }
            // A position from a history that was lost: what is kept now.
            raw = history::read_stream(self.commands, keys, Mode::Latest, limit).await?;
        }
        let oldest_first = matches!(mode, Mode::After(_)) && !foreign;
        let mut messages: Vec<DirectMessage> = raw
            .entries
            .into_iter()
            .filter_map(|(id, record)| {
                let record: DmRecord = serde_json::from_str(&record).ok()?;
                Some(record.into_message(Position { epoch: now, id }))
            })
            .collect();
        if !oldest_first {
            messages.reverse();
        }
        Ok(messages)
    }

    /// `me`'s dialogs, most recent first.
    pub async fn summaries(&self, me: &UserId, limit: usize) -> Result<Vec<DialogEntry>, BusError> {
        let list = self.names.dialogs(me);
        let oldest = crate::now_ms().saturating_sub(millis(self.retention.ttl));
        let stop = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let others: Vec<String> = self
            .commands
            .run(|mut conn| async move {
                let (_, others): ((), Vec<String>) = redis::pipe()
                    .zrembyscore(&list, "-inf", format!("({oldest}"))
                    .zrevrange(&list, 0, stop)
                    .query_async(&mut conn)
                    .await?;
                Ok(others)
            })
            .await?;
        let others: Vec<UserId> = others.iter().filter_map(|o| o.parse().ok()).collect();
        let summaries = join_all(others.iter().map(|other| self.summary(me, other))).await;
        let mut out = Vec::new();
        for (other, summary) in others.iter().zip(summaries) {
            match summary? {
                Some(summary) => out.push(summary),
                None => self.unlist(me, other).await,
            }
        }
        Ok(out)
    }

    /// One dialog of `me`'s list; `None` when it expired.
    async fn summary(&self, me: &UserId, other: &UserId) -> Result<Option<DialogEntry>, BusError> {
        let keys = self.keys(me, other);
        let (epoch, id, record, unread, with): (String, String, String, usize, String) = self
            .commands
            .run(|mut conn| async move {
                SUMMARY
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(me.as_str())
                    .arg(other.as_str())
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        if epoch.is_empty() {
            return Ok(None);
        }
        let position = parse_position(&epoch, &id)?;
        let record: DmRecord = serde_json::from_str(&record)
            .map_err(|_| BusError::Unexpected(format!("a dialog entry at {position}")))?;
        let with = serde_json::from_str::<User>(&with)
            .ok()
            .filter(|u| &u.id == other)
            .unwrap_or_else(|| fallback_name(other));
        Ok(Some(DialogEntry {
            with,
            last: record.into_message(position),
            unread,
        }))
    }

    /// Drops an expired dialog from a user's list (best effort).
    async fn unlist(&self, me: &UserId, other: &UserId) {
        let list = self.names.dialogs(me);
        let _ = self
            .commands
            .run(|mut conn| async move {
                redis::cmd("ZREM")
                    .arg(&list)
                    .arg(other.as_str())
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
    }

    /// Moves how far `by` read the dialog with `with`; delivers the receipt.
    pub async fn read(
        &self,
        by: &User,
        with: &UserId,
        id: Position,
    ) -> Result<Option<ReadMark>, BusError> {
        let keys = self.keys(&by.id, with);
        let reader = json(by)?;
        let (epoch, sid) = (id.epoch.to_string(), id.id.to_string());
        let answer: Vec<String> = self
            .commands
            .run(|mut conn| async move {
                READ.key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(by.id.as_str())
                    .arg(&reader)
                    .arg(&epoch)
                    .arg(&sid)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let [moved, now] = answer.as_slice() else {
            return Ok(None);
        };
        let now = Position::parse(now)
            .ok_or_else(|| BusError::Unexpected(format!("a read position `{now}`")))?;
        let mark = ReadMark {
            by: by.clone(),
            with: with.clone(),
            id: now.to_message_id(),
            moved: moved == "1",
        };
        if mark.moved {
            let frame = read_frame(&mark);
            self.deliver_to_both(&by.id, with, &frame).await;
        }
        Ok(Some(mark))
    }
}

fn parse_position(epoch: &str, sid: &str) -> Result<Position, BusError> {
    match (Epoch::parse(epoch), StreamId::parse(sid)) {
        (Some(epoch), Some(id)) => Ok(Position { epoch, id }),
        _ => Err(BusError::Unexpected(format!("a position `{epoch}:{sid}`"))),
    }
}

/// Keeps `payload` in `topic`'s mailbox stream ([`stream_size`] frames:
/// [`MAILBOX_SIZE`] for a user, [`PUSHER_LOG_SIZE`] for a Pusher channel) and
/// publishes it on the topic, as one step
/// (`lua/deliver.lua`). Returns how many subscribers got it.
pub(crate) async fn deliver(
    commands: &Commands,
    names: &Keyspace,
    topic: &Topic,
    payload: &str,
) -> Result<usize, BusError> {
    let stream = names.stream(topic);
    let epoch = format!("{stream}:epoch");
    let channel = names.channel(topic);
    let publish = names.publish_command();
    let fresh = Epoch::random().to_string();
    commands
        .run(|mut conn| async move {
            DELIVER
                .key(&stream)
                .key(&epoch)
                .arg(stream_size(topic))
                .arg(payload)
                .arg(&channel)
                .arg(&fresh)
                .arg(millis(stream_ttl(topic)))
                .arg(publish)
                .invoke_async(&mut conn)
                .await
        })
        .await
}
