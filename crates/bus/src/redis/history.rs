//! Room history in Redis: one stream per room, `{prefix}:history:{room}`,
//! capped with `XADD MAXLEN ~ size`. Storing and publishing a message is one
//! Lua script (`lua/publish_message.lua`), so the stream order is the live
//! order and the id the ack carries is the stream position.

use super::publisher::Publisher;
use crate::history::{Draft, HistoryPage, HistoryQuery, Record, StreamId};
use crate::{BusError, Topic};
use banter_protocol::{Message, RoomId};
use std::sync::LazyLock;

/// Stores and publishes one message: see the script's own comment.
static PUBLISH_MESSAGE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/publish_message.lua")));

/// Reads a range with the oldest position still kept: see the script.
static READ_HISTORY: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/read_history.lua")));

fn stream_key(prefix: &str, room: &RoomId) -> String {
    format!("{prefix}:history:{room}")
}

/// Stores `draft` in its room's stream and publishes it. See the module docs.
pub(super) async fn publish_message(
    publisher: &Publisher,
    prefix: &str,
    history_size: usize,
    draft: &Draft,
) -> Result<Message, BusError> {
    let record = serde_json::to_string(&draft.to_record()).map_err(BusError::Encode)?;
    let (head, tail) = draft.frame_parts();
    // `MAXLEN ~ 0` may keep a whole radix node: no history means exactly none.
    let trim = if history_size == 0 { "=" } else { "~" };
    let channel = Topic::Room(draft.room.clone()).channel(prefix);
    let key = stream_key(prefix, &draft.room);
    let (id, _receivers): (String, i64) = publisher
        .run(|mut conn| async move {
            PUBLISH_MESSAGE
                .key(key)
                .arg(trim)
                .arg(history_size)
                .arg(record)
                .arg(channel)
                .arg(head)
                .arg(tail)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    let id = StreamId::parse(&id)
        .ok_or_else(|| BusError::Unexpected(format!("a stream id of unknown form: `{id}`")))?;
    Ok(draft.stamp(id.to_message_id()))
}

/// Reads a room's history. See [`HistoryQuery`].
pub(super) async fn read(
    publisher: &Publisher,
    prefix: &str,
    room: &RoomId,
    query: HistoryQuery,
) -> Result<HistoryPage, BusError> {
    let (mode, id, limit) = match query {
        HistoryQuery::Latest { limit } => ("latest", String::from("+"), limit),
        HistoryQuery::Before { before, limit } => ("before", before.to_string(), limit),
        // One more than asked, to know whether the limit cut anything.
        HistoryQuery::After { since, limit } => ("after", since.to_string(), limit + 1),
    };
    if limit == 0 {
        return Ok(HistoryPage::default());
    }
    let key = stream_key(prefix, room);
    let flat: Vec<String> = publisher
        .run(|mut conn| async move {
            READ_HISTORY
                .key(key)
                .arg(mode)
                .arg(id)
                .arg(limit)
                .invoke_async(&mut conn)
                .await
        })
        .await?;
    let mut items = flat.into_iter();
    let oldest = items.next().unwrap_or_default();
    let mut messages = Vec::new();
    while let (Some(id), Some(record)) = (items.next(), items.next()) {
        let (Some(id), Ok(record)) = (
            StreamId::parse(&id),
            serde_json::from_str::<Record>(&record),
        ) else {
            tracing::warn!(%room, %id, "unreadable history entry skipped");
            continue;
        };
        messages.push(record.into_message(room, id));
    }
    let complete = match query {
        HistoryQuery::After { since, limit } => {
            let cut = messages.len() > limit;
            messages.truncate(limit);
            // `since` is still kept, so nothing after it was trimmed; and the
            // limit cut nothing. When `since` itself is gone we cannot tell
            // whether anything followed it: say incomplete, never wrongly complete.
            StreamId::parse(&oldest).is_some_and(|first| since >= first) && !cut
        }
        HistoryQuery::Latest { .. } | HistoryQuery::Before { .. } => {
            messages.reverse();
            false
        }
    };
    Ok(HistoryPage { messages, complete })
}
