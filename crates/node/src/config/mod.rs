//! The node's configuration: built-in defaults < `--config` TOML file <
//! environment `BANTER__SECTION__KEY` < flags. Read once in `main.rs`,
//! validated, then passed down; nothing else reads env or flags. Every key
//! is documented for operators in `docs/configuration.md`.
//!
//! - this file: every section and key, with its default and why.
//! - [`load`]: reading the sources in order, and validating the result.

mod load;

pub use load::{ConfigError, Overrides};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything a node can be told. Every field has a default, so an empty
/// file (or none) gives a working single-node chat on 127.0.0.1:8080.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket serving.
    pub server: ServerConfig,
    /// This node's identity.
    pub node: NodeConfig,
    /// The shared Redis (empty URL: in-memory bus and presence).
    pub redis: RedisConfig,
    /// What one client may do.
    pub limits: LimitsConfig,
    /// Keeping idle sockets alive, and finding dead ones.
    pub heartbeat: HeartbeatConfig,
    /// Who is online.
    pub presence: PresenceConfig,
    /// Messages kept per room.
    pub history: HistoryConfig,
    /// Tokens and the publish API.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// The Pusher-protocol front door.
    pub pusher: PusherConfig,
}

/// `[pusher]`: the Pusher Channels protocol on `/app/{key}` and the Pusher
/// HTTP API on `/apps/{app_id}/...`; off while `key` is empty.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    /// The app id of the HTTP API's paths.
    pub app_id: String,
    /// The app key: the path of the WebSocket, and `auth_key` of the API.
    pub key: String,
    /// Signs private and presence channel auth strings and API requests.
    pub secret: String,
}

impl PusherConfig {
    /// Whether the front door is open (a key is set).
    pub fn enabled(&self) -> bool {
        !self.key.is_empty()
    }
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP + WebSocket address. Loopback by default: exposing a node is a choice.
    pub listen: SocketAddr,
    /// Browser origins allowed to open a socket: `[]` = same host only (the
    /// page's own origin), `["*"]` = any. Requests without `Origin` (non-browser
    /// clients) are always allowed: Origin protects browsers' cookies, nothing else.
    pub allowed_origins: Vec<String>,
    /// Beyond this many sockets the upgrade is refused with 503, so one node
    /// cannot be pushed past its file-descriptor and memory budget.
    pub max_connections: usize,
    /// A client that has not completed its HTTP upgrade by then is dropped (slowloris).
    pub handshake_timeout_ms: u64,
    /// On SIGTERM/SIGINT, the most time given to close every client.
    pub drain_timeout_ms: u64,
    /// Proxies (e.g. nginx) whose `X-Forwarded-For` names the real client.
    /// From anyone else the header is ignored: it is trivially forged.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            max_connections: 100_000,
            handshake_timeout_ms: 10_000,
            drain_timeout_ms: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[node]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name in logs, metrics (`node` label) and `welcome`.
    /// Random (8 characters) unless set, so two nodes never share one by accident.
    pub id: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: crate::clock::random_id(8),
        }
    }
}

/// `[redis]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Empty = in-memory bus and presence: one complete node on its own.
    /// In cluster mode, a comma-separated list of seed nodes.
    pub url: String,
    /// `standalone` (one Redis) or `cluster` (Redis Cluster with sharded
    /// pub/sub).
    pub mode: RedisMode,
    /// Publisher/command pool size (deadpool-redis). Pub/sub uses one extra connection.
    pub pool_size: usize,
    /// Every key and channel starts with `{prefix}:`, so several clusters can share one Redis.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            mode: RedisMode::Standalone,
            pool_size: 16,
            key_prefix: "banter".into(),
        }
    }
}

/// `redis.mode`: what `redis.url` points at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis (or a proxy that looks like one).
    #[default]
    Standalone,
    /// A Redis Cluster: `redis.url` lists seed nodes; rooms spread over the
    /// shards, messages go by sharded pub/sub.
    Cluster,
}

impl RedisConfig {
    /// The seed nodes of `url` in cluster mode (its comma-separated items).
    pub fn seeds(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }
}

/// `[limits]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// A larger WebSocket message closes the socket with 1009. Also tungstenite's
    /// max message and frame size: its read buffer grows to the largest frame
    /// and never shrinks, so this bounds per-socket memory.
    pub max_frame_bytes: usize,
    /// A longer chat text gets `error too_large`; the socket stays.
    pub max_text_chars: usize,
    /// Rooms one connection may be in.
    pub max_rooms: usize,
    /// Token bucket refill per second on client frames.
    pub rate_per_sec: u32,
    /// Token bucket size: short bursts (a paste, a reconnect's joins) pass.
    pub burst: u32,
    /// Frames queued to one client. Overflow means the client does not read:
    /// it is closed with 4002 instead of growing the node's memory.
    pub outbound_queue: usize,
    /// Bytes queued to one client, replies included. Overflow means the
    /// client does not read: it is closed with 4002.
    pub outbound_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            max_text_chars: 4_000,
            max_rooms: 32,
            rate_per_sec: 20,
            burst: 40,
            outbound_queue: 1_024,
            outbound_bytes: 1_048_576,
        }
    }
}

/// `[heartbeat]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Server WebSocket ping. Below proxies' idle timeouts (nginx: 60 s).
    pub ping_interval_ms: u64,
    /// No frame (pong included) from the client for this long: close 1001.
    pub idle_timeout_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// `[presence]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A crashed node's users are gone within this: a node writes its
    /// entries to live ttl/2 and refreshes them every ttl/4, and a live
    /// node's swept entries come back at its next refresh.
    pub ttl_ms: u64,
    /// Most users listed in `joined.users`, in one `who` page and in one
    /// HTTP presence page, so a join costs the same in a room of 20,000 as
    /// in a room of 20 (the count is always exact).
    pub list_limit: usize,
    /// A room's presence changes reach each member at most this often,
    /// merged into one `diff`; the first change after a quiet interval goes
    /// out at once, so a small room still feels instant.
    pub diff_interval_ms: u64,
    /// Above this many members a room's diffs carry only the count: names
    /// would be a storm nobody reads.
    pub events_max_members: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 30_000,
            list_limit: 100,
            diff_interval_ms: 1_000,
            events_max_members: 1_000,
        }
    }
}

/// `[history]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per room (0 = none).
    pub size: usize,
    /// A room's history expires this long after its last message, so rooms
    /// nobody uses any more do not stay in Redis forever.
    pub ttl_ms: u64,
    /// Direct messages kept per dialog (pair of users).
    pub dialog_size: usize,
    /// A dialog expires this long after its last message.
    pub dialog_ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            size: 200,
            ttl_ms: 86_400_000,
            dialog_size: 200,
            dialog_ttl_ms: 604_800_000,
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret; empty = no JWT accepted.
    pub jwt_secret: String,
    /// Allow connections without a token (guest names). With `false`, the
    /// HTTP read routes need a token or the API key too.
    pub anonymous: bool,
    /// Bearer key for the HTTP publish API (and for the read routes when
    /// anonymous access is off); empty = publish API off (404).
    pub api_key: String,
    /// Refuse tokens without `exp`: a token that never expires cannot be
    /// taken back short of changing the secret.
    pub require_exp: bool,
    /// Clock skew allowed between the token issuer and the node, on `exp`,
    /// `nbf` and `iat`.
    pub leeway_ms: u64,
    /// When set, a token's `aud` must name it; empty = `aud` not checked.
    pub audience: String,
    /// When set, a token's `iss` must equal it; empty = `iss` not checked.
    pub issuer: String,
    /// The app's own session check: on each upgrade the node POSTs the
    /// query, cookies and selected headers here and takes the identity it
    /// returns; empty = off.
    pub connect_url: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: String::new(),
            anonymous: true,
            api_key: String::new(),
            require_exp: true,
            leeway_ms: 60_000,
            audience: String::new(),
            issuer: String::new(),
            connect_url: String::new(),
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for one JSON object a line.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `banter_node=debug,info`...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl Config {
    /// `server.handshake_timeout_ms`
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.server.handshake_timeout_ms)
    }

    /// `server.drain_timeout_ms`
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.server.drain_timeout_ms)
    }

    /// `heartbeat.ping_interval_ms`
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat.ping_interval_ms)
    }

    /// `heartbeat.idle_timeout_ms`
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat.idle_timeout_ms)
    }

    /// `history.ttl_ms`
    pub fn history_ttl(&self) -> Duration {
        Duration::from_millis(self.history.ttl_ms)
    }

    /// `history.dialog_ttl_ms`
    pub fn dialog_ttl(&self) -> Duration {
        Duration::from_millis(self.history.dialog_ttl_ms)
    }

    /// `presence.diff_interval_ms`
    pub fn diff_interval(&self) -> Duration {
        Duration::from_millis(self.presence.diff_interval_ms)
    }

    /// `presence.ttl_ms`
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence.ttl_ms)
    }
}
