//! Command-line flags of every scenario. The structs are plain data so tests
//! and the benchmark driver can build them without parsing.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Banter's load generator: speaks the JSON protocol (docs/protocol.md) to one or
/// more nodes on `ws://HOST:PORT/ws` and reports what it measured.
#[derive(Debug, Parser)]
#[command(name = "banter-load", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Write the JSON result to this file instead of stdout.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Worker threads of the tool's (multi-threaded) runtime.
    #[arg(long, global = true, default_value_t = 2)]
    pub threads: usize,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N connections, hold them, report connect rate and node RSS per connection.
    Idle(IdleArgs),
    /// M members join one public room over the nodes, are held with light
    /// chatter: join latency, time to fill, presence traffic, node RSS per
    /// member, against the same M connections joining no room.
    Bigroom(BigroomArgs),
    /// S subscribers in one room, P publishers at an open-loop rate: throughput, latency, order.
    Fanout(FanoutArgs),
    /// Many small rooms, every member publishing at an interval.
    Rooms(RoomsArgs),
    /// Connections opening, joining, sending one message and closing at a rate.
    Churn(ChurnArgs),
    /// A small fan-out run that exits non-zero on any loss, duplicate or reorder.
    Smoke(SmokeArgs),
    /// Latency-against-load SVG and a markdown table from fan-out JSON results.
    Plot(PlotArgs),
    /// The kernel's own cost of one loopback TCP delivery on this machine, with no server.
    Floor(FloorArgs),
    /// Starts its own Redis and nodes, injects faults, and proves that no acked
    /// message was silently lost, duplicated or reordered.
    Chaos(ChaosArgs),
}

/// Flags every scenario shares.
#[derive(Clone, Debug, Args)]
pub struct Common {
    /// Nodes to connect to, comma-separated HOST:PORT (loopback only).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    pub nodes: Vec<SocketAddr>,
    /// Node process ids (same order as --nodes) to read RSS and CPU from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Spread client sockets over source addresses 127.0.0.1 ..= 127.0.0.K.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            nodes: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            pids: Vec::new(),
            sources: 1,
            concurrency: 64,
            quiet: true,
        }
    }
}

/// Which part of a run split over processes this process does.
#[derive(Clone, Copy, Debug, Args)]
pub struct ShardArgs {
    /// Split the connections over this many processes (each has its own fd
    /// limit); 0 = as many as the fd limit needs.
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Internal: this process is shard I of --procs (talks to its parent on stdin/stdout).
    #[arg(long, hide = true)]
    pub shard: Option<usize>,
}

/// `idle`.
#[derive(Clone, Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them once all are open.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold: Duration,
    /// Also join this room with every connection (empty: no room).
    #[arg(long, default_value = "")]
    pub room: String,
}

/// `bigroom`.
#[derive(Clone, Debug, Args)]
pub struct BigroomArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Members of the room, spread round-robin over the nodes.
    #[arg(short = 'm', long, default_value_t = 1000)]
    pub members: usize,
    /// The room.
    #[arg(long, default_value = "hall")]
    pub room: String,
    /// Joins started per second, all processes together (0: as fast as
    /// --concurrency allows). The baseline's connections follow the same
    /// pace, so the two are compared at one rate.
    #[arg(long, default_value_t = 0.0)]
    pub join_rate: f64,
    /// How long to hold the members once every one has joined.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub hold: Duration,
    /// Messages per second while held, all chatting members together.
    #[arg(long, default_value_t = 2.0)]
    pub chatter: f64,
    /// How many members chat (the first ones).
    #[arg(long, default_value_t = 4)]
    pub chatters: usize,
    /// The nodes' `presence.diff_interval_ms`: the window of "presence
    /// frames per member per diff interval".
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub diff_interval: Duration,
    /// Skip the baseline: the same connections opened again, joining no room.
    #[arg(long)]
    pub no_baseline: bool,
    /// The nodes' Redis on 127.0.0.1, to report what it did per join and per
    /// connection (`INFO cpu`, `INFO commandstats`).
    #[arg(long, value_name = "PORT")]
    pub redis_port: Option<u16>,
}

/// `fanout`.
#[derive(Clone, Debug, Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers in the room, spread round-robin over the nodes.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishers, all on --publisher-node.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Index into --nodes of the publishers' node (default: the last node).
    #[arg(long)]
    pub publisher_node: Option<usize>,
    /// Messages per second, all publishers together (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Text size of each message in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured window, after the warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Publishing before the measured window (not in the latency figures).
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// The room (the channel, with `--proto pusher`).
    #[arg(long, default_value = "bench")]
    pub room: String,
    #[command(flatten)]
    pub pusher: PusherArgs,
}

/// Which protocol the fan-out speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// Banter's JSON protocol on `/ws`: `send` to publish, the `ack` is the answer.
    #[default]
    Banter,
    /// Pusher: subscribers on `/app/{key}`, publishers triggering over the
    /// signed HTTP API (a 200 is the answer). Works against any Pusher
    /// server (Banter's front door, sockudo, soketi).
    Pusher,
}

/// `--proto pusher`'s app.
#[derive(Clone, Debug, Args)]
pub struct PusherArgs {
    /// The protocol.
    #[arg(long, value_enum, default_value_t = Proto::Banter)]
    pub proto: Proto,
    /// The Pusher app id (`--proto pusher`).
    #[arg(long, default_value = "1")]
    pub pusher_app_id: String,
    /// The Pusher app key.
    #[arg(long, default_value = "bench-key")]
    pub pusher_key: String,
    /// The Pusher app secret.
    #[arg(long, default_value = "bench-secret")]
    pub pusher_secret: String,
}

impl Default for PusherArgs {
    fn default() -> Self {
        PusherArgs {
            proto: Proto::Banter,
            pusher_app_id: "1".into(),
            pusher_key: "bench-key".into(),
            pusher_secret: "bench-secret".into(),
        }
    }
}

/// `rooms`.
#[derive(Clone, Debug, Args)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Number of rooms.
    #[arg(long, default_value_t = 5000)]
    pub rooms: usize,
    /// Members per room, spread over the nodes.
    #[arg(long, default_value_t = 4)]
    pub members: usize,
    /// Each member sends one message per interval.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub interval: Duration,
    /// Text size of each message in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured window, after the warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Publishing before the measured window.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    pub warmup: Duration,
}

/// `churn`.
#[derive(Clone, Debug, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// New connections per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to keep opening connections.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Rooms the connections join, round-robin.
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// At most this many connections alive at once; beyond it an arrival is skipped and counted.
    #[arg(long, default_value_t = 2000)]
    pub max_inflight: usize,
}

/// `smoke`.
#[derive(Clone, Debug, Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers.
    #[arg(long, default_value_t = 20)]
    pub subscribers: usize,
    /// Publishers.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Measured window.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub duration: Duration,
}

impl SmokeArgs {
    /// The fan-out run a smoke test is.
    pub fn fanout(&self) -> FanoutArgs {
        FanoutArgs {
            common: self.common.clone(),
            subscribers: self.subscribers,
            publishers: self.publishers,
            publisher_node: None,
            rate: self.rate,
            size: 64,
            duration: self.duration,
            warmup: Duration::from_millis(500),
            room: "smoke".into(),
            pusher: PusherArgs::default(),
        }
    }
}

/// `floor`.
#[derive(Clone, Debug, Args)]
pub struct FloorArgs {
    /// Sockets the writer holds (the subscribers of the fan-out scenario).
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Writer threads sharing the sockets (2: like the two nodes of the fan-out scenario).
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Rounds per second; each round writes one frame to every socket.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Text size of the message each frame carries, in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Measured window, after the warm-up.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Writing before the measured window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
}

/// `chaos`.
#[derive(Clone, Debug, Args)]
pub struct ChaosArgs {
    /// Nodes of the cluster the run starts (a fresh one per fault).
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// The banter-node binary (default: beside this executable, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub node_bin: Option<PathBuf>,
    /// The redis-server binary.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub redis_bin: PathBuf,
    /// Run every round on a Redis Cluster (--shards primaries, each with
    /// --replicas replicas, no persistence) instead of one redis-server, the
    /// nodes started with `--redis-cluster` and every instance as a seed.
    #[arg(long)]
    pub redis_cluster: bool,
    /// Primaries of the Redis Cluster (with --redis-cluster).
    #[arg(long, default_value_t = 3)]
    pub shards: usize,
    /// Replicas of each primary (with --redis-cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// The cluster's `cluster-node-timeout`: how long a primary may be
    /// unreachable before its replica takes over (with --redis-cluster).
    #[arg(long, value_parser = parse_duration, default_value = "1500ms")]
    pub node_timeout: Duration,
    /// The redis-cli binary (with --redis-cluster: `--cluster create`).
    #[arg(long, value_name = "PATH", default_value = "redis-cli")]
    pub redis_cli: PathBuf,
    /// Publishers, on the first node.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers, spread over the other nodes; each joins every room.
    #[arg(long, default_value_t = 3)]
    pub subscribers: usize,
    /// Rooms; publisher i publishes in room i % rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Messages per second, all publishers together (open loop).
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// Text size of each message in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Faults, comma-separated, one round (and one fresh cluster) each:
    /// kill-pubsub, sigstop, restart, oom, debug-sleep, node-kill, rolling,
    /// overload; with --redis-cluster also primary-kill and reshard (and the
    /// Redis faults strike the first room's primary; kill-pubsub every
    /// primary). A `+aof` suffix gives that round a persistent Redis (e.g.
    /// restart+aof). `overload` takes its size after colons, each optional:
    /// `overload:readers=3000:rate=2000:size=200:for=15s` (the defaults).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill-pubsub,sigstop,restart,restart+aof,oom,debug-sleep,node-kill,rolling,overload"
    )]
    pub faults: Vec<crate::scenarios::chaos::Fault>,
    /// When the fault starts, after publishing has begun.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub fault_at: Duration,
    /// How long sigstop and oom last.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub hold: Duration,
    /// Publishing time per round (extended to at least --after past the fault's end).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Publishing after the fault has ended, at least.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub after: Duration,
    /// After publishing stops, wait at most this long for the last messages.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
    /// Every round's Redis with `appendonly yes` (`appendfsync always`), in its work dir.
    #[arg(long)]
    pub persistence: bool,
    /// The nodes' `history.size` (0: their default).
    #[arg(long, default_value_t = 0)]
    pub history_size: usize,
    /// Keep Redis and node logs under this directory (default: a temporary one, removed).
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `plot`.
#[derive(Clone, Debug, Args)]
pub struct PlotArgs {
    /// Fan-out JSON results (one per offered rate).
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Where to write the SVG.
    #[arg(long, default_value = "latency.svg")]
    pub out: PathBuf,
}

/// Parses `250ms`, `2s`, `1.5s`, `3m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 2s, 1m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "banter-load",
            "fanout",
            "--nodes",
            "127.0.0.1:8081,127.0.0.1:8082",
            "--rate",
            "100",
            "--duration",
            "5s",
        ])
        .unwrap();
        let Command::Fanout(f) = cli.command else {
            panic!("not fanout")
        };
        assert_eq!(f.common.nodes.len(), 2);
        assert_eq!(f.duration, Duration::from_secs(5));
    }
}
