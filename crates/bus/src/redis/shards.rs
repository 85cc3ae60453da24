//! [`Shards`]: the subscriber's link to a Redis Cluster. Sharded pub/sub
//! only (`SSUBSCRIBE`, never classic `SUBSCRIBE`, whose messages a cluster
//! copies to every node): one RESP3 connection per shard primary, each
//! topic subscribed on the primary that owns its channel's slot, one
//! channel per `SSUBSCRIBE` (so a command never mixes slots).
//!
//! The bookkeeping is ours, not the client library's (whose cluster
//! resubscribe mixes slots and ignores a server's `sunsubscribe`). Whatever
//! breaks the picture (a shard's connection drops, a primary fails over, a
//! slot moves and Redis unsubscribes its channels, a `MOVED` or
//! `CLUSTERDOWN` answer to a subscribe, a probe that does not come back)
//! ends the link: the subscriber builds a new one from a fresh topology and
//! repairs every topic from history, as after any other interruption.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ProtocolVersion, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::sync::mpsc;
use tokio::time;

use super::keyspace::{self, Keyspace};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};

/// Pushes (messages, confirmations) waiting for the subscriber task, over
/// all shards. A link whose queue overflows is dropped and its topics
/// repaired from history: the node fell behind, nothing is buffered
/// without bound.
const PUSH_QUEUE: usize = 8_192;

/// One primary and the connection to it.
struct Shard {
    /// `host:port`, for logs.
    addr: String,
    conn: MultiplexedConnection,
    /// This node's probe channel on the shard.
    health: String,
}

/// What the link hands the subscriber.
pub(super) enum Incoming {
    /// A message on a channel.
    Message(redis::Msg),
    /// The link is broken; build a new one.
    Lost(String),
}

/// The half of the link that sends: subscribes, unsubscribes, probes.
pub(super) struct ShardSink {
    shards: Vec<Shard>,
    /// For each slot, the index of the shard that owns it.
    owner: Vec<u16>,
    leaving: Leaving,
}

/// The half of the link that receives every shard's pushes.
pub(super) struct ShardStream {
    pushes: mpsc::Receiver<(usize, PushInfo)>,
    /// Set by a shard connection whose push could not be queued.
    overflowed: Arc<AtomicBool>,
    addrs: Vec<String>,
    leaving: Leaving,
}

/// Channels this node unsubscribed whose `sunsubscribe` is still due: any
/// other `sunsubscribe` comes from Redis (a slot moved away).
type Leaving = Arc<Mutex<HashSet<Vec<u8>>>>;

/// Learns the topology from the first seed that answers `CLUSTER SLOTS`,
/// connects to every primary and subscribes each one's probe channel
/// (`{prefix}:health:{tag}:{id}`, the tag in a slot of that shard).
pub(super) async fn connect(
    seeds: &[ConnectionInfo],
    names: &Keyspace,
    id: &str,
    replication: &Replication,
) -> Result<(ShardSink, ShardStream), RedisError> {
    let (seed, ranges) = topology(seeds).await?;
    replication.learn(&ranges);
    let mut primaries: BTreeMap<(String, u16), Vec<(u16, u16)>> = BTreeMap::new();
    for (start, end, host, port, _) in ranges {
        primaries
            .entry((host, port))
            .or_default()
            .push((start, end));
    }
    let (tx, pushes) = mpsc::channel(PUSH_QUEUE);
    let overflowed = Arc::new(AtomicBool::new(false));
    let mut owner = vec![u16::MAX; usize::from(keyspace::SLOTS)];
    let mut shards = Vec::with_capacity(primaries.len());
    for (index, ((host, port), ranges)) in primaries.into_iter().enumerate() {
        let tag = u16::try_from(index).unwrap_or(u16::MAX);
        for &(start, end) in &ranges {
            for slot in start..=end.min(keyspace::SLOTS - 1) {
                owner[usize::from(slot)] = tag;
            }
        }
        let (tx, overflowed) = (tx.clone(), overflowed.clone());
        let sender = move |push: PushInfo| {
            if tx.try_send((index, push)).is_err() {
                overflowed.store(true, Ordering::Relaxed);
            }
            Ok::<(), ()>(())
        };
        let info = at(&seed, &host, port)?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_push_sender(sender);
        let client = redis::Client::open(info)?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Mid-range: a reshard that takes a shard's first slots leaves it.
        let (start, end) = ranges[0];
        let health = names.health(id, start + (end - start) / 2);
        ssubscribe(&mut conn, &health).await?;
        shards.push(Shard {
            addr: format!("{host}:{port}"),
            conn,
            health,
        });
    }
    if owner.contains(&u16::MAX) {
        return Err(cluster_error("some slots have no primary"));
    }
    let leaving = Leaving::default();
    let stream = ShardStream {
        pushes,
        overflowed,
        addrs: shards.iter().map(|s| s.addr.clone()).collect(),
        leaving: leaving.clone(),
    };
    let sink = ShardSink {
        shards,
        owner,
        leaving,
    };
    Ok((sink, stream))
}

impl ShardSink {
    /// How many shard primaries the link holds.
    pub(super) fn len(&self) -> usize {
        self.shards.len()
    }

    fn shard_of(&self, channel: &str) -> usize {
        usize::from(self.owner[usize::from(keyspace::slot(channel))])
    }

    fn leaving(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.leaving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes each channel on the primary that owns it (the commands of
    /// one shard pipelined on its connection).
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> Result<(), RedisError> {
        let mut asks = Vec::with_capacity(channels.len());
        for channel in channels {
            self.leaving().remove(channel.as_bytes());
            let mut conn = self.shards[self.shard_of(channel)].conn.clone();
            asks.push(async move { ssubscribe(&mut conn, channel).await });
        }
        try_join_all(asks).await.map(drop)
    }

    /// Unsubscribes each channel where it was subscribed.
    pub(super) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), RedisError> {
        let mut asks = Vec::with_capacity(channels.len());
        for channel in channels {
            self.leaving().insert(channel.as_bytes().to_vec());
            let mut conn = self.shards[self.shard_of(channel)].conn.clone();
            asks.push(async move {
                let mut command = redis::cmd("SUNSUBSCRIBE");
                command.arg(channel);
                match time::timeout(COMMAND_TIMEOUT, command.exec_async(&mut conn)).await {
                    Ok(result) => result,
                    Err(_) => Err(cluster_error("SUNSUBSCRIBE timed out")),
                }
            });
        }
        try_join_all(asks).await.map(drop)
    }

    /// Whether `channel` is one of this node's probe channels, and whose.
    pub(super) fn health_index(&self, channel: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.health == channel)
    }

    /// Publishes probe `sequence` on every shard's probe channel, each on its
    /// own shard's connection (so it proves that connection both ways).
    pub(super) fn probe(
        &self,
        sequence: u64,
    ) -> impl Future<Output = Result<(), RedisError>> + Send + 'static {
        let probes: Vec<_> = self
            .shards
            .iter()
            .map(|s| (s.conn.clone(), s.health.clone()))
            .collect();
        async move {
            let publishes = probes.into_iter().map(|(mut conn, health)| async move {
                redis::cmd("SPUBLISH")
                    .arg(health)
                    .arg(sequence)
                    .exec_async(&mut conn)
                    .await
            });
            try_join_all(publishes).await.map(drop)
        }
    }
}

impl ShardStream {
    /// The next message, or why the link broke.
    pub(super) async fn next(&mut self) -> Incoming {
        loop {
            if self.overflowed.load(Ordering::Relaxed) {
                return Incoming::Lost("the node fell behind the cluster's pushes".into());
            }
            let Some((index, push)) = self.pushes.recv().await else {
                return Incoming::Lost("every shard connection is gone".into());
            };
            let addr = self.addrs.get(index).map_or("?", String::as_str);
            match push.kind {
                PushKind::SMessage => {
                    if let Some(message) = redis::Msg::from_push_info(push) {
                        return Incoming::Message(message);
                    }
                }
                PushKind::Disconnection => {
                    return Incoming::Lost(format!("shard {addr} disconnected"));
                }
                PushKind::SUnsubscribe => {
                    let channel = match push.data.first() {
                        Some(Value::BulkString(name)) => name.clone(),
                        _ => Vec::new(),
                    };
                    let ours = self
                        .leaving
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .remove(&channel);
                    if !ours {
                        return Incoming::Lost(format!(
                            "shard {addr} unsubscribed {} (its slot moved)",
                            String::from_utf8_lossy(&channel)
                        ));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Which slots have a replica, as the last topology read said. A message
/// stored on such a slot's primary is acked only once a replica has it
/// (`WAIT`): a primary that stalls, is replaced by its replica and comes
/// back may take writes for a moment before it learns that it was demoted,
/// and throws them away then; without a replica's copy the sender is told
/// `unavailable` instead of being acked for a message nobody will get. A
/// slot without replicas (none configured, or a replica that took over and
/// has none yet) is acked as soon as its primary stored the message.
///
/// The map is read anew with every link to the cluster and on every tick
/// of the bus's writability check (`CLUSTER SLOTS`, once per probe
/// interval): a replica that attaches late is waited for, one that died
/// does not keep its primary's rooms refused.
#[derive(Clone, Debug, Default)]
pub struct Replication {
    replicated: Arc<std::sync::RwLock<Vec<bool>>>,
}

impl Replication {
    /// Learns which slots have replicas from a `CLUSTER SLOTS` reply.
    pub(super) fn learn_from(&self, reply: Value) -> Result<(), RedisError> {
        self.learn(&parse_slots(reply, "")?);
        Ok(())
    }

    fn learn(&self, ranges: &[Range]) {
        let mut slots = vec![false; usize::from(keyspace::SLOTS)];
        for &(start, end, _, _, replicas) in ranges {
            for slot in start..=end.min(keyspace::SLOTS - 1) {
                slots[usize::from(slot)] = replicas > 0;
            }
        }
        *self
            .replicated
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = slots;
    }

    /// Whether `slot` had a replica at the last look.
    pub fn replicated(&self, slot: u16) -> bool {
        self.replicated
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(usize::from(slot))
            .copied()
            .unwrap_or(false)
    }
}

/// `SSUBSCRIBE channel`, within [`COMMAND_TIMEOUT`]. Redis answers a
/// RESP3 subscribe with one push, which the client library takes as the
/// command's reply (and copies to the push sender).
async fn ssubscribe(conn: &mut MultiplexedConnection, channel: &str) -> Result<(), RedisError> {
    let mut command = redis::cmd("SSUBSCRIBE");
    command.arg(channel);
    match time::timeout(COMMAND_TIMEOUT, command.exec_async(conn)).await {
        Ok(result) => result,
        Err(_) => Err(cluster_error("SSUBSCRIBE timed out")),
    }
}

/// One slot range and its primary: start, end, host, port.
/// One slot range: start, end, its primary's host and port, and how many
/// replicas serve it.
type Range = (u16, u16, String, u16, usize);

/// `CLUSTER SLOTS` from the first seed that answers, with that seed. All
/// seeds are asked at once: a dead or hung one costs nothing.
async fn topology(seeds: &[ConnectionInfo]) -> Result<(ConnectionInfo, Vec<Range>), RedisError> {
    if seeds.is_empty() {
        return Err(cluster_error("no seed nodes"));
    }
    let asks = seeds.iter().map(|seed| {
        Box::pin(async move {
            let asked = async {
                let client = redis::Client::open(seed.clone())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn)
                    .await
            };
            let reply = time::timeout(CONNECT_TIMEOUT + COMMAND_TIMEOUT, asked)
                .await
                .map_err(|_| cluster_error("CLUSTER SLOTS timed out"))??;
            let host = match seed.addr() {
                ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => String::new(),
            };
            Ok::<_, RedisError>((seed.clone(), parse_slots(reply, &host)?))
        })
    });
    let (found, _) = futures_util::future::select_ok(asks).await?;
    Ok(found)
}

/// Reads a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ..], replicas..], ..]`.
/// An empty host means the node that answered (`seed_host`).
fn parse_slots(reply: Value, seed_host: &str) -> Result<Vec<Range>, RedisError> {
    let bad = || cluster_error("an unreadable CLUSTER SLOTS reply");
    let Value::Array(entries) = reply else {
        return Err(bad());
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(fields) = entry else {
            return Err(bad());
        };
        let mut fields = fields.into_iter();
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let replicas = fields.count();
        let mut primary = primary.into_iter();
        let host = match primary.next() {
            Some(Value::BulkString(h)) => String::from_utf8(h).map_err(|_| bad())?,
            Some(Value::SimpleString(h)) => h,
            _ => return Err(bad()),
        };
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let Some(Value::Int(port)) = primary.next() else {
            return Err(bad());
        };
        let (Ok(start), Ok(end), Ok(port)) = (
            u16::try_from(start),
            u16::try_from(end),
            u16::try_from(port),
        ) else {
            return Err(bad());
        };
        ranges.push((start, end, host, port, replicas));
    }
    if ranges.is_empty() {
        return Err(cluster_error("the cluster serves no slots"));
    }
    Ok(ranges)
}

/// `seed`'s settings (password, database, RESP3, TLS) at another node's
/// address.
fn at(seed: &ConnectionInfo, host: &str, port: u16) -> Result<ConnectionInfo, RedisError> {
    let addr = match seed.addr() {
        ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host.to_owned(), port),
        // The same checks of the certificate, against the node's own name.
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => {
            return Err(cluster_error(
                "Redis Cluster is supported over redis:// and rediss:// (TCP) seeds",
            ));
        }
    };
    let resp3 = seed
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let tcp = seed.tcp_settings().clone().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(super::BACKOFF_CAP);
    Ok(seed
        .clone()
        .set_addr(addr)
        .set_redis_settings(resp3)
        .set_tcp_settings(tcp))
}

fn cluster_error(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::other(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_slots_replies_are_read() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let ranges = parse_slots(reply, "10.0.0.1").unwrap();
        assert_eq!(
            ranges,
            [
                (0, 5460, "127.0.0.1".to_owned(), 7000, 1),
                (5461, 16383, "10.0.0.1".to_owned(), 7001, 0)
            ]
        );
        let replication = Replication::default();
        assert!(!replication.replicated(0));
        replication.learn(&ranges);
        assert!(replication.replicated(0) && replication.replicated(5460));
        assert!(!replication.replicated(5461) && !replication.replicated(16383));
        assert!(parse_slots(Value::Array(vec![]), "").is_err());
        assert!(parse_slots(Value::Int(3), "").is_err());
    }
}
