//! `RedisBus`: Redis pub/sub between the nodes of a cluster, on one Redis
//! ([`RedisBus::connect`]) or on a Redis Cluster with sharded pub/sub
//! ([`RedisBus::connect_cluster`]: keys in hash tags per room, see
//! [`Keyspace`]; one subscriber connection per shard primary, see
//! `shards.rs`).
//!
//! - Commands (publishes, history, presence) are pipelined on one
//!   multiplexed connection taken from the node's deadpool-redis pool
//!   ([`Commands`], shared with presence by [`RedisBus::commands`]).
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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_redis::{Pool, PoolError, TimeoutType};
use futures_util::future::BoxFuture;
use redis::cluster::ClusterClient;
use redis::{ConnectionInfo, IntoConnectionInfo, ProtocolVersion};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time;

mod commands;
mod dialogs;
mod framing;
mod history;
mod keyspace;
mod lag;
pub use commands::{Commands, Conn};
pub use keyspace::{Keyspace, SLOTS, slot};
mod link;
mod listeners;
mod publisher;
mod repair;
mod requests;
mod shards;
mod subscriber;

use subscriber::{Connector, Subscriber};

use crate::dialogs::{DmDraft, ReadMark};
use crate::history::{DEFAULT_HISTORY, Draft, HistoryPage, HistoryQuery, Position};
use crate::{Bus, BusError, BusStatus, Inbox, Topic, inbox};
use banter_protocol::{ChannelName, DialogEntry, DirectMessage, Message, RoomId, User, UserId};
use history::Retention;

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
/// On Redis Cluster, the shortest and longest wait (ms) before a command
/// whose shard failed is tried again (see `connect_cluster`).
const RETRY_WAIT_MIN_MS: u64 = 50;
const RETRY_WAIT_MAX_MS: u64 = 1_000;
/// Subscribe/unsubscribe requests waiting for the subscriber task.
const REQUEST_QUEUE: usize = 256;
/// How many probe intervals a probe may take to come back before the
/// subscriber connection counts as dead.
const PROBE_MISSES: u32 = 3;
/// How often the subscriber proves it is alive, unless configured otherwise:
/// a dead connection is noticed within [`PROBE_MISSES`] of these.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How far behind the bus a node may fall, unless configured otherwise.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(5);
/// How long a room stays subscribed after its last local member left,
/// unless configured otherwise: long enough for a reconnect or a flapping
/// room not to churn SUBSCRIBE.
pub const DEFAULT_UNSUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

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
    /// A room's history expires this long after its last message (zero: never).
    pub history_ttl: Duration,
    /// How far the node may fall behind the bus (blocked on a full inbox)
    /// before the subscriber connection is dropped and the gap repaired
    /// from history, instead of buffering without bound.
    pub max_lag: Duration,
    /// How long a room stays subscribed after this node's last member of it
    /// left (a user's topic goes at once).
    pub unsubscribe_delay: Duration,
    /// Direct messages kept per dialog (`history.dialog_size`).
    pub dialog_size: usize,
    /// A dialog expires this long after its last message (`history.dialog_ttl_ms`).
    pub dialog_ttl: Duration,
}

impl RedisBusConfig {
    /// `url` and `key_prefix` with a [`DEFAULT_PROBE_INTERVAL`] probe and
    /// [`DEFAULT_HISTORY`] messages per room. Does no I/O.
    pub fn new(url: impl Into<String>, key_prefix: impl Into<String>) -> RedisBusConfig {
        RedisBusConfig {
            url: url.into(),
            key_prefix: key_prefix.into(),
            probe_interval: DEFAULT_PROBE_INTERVAL,
            history_size: DEFAULT_HISTORY,
            history_ttl: Duration::ZERO,
            max_lag: DEFAULT_MAX_LAG,
            unsubscribe_delay: DEFAULT_UNSUBSCRIBE_DELAY,
            dialog_size: crate::dialogs::DEFAULT_DIALOG_SIZE,
            dialog_ttl: crate::dialogs::DEFAULT_DIALOG_TTL,
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
    commands: Arc<commands::Commands>,
    names: Keyspace,
    /// On Redis Cluster, which slots have replicas (a stored message is
    /// acked once one has it).
    replication: Option<shards::Replication>,
    /// On one Redis, the task that stores and publishes chat messages in
    /// batches (`publisher.rs`); on a cluster each message has its own call.
    publisher: Option<publisher::Publisher>,
    retention: Retention,
    dialog_retention: dialogs::DialogRetention,
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<BusStatus>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBus")
            .field("names", &self.names)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// What differs between a bus on one Redis and on a cluster.
struct Parts {
    names: Keyspace,
    health: String,
    connector: Connector,
    commands: Arc<Commands>,
    replication: Option<shards::Replication>,
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
        let client = subscriber_client(&config.url)?;
        let names = Keyspace::standalone(config.key_prefix.clone());
        let health = names.health(&format!("{:016x}", rand::random::<u64>()), 0);
        let (status_tx, status) = watch::channel(BusStatus::default());
        let commands = Arc::new(commands::Commands::new(pool.clone(), status.clone()));
        let (probe_pool, probe_channel) = (pool.clone(), health.clone());
        let writable = move || -> BoxFuture<'static, bool> {
            let (pool, channel) = (probe_pool.clone(), probe_channel.clone());
            Box::pin(async move { pool_publish(&pool, &channel, b"w").await.is_ok() })
        };
        let connector = Connector::Single { client, pool };
        let parts = Parts {
            names,
            health,
            connector,
            commands,
            replication: None,
        };
        RedisBus::start(config, parts, writable, status_tx, status).await
    }

    /// The bus on a Redis Cluster found from `seeds` (`redis://host:port`
    /// of some of its nodes): commands go through one cluster connection,
    /// messages by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), each room's
    /// keys and channel in one slot. Like [`connect`](Self::connect), an
    /// unreachable cluster is not an error.
    pub async fn connect_cluster(
        seeds: &[String],
        config: RedisBusConfig,
    ) -> Result<(RedisBus, Inbox), BusError> {
        if seeds.is_empty() {
            return Err(BusError::Config(
                "a Redis Cluster needs at least one seed node",
            ));
        }
        let seeds = seeds
            .iter()
            .map(|url| url.as_str().into_connection_info().map_err(BusError::Url))
            .collect::<Result<Vec<ConnectionInfo>, BusError>>()?;
        let client = ClusterClient::builder(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(commands::IN_FLIGHT_TIMEOUT)
            // redis-rs waits at least 1.28 s before each retry of a command
            // whose shard failed, and up to minutes after a few: far too
            // long for a chat in a failover. Retries every 50 ms to 1 s
            // (jittered, doubling) find the promoted replica soon after it
            // takes over; IN_FLIGHT_TIMEOUT still bounds the whole command.
            .min_retry_wait(RETRY_WAIT_MIN_MS)
            .max_retry_wait(RETRY_WAIT_MAX_MS)
            .build()
            .map_err(BusError::Url)?;
        let names = Keyspace::cluster(config.key_prefix.clone());
        let id = format!("{:016x}", rand::random::<u64>());
        let health = names.health(&id, 0);
        let (status_tx, status) = watch::channel(BusStatus {
            shards: Some(0),
            ..BusStatus::default()
        });
        let commands = Arc::new(commands::Commands::cluster(client, status.clone()));
        let replication = shards::Replication::default();
        let (probe_commands, probe_channel) = (commands.clone(), health.clone());
        let probe_replication = replication.clone();
        let writable = move || -> BoxFuture<'static, bool> {
            let (commands, channel) = (probe_commands.clone(), probe_channel.clone());
            let replication = probe_replication.clone();
            Box::pin(async move {
                // Replicas come and go without the subscriber's link
                // noticing (a replica that attaches late, one that dies):
                // which slots have one is read again on every tick.
                refresh_replication(&commands, &replication).await;
                let publish = commands.run(|mut conn| async move {
                    redis::cmd("SPUBLISH")
                        .arg(channel)
                        .arg("w")
                        .query_async::<i64>(&mut conn)
                        .await
                });
                matches!(time::timeout(COMMAND_TIMEOUT, publish).await, Ok(Ok(_)))
            })
        };
        let connector = Connector::Cluster {
            seeds,
            id,
            replication: replication.clone(),
        };
        let parts = Parts {
            names,
            health,
            connector,
            commands,
            replication: Some(replication),
        };
        RedisBus::start(config, parts, writable, status_tx, status).await
    }

    /// Starts the subscriber task and the writability watch, and waits (at
    /// most a few seconds) for the first connection.
    async fn start(
        config: RedisBusConfig,
        parts: Parts,
        writable: impl Fn() -> BoxFuture<'static, bool> + Send + 'static,
        status_tx: watch::Sender<BusStatus>,
        status: watch::Receiver<BusStatus>,
    ) -> Result<(RedisBus, Inbox), BusError> {
        let Parts {
            names,
            health,
            connector,
            commands,
            replication,
        } = parts;
        if config.probe_interval.is_zero() {
            return Err(BusError::Config("probe_interval must be above zero"));
        }
        let (inbox_tx, inbox) = inbox::channel();
        let (requests_tx, requests) = mpsc::channel(REQUEST_QUEUE);
        let retention = Retention {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        let subscriber = Subscriber {
            connector,
            commands: commands.clone(),
            names: names.clone(),
            health,
            probe_interval: config.probe_interval,
            max_lag: config.max_lag,
            retention,
            requests,
            topics: BTreeMap::new(),
            refs: HashMap::new(),
            idle: HashMap::new(),
            unsubscribe_delay: config.unsubscribe_delay,
            out: VecDeque::new(),
            lag: lag::Lag::default(),
            inbox: inbox_tx,
            status: status_tx.clone(),
        };
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(subscriber.run(first_tx));
        tokio::spawn(watch_writable(writable, config.probe_interval, status_tx));
        // Either outcome of the first attempt is fine; the wait is bounded anyway.
        let _ = time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, first_rx).await;
        let publisher = replication.is_none().then(|| {
            publisher::Publisher::start(commands.clone(), retention, names.publish_command())
        });
        let inner = Inner {
            commands,
            names,
            replication,
            publisher,
            retention,
            dialog_retention: dialogs::DialogRetention {
                size: config.dialog_size,
                ttl: config.dialog_ttl,
            },
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

    fn dialogs(&self) -> dialogs::Dialogs<'_> {
        dialogs::Dialogs {
            commands: &self.inner.commands,
            names: &self.inner.names,
            replication: self.inner.replication.as_ref(),
            retention: self.inner.dialog_retention,
        }
    }

    /// How this bus names its keys and channels (presence uses the same).
    pub fn keyspace(&self) -> Keyspace {
        self.inner.names.clone()
    }

    /// The bus's command connection, for presence: one multiplexed
    /// connection for every command a node sends, and no pool checkout
    /// (with its `PING`) per call.
    pub fn commands(&self) -> Arc<Commands> {
        self.inner.commands.clone()
    }

    /// Fails fast while Redis cannot be reached, rather than wait out a
    /// timeout per client message. A subscriber connection that is only
    /// being replaced does not count: publishes go on.
    fn check_up(&self) -> Result<(), BusError> {
        if self.inner.status.borrow().writable {
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
        let channel = self.inner.names.channel(topic);
        let command = self.inner.names.publish_command();
        let receivers: i64 = self
            .inner
            .commands
            .run(|mut conn| async move {
                redis::cmd(command)
                    .arg(channel)
                    .arg(&payload[..])
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(usize::try_from(receivers).unwrap_or(0))
    }

    async fn publish_stored(&self, topic: &Topic, payload: Bytes) -> Result<usize, BusError> {
        self.check_up()?;
        let payload = std::str::from_utf8(&payload)
            .map_err(|_| BusError::Unexpected("a stored payload that is not UTF-8".into()))?;
        dialogs::deliver(&self.inner.commands, &self.inner.names, topic, payload).await
    }

    async fn publish_message(&self, draft: &Draft) -> Result<Message, BusError> {
        self.check_up()?;
        let inner = &self.inner;
        if let Some(publisher) = &inner.publisher {
            let prepared = history::Prepared::new(&inner.names, draft)?;
            let (epoch, id) = publisher.publish(prepared).await?;
            return history::stamped(draft, &epoch, &id);
        }
        let replication = inner.replication.as_ref();
        history::publish_message(
            &inner.commands,
            &inner.names,
            inner.retention,
            replication,
            draft,
        )
        .await
    }

    async fn history(&self, room: &RoomId, query: HistoryQuery) -> Result<HistoryPage, BusError> {
        self.check_up()?;
        history::read(&self.inner.commands, &self.inner.names, room, query).await
    }

    async fn send_dm(&self, draft: &DmDraft) -> Result<DirectMessage, BusError> {
        self.check_up()?;
        self.dialogs().send(draft).await
    }

    async fn dm_history(
        &self,
        me: &UserId,
        with: &UserId,
        query: HistoryQuery,
    ) -> Result<Vec<DirectMessage>, BusError> {
        self.dialogs().history(me, with, query).await
    }

    async fn dialogs(&self, me: &UserId, limit: usize) -> Result<Vec<DialogEntry>, BusError> {
        self.dialogs().summaries(me, limit).await
    }

    async fn mark_read(
        &self,
        by: &User,
        with: &UserId,
        id: Position,
    ) -> Result<Option<ReadMark>, BusError> {
        self.check_up()?;
        self.dialogs().read(by, with, id).await
    }

    async fn listeners(&self, topic: &Topic) -> Result<usize, BusError> {
        listeners::count(&self.inner.commands, &self.inner.names, topic).await
    }

    async fn pusher_channels(&self) -> Result<Vec<ChannelName>, BusError> {
        listeners::pusher_channels(&self.inner.commands, &self.inner.names).await
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
    let info = url.into_connection_info().map_err(BusError::Url)?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(BACKOFF_CAP);
    let resp2 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP2);
    let info = info.set_tcp_settings(tcp).set_redis_settings(resp2);
    redis::Client::open(info).map_err(BusError::Url)
}

/// Keeps `writable` in the bus status true while Redis takes a publish
/// (`writable()`, every `interval`, within [`COMMAND_TIMEOUT`]), whatever
/// becomes of the subscriber connection: a node whose subscriber is being
/// replaced goes on storing and publishing. Ends when every status receiver
/// is gone.
async fn watch_writable(
    writable: impl Fn() -> BoxFuture<'static, bool>,
    interval: Duration,
    status: watch::Sender<BusStatus>,
) {
    let mut tick = time::interval(interval);
    tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = status.closed() => return,
            _ = tick.tick() => {}
        }
        let writable = writable().await;
        status.send_if_modified(|s| std::mem::replace(&mut s.writable, writable) != writable);
    }
}

/// Reads which slots have replicas anew (`CLUSTER SLOTS` from any node).
async fn refresh_replication(commands: &Commands, replication: &shards::Replication) {
    let slots = commands.run(|mut conn| async move {
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<redis::Value>(&mut conn)
            .await
    });
    let learned = match time::timeout(COMMAND_TIMEOUT, slots).await {
        Ok(Ok(reply)) => replication.learn_from(reply).map_err(BusError::Redis),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BusError::Down),
    };
    if let Err(e) = learned {
        tracing::debug!(error = %e, "redis bus: cannot read which slots have replicas now");
    }
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
