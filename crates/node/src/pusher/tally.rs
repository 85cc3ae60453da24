//! Subscription counts: how many sockets subscribe each Pusher channel over
//! the whole cluster (the API's `subscription_count`, and the
//! `pusher_internal:subscription_count` event pusher-js turns into
//! `channel.subscriptionCount`).
//!
//! Each node keeps its own count of a channel in the presence store
//! ([`banter_presence::Presence::tally`]), which adds the nodes' counts up
//! and, when the total changed, publishes it on the channel in the
//! channel's order; every node then sends it to its subscribers. A node
//! writes a channel's count at most once per `presence.diff_interval_ms`
//! (the first change after a quiet interval at once), so a channel filling
//! with thousands of sockets costs a few writes a second, not one per
//! socket, and it writes every count again within the presence ttl, so a
//! crashed node's sockets stop counting once it passes.

use crate::node::Node;
use banter_protocol::ChannelName;
use std::collections::HashMap;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Writes this node's counts until `stop`; then once more, every channel
/// whose count changed (the drain took its sockets away).
pub(crate) async fn run(node: Node, stop: CancellationToken) {
    let inner = &node.inner;
    let tallies = inner.hub.tallies();
    // Unique per process: a node restarted under the same id must not
    // inherit (and then double) the count its previous life left to expire.
    let me = format!("{}-{:08x}", node.id(), rand::random::<u32>());
    let interval = inner.config.diff_interval();
    let mut refresh = tokio::time::interval(crate::node::presence_entry_ttl(&inner.config) / 2);
    let mut written: HashMap<ChannelName, Instant> = HashMap::new();
    loop {
        let next = tallies
            .pending()
            .iter()
            .map(|c| {
                written
                    .get(c)
                    .map_or_else(Instant::now, |at| *at + interval)
            })
            .min();
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            () = tallies.changed() => false,
            () = sleep_until(next) => false,
            _ = refresh.tick() => {
                for channel in inner.hub.local_channels() {
                    tallies.touch(&channel);
                }
                false
            }
        };
        let now = Instant::now();
        let due =
            tallies.take(|c| stopping || written.get(c).is_none_or(|at| *at + interval <= now));
        for channel in due {
            let local = inner.hub.channel_subscribers(&channel);
            let topic = super::topic(&channel);
            if let Err(e) = inner.presence.tally(&topic, &me, local).await {
                tracing::warn!(%channel, error = %e, "subscription count not written; tried again");
                tallies.touch(&channel);
            }
            written.insert(channel, now);
        }
        written.retain(|_, at| now.duration_since(*at) < interval * 2);
        if stopping {
            return;
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => {
            tokio::time::sleep_until(due.max(Instant::now() + Duration::from_millis(1))).await
        }
        None => std::future::pending().await,
    }
}
