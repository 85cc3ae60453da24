//! Loading the configuration from its sources, in order, and checking what
//! types alone cannot.

use super::Config;
use std::net::IpAddr;
use std::path::Path;

/// The keys that hold lists. In the environment each takes either
/// comma-separated items (`a, b`) or a JSON array (`["a","b"]`); items are
/// trimmed and empty ones dropped.
const LIST_KEYS: [&str; 2] = ["server.allowed_origins", "server.trusted_proxies"];

/// Values given on the command line; they win over everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--redis`
    pub redis: Option<String>,
    /// `--redis-cluster`: seed nodes; sets `redis.url` and `redis.mode = "cluster"`.
    pub redis_cluster: Option<String>,
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
        let (env, lists) = environment(env_prefix)?;
        builder = builder.add_source(
            config::Environment::with_prefix(env_prefix)
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        // The environment's lists, parsed here; no flag sets these keys, so
        // an override keeps them above the file and below nothing.
        for (key, items) in lists {
            builder = builder.set_override(key, items)?;
        }
        builder = builder
            .set_override_option("server.listen", overrides.listen.clone())?
            .set_override_option("redis.url", overrides.redis.clone())?
            .set_override_option("redis.url", overrides.redis_cluster.clone())?
            .set_override_option(
                "redis.mode",
                overrides.redis_cluster.as_ref().map(|_| "cluster"),
            )?
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
        if self.redis.mode == super::RedisMode::Cluster {
            let seeds = self.redis.seeds();
            if seeds.is_empty() {
                return invalid("redis.url", "cluster mode needs at least one seed node");
            }
            // All over TLS or none: one cluster, one way in.
            let plain = seeds.iter().all(|s| s.starts_with("redis://"));
            let tls = seeds.iter().all(|s| s.starts_with("rediss://"));
            if !plain && !tls {
                return invalid(
                    "redis.url",
                    "cluster seeds are comma-separated redis://host:port URLs, or all rediss://",
                );
            }
        } else if !url.is_empty() && !schemes.iter().any(|s| url.starts_with(s)) {
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
            ("history.dialog_ttl_ms", self.history.dialog_ttl_ms),
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
        if !self.server.allowed_origins.iter().all(|o| origin_form(o)) {
            return invalid(
                "server.allowed_origins",
                "each origin is \"*\" or scheme://host[:port], e.g. https://chat.example.com",
            );
        }
        if self.limits.outbound_bytes == 0 {
            return invalid("limits.outbound_bytes", "must be at least 1");
        }
        if self.history.dialog_size == 0 {
            return invalid(
                "history.dialog_size",
                "must be at least 1: direct messages are delivered from their dialog",
            );
        }
        let pusher = &self.pusher;
        if !pusher.key.is_empty() && (pusher.secret.is_empty() || pusher.app_id.is_empty()) {
            return invalid(
                "pusher.secret",
                "pusher.key is set: pusher.app_id and pusher.secret must be set too",
            );
        }
        let pusher_chars = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        if !pusher_chars(&pusher.key) || !pusher_chars(&pusher.app_id) {
            return invalid(
                "pusher.key",
                "pusher.key and pusher.app_id are letters, digits, _ - . only",
            );
        }
        let url = &self.auth.connect_url;
        let usable = url.starts_with("http://") && url.parse::<hyper::Uri>().is_ok();
        if !url.is_empty() && !usable {
            return invalid(
                "auth.connect_url",
                "must be an http:// URL, e.g. http://app:8000/chat/connect",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML (`--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The variables under `{prefix}__`, except the list keys, which come back
/// parsed (see [`LIST_KEYS`]).
#[allow(clippy::type_complexity)]
fn environment(
    prefix: &str,
) -> Result<
    (
        config::Map<String, String>,
        Vec<(&'static str, Vec<String>)>,
    ),
    ConfigError,
> {
    let ours = format!("{prefix}__").to_lowercase();
    let mut rest = config::Map::new();
    let mut lists = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Ok(name) = name.into_string() else {
            continue; // not a name this node could have been given
        };
        let lower = name.to_lowercase();
        if !lower.starts_with(&ours) {
            continue;
        }
        let value = value.into_string().map_err(|_| {
            config::ConfigError::Message(format!("env variable {name} is not UTF-8"))
        })?;
        let key = LIST_KEYS
            .into_iter()
            .find(|key| lower[ours.len()..] == key.replace('.', "__"));
        match key {
            Some(key) => lists.push((key, list(key, &value)?)),
            None => {
                rest.insert(name, value);
            }
        }
    }
    Ok((rest, lists))
}

/// A list key's value from the environment: a JSON array of strings when it
/// starts with `[`, comma-separated items otherwise.
fn list(key: &'static str, value: &str) -> Result<Vec<String>, ConfigError> {
    let value = value.trim();
    let items = if value.starts_with('[') {
        serde_json::from_str::<Vec<String>>(value).map_err(|e| ConfigError::Invalid {
            key,
            why: format!("not a JSON array of strings ({e}); or give a,b"),
        })?
    } else {
        value.split(',').map(str::to_owned).collect()
    };
    let items: Vec<String> = items
        .iter()
        .map(|item| item.trim())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    if key == "server.trusted_proxies"
        && let Some(bad) = items.iter().find(|item| item.parse::<IpAddr>().is_err())
    {
        return Err(ConfigError::Invalid {
            key,
            why: format!("{bad:?} is not an IP address"),
        });
    }
    Ok(items)
}

/// Whether `origin` can match a browser's `Origin`: `*`, or
/// `scheme://host[:port]` (a trailing `/` aside), without a path or spaces.
fn origin_form(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, authority)) = origin.trim_end_matches('/').split_once("://") else {
        return false;
    };
    scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        && !authority.is_empty()
        && !authority
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_origins() {
        let key = "server.allowed_origins";
        for (value, want) in [
            ("a, b", vec!["a", "b"]),
            (r#"["a", " b "]"#, vec!["a", "b"]),
            ("", vec![]),
            (" , ", vec![]),
            ("[]", vec![]),
        ] {
            assert_eq!(list(key, value).unwrap(), want, "{value:?}");
        }
        assert!(list(key, r#"["a""#).is_err());
        assert!(list("server.trusted_proxies", "10.0.0.1, x").is_err());
        for ok in [
            "*",
            "https://a.example",
            "http://a:8080/",
            "chrome-extension://id",
        ] {
            assert!(origin_form(ok), "{ok}");
        }
        for bad in [
            "",
            "a.example",
            "https://",
            "https://a/b",
            "https://a b",
            "://a",
            r#"["a"]"#,
        ] {
            assert!(!origin_form(bad), "{bad}");
        }
    }

    #[test]
    fn cluster_seeds_are_all_plain_or_all_tls() {
        let with = |url: &str| {
            let mut c = Config::default();
            c.redis.mode = super::super::RedisMode::Cluster;
            c.redis.url = url.to_owned();
            c.validate()
        };
        assert!(with("redis://a:7000,redis://b:7000").is_ok());
        assert!(with("rediss://a:7000, rediss://b:7000").is_ok());
        for bad in ["redis://a:7000,rediss://b:7000", "unix:///tmp/r.sock", ""] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }
}
