//! The node's periodic work, one task: presence refresh (every ttl/3) with
//! the departures it sweeps, delayed unsubscribes, closing sockets stuck in
//! a write, the bus health metrics, and re-registering presence after the
//! bus reconnected.

use crate::hub::UNSUBSCRIBE_DELAY;
use crate::node::Node;
use crate::presence;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often sockets are checked for a write that stopped moving.
const STUCK_CHECK: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub(crate) async fn run(node: Node, stop: CancellationToken) {
    let inner = &node.inner;
    let mut refresh = tokio::time::interval(inner.config.presence_ttl() / 3);
    let mut unsubscribe = tokio::time::interval(UNSUBSCRIBE_DELAY / 2);
    let mut stuck = tokio::time::interval(STUCK_CHECK);
    let mut status = inner.bus_status.clone();
    let mut reconnects_seen = 0;
    loop {
        let bus = *status.borrow_and_update();
        inner.metrics.bus_up.set(i64::from(bus.up));
        if bus.reconnects > reconnects_seen {
            inner
                .metrics
                .bus_reconnects
                .inc_by(bus.reconnects - reconnects_seen);
            reconnects_seen = bus.reconnects;
            // Redis may have lost everything (a restart without persistence):
            // put this node's members back before anyone reads presence.
            presence::reregister(&*inner.presence, inner.hub.local_members()).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = status.changed() => {}
            _ = refresh.tick() => {
                let local = inner.hub.local_members();
                presence::refresh(&*inner.bus, &*inner.presence, local).await;
            }
            _ = unsubscribe.tick() => inner.hub.unsubscribe_idle().await,
            _ = stuck.tick() => inner.hub.kick_stuck(),
        }
    }
}
