//! The [`Node`] handle: everything a node's tasks share (configuration,
//! bus, presence, hub, metrics, the token verifier, the drain state), and
//! how it is built on Redis or in memory.

use crate::auth::Verifier;
use crate::config::{Config, RedisMode};
use crate::hub::Hub;
use crate::metrics::Metrics;
use banter_bus::{Bus, BusError, BusStatus, Inbox, MemoryNetwork, RedisBus, RedisBusConfig};
use banter_presence::{MemoryPresence, Presence, RedisPresence};
use banter_protocol::MessageId;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The longest the command pool may take to hand out, create or recycle a
/// connection before a caller is told Redis is unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a presence entry lives unless refreshed: half of
/// `presence.ttl_ms`, refreshed every quarter (housekeeping). A node that
/// stops refreshing (a crash) has its entries swept by the others within
/// three quarters of the ttl, so its users leave within `presence.ttl_ms`.
pub(crate) fn presence_entry_ttl(config: &Config) -> Duration {
    config.presence_ttl() / 2
}

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Redis settings could not make a connection pool.
    #[error("redis pool: {0}")]
    Pool(#[from] deadpool_redis::CreatePoolError),
    /// The Redis settings could not make a bus.
    #[error("redis bus: {0}")]
    Bus(#[from] BusError),
    /// The metrics registry refused a series (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// [`run`](crate::run) was called twice on one node.
    #[error("this node is already running")]
    AlreadyRunning,
}

/// A cheap-to-clone handle on everything a node shares between its tasks.
#[derive(Clone, Debug)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

#[derive(Debug)]
pub(crate) struct NodeInner {
    pub config: Config,
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub verifier: Verifier,
    /// `auth.connect_url`, when set.
    pub connect: Option<crate::http::connect::ConnectHook>,
    pub bus_status: watch::Receiver<BusStatus>,
    /// Cancelled when the node drains.
    pub shutdown: CancellationToken,
    /// Cancelled when the drain is over: HTTP connections (which answer
    /// `/readyz` with 503 meanwhile) end.
    pub stopped: CancellationToken,
    /// True from the drain signal on: readiness 503, upgrades refused.
    pub draining: AtomicBool,
    /// Sequence for the direct-message ids this node stamps.
    seq: AtomicU64,
    /// Upgraded sockets: HTTP servers do not wait for them, so the node does.
    pub sessions: TaskTracker,
    /// Sockets from their 101 until their task ends, authenticated or not:
    /// what `server.max_connections` bounds.
    pub sockets: AtomicUsize,
    /// The bus traffic, until [`run`](crate::run) takes it for the fan-out.
    pub inbox: Mutex<Option<Inbox>>,
}

impl Node {
    /// A node on the backends `config.redis.url` names: Redis, or in-memory
    /// when it is empty. An unreachable Redis does not fail this: the node
    /// starts unready and keeps reconnecting.
    pub async fn connect(config: Config) -> Result<Node, NodeError> {
        if config.redis.url.is_empty() {
            let network = MemoryNetwork::with_retention(config.history.size, config.history_ttl())
                .with_dialogs(config.history.dialog_size, config.dialog_ttl());
            let (bus, inbox) = network.connect();
            let presence = MemoryPresence::on(network, presence_entry_ttl(&config));
            return Node::with_backends(config, Arc::new(bus), inbox, Arc::new(presence));
        }
        let redis = &config.redis;
        let bus_config = RedisBusConfig {
            history_size: config.history.size,
            history_ttl: config.history_ttl(),
            dialog_size: config.history.dialog_size,
            dialog_ttl: config.dialog_ttl(),
            ..RedisBusConfig::new(redis.url.clone(), redis.key_prefix.clone())
        };
        let (bus, inbox) = match redis.mode {
            RedisMode::Cluster => RedisBus::connect_cluster(&redis.seeds(), bus_config).await?,
            RedisMode::Standalone => {
                let mut pool_config = deadpool_redis::Config::from_url(redis.url.clone());
                pool_config.pool = Some(deadpool_redis::PoolConfig {
                    max_size: redis.pool_size,
                    timeouts: deadpool_redis::Timeouts {
                        wait: Some(POOL_TIMEOUT),
                        create: Some(POOL_TIMEOUT),
                        recycle: Some(POOL_TIMEOUT),
                    },
                    ..Default::default()
                });
                let pool = pool_config.create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
                RedisBus::connect(pool, bus_config).await?
            }
        };
        let presence =
            RedisPresence::new(bus.commands(), bus.keyspace(), presence_entry_ttl(&config));
        Node::with_backends(config, Arc::new(bus), inbox, Arc::new(presence))
    }

    /// A node on given backends: how tests put several nodes on one
    /// `MemoryNetwork` or one shared `MemoryPresence`.
    pub fn with_backends(
        config: Config,
        bus: Arc<dyn Bus>,
        inbox: Inbox,
        presence: Arc<dyn Presence>,
    ) -> Result<Node, NodeError> {
        let metrics = Arc::new(Metrics::new(&config.node.id)?);
        let hub = Arc::new(Hub::new(bus.clone(), presence.clone(), metrics.clone()));
        Ok(Node {
            inner: Arc::new(NodeInner {
                bus_status: bus.status(),
                verifier: Verifier::new(&config.auth),
                connect: crate::http::connect::ConnectHook::new(&config.auth.connect_url),
                config,
                bus,
                presence,
                hub,
                metrics,
                shutdown: CancellationToken::new(),
                stopped: CancellationToken::new(),
                draining: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                sessions: TaskTracker::new(),
                sockets: AtomicUsize::new(0),
                inbox: Mutex::new(Some(inbox)),
            }),
        })
    }

    /// The node's id (`node.id`).
    pub fn id(&self) -> &str {
        &self.inner.config.node.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// `Ok` when the node takes traffic; otherwise why not (for `/readyz`).
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.draining() {
            Err("draining")
        } else if !self.inner.bus_status.borrow().up {
            Err("bus down")
        } else {
            Ok(())
        }
    }

    /// Whether the node has begun to drain.
    pub(crate) fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// A direct-message id and timestamp: `{ms}-{node}-{seq}`, unique in the
    /// cluster because node ids are. (Room messages get history positions.)
    pub(crate) fn stamp(&self) -> (MessageId, u64) {
        let ts = crate::clock::now_ms();
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{ts}-{}-{seq}", self.inner.config.node.id);
        // Node ids are validated to [A-Za-z0-9_-]{1,32} at start: the id always parses.
        #[allow(clippy::expect_used)]
        let id = MessageId::try_from(id).expect("node ids are validated");
        (id, ts)
    }
}
