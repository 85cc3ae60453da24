//! The node's periodic work, one task: presence refresh (every ttl/4, and
//! at once after the bus reconnected, since Redis may have lost
//! everything), closing sockets stuck in a write, and the bus health
//! metrics.

use crate::node::Node;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often sockets are checked for a write that stopped moving.
const STUCK_CHECK: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub(crate) async fn run(node: Node, stop: CancellationToken) {
    let inner = &node.inner;
    // Twice per entry lifetime (see `presence_entry_ttl`).
    let mut refresh = tokio::time::interval(crate::node::presence_entry_ttl(&inner.config) / 2);
    let mut stuck = tokio::time::interval(STUCK_CHECK);
    let mut status = inner.bus_status.clone();
    let mut reconnects_seen = 0;
    loop {
        let bus = *status.borrow_and_update();
        inner.metrics.bus_up.set(i64::from(bus.up));
        if let Some(shards) = bus.shards {
            inner.metrics.shards_up(shards);
        }
        if bus.reconnects > reconnects_seen {
            inner
                .metrics
                .bus_reconnects
                .inc_by(bus.reconnects - reconnects_seen);
            reconnects_seen = bus.reconnects;
            // Redis may have lost everything (a restart without persistence):
            // put this node's members back, with their joins.
            refresh_presence(&node).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = status.changed() => {}
            _ = refresh.tick() => refresh_presence(&node).await,
            _ = stuck.tick() => inner.hub.kick_stuck(),
        }
    }
}

/// Keeps this node's presence entries alive and restores any that were
/// swept (a stall past the ttl); sweeps what crashed nodes left. A failure
/// is tried again at the next tick.
async fn refresh_presence(node: &Node) {
    let inner = &node.inner;
    let local = inner.hub.local_members();
    if let Err(e) = inner.presence.refresh(&local).await {
        tracing::warn!(error = %e, entries = local.len(), "presence refresh failed; retried at the next");
    }
}
