//! The node's one subscriber task: takes every envelope the bus delivers,
//! wraps it in one [`Delivery`] shared by every local socket of its topic
//! (each wire format encoded at most once, for the sockets that speak it),
//! and offers it to each local member. It never awaits a socket.
//!
//! When it falls behind (envelopes wait in the inbox), consecutive envelopes
//! of one topic go to each socket together, in one syscall: the node batches
//! exactly when it is loaded, and adds no latency when it is not.

use crate::clock::clock_us;
use crate::hub::Hub;
use crate::metrics::{DropReason, Metrics};
use crate::outlet::Delivery;
use banter_bus::{Inbox, Topic};
use std::sync::Arc;

/// At most this many waiting envelopes are taken from the inbox, and fanned
/// out, together.
const BATCH: usize = 32;

/// Runs until the bus closes the inbox.
pub(crate) async fn run(mut inbox: Inbox, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut envelopes = Vec::with_capacity(BATCH);
    let mut run: Vec<Arc<Delivery>> = Vec::with_capacity(BATCH);
    while inbox.recv_many(&mut envelopes, BATCH).await > 0 {
        let at = clock_us();
        for envelope in envelopes.drain(..) {
            metrics.bus_received.inc();
            if std::str::from_utf8(&envelope.payload).is_err() {
                metrics.dropped(DropReason::BadPayload);
                tracing::warn!(topic = ?envelope.topic, "bus payload is not UTF-8; dropped");
                continue;
            }
            if run.last().is_some_and(|d| d.topic != envelope.topic) {
                flush(&hub, &metrics, &mut run);
            }
            run.push(Arc::new(Delivery::new(envelope, at)));
        }
        flush(&hub, &metrics, &mut run);
    }
    tracing::debug!("bus inbox closed; fan-out stops");
}

/// Fans out a run of deliveries of one topic.
fn flush(hub: &Hub, metrics: &Metrics, run: &mut Vec<Arc<Delivery>>) {
    if let Some(first) = run.first() {
        let topic: &Topic = &first.topic;
        let delivered = hub.deliver(topic, run);
        metrics.delivered.inc_by(delivered as u64);
    }
    run.clear();
}
