//! `RedisBus`: Redis pub/sub between the nodes of a cluster.
//!
//! - Publishes are pipelined on one multiplexed connection taken from the
//!   node's deadpool-redis pool ([`publisher`]); the pool serves presence.
//! - ONE dedicated RESP2 subscriber connection per bus, owned by one
//!   background task ([`Subscriber::run`]). It subscribes exactly the
//!   channels the node asked for (never a pattern), so Redis sends a node only
//!   the rooms it has members in.
//! - The task keeps the *desired* set of topics. When the connection is lost
//!   it marks the bus down, reconnects with capped, fully jittered
//!   exponential backoff and resubscribes the whole set, so rooms come back
//!   without any caller action.
//! - A connection can die without closing (a half-open TCP connection leaves
//!   redis-rs's stream pending forever), so the task publishes a probe on its
//!   own health channel every `probe_interval`; a probe that does not come
//!   back within [`PROBE_MISSES`] intervals drops the connection.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::{Pool, PoolError, TimeoutType};
use futures_util::StreamExt;
use rand::RngExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{IntoConnectionInfo, ProtocolVersion, RedisError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{self, Instant, MissedTickBehavior};

mod history;
mod publisher;

use crate::history::{Draft, HistoryPage, HistoryQuery};
use crate::{Bus, BusError, BusStatus, Envelope, INBOX_CAPACITY, Inbox, Topic};
use banter_protocol::{Message, RoomId};

/// The longest a TCP connect plus handshake to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one command (a publish with its pool checkout, a SUBSCRIBE)
/// may take before Redis counts as unavailable: clients get an error
/// quickly instead of a hung `send`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `subscribe`/`unsubscribe` wait for the subscriber task.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnect backoff: the first retry waits up to this (full jitter)...
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// ...doubling per failed attempt up to this cap.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Subscribe/unsubscribe requests waiting for the subscriber task.
const REQUEST_QUEUE: usize = 256;
/// How many probe intervals a probe may take to come back before the
/// subscriber connection counts as dead.
const PROBE_MISSES: u32 = 3;

/// Where the Redis bus connects and how it names its channels.
#[derive(Clone, Debug)]
pub struct RedisBusConfig {
    /// The Redis URL for the subscriber connection (the same server the pool
    /// publishes to).
    pub url: String,
    /// Every channel is `{key_prefix}:...`, so several deployments can share
    /// one Redis.
    pub key_prefix: String,
    /// How often the subscriber connection proves it is alive by receiving
    /// its own probe. A dead connection is noticed within three intervals.
    pub probe_interval: Duration,
    /// Messages kept per room in `{key_prefix}:history:{room}` (0 = none).
    pub history_size: usize,
}

impl RedisBusConfig {
    /// `url` and `key_prefix` with a 1 s probe interval. Does no I/O.
    pub fn new(url: impl Into<String>, key_prefix: impl Into<String>) -> RedisBusConfig {
        RedisBusConfig {
            url: url.into(),
            key_prefix: key_prefix.into(),
            probe_interval: Duration::from_secs(1),
            history_size: 200,
        }
    }
}

/// A node's handle on the Redis bus. Clones share one subscriber connection;
/// when the last clone is dropped the subscriber task ends.
#[derive(Clone, Debug)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: publisher::Publisher,
    prefix: String,
    history_size: usize,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<BusStatus>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.prefix)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// What a `subscribe`/`unsubscribe` asks of the subscriber task.
enum Request {
    Subscribe(Topic, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(Topic, oneshot::Sender<Result<(), BusError>>),
}

impl RedisBus {
    /// Starts the subscriber task and waits (at most a few seconds) for its
    /// first connection, so a bus on a healthy Redis is up when this returns.
    /// An unreachable Redis is not an error: the bus starts down and keeps
    /// retrying in the background. Only a bad URL or setting fails.
    pub async fn connect(
        pool: Pool,
        config: RedisBusConfig,
    ) -> Result<(RedisBus, Inbox), BusError> {
        if config.probe_interval.is_zero() {
            return Err(BusError::Config("probe_interval must be above zero".into()));
        }
        let client = subscriber_client(&config.url)?;
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
        let (status_tx, status) = watch::channel(BusStatus::default());
        let health = format!(
            "{}:health:{:016x}",
            config.key_prefix,
            rand::random::<u64>()
        );
        let subscriber = Subscriber {
            client,
            pool: pool.clone(),
            prefix: config.key_prefix.clone(),
            health,
            probe_interval: config.probe_interval,
            requests,
            desired: BTreeSet::new(),
            inbox: inbox_tx,
            status: status_tx,
        };
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(subscriber.run(first_tx));
        // Either outcome of the first attempt is fine; the wait is bounded anyway.
        let _ = time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, first_rx).await;
        let inner = Inner {
            publisher: publisher::Publisher::new(pool, status.clone()),
            prefix: config.key_prefix,
            history_size: config.history_size,
            requests: requests_tx,
            status,
        };
        Ok((
            RedisBus {
                inner: Arc::new(inner),
            },
            inbox,
        ))
    }

    /// Fails fast while the subscriber sees Redis down, rather than wait
    /// out a pool timeout per client message.
    fn check_up(&self) -> Result<(), BusError> {
        if self.inner.status.borrow().up {
            Ok(())
        } else {
            Err(BusError::Down)
        }
    }

    async fn request(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), BusError>>) -> Request,
    ) -> Result<(), BusError> {
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.inner
                .requests
                .send(make(tx))
                .await
                .map_err(|_| BusError::Closed)?;
            rx.await.map_err(|_| BusError::Closed)?
        };
        time::timeout(REQUEST_TIMEOUT, asked)
            .await
            .unwrap_or(Err(BusError::Down))
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError> {
        self.check_up()?;
        let channel = topic.channel(&self.inner.prefix);
        let receivers: i64 = self
            .inner
            .publisher
            .run(|mut conn| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(&payload[..])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(receivers).unwrap_or(0))
    }

    async fn publish_message(&self, draft: &Draft) -> Result<Message, BusError> {
        self.check_up()?;
        let inner = &self.inner;
        history::publish_message(&inner.publisher, &inner.prefix, inner.history_size, draft).await
    }

    async fn history(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BusError> {
        self.check_up()?;
        history::read(&self.inner.publisher, &self.inner.prefix, room, query).await
    }

    async fn subscribe(&self, topic: &Topic) -> Result<(), BusError> {
        self.request(|reply| Request::Subscribe(topic.clone(), reply))
            .await
    }

    async fn unsubscribe(&self, topic: &Topic) -> Result<(), BusError> {
        self.request(|reply| Request::Unsubscribe(topic.clone(), reply))
            .await
    }

    fn status(&self) -> watch::Receiver<BusStatus> {
        self.inner.status.clone()
    }
}

/// The subscriber connection's client: RESP2 (the split sink/stream API),
/// `TCP_NODELAY` on, and on Linux a TCP user timeout so unacknowledged
/// writes fail instead of hanging.
fn subscriber_client(url: &str) -> Result<redis::Client, BusError> {
    let bad = |e: RedisError| BusError::Config(format!("redis url: {e}"));
    let info = url.into_connection_info().map_err(bad)?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(BACKOFF_CAP);
    let resp2 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP2);
    let info = info.set_tcp_settings(tcp).set_redis_settings(resp2);
    redis::Client::open(info).map_err(bad)
}

/// `PUBLISH channel payload` on a pooled connection, checkout included,
/// within [`COMMAND_TIMEOUT`].
async fn pool_publish(pool: &Pool, channel: &str, payload: &[u8]) -> Result<usize, BusError> {
    let publish = async {
        let mut conn = pool.get().await.map_err(BusError::Pool)?;
        let receivers = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut *conn)
            .await
            .map_err(BusError::Redis)?;
        Ok(usize::try_from(receivers).unwrap_or(0))
    };
    time::timeout(COMMAND_TIMEOUT, publish)
        .await
        .unwrap_or(Err(BusError::Pool(PoolError::Timeout(TimeoutType::Wait))))
}

/// Why [`Subscriber::serve`] stopped.
enum Ended {
    /// Every bus handle, or the inbox, is gone: nobody needs the task.
    Exit,
    /// The connection failed; reconnect.
    Lost(String),
}

/// The background task that owns the subscriber connection and the set of
/// topics the node wants.
struct Subscriber {
    client: redis::Client,
    pool: Pool,
    prefix: String,
    /// `{prefix}:health:{random}`: this bus's own probe channel. Its
    /// messages never reach the inbox.
    health: String,
    probe_interval: Duration,
    requests: mpsc::Receiver<Request>,
    /// Everything the node subscribed and did not unsubscribe: what a new
    /// connection subscribes, and the filter on delivery (an envelope still
    /// in flight for a topic just unsubscribed is not delivered).
    desired: BTreeSet<Topic>,
    inbox: mpsc::Sender<Envelope>,
    status: watch::Sender<BusStatus>,
}

impl Subscriber {
    /// Connects, serves, and reconnects until nobody needs the task.
    /// `first` is told when the first connection attempt has finished.
    async fn run(mut self, first: oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        let mut ever_up = false;
        loop {
            let conn = match self.establish().await {
                None => return,
                Some(Ok(conn)) => Some(conn),
                Some(Err(e)) => {
                    // Warn when an outage starts and now and then while it lasts.
                    if attempt.is_multiple_of(20) {
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
                        match inbox.try_send(Envelope { topic, payload }) {
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
