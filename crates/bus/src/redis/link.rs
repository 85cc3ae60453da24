//! The subscriber's link to Redis, as two halves: to one Redis, one RESP2
//! pub/sub connection (classic `SUBSCRIBE`); to a Redis Cluster, one
//! connection per shard primary ([`super::shards`], sharded pub/sub).
//! The subscriber task drives both the same way.

use deadpool_redis::Pool;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::RedisError;
use redis::aio::{PubSubSink, PubSubStream};

use super::pool_publish;
use super::shards::{Incoming, ShardSink, ShardStream};
use crate::BusError;

/// Subscribes, unsubscribes and probes.
pub(super) enum Sink {
    /// One Redis; its probe channel is the bus's own health channel, and
    /// probes go through the pool (another connection).
    Single {
        sink: PubSubSink,
        health: String,
        pool: Pool,
    },
    Sharded(ShardSink),
}

/// What Redis sends.
pub(super) enum Stream {
    Single(PubSubStream),
    Sharded(ShardStream),
}

impl Sink {
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), RedisError> {
        match self {
            Sink::Single { sink, .. } => sink.subscribe(channels).await,
            Sink::Sharded(shards) => shards.subscribe(channels).await,
        }
    }

    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), RedisError> {
        match self {
            Sink::Single { sink, .. } => sink.unsubscribe(channels).await,
            Sink::Sharded(shards) => shards.unsubscribe(channels).await,
        }
    }

    /// How many probe channels the link has (one per connection).
    pub(super) fn probes(&self) -> usize {
        match self {
            Sink::Single { .. } => 1,
            Sink::Sharded(shards) => shards.len(),
        }
    }

    /// Which probe channel `channel` is, if it is one.
    pub(super) fn health_index(&self, channel: &str) -> Option<usize> {
        match self {
            Sink::Single { health, .. } => (channel == health).then_some(0),
            Sink::Sharded(shards) => shards.health_index(channel),
        }
    }

    /// Publishes probe `sequence` on every probe channel: on one Redis
    /// through the pool (another connection), on a cluster on each shard's
    /// own connection.
    pub(super) fn probe(&self, sequence: u64) -> BoxFuture<'static, Result<(), BusError>> {
        match self {
            Sink::Single { health, pool, .. } => {
                let (pool, health) = (pool.clone(), health.clone());
                Box::pin(async move {
                    pool_publish(&pool, &health, sequence.to_string().as_bytes())
                        .await
                        .map(drop)
                })
            }
            Sink::Sharded(shards) => {
                let probe = shards.probe(sequence);
                Box::pin(async move { probe.await.map_err(BusError::Redis) })
            }
        }
    }
}

impl Stream {
    /// The next message, or why the link broke.
    pub(super) async fn next(&mut self) -> Incoming {
        match self {
            Stream::Single(stream) => match stream.next().await {
                Some(message) => Incoming::Message(message),
                None => Incoming::Lost("connection closed".into()),
            },
            Stream::Sharded(shards) => shards.next().await,
        }
    }
}
