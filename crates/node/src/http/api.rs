//! The room API over HTTP: presence, history, and server publishing.

use super::query::pairs;
use super::reply::{Body, error, json};
use crate::conn::rules::{HISTORY_LIMIT, RECENT_HISTORY, check_text, system_user};
use crate::node::Node;
use banter_bus::{Draft, HistoryQuery, Position};
use banter_protocol::RoomId;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use serde_json::json as j;
use subtle::ConstantTimeEq;

fn bad_room() -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_room")
}

fn unavailable() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

/// `GET /api/rooms/{room}/presence?limit=&cursor=`: one page of at most
/// `presence.list_limit` users, with the exact count, and `cursor` when more
/// follow.
pub(crate) async fn presence(node: &Node, room: &str, query: Option<&str>) -> Response<Body> {
    let Ok(room) = room.parse::<RoomId>() else {
        return bad_room();
    };
    let most = node.config().presence.list_limit;
    let (mut limit, mut cursor) = (most, None);
    for (key, value) in pairs(query) {
        match key {
            "limit" => match value.parse::<usize>() {
                Ok(l) => limit = l.clamp(1, most),
                Err(_) => return error(StatusCode::BAD_REQUEST, "limit must be a number"),
            },
            "cursor" => cursor = Some(value),
            _ => {}
        }
    }
    match node
        .inner
        .presence
        .page(&room, cursor.as_deref(), limit)
        .await
    {
        Ok(page) => {
            let mut body = j!({"room": room, "count": page.count, "users": page.users});
            if let Some(next) = page.next {
                body["cursor"] = j!(next);
            }
            json(StatusCode::OK, &body)
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "presence read failed");
            unavailable()
        }
    }
}

/// `GET /api/rooms/{room}/history?limit=50&since=ID`: oldest first.
pub(crate) async fn history(node: &Node, room: &str, query: Option<&str>) -> Response<Body> {
    let Ok(room) = room.parse::<RoomId>() else {
        return bad_room();
    };
    let (mut limit, mut since) = (RECENT_HISTORY, None);
    for (key, value) in pairs(query) {
        match key {
            "limit" => match value.parse::<usize>() {
                Ok(l) => limit = l.min(HISTORY_LIMIT),
                Err(_) => return error(StatusCode::BAD_REQUEST, "limit must be a number"),
            },
            "since" => match Position::parse(&value) {
                Some(id) => since = Some(id),
                None => return error(StatusCode::BAD_REQUEST, "since must be a message id"),
            },
            _ => {}
        }
    }
    let query = match since {
        Some(since) => HistoryQuery::After { since, limit },
        None => HistoryQuery::Latest { limit },
    };
    match node.inner.bus.history(&room, query).await {
        Ok(page) => json(
            StatusCode::OK,
            &j!({"room": room, "messages": page.messages}),
        ),
        Err(e) => {
            tracing::warn!(%room, error = %e, "history read failed");
            unavailable()
        }
    }
}

/// Whether the request carries `Authorization: Bearer <key>`, compared in
/// constant time so the key cannot be guessed byte by byte.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

#[derive(serde::Deserialize)]
struct PublishBody {
    text: String,
    #[serde(default)]
    from: Option<String>,
}

/// `POST /api/rooms/{room}/messages`: a message from the server side,
/// `from {"id":"system","name": <from or "system">}`; 202 with its id.
pub(crate) async fn publish(node: &Node, room: &str, req: Request<Incoming>) -> Response<Body> {
    let config = node.config();
    if config.auth.api_key.is_empty() {
        return error(StatusCode::NOT_FOUND, "the publish API is off");
    }
    if !authorized(req.headers(), &config.auth.api_key) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Ok(room) = room.parse::<RoomId>() else {
        return bad_room();
    };
    let body = match Limited::new(req.into_body(), config.limits.max_frame_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    };
    let Ok(body) = serde_json::from_slice::<PublishBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"expected {"text": .., "from": ..}"#,
        );
    };
    let Some(from) = system_user(body.from.as_deref()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "from must be 1-32 characters without control characters",
        );
    };
    if check_text(&body.text, config.limits.max_text_chars).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "text must be 1 to limits.max_text_chars characters",
        );
    }
    let draft = Draft {
        room,
        from,
        text: body.text,
        ts: crate::clock::now_ms(),
    };
    match node.inner.bus.publish_message(&draft).await {
        Ok(message) => {
            node.inner.metrics.published.inc();
            json(StatusCode::ACCEPTED, &j!({"id": message.id}))
        }
        Err(e) => {
            tracing::warn!(error = %e, "api publish failed");
            unavailable()
        }
    }
}
