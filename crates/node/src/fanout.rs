//! The node's one subscriber task: takes every envelope the bus delivers,
//! turns its payload into a WebSocket frame once, and offers those same bytes
//! to each local member of the room. It never awaits a socket.
//!
//! When it falls behind (envelopes wait in the inbox), consecutive envelopes
//! of one topic go to each socket together, in one syscall: the node batches
//! exactly when it is loaded, and adds no latency when it is not.

use crate::hub::{Delivery, Hub};
use crate::metrics::{DropReason, Metrics};
use banter_bus::{Envelope, Inbox, Topic};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// At most this many waiting envelopes are fanned out together.
const BATCH: usize = 32;

/// Runs until the bus closes the inbox.
pub(crate) async fn run(mut inbox: Inbox, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut envelopes = Vec::with_capacity(BATCH);
    let mut run: Vec<Arc<Delivery>> = Vec::with_capacity(BATCH);
    while inbox.recv_many(&mut envelopes, BATCH).await > 0 {
        let at = crate::hub::clock_us();
        let mut topic: Option<Topic> = None;
        for Envelope {
            topic: next,
            payload,
        } in envelopes.drain(..)
        {
            metrics.bus_received.inc();
            // Validated and encoded once per message, not once per socket.
            let Ok(text) = Utf8Bytes::try_from(payload.clone()) else {
                metrics.dropped(DropReason::BadPayload);
                tracing::warn!(topic = ?next, "bus payload is not UTF-8; dropped");
                continue;
            };
            if topic.as_ref().is_some_and(|t| *t != next) {
                flush(&hub, &metrics, topic.as_ref(), &mut run);
            }
            topic = Some(next);
            let wire = crate::outlet::encode_text(payload);
            run.push(Arc::new(Delivery { text, wire, at }));
        }
        flush(&hub, &metrics, topic.as_ref(), &mut run);
    }
    tracing::debug!("bus inbox closed; fan-out stops");
}

/// Fans out a run of frames of one topic.
fn flush(hub: &Hub, metrics: &Metrics, topic: Option<&Topic>, run: &mut Vec<Arc<Delivery>>) {
    if let Some(topic) = topic
        && !run.is_empty()
    {
        let delivered = hub.deliver(topic, run);
        metrics.delivered.inc_by(delivered as u64);
    }
    run.clear();
}
