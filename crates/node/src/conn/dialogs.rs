//! Direct messages and dialogs: `dm` (stored, then delivered to every
//! connection of both users), `dialogs`, `dm_history` and `read`.

use super::rules::{
    DIALOGS_LIMIT, HISTORY_LIMIT, PEERS_PER_MINUTE, RECENT_HISTORY, fit, fit_oldest,
};
use super::session::Session;
use crate::metrics::DropReason;
use banter_bus::{DmDraft, HistoryQuery, Position, is_guest};
use banter_protocol::{ErrorCode, MessageId, Ref, ServerFrame, UserId};
use tokio::time::Instant;

impl Session {
    /// Stores a direct message in the dialog of this user and `to`; the bus
    /// delivers it to every connection of both. A guest's id dies with its
    /// connections, so a DM to a guest who is online nowhere is refused.
    pub(super) async fn dm(
        &mut self,
        to: UserId,
        text: String,
        reference: Option<Ref>,
    ) -> ServerFrame {
        if let Some(refusal) = self.refuse_text(&text, &reference) {
            return refusal;
        }
        if !self.may_write_to(&to) {
            return self.fail(
                ErrorCode::RateLimited,
                "too many new dialogs this minute: try again later",
                reference,
            );
        }
        let bus = self.node.inner.bus.clone();
        if is_guest(&to) && to != self.member.user.id {
            match bus.online(&to).await {
                Ok(true) => {}
                Ok(false) => {
                    return self.fail(ErrorCode::NotFound, "that guest is not online", reference);
                }
                Err(e) => return self.unavailable(&e, reference),
            }
        }
        self.wrote_to(&to);
        let (_, ts) = self.node.stamp();
        let draft = DmDraft {
            from: self.member.user.clone(),
            to,
            text,
            ts,
        };
        match bus.send_dm(&draft).await {
            Ok(message) => ServerFrame::Ack {
                reference,
                id: message.id,
            },
            Err(e) => self.unavailable(&e, reference),
        }
    }

    fn unavailable(&self, e: &banter_bus::BusError, reference: Option<Ref>) -> ServerFrame {
        tracing::warn!(error = %e, "direct message failed");
        self.node.inner.metrics.dropped(DropReason::BusUnavailable);
        self.fail(
            ErrorCode::Unavailable,
            "the message was not sent: try again",
            reference,
        )
    }

    /// Whether this connection may write to `to` now: a user it wrote to in
    /// the last minute is fine; a new one counts against [`PEERS_PER_MINUTE`].
    fn may_write_to(&mut self, to: &UserId) -> bool {
        let now = Instant::now();
        let minute = std::time::Duration::from_secs(60);
        while self
            .recent_peers
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= minute)
        {
            self.recent_peers.pop_front();
        }
        self.recent_peers.len() < PEERS_PER_MINUTE || self.recent_peers.iter().any(|(_, p)| p == to)
    }

    fn wrote_to(&mut self, to: &UserId) {
        if !self.recent_peers.iter().any(|(_, p)| p == to) {
            self.recent_peers.push_back((Instant::now(), to.clone()));
        }
    }

    /// This user's dialogs, most recent first.
    pub(super) async fn dialogs(&mut self) -> ServerFrame {
        let me = &self.member.user.id;
        match self.node.inner.bus.dialogs(me, DIALOGS_LIMIT).await {
            Ok(dialogs) => {
                let (dialogs, _, cost) = fit(dialogs);
                self.bucket.charge(cost);
                ServerFrame::Dialogs { dialogs }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dialogs unavailable");
                self.fail(ErrorCode::Unavailable, "dialogs unavailable", None)
            }
        }
    }

    /// A page of the dialog with `with`: the newest, those before `before`,
    /// or those after `after` (catching up after a reconnect).
    pub(super) async fn dm_history(
        &mut self,
        with: UserId,
        before: Option<MessageId>,
        after: Option<MessageId>,
        limit: Option<u32>,
    ) -> ServerFrame {
        let limit = limit.map_or(RECENT_HISTORY, |l| (l as usize).min(HISTORY_LIMIT));
        let position = |id: &MessageId| Position::parse(id.as_str());
        let query = match (before, after) {
            (Some(_), Some(_)) => {
                return self.fail(
                    ErrorCode::BadRequest,
                    "give before or after, not both",
                    None,
                );
            }
            (Some(before), None) => match position(&before) {
                Some(before) => HistoryQuery::Before { before, limit },
                None => {
                    return self.fail(ErrorCode::BadRequest, "before is not a message id", None);
                }
            },
            (None, Some(after)) => match position(&after) {
                Some(since) => HistoryQuery::After { since, limit },
                None => return self.fail(ErrorCode::BadRequest, "after is not a message id", None),
            },
            (None, None) => HistoryQuery::Latest { limit },
        };
        let me = &self.member.user.id;
        match self.node.inner.bus.dm_history(me, &with, query).await {
            Ok(messages) => {
                let messages = match query {
                    // Forward from `after`: the client goes on from the last it got.
                    HistoryQuery::After { .. } => fit_oldest(messages),
                    _ => fit(messages).0,
                };
                ServerFrame::DmHistory { with, messages }
            }
            Err(e) => {
                tracing::warn!(error = %e, "dialog history unavailable");
                self.fail(ErrorCode::Unavailable, "history unavailable", None)
            }
        }
    }

    /// Marks the dialog with `with` read up to `id`. The receipt reaches
    /// every connection of both users through their topics (this one too),
    /// so the only direct answer is an error.
    pub(super) async fn read(&mut self, with: UserId, id: MessageId) -> Option<ServerFrame> {
        let Some(position) = Position::parse(id.as_str()) else {
            return Some(self.fail(ErrorCode::BadRequest, "id is not a message id", None));
        };
        let by = self.member.user.clone();
        match self.node.inner.bus.mark_read(&by, &with, position).await {
            Ok(Some(_)) => None,
            Ok(None) => {
                Some(self.fail(ErrorCode::NotFound, "no such message in that dialog", None))
            }
            Err(e) => {
                tracing::warn!(error = %e, "read receipt failed");
                Some(self.fail(ErrorCode::Unavailable, "try again", None))
            }
        }
    }
}
