//! What every presence test suite shares: the backends (one shared store,
//! a handle per "node"), small builders, and the bound on each test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use banter_presence::{Member, MemoryPresence, Presence, RedisPresence};
use banter_protocol::{ConnId, RoomId, User};
use banter_testkit::RedisServer;

/// Every test gives up after this.
pub const LIMIT: Duration = Duration::from_secs(30);
pub const PREFIX: &str = "t";

/// One shared store, and a way to get a fresh handle on it per "node".
pub enum Backend {
    Memory(MemoryPresence),
    Redis { server: RedisServer, ttl: Duration },
}

impl Backend {
    pub fn memory(ttl: Duration) -> Backend {
        Backend::Memory(MemoryPresence::new(ttl))
    }

    pub fn redis(ttl: Duration) -> Backend {
        Backend::Redis {
            server: RedisServer::start(),
            ttl,
        }
    }

    /// A node's handle: for Redis its own pool, as a separate process has.
    pub fn node(&self) -> Arc<dyn Presence> {
        match self {
            Backend::Memory(m) => Arc::new(m.clone()),
            Backend::Redis { server, ttl } => {
                let pool = deadpool_redis::Config::from_url(server.url())
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .expect("pool");
                Arc::new(RedisPresence::new(pool, PREFIX, *ttl))
            }
        }
    }
}

pub fn room(s: &str) -> RoomId {
    s.parse().unwrap()
}

pub fn user(id: &str, name: &str) -> User {
    User {
        id: id.parse().unwrap(),
        name: name.parse().unwrap(),
    }
}

pub fn member(conn: &str, user: &User) -> Member {
    Member {
        conn: conn.parse::<ConnId>().unwrap(),
        user: user.clone(),
    }
}

pub fn entry(r: &RoomId, m: &Member) -> (RoomId, ConnId) {
    (r.clone(), m.conn.clone())
}

pub async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, scenario)
        .await
        .expect("scenario timed out");
}
