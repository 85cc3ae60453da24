//! [`Commands`]: every command this node sends Redis outside the subscriber
//! connection (`PUBLISH`, the store-and-publish script, history reads, and
//! presence, which gets it from the bus) shares one multiplexed connection
//! taken from the pool (on Redis Cluster: one cluster connection, which
//! routes each command to the shard that owns its key and follows `MOVED`):
//! commands are pipelined instead of each checking a connection out (which
//! costs deadpool a `PING` round trip), and this node's publishes reach Redis
//! in the order they were made.
//!
//! Only *getting* a connection is time-boxed tightly. Once a command is in
//! flight, Redis may already have executed it, so a short timeout would tell
//! a client "unavailable" for a message the room then receives (a retry
//! would duplicate it). In-flight commands get [`IN_FLIGHT_TIMEOUT`]; a dead
//! connection fails them at once anyway.

use crate::{BusError, BusStatus};
use deadpool_redis::{Pool, PoolError, TimeoutType};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::time;

/// The longest getting a connection may take before Redis counts as unavailable.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a command already sent may take. redis-rs's default (500 ms)
/// would turn a slow success into a reported failure.
pub(super) const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module docs. Shared as an `Arc` ([`super::RedisBus::commands`]).
pub struct Commands {
    source: Source,
    /// The shared connection and the bus generation (reconnect count) it
    /// belongs to: after the subscriber reconnected, Redis came back, and a
    /// connection from before is likely dead, so a fresh one is taken.
    conn: Mutex<Option<(Conn, u64)>>,
    status: watch::Receiver<BusStatus>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cluster = matches!(self.source, Source::Cluster(_));
        f.debug_struct("Commands")
            .field("cluster", &cluster)
            .finish_non_exhaustive()
    }
}

/// Where connections come from.
enum Source {
    Pool(Pool),
    Cluster(Box<ClusterClient>),
}

/// A command connection: to one Redis, or to a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the shard of its key.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Commands {
    pub(super) fn new(pool: Pool, status: watch::Receiver<BusStatus>) -> Commands {
        Commands {
            source: Source::Pool(pool),
            conn: Mutex::new(None),
            status,
        }
    }

    pub(super) fn cluster(client: ClusterClient, status: watch::Receiver<BusStatus>) -> Commands {
        Commands {
            source: Source::Cluster(Box::new(client)),
            conn: Mutex::new(None),
            status,
        }
    }

    /// Commands over `pool` outside any bus (tools, tests): a connection
    /// that fails is replaced, there is no reconnect generation to follow.
    pub fn on_pool(pool: Pool) -> std::sync::Arc<Commands> {
        let (_, status) = watch::channel(BusStatus::default());
        std::sync::Arc::new(Commands::new(pool, status))
    }

    /// The shared connection, or a fresh one from the pool. A cluster
    /// connection is kept across reconnects: it replaces its own node
    /// connections.
    async fn conn(&self) -> Result<Conn, BusError> {
        let generation = match self.source {
            Source::Pool(_) => self.status.borrow().reconnects,
            Source::Cluster(_) => 0,
        };
        let mut shared = self.conn.lock().await;
        if let Some((conn, taken)) = shared.as_ref()
            && *taken == generation
        {
            return Ok(conn.clone());
        }
        let conn = match &self.source {
            Source::Pool(pool) => {
                let pooled = time::timeout(CHECKOUT_TIMEOUT, pool.get())
                    .await
                    .map_err(|_| BusError::Pool(PoolError::Timeout(TimeoutType::Wait)))?
                    .map_err(BusError::Pool)?;
                let mut conn = deadpool_redis::Connection::take(pooled);
                conn.set_response_timeout(IN_FLIGHT_TIMEOUT);
                Conn::Single(conn)
            }
            Source::Cluster(client) => {
                let conn = time::timeout(CHECKOUT_TIMEOUT, client.get_async_connection())
                    .await
                    .map_err(|_| BusError::Down)?
                    .map_err(BusError::Redis)?;
                Conn::Cluster(conn)
            }
        };
        *shared = Some((conn.clone(), generation));
        Ok(conn)
    }

    /// Runs one command on the shared connection. A broken connection is
    /// dropped so the next command takes a fresh one.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, BusError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn().await?;
        match command(conn).await {
            Ok(t) => Ok(t),
            Err(e) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
                {
                    *self.conn.lock().await = None;
                }
                Err(BusError::Redis(e))
            }
        }
    }
}
