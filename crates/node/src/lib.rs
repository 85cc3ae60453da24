//! The Banter relay node: accepts WebSocket clients, publishes what they say
//! to the bus, and fans what the bus carries out to its local sockets.
//!
//! # Layout
//!
//! - [`config`]: the configuration (defaults < TOML < env < flags), validated.
//! - `server`: the one HTTP port: the page, `/ws`, health, readiness, metrics, the API.
//! - `session`: one task per socket, from upgrade to close; `commands`: what each frame does.
//! - `api`: the room API over HTTP; `auth`: tokens and guests.
//! - `hub`: the local rooms and their members; joining and leaving touch bus and presence here only.
//! - `fanout`: the node's one subscriber task: bus inbox → local sockets.
//! - [`metrics`]: every metric, one place.
//!
//! [`run`] drives a [`Node`] on a listener until its shutdown token fires,
//! then drains: readiness turns 503, every client gets close 1001, presence
//! entries are removed, all within `server.drain_timeout_ms`.

mod api;
mod auth;
mod commands;
pub mod config;
mod fanout;
mod hub;
pub mod metrics;
mod outlet;
mod server;
mod session;

use banter_bus::{Bus, BusStatus, Inbox, MemoryNetwork, RedisBus, RedisBusConfig};
use banter_presence::{MemoryPresence, Presence, RedisPresence};
use config::Config;
use hub::Hub;
use metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Redis settings could not make a pool or a bus.
    #[error("redis: {0}")]
    Redis(String),
    /// The metrics registry refused a series (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// [`run`] was called twice on one node.
    #[error("this node is already running")]
    AlreadyRunning,
}

/// A cheap-to-clone handle on everything a node shares between its tasks.
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    config: Config,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    verifier: auth::Verifier,
    bus_status: watch::Receiver<BusStatus>,
    /// Cancelled when the node drains: every session's kick is a child of it.
    shutdown: CancellationToken,
    /// True from the drain signal on: readiness 503, upgrades refused.
    draining: AtomicBool,
    /// Message sequence for ids stamped by this node.
    seq: AtomicU64,
    /// Upgraded sockets: HTTP servers do not wait for them, so the node does.
    sessions: TaskTracker,
    inbox: Mutex<Option<Inbox>>,
}

impl Node {
    /// A node on the backends `config.redis.url` names: Redis, or in-memory
    /// when it is empty. An unreachable Redis does not fail this: the node
    /// starts unready and keeps reconnecting.
    pub async fn connect(config: Config) -> Result<Node, NodeError> {
        if config.redis.url.is_empty() {
            let (bus, inbox) = MemoryNetwork::with_history(config.history.size).connect();
            let presence = MemoryPresence::new(config.presence_ttl());
            return Node::with_backends(config, Arc::new(bus), inbox, Arc::new(presence));
        }
        let redis = &config.redis;
        let timeouts = deadpool_redis::Timeouts {
            wait: Some(Duration::from_secs(2)),
            create: Some(Duration::from_secs(2)),
            recycle: Some(Duration::from_secs(2)),
        };
        let mut pool_config = deadpool_redis::Config::from_url(redis.url.clone());
        pool_config.pool = Some(deadpool_redis::PoolConfig {
            max_size: redis.pool_size,
            timeouts,
            ..Default::default()
        });
        let pool = pool_config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| NodeError::Redis(e.to_string()))?;
        let bus_config = RedisBusConfig {
            history_size: config.history.size,
            ..RedisBusConfig::new(redis.url.clone(), redis.key_prefix.clone())
        };
        let (bus, inbox) = RedisBus::connect(pool.clone(), bus_config)
            .await
            .map_err(|e| NodeError::Redis(e.to_string()))?;
        let presence = RedisPresence::new(pool, redis.key_prefix.clone(), config.presence_ttl());
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
                verifier: auth::Verifier::new(&config.auth.jwt_secret),
                config,
                bus,
                presence,
                hub,
                metrics,
                shutdown: CancellationToken::new(),
                draining: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                sessions: TaskTracker::new(),
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
        if self.inner.draining.load(Ordering::Relaxed) {
            Err("draining")
        } else if !self.inner.bus_status.borrow().up {
            Err("bus down")
        } else {
            Ok(())
        }
    }

    fn draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }
}

/// Serves `node` on `listener` until `shutdown` is cancelled, then drains
/// (see the crate docs) and returns.
pub async fn run(
    listener: TcpListener,
    node: Node,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let inbox = node
        .inner
        .inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(NodeError::AlreadyRunning)?;
    let inner = &node.inner;
    let background = CancellationToken::new();
    let fanout = tokio::spawn(fanout::run(inbox, inner.hub.clone(), inner.metrics.clone()));
    let housekeeping = tokio::spawn(housekeeping(node.clone(), background.clone()));
    tracing::info!(node = %node.id(), addr = %listener.local_addr()?, "serving");

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(server::serve_connection(stream, peer, node.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    tracing::info!(node = %node.id(), sessions = inner.hub.connection_count(), "draining");
    inner.draining.store(true, Ordering::Relaxed);
    drop(listener);
    inner.shutdown.cancel();
    inner
        .hub
        .kick_all(banter_protocol::CloseReason::ShuttingDown);
    inner.sessions.close();
    if tokio::time::timeout(node.config().drain_timeout(), inner.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = inner.sessions.len(),
            "drain timeout: closing the rest abruptly"
        );
    }
    background.cancel();
    let _ = housekeeping.await;
    fanout.abort();
    tracing::info!(node = %node.id(), "stopped");
    Ok(())
}

/// Periodic work: presence refresh (every ttl/3) with the departures it
/// sweeps, delayed unsubscribes, closing sockets stuck in a write, and the
/// bus health metrics.
async fn housekeeping(node: Node, stop: CancellationToken) {
    let inner = &node.inner;
    let mut refresh = tokio::time::interval(inner.config.presence_ttl() / 3);
    let mut unsubscribe = tokio::time::interval(hub::UNSUBSCRIBE_DELAY / 2);
    let mut stuck = tokio::time::interval(Duration::from_secs(1));
    let mut status = inner.bus_status.clone();
    let mut reconnects_seen = 0;
    loop {
        let bus = *status.borrow_and_update();
        inner.metrics.bus_up.set(i64::from(bus.up));
        if bus.reconnects > reconnects_seen {
            inner
                .metrics
                .bus_reconnects
                .inc_by(bus.reconnects - reconnects_seen);
            reconnects_seen = bus.reconnects;
            // Redis may have lost everything (a restart without persistence):
            // put this node's members back before anyone reads presence.
            reregister(&node).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            _ = status.changed() => {}
            _ = refresh.tick() => refresh_presence(&node).await,
            _ = unsubscribe.tick() => inner.hub.unsubscribe_idle().await,
            _ = stuck.tick() => inner.hub.kick_stuck(session::WRITE_TIMEOUT),
        }
    }
}

/// Keeps this node's presence entries alive and announces the departures of
/// members whose node stopped refreshing them (a crashed node).
async fn refresh_presence(node: &Node) {
    let inner = &node.inner;
    let entries: Vec<_> = inner
        .hub
        .local_members()
        .into_iter()
        .map(|(room, member)| (room, member.conn))
        .collect();
    match inner.presence.refresh(&entries).await {
        Ok(departed) => {
            for (room, user) in departed {
                tracing::info!(%room, user = %user.id, "swept a member of a node that stopped refreshing");
                inner.hub.announce_leave(&room, user).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "presence refresh failed"),
    }
}

/// Registers every local member in presence again (idempotent).
async fn reregister(node: &Node) {
    let members = node.inner.hub.local_members();
    tracing::info!(
        entries = members.len(),
        "bus reconnected: re-registering presence"
    );
    for (room, member) in members {
        if let Err(e) = node.inner.presence.join(&room, &member).await {
            tracing::warn!(%room, error = %e, "presence re-registration failed");
            return;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random id of `len` characters from `[a-z0-9]`.
pub fn random_id(len: usize) -> String {
    use rand::RngExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}
