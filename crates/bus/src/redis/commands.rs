//! [`Commands`]: every command this node sends Redis outside the subscriber
//! connection (`PUBLISH`, the store-and-publish script, history reads, and
//! presence, which gets it from the bus) shares one multiplexed connection
//! taken from the pool:
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
use redis::RedisError;
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::sync::{Mutex, watch};
use tokio::time;

/// The longest getting a connection may take before Redis counts as unavailable.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a command already sent may take. redis-rs's default (500 ms)
/// would turn a slow success into a reported failure.
const IN_FLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// See the module docs. Shared as an `Arc` ([`super::RedisBus::commands`]).
#[derive(Debug)]
pub struct Commands {
    pool: Pool,
    /// The shared connection and the bus generation (reconnect count) it
    /// belongs to: after the subscriber reconnected, Redis came back, and a
    /// connection from before is likely dead, so a fresh one is taken.
    conn: Mutex<Option<(MultiplexedConnection, u64)>>,
    status: watch::Receiver<BusStatus>,
}

impl Commands {
    pub(super) fn new(pool: Pool, status: watch::Receiver<BusStatus>) -> Commands {
        Commands {
            pool,
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

    /// The shared connection, or a fresh one from the pool.
    async fn conn(&self) -> Result<MultiplexedConnection, BusError> {
        let generation = self.status.borrow().reconnects;
        let mut shared = self.conn.lock().await;
        if let Some((conn, taken)) = shared.as_ref()
            && *taken == generation
        {
            return Ok(conn.clone());
        }
        let pooled = time::timeout(CHECKOUT_TIMEOUT, self.pool.get())
            .await
            .map_err(|_| BusError::Pool(PoolError::Timeout(TimeoutType::Wait)))?
            .map_err(BusError::Pool)?;
        let mut conn = deadpool_redis::Connection::take(pooled);
        conn.set_response_timeout(IN_FLIGHT_TIMEOUT);
        *shared = Some((conn.clone(), generation));
        Ok(conn)
    }

    /// Runs one command on the shared connection. A broken connection is
    /// dropped so the next command takes a fresh one.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, BusError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
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
