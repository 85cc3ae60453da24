//! The memory bus's dialogs: the in-process twin of `redis/dialogs.rs`.

use std::collections::{HashMap, VecDeque};

use banter_protocol::{DialogEntry, DirectMessage, User, UserId};

use crate::dialogs::{DmDraft, DmRecord, ReadMark, fallback_name, pair};
use crate::history::{Epoch, HistoryQuery, Position, StreamId};

/// Every dialog of the network, and every user's list of them.
#[derive(Debug)]
pub(super) struct DialogStore {
    size: usize,
    ttl_ms: u64,
    dialogs: HashMap<(UserId, UserId), Dialog>,
    /// Per user: the other user of each dialog, with its last message's time.
    lists: HashMap<UserId, HashMap<UserId, u64>>,
    /// Stores since the last sweep of expired dialogs.
    stores: u64,
}

#[derive(Debug)]
struct Dialog {
    epoch: Epoch,
    written_ms: u64,
    entries: VecDeque<(StreamId, DmRecord)>,
    last: StreamId,
    /// How far each user has read.
    read: HashMap<UserId, StreamId>,
    /// The name each user last wrote or read under.
    names: HashMap<UserId, User>,
}

/// Stores between two sweeps of dialogs whose ttl passed.
const SWEEP_EVERY: u64 = 1024;

impl DialogStore {
    pub fn new(size: usize, ttl_ms: u64) -> DialogStore {
        DialogStore {
            size,
            ttl_ms,
            dialogs: HashMap::new(),
            lists: HashMap::new(),
            stores: 0,
        }
    }

    fn key(a: &UserId, b: &UserId) -> (UserId, UserId) {
        let (a, b) = pair(a, b);
        (a.clone(), b.clone())
    }

    fn expired(&self, d: &Dialog, now: u64) -> bool {
        now.saturating_sub(d.written_ms) >= self.ttl_ms
    }

    /// The live dialog of `a` and `b`, forgetting it when its ttl passed.
    fn get(&mut self, a: &UserId, b: &UserId, now: u64) -> Option<&mut Dialog> {
        let key = Self::key(a, b);
        if self.dialogs.get(&key).is_some_and(|d| self.expired(d, now)) {
            self.dialogs.remove(&key);
        }
        self.dialogs.get_mut(&key)
    }

    /// Stores a direct message; returns its position.
    pub fn store(&mut self, draft: &DmDraft, now: u64) -> Position {
        self.stores += 1;
        if self.stores.is_multiple_of(SWEEP_EVERY) {
            let ttl = self.ttl_ms;
            self.dialogs
                .retain(|_, d| now.saturating_sub(d.written_ms) < ttl);
            for list in self.lists.values_mut() {
                list.retain(|_, at| now.saturating_sub(*at) < ttl);
            }
            self.lists.retain(|_, list| !list.is_empty());
        }
        let size = self.size;
        let (from, to) = (&draft.from.id, &draft.to);
        // An expired dialog is forgotten first: its next message begins anew.
        self.get(from, to, now);
        let dialog = self
            .dialogs
            .entry(Self::key(from, to))
            .or_insert_with(|| Dialog {
                epoch: Epoch::random(),
                written_ms: 0,
                entries: VecDeque::new(),
                last: StreamId::default(),
                read: HashMap::new(),
                names: HashMap::new(),
            });
        let id = dialog.last.next(now);
        dialog.last = id;
        dialog.written_ms = now;
        dialog.entries.push_back((id, draft.to_record()));
        while dialog.entries.len() > size.max(1) {
            dialog.entries.pop_front();
        }
        dialog.names.insert(from.clone(), draft.from.clone());
        let epoch = dialog.epoch;
        self.lists
            .entry(from.clone())
            .or_default()
            .insert(to.clone(), now);
        self.lists
            .entry(to.clone())
            .or_default()
            .insert(from.clone(), now);
        Position { epoch, id }
    }

    /// A page of the dialog of `me` and `with`, oldest first.
    pub fn history(
        &mut self,
        me: &UserId,
        with: &UserId,
        query: HistoryQuery,
        now: u64,
    ) -> Vec<DirectMessage> {
        let Some(dialog) = self.get(me, with, now) else {
            return Vec::new();
        };
        let epoch = dialog.epoch;
        let message =
            |(id, r): &(StreamId, DmRecord)| r.clone().into_message(Position { epoch, id: *id });
        let entries = &dialog.entries;
        match query {
            HistoryQuery::After { since, limit } if since.epoch == epoch => entries
                .iter()
                .filter(|(id, _)| *id > since.id)
                .take(limit)
                .map(message)
                .collect(),
            HistoryQuery::Before { before, limit } if before.epoch == epoch => {
                let older: Vec<_> = entries.iter().filter(|(id, _)| *id < before.id).collect();
                let skip = older.len().saturating_sub(limit);
                older.into_iter().skip(skip).map(message).collect()
            }
            HistoryQuery::Before { .. } => Vec::new(),
            HistoryQuery::After { limit, .. } | HistoryQuery::Latest { limit } => {
                let skip = entries.len().saturating_sub(limit);
                entries.iter().skip(skip).map(message).collect()
            }
        }
    }

    /// The dialogs of `me`, most recent first.
    pub fn list(&mut self, me: &UserId, limit: usize, now: u64) -> Vec<DialogEntry> {
        let mut others: Vec<(UserId, u64)> = self
            .lists
            .get(me)
            .map(|l| l.iter().map(|(u, at)| (u.clone(), *at)).collect())
            .unwrap_or_default();
        others.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.as_str().cmp(b.0.as_str())));
        let mut out = Vec::new();
        for (other, _) in others {
            if out.len() >= limit {
                break;
            }
            let Some(dialog) = self.get(me, &other, now) else {
                if let Some(list) = self.lists.get_mut(me) {
                    list.remove(&other);
                }
                continue;
            };
            let Some((id, last)) = dialog.entries.back() else {
                continue;
            };
            let read = dialog.read.get(me).copied().unwrap_or_default();
            let unread = dialog
                .entries
                .iter()
                .filter(|(id, r)| *id > read && r.from.id == other)
                .count();
            let with = dialog
                .names
                .get(&other)
                .cloned()
                .unwrap_or_else(|| fallback_name(&other));
            let position = Position {
                epoch: dialog.epoch,
                id: *id,
            };
            out.push(DialogEntry {
                with,
                last: last.clone().into_message(position),
                unread,
            });
        }
        out
    }

    /// Moves how far `by` read the dialog with `with` up to `id`.
    pub fn read(&mut self, by: &User, with: &UserId, id: Position, now: u64) -> Option<ReadMark> {
        let dialog = self.get(&by.id, with, now)?;
        if id.epoch != dialog.epoch || id.id > dialog.last {
            return None;
        }
        dialog.names.insert(by.id.clone(), by.clone());
        let stored = dialog.read.entry(by.id.clone()).or_default();
        let moved = id.id > *stored;
        if moved {
            *stored = id.id;
        }
        Some(ReadMark {
            by: by.clone(),
            with: with.clone(),
            id: Position {
                epoch: dialog.epoch,
                id: *stored,
            }
            .to_message_id(),
            moved,
        })
    }
}
