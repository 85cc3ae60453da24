//! What every presence test suite shares: the backends (one shared store,
//! a handle per "node", and a bus subscriber that sees what the store
//! publishes), small builders, and the bound on each test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use banter_bus::redis::{Commands, Keyspace};
use banter_bus::{Bus, BusEvent, Inbox, MemoryNetwork, RedisBus, RedisBusConfig, Topic};
use banter_presence::{Change, Member, MemoryPresence, Presence, RedisPresence};
use banter_protocol::{ConnId, User};
use banter_testkit::RedisServer;

/// Every test gives up after this.
pub const LIMIT: Duration = Duration::from_secs(30);
pub const PREFIX: &str = "t";

/// One shared store, and a way to get a fresh handle on it per "node".
pub enum Backend {
    Memory {
        network: MemoryNetwork,
        store: MemoryPresence,
    },
    Redis {
        server: RedisServer,
        ttl: Duration,
    },
}

/// A node's pool on `server`.
pub fn pool(server: &RedisServer) -> deadpool_redis::Pool {
    deadpool_redis::Config::from_url(server.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("pool")
}

/// Presence on `server` under `prefix`, publishing where the bus names rooms.
pub fn redis_presence(server: &RedisServer, prefix: &str, ttl: Duration) -> RedisPresence {
    RedisPresence::new(
        Commands::on_pool(pool(server)),
        Keyspace::standalone(prefix),
        ttl,
    )
}

impl Backend {
    pub fn memory(ttl: Duration) -> Backend {
        let network = MemoryNetwork::new();
        Backend::Memory {
            store: MemoryPresence::on(network.clone(), ttl),
            network,
        }
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
            Backend::Memory { store, .. } => Arc::new(store.clone()),
            Backend::Redis { server, ttl } => Arc::new(redis_presence(server, PREFIX, *ttl)),
        }
    }

    /// A subscriber of `rooms`, to see the changes the store publishes.
    pub async fn watch(&self, rooms: &[&Topic]) -> Watcher {
        let (bus, inbox): (Arc<dyn Bus>, Inbox) = match self {
            Backend::Memory { network, .. } => {
                let (bus, inbox) = network.connect();
                (Arc::new(bus), inbox)
            }
            Backend::Redis { server, .. } => {
                let config = RedisBusConfig::new(server.url(), PREFIX);
                let (bus, inbox) = RedisBus::connect(pool(server), config).await.unwrap();
                let mut status = bus.status();
                status.wait_for(|s| s.up).await.unwrap();
                (Arc::new(bus), inbox)
            }
        };
        for room in rooms {
            bus.subscribe(room).await.unwrap();
        }
        Watcher { _bus: bus, inbox }
    }
}

/// What a node subscribed to some rooms receives of their presence.
pub struct Watcher {
    _bus: Arc<dyn Bus>,
    inbox: Inbox,
}

impl Watcher {
    /// The next presence change, with its room.
    pub async fn next(&mut self) -> (Topic, Change) {
        let (topic, payload) = self.published().await;
        (topic, Change::decode(&payload).expect("a readable change"))
    }

    /// The next subscription count published.
    pub async fn tally(&mut self) -> (Topic, usize) {
        let (topic, payload) = self.published().await;
        (
            topic,
            banter_presence::decode_tally(&payload).expect("a count"),
        )
    }

    /// The next thing the store published, with its topic.
    async fn published(&mut self) -> (Topic, bytes::Bytes) {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), self.inbox.recv())
                .await
                .expect("a presence change in time")
                .expect("inbox open");
            if let BusEvent::Envelope(e) = event
                && e.presence
            {
                return (e.topic, e.payload);
            }
        }
    }

    /// Asserts that nothing more is published for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(Some(event)) = tokio::time::timeout(d, self.inbox.recv()).await {
            panic!("expected nothing more, got {event:?}");
        }
    }
}

/// A join (`true`) or leave of `user` with the room's count after it.
pub fn change(joined: bool, user: &User, count: usize) -> Change {
    Change {
        joined,
        user: user.clone(),
        count,
        info: None,
    }
}

/// A Banter room's presence topic.
pub fn room(s: &str) -> Topic {
    Topic::Room(s.parse().unwrap())
}

pub fn user(id: &str, name: &str) -> User {
    User {
        id: id.parse().unwrap(),
        name: name.parse().unwrap(),
    }
}

pub fn member(conn: &str, user: &User) -> Member {
    Member::new(conn.parse::<ConnId>().unwrap(), user.clone())
}

pub fn entry(r: &Topic, m: &Member) -> (Topic, Member) {
    (r.clone(), m.clone())
}

pub async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, scenario)
        .await
        .expect("scenario timed out");
}
