//! The node's one subscriber task: takes every event the bus delivers,
//! wraps each envelope in one [`Delivery`] shared by every local socket of
//! its topic (each wire format encoded at most once, for the sockets that
//! speak it), and offers it to each local member. It never awaits a socket.
//!
//! When it falls behind (envelopes wait in the inbox), consecutive envelopes
//! of one topic go to each socket together, in one syscall: the node batches
//! exactly when it is loaded, and adds no latency when it is not.
//!
//! Presence changes are merged into `diff` frames ([`Diffs`]) instead of
//! going out one by one; `gap` frames tell members of holes the bus could
//! not fill, and after any interruption of a room's subscription its
//! members get a fresh presence snapshot (changes published meanwhile were
//! not stored anywhere).

use crate::clock::clock_us;
use crate::hub::Hub;
use crate::metrics::{DropReason, Metrics};
use crate::outlet::Delivery;
use crate::presence::{Diffs, snapshot};
use banter_bus::{BusEvent, Envelope, Inbox, Topic};
use banter_presence::{Change, Presence};
use banter_protocol::{CloseReason, ServerFrame};
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// At most this many waiting events are taken from the inbox, and fanned
/// out, together.
const BATCH: usize = 32;

/// What the fan-out works with.
pub(crate) struct Fanout {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub presence: Arc<dyn Presence>,
    pub diffs: Diffs,
    /// `presence.list_limit`: the size of a snapshot after an interruption.
    pub list_limit: usize,
}

/// Runs until the bus closes the inbox.
pub(crate) async fn run(mut inbox: Inbox, mut f: Fanout) {
    let mut events = Vec::with_capacity(BATCH);
    let mut run: Vec<Arc<Delivery>> = Vec::with_capacity(BATCH);
    loop {
        let due = f.diffs.next_due();
        let taken = tokio::select! {
            (taken, waited) = inbox.recv_many(&mut events, BATCH) => {
                if taken == 0 {
                    break;
                }
                f.metrics.bus_lag.set(waited.as_secs_f64());
                taken
            }
            () = sleep_until(due) => 0,
        };
        let (at, now) = (clock_us(), Instant::now());
        for (room, frame) in f.diffs.take_due(now) {
            f.send(&mut run, &Topic::Room(room), &frame, at);
        }
        if taken == 0 {
            continue;
        }
        for event in events.drain(..) {
            let envelope = match event {
                BusEvent::Envelope(envelope) if envelope.presence => {
                    f.presence_change(&mut run, envelope, at, now);
                    continue;
                }
                BusEvent::Envelope(envelope) => envelope,
                BusEvent::Gap(topic) => {
                    f.metrics.gaps_unrepaired.inc();
                    tracing::warn!(
                        ?topic,
                        "live delivery had a hole history cannot fill; members told"
                    );
                    if let Topic::Pusher(channel) = &topic {
                        // The Pusher protocol has no word for it: its
                        // subscribers here are sent away to reconnect
                        // (4200), as a Pusher app handles a lost connection
                        // (it resubscribes and fetches its state again),
                        // rather than left with a silent hole.
                        f.hub.kick_channel(channel, CloseReason::PusherReconnect);
                        continue;
                    }
                    f.resync(&topic);
                    gap(&topic)
                }
                BusEvent::Repaired { topic, messages } => {
                    if messages > 0 {
                        f.metrics.gaps_repaired.inc();
                        f.metrics.gap_messages.inc_by(messages as u64);
                        tracing::info!(?topic, messages, "missed messages delivered from history");
                    }
                    f.resync(&topic);
                    continue;
                }
            };
            f.metrics.bus_received.inc();
            if std::str::from_utf8(&envelope.payload).is_err() {
                f.metrics.dropped(DropReason::BadPayload);
                tracing::warn!(topic = ?envelope.topic, "bus payload is not UTF-8; dropped");
                continue;
            }
            if run.last().is_some_and(|d| d.topic != envelope.topic) {
                flush(&f.hub, &f.metrics, &mut run);
            }
            run.push(Arc::new(Delivery::new(envelope, at)));
        }
        flush(&f.hub, &f.metrics, &mut run);
    }
    tracing::debug!("bus inbox closed; fan-out stops");
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Fanout {
    /// A presence change: merged into the room's next diff, or out at once.
    fn presence_change(
        &mut self,
        run: &mut Vec<Arc<Delivery>>,
        envelope: Envelope,
        at: u32,
        now: Instant,
    ) {
        if let Topic::Pusher(channel) = &envelope.topic {
            let topic = envelope.topic.clone();
            let delivery = if let Some(count) = banter_presence::decode_tally(&envelope.payload) {
                crate::pusher::count_event(channel, count, topic, at)
            } else if let Some(change) = Change::decode(&envelope.payload) {
                crate::pusher::member_event(channel, &change, topic, at)
            } else {
                self.metrics.dropped(DropReason::BadPayload);
                return;
            };
            flush(&self.hub, &self.metrics, run);
            run.push(Arc::new(delivery));
            flush(&self.hub, &self.metrics, run);
            return;
        }
        let Topic::Room(room) = &envelope.topic else {
            return;
        };
        let Some(change) = Change::decode(&envelope.payload) else {
            self.metrics.dropped(DropReason::BadPayload);
            tracing::warn!(%room, "an unreadable presence change; dropped");
            return;
        };
        if let Some(frame) = self.diffs.add(room, change, now) {
            self.send(run, &envelope.topic, &frame, at);
        }
    }

    /// Sends one frame the node made to `topic`'s local members, in order
    /// after what is already gathered.
    fn send(&self, run: &mut Vec<Arc<Delivery>>, topic: &Topic, frame: &ServerFrame, at: u32) {
        flush(&self.hub, &self.metrics, run);
        let envelope = Envelope {
            topic: topic.clone(),
            position: None,
            presence: false,
            payload: Bytes::from(frame.to_json()),
        };
        run.push(Arc::new(Delivery::new(envelope, at)));
        flush(&self.hub, &self.metrics, run);
    }

    /// After an interruption of a room's subscription, its local members
    /// get the first page of who is there now.
    fn resync(&self, topic: &Topic) {
        let Topic::Room(room) = topic else {
            return;
        };
        let (hub, metrics, presence) = (
            self.hub.clone(),
            self.metrics.clone(),
            self.presence.clone(),
        );
        let (room, limit) = (room.clone(), self.list_limit);
        tokio::spawn(async move {
            match presence.page(&Topic::Room(room.clone()), None, limit).await {
                Ok(page) => {
                    let frame = snapshot(&room, page);
                    let envelope = Envelope {
                        topic: Topic::Room(room),
                        position: None,
                        presence: false,
                        payload: Bytes::from(frame.to_json()),
                    };
                    let mut run = vec![Arc::new(Delivery::new(envelope, clock_us()))];
                    flush(&hub, &metrics, &mut run);
                }
                Err(e) => {
                    tracing::warn!(%room, error = %e, "no presence snapshot after the interruption")
                }
            }
        });
    }
}

/// The `gap` frame for a topic's members, as an envelope of that topic.
fn gap(topic: &Topic) -> Envelope {
    let room = match topic {
        Topic::Room(room) => Some(room.clone()),
        Topic::User(_) | Topic::Pusher(_) => None,
    };
    let frame = ServerFrame::Gap { room, with: None };
    Envelope {
        topic: topic.clone(),
        position: None,
        presence: false,
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
