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
use banter_bus::{BusEvent, Envelope, Inbox, Topic};
use banter_protocol::ServerFrame;
use bytes::Bytes;
use std::sync::Arc;

/// At most this many waiting envelopes are taken from the inbox, and fanned
/// out, together.
const BATCH: usize = 32;

/// Runs until the bus closes the inbox.
pub(crate) async fn run(mut inbox: Inbox, hub: Arc<Hub>, metrics: Arc<Metrics>) {
    let mut events = Vec::with_capacity(BATCH);
    let mut run: Vec<Arc<Delivery>> = Vec::with_capacity(BATCH);
    loop {
        let (taken, waited) = inbox.recv_many(&mut events, BATCH).await;
        if taken == 0 {
            break;
        }
        metrics.bus_lag.set(waited.as_secs_f64());
        let at = clock_us();
        for event in events.drain(..) {
            let envelope = match event {
                BusEvent::Envelope(envelope) => envelope,
                BusEvent::Gap(topic) => {
                    metrics.gaps_unrepaired.inc();
                    tracing::warn!(
                        ?topic,
                        "live delivery had a hole history cannot fill; members told"
                    );
                    gap(&topic)
                }
                BusEvent::Repaired { topic, messages } => {
                    metrics.gaps_repaired.inc();
                    metrics.gap_messages.inc_by(messages as u64);
                    tracing::info!(?topic, messages, "missed messages delivered from history");
                    continue;
                }
            };
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

/// The `gap` frame for a topic's members, as an envelope of that topic.
fn gap(topic: &Topic) -> Envelope {
    let room = match topic {
        Topic::Room(room) => Some(room.clone()),
        Topic::User(_) => None,
    };
    let frame = ServerFrame::Gap { room, with: None };
    Envelope {
        topic: topic.clone(),
        position: None,
        payload: Bytes::from(frame.to_json()),
    }
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
