//! Loading the configuration from its sources, in order, and checking what
//! types alone cannot.

use super::Config;
use std::path::Path;

/// Values given on the command line; they win over everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--redis`
    pub redis: Option<String>,
    /// `--node-id`
    pub node_id: Option<String>,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file, the environment or a flag held a value of the wrong shape.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// A value of the right shape that is not allowed.
    #[error("invalid value for key `{key}`: {why}")]
    Invalid {
        /// The dotted key, e.g. `limits.max_rooms`.
        key: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl Config {
    /// Loads defaults < `file` < environment (`{env_prefix}__SECTION__KEY`)
    /// < `overrides`, then validates. `env_prefix` is `BANTER` in production;
    /// tests pass their own so they cannot see the developer's environment.
    pub fn load(
        file: Option<&Path>,
        env_prefix: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default())?);
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder
            .add_source(
                config::Environment::with_prefix(env_prefix)
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("server.allowed_origins")
                    .with_list_parse_key("server.trusted_proxies"),
            )
            .set_override_option("server.listen", overrides.listen.clone())?
            .set_override_option("redis.url", overrides.redis.clone())?
            .set_override_option("node.id", overrides.node_id.clone())?;
        let config: Config = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, why: &str| {
            Err(ConfigError::Invalid {
                key,
                why: why.to_owned(),
            })
        };
        let id = &self.node.id;
        if id.is_empty()
            || id.len() > 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid("node.id", "1-32 characters of A-Z a-z 0-9 - _");
        }
        let url = &self.redis.url;
        let schemes = ["redis://", "rediss://", "unix://"];
        if !url.is_empty() && !schemes.iter().any(|s| url.starts_with(s)) {
            return invalid(
                "redis.url",
                "must start with redis://, rediss:// or unix://",
            );
        }
        if self.redis.pool_size == 0 {
            return invalid("redis.pool_size", "must be at least 1");
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return invalid("redis.key_prefix", "1-64 characters of A-Z a-z 0-9 - _ .");
        }
        if self.limits.max_frame_bytes < 256 {
            return invalid("limits.max_frame_bytes", "must be at least 256");
        }
        for (key, value) in [
            ("limits.max_text_chars", self.limits.max_text_chars),
            ("limits.max_rooms", self.limits.max_rooms),
            ("limits.outbound_queue", self.limits.outbound_queue),
            ("server.max_connections", self.server.max_connections),
            ("presence.list_limit", self.presence.list_limit),
            ("limits.rate_per_sec", self.limits.rate_per_sec as usize),
            ("limits.burst", self.limits.burst as usize),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for (key, value) in [
            (
                "server.handshake_timeout_ms",
                self.server.handshake_timeout_ms,
            ),
            ("server.drain_timeout_ms", self.server.drain_timeout_ms),
            (
                "heartbeat.ping_interval_ms",
                self.heartbeat.ping_interval_ms,
            ),
            ("heartbeat.idle_timeout_ms", self.heartbeat.idle_timeout_ms),
            ("presence.ttl_ms", self.presence.ttl_ms),
            ("history.ttl_ms", self.history.ttl_ms),
        ] {
            if value < 10 {
                return invalid(key, "must be at least 10 ms");
            }
        }
        if self.heartbeat.idle_timeout_ms <= self.heartbeat.ping_interval_ms {
            return invalid(
                "heartbeat.idle_timeout_ms",
                "must be longer than heartbeat.ping_interval_ms",
            );
        }
        if self.server.allowed_origins.iter().any(|o| o.is_empty()) {
            return invalid("server.allowed_origins", "an origin cannot be empty");
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
