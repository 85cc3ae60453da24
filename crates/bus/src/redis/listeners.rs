//! Who listens: how many nodes subscribe a topic (`PUBSUB NUMSUB`, or
//! `SHARDNUMSUB` on the shard that owns it on a cluster), and which Pusher
//! channels have any (`PUBSUB CHANNELS`, or `SHARDCHANNELS` on every
//! primary). A node subscribes a topic once, however many of its sockets
//! want it, so these count nodes.

use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};

use super::Keyspace;
use super::commands::{Commands, Conn};
use crate::{BusError, Topic};
use banter_protocol::ChannelName;

/// How many nodes subscribe `topic`.
pub(super) async fn count(
    commands: &Commands,
    names: &Keyspace,
    topic: &Topic,
) -> Result<usize, BusError> {
    let channel = names.channel(topic);
    let slot = super::keyspace::slot(&channel);
    let answer: Vec<redis::Value> = commands
        .run(|conn| async move {
            match conn {
                Conn::Single(mut conn) => {
                    redis::cmd("PUBSUB")
                        .arg("NUMSUB")
                        .arg(&channel)
                        .query_async(&mut conn)
                        .await
                }
                Conn::Cluster(mut conn) => {
                    let mut ask = redis::cmd("PUBSUB");
                    ask.arg("SHARDNUMSUB").arg(&channel);
                    let primary = Route::new(slot, SlotAddr::Master);
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(primary));
                    let answer = conn.route_command(ask, route).await?;
                    Ok(redis::from_redis_value(answer)?)
                }
            }
        })
        .await?;
    let n = answer
        .get(1)
        .and_then(|v| redis::from_redis_value::<i64>(v.clone()).ok())
        .unwrap_or(0);
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The Pusher channels some node subscribes.
pub(super) async fn pusher_channels(
    commands: &Commands,
    names: &Keyspace,
) -> Result<Vec<ChannelName>, BusError> {
    let pattern = names.pusher_pattern();
    let found: Vec<String> = commands
        .run(|conn| async move {
            match conn {
                Conn::Single(mut conn) => {
                    redis::cmd("PUBSUB")
                        .arg("CHANNELS")
                        .arg(&pattern)
                        .query_async(&mut conn)
                        .await
                }
                Conn::Cluster(mut conn) => {
                    let mut ask = redis::cmd("PUBSUB");
                    ask.arg("SHARDCHANNELS").arg(&pattern);
                    let route = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::CombineArrays),
                    ));
                    let answer = conn.route_command(ask, route).await?;
                    Ok(redis::from_redis_value(answer)?)
                }
            }
        })
        .await?;
    let mut channels: Vec<ChannelName> = found
        .iter()
        .filter_map(|c| match names.topic(c) {
            Some(Topic::Pusher(c)) => Some(c),
            _ => None,
        })
        .collect();
    channels.sort();
    channels.dedup();
    Ok(channels)
}
