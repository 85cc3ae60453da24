//! The Pusher HTTP API, as the Pusher server SDKs call it: trigger
//! (`POST /apps/{app_id}/events`), batch trigger (`/batch_events`), and the
//! channel queries (`GET /apps/{app_id}/channels`, `/channels/{name}`,
//! `/channels/{name}/users`). Every request is signed: `auth_key`,
//! `auth_timestamp` (within [`TIMESTAMP_WINDOW_S`] of the node's clock),
//! `auth_version`, `body_md5` (of a non-empty body) and `auth_signature`,
//! the HMAC-SHA256 of `METHOD\npath\nsorted query` with `pusher.secret`.

use std::time::Duration;

use banter_protocol::{ChannelName, ConnId};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Kind, MAX_BATCH, MAX_EVENT_BYTES, MAX_TRIGGER_CHANNELS, frame, published, sign, topic,
};
use crate::http::query::pairs;
use crate::http::reply::{Body, json as reply};
use crate::node::Node;

/// How far `auth_timestamp` may be from the node's clock.
const TIMESTAMP_WINDOW_S: u64 = 600;
/// The most bytes of a request body (a batch of ten 10 KB events, and some).
const BODY_BYTES: usize = 256 * 1024;
/// The longest a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest event name: Pusher's limit.
const MAX_NAME: usize = 200;

fn fail(code: StatusCode, message: &str) -> Response<Body> {
    reply(code, &json!({ "error": message }))
}

/// One event of a trigger or a batch.
#[derive(Debug, Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Batch {
    batch: Vec<Event>,
}

/// Routes `/apps/{app_id}/...`.
pub(crate) async fn route(node: &Node, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let config = &node.config().pusher;
    let Some(rest) = path
        .strip_prefix("/apps/")
        .and_then(|r| r.strip_prefix(config.app_id.as_str()))
        .and_then(|r| r.strip_prefix('/'))
    else {
        return fail(StatusCode::NOT_FOUND, "unknown app");
    };
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if method == Method::POST {
        let collected = Limited::new(req.into_body(), BODY_BYTES).collect();
        match tokio::time::timeout(BODY_TIMEOUT, collected).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(_)) => return fail(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            Err(_) => return fail(StatusCode::REQUEST_TIMEOUT, "request body too slow"),
        }
    } else {
        bytes::Bytes::new()
    };
    if let Err(why) = check_signature(node, &method, &path, &query, &body) {
        tracing::debug!(%path, why, "pusher api request refused");
        return fail(StatusCode::UNAUTHORIZED, why);
    }
    let params: Map<String, Value> = pairs(Some(&query))
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    let info = |key: &str| {
        params
            .get("info")
            .and_then(Value::as_str)
            .is_some_and(|i| i.split(',').any(|p| p.trim() == key))
    };
    match (method, rest) {
        (Method::POST, "events") => match serde_json::from_slice::<Event>(&body) {
            Ok(event) => trigger(node, vec![event]).await,
            Err(e) => fail(StatusCode::BAD_REQUEST, &format!("bad event: {e}")),
        },
        (Method::POST, "batch_events") => match serde_json::from_slice::<Batch>(&body) {
            Ok(batch) if batch.batch.len() > MAX_BATCH => {
                fail(StatusCode::BAD_REQUEST, "at most 10 events in a batch")
            }
            Ok(batch) => trigger(node, batch.batch).await,
            Err(e) => fail(StatusCode::BAD_REQUEST, &format!("bad batch: {e}")),
        },
        (Method::GET, "channels") => {
            let prefix = params
                .get("filter_by_prefix")
                .and_then(Value::as_str)
                .unwrap_or("");
            if info("user_count") && !prefix.starts_with("presence-") {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "info=user_count needs filter_by_prefix=presence-",
                );
            }
            match node.inner.bus.pusher_channels().await {
                Ok(channels) => {
                    let mut out = Map::new();
                    for c in channels.iter().filter(|c| c.as_str().starts_with(prefix)) {
                        let mut attrs = Map::new();
                        if info("user_count") {
                            match user_count(node, c).await {
                                Ok(n) => attrs.insert("user_count".into(), json!(n)),
                                Err(e) => return e,
                            };
                        }
                        if info("subscription_count") {
                            match subscription_count(node, c).await {
                                Ok(n) => attrs.insert("subscription_count".into(), json!(n)),
                                Err(e) => return e,
                            };
                        }
                        out.insert(c.to_string(), Value::Object(attrs));
                    }
                    reply(StatusCode::OK, &json!({ "channels": out }))
                }
                Err(e) => unavailable(&e),
            }
        }
        (Method::GET, r) if r.starts_with("channels/") => {
            let r = &r["channels/".len()..];
            let (name, users) = match r.strip_suffix("/users") {
                Some(name) => (name, true),
                None => (r, false),
            };
            let name = crate::http::query::path_decode(name);
            let Ok(channel) = name.parse::<ChannelName>() else {
                return fail(StatusCode::BAD_REQUEST, "invalid channel name");
            };
            if users {
                if Kind::of(channel.as_str()) != Kind::Presence {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "users are listed for presence channels only",
                    );
                }
                let page = node
                    .inner
                    .presence
                    .page(&topic(&channel), None, super::MAX_PRESENCE_MEMBERS)
                    .await;
                return match page {
                    Ok(page) => {
                        let users: Vec<Value> =
                            page.users.iter().map(|u| json!({"id": u.id})).collect();
                        reply(StatusCode::OK, &json!({ "users": users }))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pusher api: presence unavailable");
                        fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable, try again")
                    }
                };
            }
            match node.inner.bus.listeners(&topic(&channel)).await {
                Ok(n) => {
                    let mut out = json!({ "occupied": n > 0 });
                    if info("subscription_count") {
                        match subscription_count(node, &channel).await {
                            Ok(n) => out["subscription_count"] = json!(n),
                            Err(e) => return e,
                        }
                    }
                    if info("user_count") {
                        if Kind::of(channel.as_str()) != Kind::Presence {
                            return fail(
                                StatusCode::BAD_REQUEST,
                                "user_count is for presence channels",
                            );
                        }
                        match user_count(node, &channel).await {
                            Ok(n) => out["user_count"] = json!(n),
                            Err(e) => return e,
                        }
                    }
                    reply(StatusCode::OK, &out)
                }
                Err(e) => unavailable(&e),
            }
        }
        (Method::GET | Method::POST, _) => fail(StatusCode::NOT_FOUND, "no such route"),
        _ => fail(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// How many users a presence channel has, cluster-wide.
async fn user_count(node: &Node, channel: &ChannelName) -> Result<usize, Response<Body>> {
    match node.inner.presence.page(&topic(channel), None, 0).await {
        Ok(page) => Ok(page.count),
        Err(e) => {
            tracing::warn!(error = %e, "pusher api: presence unavailable");
            Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable, try again",
            ))
        }
    }
}

/// How many sockets subscribe a channel, cluster-wide (each node's count
/// as it last wrote it: at most `presence.diff_interval_ms` old).
async fn subscription_count(node: &Node, channel: &ChannelName) -> Result<usize, Response<Body>> {
    match node.inner.presence.tallied(&topic(channel)).await {
        Ok(n) => Ok(n),
        Err(e) => {
            tracing::warn!(error = %e, "pusher api: subscription counts unavailable");
            Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable, try again",
            ))
        }
    }
}

fn unavailable(e: &banter_bus::BusError) -> Response<Body> {
    tracing::warn!(error = %e, "pusher api: the bus is unavailable");
    fail(StatusCode::SERVICE_UNAVAILABLE, "unavailable, try again")
}

/// Publishes each event on each of its channels, in order; 200 `{}` once
/// the bus has taken all of them.
async fn trigger(node: &Node, events: Vec<Event>) -> Response<Body> {
    let mut planned = Vec::new();
    for event in events {
        if event.name.is_empty() || event.name.len() > MAX_NAME {
            return fail(
                StatusCode::BAD_REQUEST,
                "event name must be 1-200 characters",
            );
        }
        let data = match event.data {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if data.len() > MAX_EVENT_BYTES {
            return fail(StatusCode::PAYLOAD_TOO_LARGE, "event data over 10 KB");
        }
        let names: Vec<String> = match (event.channels, event.channel) {
            (Some(c), _) => c,
            (None, Some(c)) => vec![c],
            (None, None) => return fail(StatusCode::BAD_REQUEST, "no channels"),
        };
        if names.is_empty() || names.len() > MAX_TRIGGER_CHANNELS {
            return fail(StatusCode::BAD_REQUEST, "1 to 100 channels per event");
        }
        let except = match event.socket_id.as_deref() {
            None | Some("") => None,
            Some(s) if valid_socket_id(s) => ConnId::try_from(s.to_owned()).ok(),
            Some(_) => return fail(StatusCode::BAD_REQUEST, "invalid socket_id"),
        };
        for name in names {
            let Ok(channel) = name.parse::<ChannelName>() else {
                return fail(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid channel name: {name:.200}"),
                );
            };
            let frame = frame(
                &event.name,
                Some(channel.as_str()),
                &Value::String(data.clone()),
            );
            planned.push((channel, published(except.as_ref(), &frame)));
        }
    }
    for (channel, payload) in planned {
        if let Err(e) = node
            .inner
            .bus
            .publish_stored(&topic(&channel), payload)
            .await
        {
            return unavailable(&e);
        }
        node.inner.metrics.published.inc();
    }
    reply(StatusCode::OK, &json!({}))
}

/// `{digits}.{digits}`, as Pusher's socket ids are.
fn valid_socket_id(s: &str) -> bool {
    let digits = |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
    s.split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Checks a request's signature, key, timestamp and body hash.
fn check_signature(
    node: &Node,
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<(), &'static str> {
    let config = &node.config().pusher;
    let mut params: Vec<(String, String)> = pairs(Some(query))
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect();
    let get = |key: &str| {
        params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let signature = get("auth_signature").ok_or("missing auth_signature")?;
    if get("auth_key").as_deref() != Some(config.key.as_str()) {
        return Err("unknown auth_key");
    }
    let timestamp: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or("missing auth_timestamp")?;
    let now = crate::clock::now_ms() / 1000;
    if now.abs_diff(timestamp) > TIMESTAMP_WINDOW_S {
        return Err("auth_timestamp is more than 600 s from the server's time");
    }
    if !body.is_empty() {
        let md5 = hex::encode(Md5::digest(body));
        if get("body_md5").as_deref() != Some(md5.as_str()) {
            return Err("body_md5 does not match the body");
        }
    }
    params.retain(|(k, _)| k != "auth_signature");
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let expected = sign(&config.secret, &format!("{method}\n{path}\n{query}"));
    use subtle::ConstantTimeEq;
    if bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err("invalid signature")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_digits_dot_digits() {
        assert!(valid_socket_id("123.456"));
        assert!(!valid_socket_id("123"));
        assert!(!valid_socket_id("a.1"));
        assert!(!valid_socket_id("1.2.3"));
    }

    #[test]
    fn the_string_to_sign_matches_pushers_documented_example() {
        // Pusher's docs ("Generating authentication signatures").
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            hex::encode(Md5::digest(body)),
            "ec365a775a4cd0599faeb73354201b6f"
        );
        let signed = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        assert_eq!(
            sign("7ad3773142a6692b25b8", signed),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }
}
