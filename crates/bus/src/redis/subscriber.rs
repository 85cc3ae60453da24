//! The bus's subscriber link ([`super::link`]) and the task that owns it: the
//! wanted topics and where each one's delivery stands, (re)subscribing, the
//! health probe, reconnecting with jittered backoff, handing events to the
//! inbox, and gap repair ([`super::repair`]) after every interruption. What
//! it does with requests on a live link is in [`super::requests`], how far
//! behind the bus it reads in [`super::lag`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::Pool;
use rand::RngExt;
use redis::{ConnectionInfo, RedisError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{self, Instant, MissedTickBehavior};

use super::commands::Commands;
use super::history::{self, Mode, Retention};
use super::lag::Lag;
use super::link::{Sink, Stream};
use super::repair::{Cursor, Repairs};
use super::shards::{self, Incoming};
use super::{
    BACKOFF_BASE, BACKOFF_CAP, COMMAND_TIMEOUT, CONNECT_TIMEOUT, Keyspace, PROBE_MISSES, Request,
    framing,
};
use crate::inbox::InboxSender;
use crate::{BusError, BusEvent, BusStatus, Envelope, Topic};
use bytes::Bytes;

/// The backoff cap on a Redis Cluster. A failover makes every attempt fail
/// until the replica has taken over (about `cluster-node-timeout`), and a
/// 5 s cap would then keep delivery away for up to 5 s more; the attempts
/// are spread over the shards, and cheap for a cluster that answers.
const CLUSTER_BACKOFF_CAP: Duration = Duration::from_secs(1);

/// While Redis stays unreachable, one failed attempt in this many is logged
/// as a warning (the others at debug), so an outage is seen but not spammed.
const WARN_EVERY: u32 = 20;

/// The most subscribe/unsubscribe requests answered together: their new
/// topics' baselines are read in one go and subscribed in one command.
const REQUEST_BATCH: usize = 256;

/// Why [`Subscriber::serve`] stopped.
enum Ended {
    /// Every bus handle, or the inbox, is gone: nobody needs the task.
    Exit,
    /// The connection failed or was given up; reconnect.
    Lost(String),
}

/// Where the subscriber connects.
pub(super) enum Connector {
    /// One Redis: a RESP2 pub/sub connection from `client`; probes are
    /// published through `pool`.
    Single { client: redis::Client, pool: Pool },
    /// A Redis Cluster, found from its seed nodes; `id` names this node's
    /// probe channels (one per shard).
    Cluster {
        seeds: Vec<ConnectionInfo>,
        id: String,
        replication: shards::Replication,
    },
}

/// The background task that owns the subscriber link and the set of
/// topics the node wants.
pub(super) struct Subscriber {
    pub(super) connector: Connector,
    /// Reads history for baselines and repairs.
    pub(super) commands: Arc<Commands>,
    pub(super) names: Keyspace,
    /// `{prefix}:health:{random}`: this bus's own probe channel on one
    /// Redis. Its messages never reach the inbox.
    pub(super) health: String,
    pub(super) probe_interval: Duration,
    /// Behind the bus by more than this (see [`Lag`]), or blocked on a full
    /// inbox that long, the node is too far behind: the connection is
    /// dropped (Redis would otherwise be read into memory without bound:
    /// the client library buffers what the socket brings, unbounded) and
    /// the gap repaired from history.
    pub(super) max_lag: Duration,
    pub(super) retention: Retention,
    pub(super) requests: mpsc::Receiver<Request>,
    /// Everything the node subscribed and did not unsubscribe, with where
    /// each topic's delivery stands: what a new connection subscribes, what
    /// it repairs, and the filter on delivery (an envelope still in flight
    /// for a topic just unsubscribed is not delivered).
    pub(super) topics: BTreeMap<Topic, Cursor>,
    /// References the node holds on each wanted topic (its local members).
    pub(super) refs: HashMap<Topic, usize>,
    /// Rooms whose last reference went, and when: unsubscribed, all in one
    /// command, once `unsubscribe_delay` has passed without a new one.
    pub(super) idle: HashMap<Topic, Instant>,
    /// How long a room stays subscribed after its last local member left,
    /// so a member who reconnects or a flapping room does not churn
    /// SUBSCRIBE. A user's topic goes at once.
    pub(super) unsubscribe_delay: Duration,
    /// Events waiting for room in a full inbox, kept across connections
    /// (their topics' cursors already count them as delivered). While any
    /// wait, the stream is not read: backpressure, not a drop. Bounded by
    /// one repair page plus what repairs held, plus one live envelope.
    pub(super) out: VecDeque<BusEvent>,
    /// How far behind the bus the stream's reading is.
    pub(super) lag: Lag,
    pub(super) inbox: InboxSender,
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
                    if attempt.is_multiple_of(WARN_EVERY) {
                        tracing::warn!(error = %e, attempt, "redis bus: cannot connect; retrying");
                    } else {
                        tracing::debug!(error = %e, attempt, "redis bus: reconnect failed");
                    }
                    None
                }
            };
            if let Some((conn, resumed)) = conn {
                let shards = match &conn.0 {
                    Sink::Sharded(shards) => Some(shards.len()),
                    Sink::Single { .. } => None,
                };
                self.status.send_modify(|s| {
                    s.up = true;
                    s.shards = shards;
                    s.writable = true;
                    if ever_up {
                        s.reconnects += 1;
                    }
                });
                if ever_up {
                    tracing::info!(
                        topics = self.topics.len(),
                        repairing = resumed.len(),
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
                let ended = self.serve(conn, resumed).await;
                self.status.send_modify(|s| {
                    s.up = false;
                    s.shards = s.shards.map(|_| 0);
                });
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
            let cap = match self.connector {
                Connector::Single { .. } => BACKOFF_CAP,
                Connector::Cluster { .. } => CLUSTER_BACKOFF_CAP,
            };
            let delay = backoff(attempt, cap);
            attempt = attempt.saturating_add(1);
            if self.while_down(time::sleep(delay)).await.is_none() {
                return;
            }
        }
    }

    /// Connects the link: one pub/sub connection subscribed to the health
    /// channel, or one per shard primary of a cluster, each subscribed to
    /// its own.
    async fn link(&mut self) -> Option<Result<(Sink, Stream), RedisError>> {
        match &self.connector {
            Connector::Single { client, pool } => {
                let (client, pool) = (client.clone(), pool.clone());
                let health = self.health.clone();
                let connect = async move {
                    let pubsub = time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                        .await
                        .map_err(|_| timed_out("connect"))??;
                    let (sink, stream) = pubsub.split();
                    Ok((Sink::Single { sink, health, pool }, Stream::Single(stream)))
                };
                self.while_down(connect).await
            }
            Connector::Cluster {
                seeds,
                id,
                replication,
            } => {
                let (seeds, id, names) = (seeds.clone(), id.clone(), self.names.clone());
                let replication = replication.clone();
                let connect = async move {
                    let (sink, stream) = shards::connect(&seeds, &names, &id, &replication).await?;
                    Ok((Sink::Sharded(sink), Stream::Sharded(stream)))
                };
                self.while_down(connect).await
            }
        }
    }

    /// One connection attempt: connect, take a baseline of every room that
    /// has none yet, then subscribe the health channel and every wanted
    /// topic. Returns the link and the topics whose delivery was
    /// interrupted (to repair). `None`: nobody needs the task.
    #[allow(clippy::type_complexity)]
    async fn establish(&mut self) -> Option<Result<((Sink, Stream), Vec<Topic>), RedisError>> {
        let (mut sink, stream) = match self.link().await? {
            Ok(link) => link,
            Err(e) => return Some(Err(e)),
        };
        let pending: Vec<Topic> = self
            .topics
            .iter()
            .filter(|(_, c)| matches!(c, Cursor::Pending))
            .map(|(t, _)| t.clone())
            .collect();
        let resumed: Vec<Topic> = self
            .topics
            .iter()
            .filter(|(_, c)| !matches!(c, Cursor::Pending))
            .map(|(t, _)| t.clone())
            .collect();
        for (topic, cursor) in self.baselines(pending).await {
            self.topics.insert(topic, cursor);
        }
        let mut channels = Vec::with_capacity(self.topics.len() + 1);
        if let Sink::Single { health, .. } = &sink {
            channels.push(health.clone());
        }
        channels.extend(self.topics.keys().map(|t| self.names.channel(t)));
        match time::timeout(COMMAND_TIMEOUT, sink.subscribe(&channels)).await {
            Ok(Ok(())) => Some(Ok(((sink, stream), resumed))),
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => Some(Err(timed_out("SUBSCRIBE"))),
        }
    }

    /// Where delivery starts for topics about to be subscribed: the newest
    /// position of the topic's stream (a room's history, a user's mailbox)
    /// before the SUBSCRIBE (everything after it arrives live, or is in the
    /// history a joining member reads). A topic whose stream cannot be
    /// read now gets no baseline: an interruption before its first live
    /// message is then announced as a gap rather than repaired.
    pub(super) async fn baselines(&self, topics: Vec<Topic>) -> Vec<(Topic, Cursor)> {
        let mut reads = JoinSet::new();
        let mut out = Vec::new();
        for topic in topics {
            let (commands, names) = (self.commands.clone(), self.names.clone());
            reads.spawn(async move {
                let raw = history::read_raw(&commands, &names, &topic, Mode::Latest, 0).await;
                (topic, raw)
            });
        }
        while let Some(done) = reads.join_next().await {
            match done {
                Ok((topic, Ok(raw))) => out.push((topic, Cursor::at_newest(&raw))),
                Ok((topic, Err(e))) => {
                    tracing::warn!(?topic, error = %e, "redis bus: no history baseline; repair starts from what arrives");
                    out.push((topic, Cursor::live_without_history()));
                }
                Err(e) => tracing::warn!(error = %e, "redis bus: baseline task failed"),
            }
        }
        out
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
                request = self.requests.recv() => self.answer_down(request?),
            }
        }
    }

    /// Reads one live connection: requests, messages into the inbox, probes,
    /// and the repair of `resumed` topics. What waits for the inbox when it
    /// ends is kept for the next connection.
    async fn serve(&mut self, conn: (Sink, Stream), resumed: Vec<Topic>) -> Ended {
        let mut out = std::mem::take(&mut self.out);
        let ended = self.serve_with(conn, resumed, &mut out).await;
        self.out = out;
        ended
    }

    async fn serve_with(
        &mut self,
        (mut sink, mut stream): (Sink, Stream),
        resumed: Vec<Topic>,
        out: &mut VecDeque<BusEvent>,
    ) -> Ended {
        let mut tick = time::interval(self.probe_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut idle_tick =
            time::interval((self.unsubscribe_delay / 2).max(Duration::from_millis(10)));
        idle_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let window = self.probe_interval * PROBE_MISSES;
        let mut probes: JoinSet<Result<(), BusError>> = JoinSet::new();
        let mut sequence: u64 = 0;
        // The probe in flight and when it must be back, and the newest probe
        // each probe channel brought back.
        let mut awaiting: Option<(u64, Instant)> = None;
        let mut seen = vec![0u64; sink.probes()];
        // Since when `out` has been waiting: the node's lag behind the bus.
        let mut blocked_since: Option<Instant> = None;
        let mut repairs = Repairs::new(self.commands.clone(), self.names.clone(), self.retention);
        for topic in resumed {
            if let Some(cursor) = self.topics.get(&topic) {
                repairs.start(topic, *cursor, out);
            }
        }
        // A local handle, so a reserved permit does not borrow `self`.
        let inbox = self.inbox.clone();
        loop {
            if out.is_empty() {
                blocked_since = None;
            } else if blocked_since.is_none() {
                blocked_since = Some(Instant::now());
            }
            tokio::select! {
                biased;
                request = self.requests.recv() => match request {
                    None => return Ended::Exit,
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < REQUEST_BATCH
                            && let Ok(request) = self.requests.try_recv()
                        {
                            batch.push(request);
                        }
                        if let Err(reason) = self.answer_all(&mut sink, batch, &mut repairs).await {
                            return Ended::Lost(reason);
                        }
                    }
                },
                permit = inbox.reserve(), if !out.is_empty() => match (permit, out.pop_front()) {
                    (Some(permit), Some(event)) => permit.send(event, self.lag.now),
                    (Some(_), None) => {}
                    (None, _) => return Ended::Exit,
                },
                Some(done) = repairs.next() => {
                    repairs.finish_step(done, &mut self.topics, out);
                }
                incoming = stream.next(), if out.is_empty() => {
                    let message = match incoming {
                        Incoming::Message(message) => message,
                        Incoming::Lost(reason) => return Ended::Lost(reason),
                    };
                    let channel = message.get_channel_name();
                    if let Some(index) = sink.health_index(channel) {
                        if let Some(number) = probe_number(message.get_payload_bytes()) {
                            seen[index] = seen[index].max(number);
                        }
                        if let Some((wanted, _)) = awaiting
                            && seen.iter().all(|s| *s >= wanted)
                        {
                            awaiting = None;
                        }
                        continue;
                    }
                    let Some(topic) = self.names.topic(channel) else {
                        continue;
                    };
                    let Some(cursor) = self.topics.get_mut(&topic) else {
                        continue; // unsubscribed meanwhile
                    };
                    let payload = Bytes::copy_from_slice(message.get_payload_bytes());
                    let Ok(framed) = framing::decode(payload) else {
                        tracing::warn!(?topic, "a payload with an unreadable header; dropped");
                        continue;
                    };
                    let envelope = Envelope {
                        topic,
                        position: framed.position,
                        presence: framed.presence,
                        payload: framed.payload,
                    };
                    if let Some(position) = envelope.position
                        && self.lag.observe(position.id.ms, crate::now_ms()) > self.max_lag
                    {
                        // The cursor has not moved: repair starts at this one.
                        return Ended::Lost(format!(
                            "the node fell {:?} behind the bus (more than {:?}); repairing from history",
                            self.lag.now, self.max_lag
                        ));
                    }
                    if let Some(envelope) = repairs.hold(envelope) {
                        // Not under repair: delivered now, once.
                        if cursor.advance(envelope.position) {
                            match inbox.try_send(BusEvent::Envelope(envelope), self.lag.now) {
                                Ok(None) => {}
                                Ok(Some(event)) => out.push_back(event),
                                Err(()) => return Ended::Exit,
                            }
                        }
                    }
                },
                _ = idle_tick.tick(), if !self.idle.is_empty() => {
                    if let Err(reason) = self.unsubscribe_idle(&mut sink, &mut repairs).await {
                        return Ended::Lost(reason);
                    }
                }
                Some(done) = probes.join_next() => match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("probe publish failed: {e}")),
                    Err(e) => return Ended::Lost(format!("probe task failed: {e}")),
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if blocked_since.is_some_and(|since| now.duration_since(since) > self.max_lag) {
                        return Ended::Lost(format!(
                            "the node fell more than {:?} behind the bus; repairing from history",
                            self.max_lag
                        ));
                    }
                    match awaiting {
                        // Stalled by our own full inbox, not by Redis: the
                        // probe waits in the stream behind the envelopes.
                        Some((wanted, due)) if !out.is_empty() => {
                            awaiting = Some((wanted, due.max(now + window)));
                        }
                        Some((_, due)) if now >= due => {
                            return Ended::Lost("probe did not come back".into());
                        }
                        Some(_) => {}
                        None => {
                            sequence += 1;
                            awaiting = Some((sequence, now + window));
                            probes.spawn(sink.probe(sequence));
                        }
                    }
                }
            }
        }
    }
}

/// Capped exponential backoff with full jitter: uniform in
/// `0..=min(cap, base * 2^attempt)`, so a fleet of nodes does not reconnect
/// in lockstep after an outage.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(cap);
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
