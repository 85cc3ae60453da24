//! The node's one subscriber task: takes every envelope the bus delivers,
//! turns its payload into a WebSocket frame once, and offers those same bytes
//! to each local member of the room. It never awaits a socket.

use crate::hub::{Delivery, Hub};
use crate::metrics::{DropReason, Metrics};
use banter_bus::{Envelope, Inbox};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Runs until the bus closes the inbox.
pub(crate) async fn run(mut inbox: Inbox, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    while let Some(Envelope { topic, payload }) = inbox.recv().await {
        let at = crate::hub::clock_us();
        metrics.bus_received.inc();
        // Validated and encoded once per message, not once per socket.
        let Ok(text) = Utf8Bytes::try_from(payload.clone()) else {
            metrics.dropped(DropReason::BadPayload);
            tracing::warn!(?topic, "bus payload is not UTF-8; dropped");
            continue;
        };
        let wire = crate::outlet::encode_text(payload);
        let delivery = Arc::new(Delivery { text, wire, at });
        let delivered = hub.deliver(&topic, &delivery);
        metrics.delivered.inc_by(delivered as u64);
    }
    tracing::debug!("bus inbox closed; fan-out stops");
}
