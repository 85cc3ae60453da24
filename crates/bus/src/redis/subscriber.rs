//! The bus's one subscriber connection and the task that owns it: the
//! desired topics, (re)subscribing, the health probe, reconnecting with
//! jittered backoff, and handing envelopes to the inbox.

use std::collections::BTreeSet;
use std::time::Duration;

use deadpool_redis::Pool;
use futures_util::StreamExt;
use rand::RngExt;
use redis::RedisError;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{self, Instant, MissedTickBehavior};

use super::{
    BACKOFF_BASE, BACKOFF_CAP, COMMAND_TIMEOUT, CONNECT_TIMEOUT, PROBE_MISSES, Request, framing,
    pool_publish,
};
use crate::{BusError, BusStatus, Envelope, Topic};
use bytes::Bytes;

/// While Redis stays unreachable, one failed attempt in this many is logged
/// as a warning (the others at debug), so an outage is seen but not spammed.
const WARN_EVERY: u32 = 20;

/// Why [`Subscriber::serve`] stopped.
enum Ended {
    /// Every bus handle, or the inbox, is gone: nobody needs the task.
    Exit,
    /// The connection failed; reconnect.
    Lost(String),
}

/// The background task that owns the subscriber connection and the set of
/// topics the node wants.
pub(super) struct Subscriber {
    pub(super) client: redis::Client,
    pub(super) pool: Pool,
    pub(super) prefix: String,
    /// `{prefix}:health:{random}`: this bus's own probe channel. Its
    /// messages never reach the inbox.
    pub(super) health: String,
    pub(super) probe_interval: Duration,
    pub(super) requests: mpsc::Receiver<Request>,
    /// Everything the node subscribed and did not unsubscribe: what a new
    /// connection subscribes, and the filter on delivery (an envelope still
    /// in flight for a topic just unsubscribed is not delivered).
    pub(super) desired: BTreeSet<Topic>,
    pub(super) inbox: mpsc::Sender<Envelope>,
    pub(super) status: watch::Sender<BusStatus>,
}

impl Subscriber {
    /// Connects, serves, and reconnects until nobody needs the task.
    /// `first` is told when the first connection attempt has finished.
    pub(super) async fn run(mut self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        let mut ever_up = false;
        loop {
            let conn = match self.establish().await {
                None => return,
                Some(Ok(conn)) => Some(conn),
                Some(Err(e)) => {
                    // Warn when an outage starts and now and then while it lasts.
                    if attempt.is_multiple_of(WARN_EVERY) {
                        tracing::warn!(error = %e, attempt, "redis bus: cannot connect; retrying");
                    } else {
                        tracing::debug!(error = %e, attempt, "redis bus: reconnect failed");
                    }
                    None
                }
            };
            if let Some(conn) = conn {
                self.status.send_modify(|s| {
                    s.up = true;
                    if ever_up {
                        s.reconnects += 1;
                    }
                });
                if ever_up {
                    tracing::info!(
                        topics = self.desired.len(),
                        "redis bus: reconnected and resubscribed"
                    );
                } else {
                    tracing::info!("redis bus: subscriber connected");
                }
                ever_up = true;
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
                let since = Instant::now();
                let ended = self.serve(conn).await;
                self.status.send_modify(|s| s.up = false);
                match ended {
                    Ended::Exit => return,
                    Ended::Lost(reason) => {
                        tracing::warn!(%reason, "redis bus: subscriber lost; reconnecting");
                    }
                }
                // A connection that lived a while starts a fresh backoff; one
                // that dies at once keeps backing off (a flapping Redis).
                if since.elapsed() >= BACKOFF_CAP {
                    attempt = 0;
                }
            } else if let Some(first) = first.take() {
                let _ = first.send(());
            }
            let delay = backoff(attempt);
            attempt = attempt.saturating_add(1);
            if self.while_down(time::sleep(delay)).await.is_none() {
                return;
            }
        }
    }

    /// One connection attempt: connect, then SUBSCRIBE the health channel and
    /// every desired topic in one command. `None`: nobody needs the task.
    async fn establish(&mut self) -> Option<Result<(PubSubSink, PubSubStream), RedisError>> {
        let client = self.client.clone();
        let connect =
            async move { time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await };
        let pubsub = match self.while_down(connect).await? {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return Some(Err(timed_out("connect"))),
        };
        let (mut sink, stream) = pubsub.split();
        let mut channels = vec![self.health.clone()];
        channels.extend(self.desired.iter().map(|t| t.channel(&self.prefix)));
        match time::timeout(COMMAND_TIMEOUT, sink.subscribe(channels)).await {
            Ok(Ok(())) => Some(Ok((sink, stream))),
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => Some(Err(timed_out("SUBSCRIBE"))),
        }
    }

    /// Runs `fut` while answering requests as a bus that is down: subscribe
    /// records the topic for the next connection and answers `Down`,
    /// unsubscribe forgets it. `None` when every handle or the inbox is gone.
    async fn while_down<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                () = self.inbox.closed() => return None,
                request = self.requests.recv() => match request? {
                    Request::Subscribe(topic, reply) => {
                        self.desired.insert(topic);
                        let _ = reply.send(Err(BusError::Down));
                    }
                    Request::Unsubscribe(topic, reply) => {
                        self.desired.remove(&topic);
                        let _ = reply.send(Ok(()));
                    }
                },
            }
        }
    }

    /// Reads one live connection: requests, messages into the inbox, probes.
    async fn serve(&mut self, (mut sink, mut stream): (PubSubSink, PubSubStream)) -> Ended {
        let mut tick = time::interval(self.probe_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let window = self.probe_interval * PROBE_MISSES;
        let mut probes: JoinSet<Result<(), BusError>> = JoinSet::new();
        let mut sequence: u64 = 0;
        // The probe in flight and when it must be back.
        let mut awaiting: Option<(u64, Instant)> = None;
        // An envelope waiting for room in a full inbox. While it waits the
        // stream is not read: backpressure, not a drop.
        let mut pending: Option<Envelope> = None;
        // A local handle, so a reserved permit does not borrow `self`.
        let inbox = self.inbox.clone();
        loop {
            tokio::select! {
                biased;
                request = self.requests.recv() => match request {
                    None => return Ended::Exit,
                    Some(request) => {
                        if let Err(reason) = self.answer(&mut sink, request).await {
                            return Ended::Lost(reason);
                        }
                    }
                },
                permit = inbox.reserve(), if pending.is_some() => match (permit, pending.take()) {
                    (Ok(permit), Some(envelope)) => permit.send(envelope),
                    (Ok(_), None) => {}
                    (Err(_), _) => return Ended::Exit,
                },
                message = stream.next(), if pending.is_none() => {
                    let Some(message) = message else {
                        return Ended::Lost("connection closed".into());
                    };
                    let channel = message.get_channel_name();
                    if channel == self.health {
                        let seen = probe_number(message.get_payload_bytes());
                        if let (Some(seen), Some((wanted, _))) = (seen, awaiting)
                            && seen >= wanted
                        {
                            awaiting = None;
                        }
                    } else if let Some(topic) = Topic::from_channel(&self.prefix, channel)
                        && self.desired.contains(&topic)
                    {
                        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                        let Ok((position, payload)) = framing::decode(payload) else {
                            tracing::warn!(?topic, "a payload with an unreadable header; dropped");
                            continue;
                        };
                        match inbox.try_send(Envelope { topic, position, payload }) {
                            Ok(()) => {}
                            Err(TrySendError::Full(envelope)) => pending = Some(envelope),
                            Err(TrySendError::Closed(_)) => return Ended::Exit,
                        }
                    }
                },
                Some(done) = probes.join_next() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("probe publish failed: {e}")),
                    Err(e) => return Ended::Lost(format!("probe task failed: {e}")),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    match awaiting {
                        // Stalled by our own full inbox, not by Redis: the
                        // probe waits in the stream behind the envelopes.
                        Some((wanted, due)) if pending.is_some() => {
                            awaiting = Some((wanted, due.max(now + window)));
                        }
                        Some((_, due)) if now >= due => {
                            return Ended::Lost("probe did not come back".into());
                        }
                        Some(_) => {}
                        None => {
                            sequence += 1;
                            awaiting = Some((sequence, now + window));
                            let (pool, channel) = (self.pool.clone(), self.health.clone());
                            let payload = sequence.to_string();
                            probes.spawn(async move {
                                pool_publish(&pool, &channel, payload.as_bytes()).await.map(drop)
                            });
                        }
                    }
                }
            }
        }
    }

    /// Answers one request on a live connection. `Err`: the connection
    /// failed and must be replaced (the desired set is already updated).
    async fn answer(&mut self, sink: &mut PubSubSink, request: Request) -> Result<(), String> {
        match request {
            Request::Subscribe(topic, reply) => {
                if self.desired.contains(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let channel = topic.channel(&self.prefix);
                self.desired.insert(topic.clone());
                match time::timeout(COMMAND_TIMEOUT, sink.subscribe(&channel)).await {
                    Ok(Ok(())) => {
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    // Redis refused it (ACL, ...): the connection is fine,
                    // the topic cannot be had.
                    Ok(Err(e)) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                        self.desired.remove(&topic);
                        let _ = reply.send(Err(BusError::Redis(e)));
                        Ok(())
                    }
                    // Kept in the desired set: the next connection restores it.
                    Ok(Err(e)) => {
                        let reason = format!("SUBSCRIBE failed: {e}");
                        let _ = reply.send(Err(BusError::Redis(e)));
                        Err(reason)
                    }
                    Err(_) => {
                        let _ = reply.send(Err(BusError::Down));
                        Err("SUBSCRIBE timed out".into())
                    }
                }
            }
            Request::Unsubscribe(topic, reply) => {
                // Delivery stops now whatever Redis says (`desired` filters
                // the stream), so the answer is always Ok; it is sent once
                // Redis confirmed, or once the connection is condemned.
                if !self.desired.remove(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                let channel = topic.channel(&self.prefix);
                let result = match time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&channel)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("UNSUBSCRIBE failed: {e}")),
                    Err(_) => Err("UNSUBSCRIBE timed out".into()),
                };
                let _ = reply.send(Ok(()));
                result
            }
        }
    }
}

/// Capped exponential backoff with full jitter: uniform in
/// `0..=min(cap, base * 2^attempt)`, so a fleet of nodes does not reconnect
/// in lockstep after an outage.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// The sequence number a probe carries.
fn probe_number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

fn timed_out(what: &str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}
