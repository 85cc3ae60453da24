//! [`Tallies`]: the Pusher channels whose local subscriber count changed,
//! noted by the hub as sockets come and go, and written to the cluster's
//! counts by `pusher::tally`.

use banter_protocol::ChannelName;
use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use tokio::sync::Notify;

/// The channels whose local count changed since it was last written.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    dirty: Mutex<HashSet<ChannelName>>,
    wake: Notify,
}

impl Tallies {
    /// Waits until a channel's count changes (a change since the last
    /// wait counts).
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Notes that `channel`'s local count changed.
    pub fn touch(&self, channel: &ChannelName) {
        let fresh = self
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.clone());
        if fresh {
            self.wake.notify_one();
        }
    }

    /// Takes the changed channels `due` says may be written now.
    pub(crate) fn take(&self, due: impl Fn(&ChannelName) -> bool) -> Vec<ChannelName> {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<ChannelName> = dirty.iter().filter(|c| due(c)).cloned().collect();
        for channel in &taken {
            dirty.remove(channel);
        }
        taken
    }

    /// The changed channels, for when the next may be written.
    pub(crate) fn pending(&self) -> Vec<ChannelName> {
        let dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        dirty.iter().cloned().collect()
    }
}
