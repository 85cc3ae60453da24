//! The room API over HTTP: presence, history, and server publishing; and a
//! user's dialogs.
//!
//! Publishing needs the API key. The reads answer anyone while anonymous
//! access is on (`auth.anonymous`); with it off they need what a socket
//! would: a valid token, or the API key (`Authorization: Bearer ...`).

use super::query::pairs;
use super::reply::{Body, error, json};
use crate::conn::rules::{
    DIALOGS_LIMIT, HISTORY_LIMIT, RECENT_HISTORY, check_text, fit, fit_oldest, system_user,
};
use crate::node::Node;
use banter_bus::{Draft, HistoryQuery, Position};
use banter_protocol::{RoomId, UserId};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode};
use serde_json::json as j;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The most time the body of a publish request may take to arrive, so a
/// client that sends its headers and then trickles (or nothing) cannot hold
/// a request open: 408 after it.
pub(crate) const PUBLISH_BODY_TIMEOUT: Duration = Duration::from_secs(10);

fn bad_room() -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_room")
}

fn unavailable() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable")
}

/// 401, with the scheme the client should use.
fn unauthorized() -> Response<Body> {
    let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized");
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Whether the request may read rooms: anyone while `auth.anonymous` is on;
/// otherwise a bearer that is a valid token or the API key.
fn may_read(node: &Node, headers: &HeaderMap) -> bool {
    let auth = &node.config().auth;
    if auth.anonymous {
        return true;
    }
    let Some(given) = bearer(headers) else {
        return false;
    };
    if !auth.api_key.is_empty() && same_key(given, &auth.api_key) {
        return true;
    }
    match node.inner.verifier.verify(given) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "read refused");
            false
        }
    }
}

/// `GET /api/rooms/{room}/presence?limit=&cursor=`: one page of at most
/// `presence.list_limit` users, with the exact count, and `cursor` when more
/// follow.
pub(crate) async fn presence(node: &Node, room: &str, req: &Request<Incoming>) -> Response<Body> {
    if !may_read(node, req.headers()) {
        return unauthorized();
    }
    let query = req.uri().query();
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
        .page(
            &banter_bus::Topic::Room(room.clone()),
            cursor.as_deref(),
            limit,
        )
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
pub(crate) async fn history(node: &Node, room: &str, req: &Request<Incoming>) -> Response<Body> {
    if !may_read(node, req.headers()) {
        return unauthorized();
    }
    let query = req.uri().query();
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
        Ok(page) => {
            // Capped in bytes like a socket's reply: forward from `since`
            // the oldest stay (the caller goes on from the last), else the
            // newest.
            let messages = if since.is_some() {
                fit_oldest(page.messages)
            } else {
                fit(page.messages).0
            };
            json(StatusCode::OK, &j!({"room": room, "messages": messages}))
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "history read failed");
            unavailable()
        }
    }
}

/// The credentials of `Authorization: Bearer <credentials>`; the scheme is
/// case-insensitive (RFC 9110), the spaces around the credentials do not count.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// `given == key`, in constant time so the key cannot be guessed byte by byte.
fn same_key(given: &str, key: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(key.as_bytes()))
}

/// Whether the request carries `Authorization: Bearer <key>`.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    bearer(headers).is_some_and(|given| same_key(given, key))
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
        return unauthorized();
    }
    let Ok(room) = room.parse::<RoomId>() else {
        return bad_room();
    };
    let body = Limited::new(req.into_body(), config.limits.max_frame_bytes).collect();
    let body = match tokio::time::timeout(PUBLISH_BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Err(_) => {
            // The rest of the body may still come: this connection is done.
            let mut res = error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return res;
        }
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

/// `GET /api/users/{id}/dialogs`: that user's dialogs, as the `dialogs`
/// frame lists them. Only for that user (`Authorization: Bearer` with their
/// token) or the app (`auth.api_key`): 401 otherwise.
pub(crate) async fn dialogs(node: &Node, user: &str, req: &Request<Incoming>) -> Response<Body> {
    let Ok(user) = super::query::path_decode(user).parse::<UserId>() else {
        return error(StatusCode::BAD_REQUEST, "bad_request");
    };
    let auth = &node.config().auth;
    let allowed = bearer(req.headers()).is_some_and(|given| {
        (!auth.api_key.is_empty() && same_key(given, &auth.api_key))
            || node
                .inner
                .verifier
                .verify(given)
                .is_ok_and(|who| who.id == user)
    });
    if !allowed {
        return unauthorized();
    }
    match node.inner.bus.dialogs(&user, DIALOGS_LIMIT).await {
        Ok(dialogs) => {
            let (dialogs, _, _) = fit(dialogs);
            json(StatusCode::OK, &j!({"user": user, "dialogs": dialogs}))
        }
        Err(e) => {
            tracing::warn!(error = %e, "dialogs unavailable");
            unavailable()
        }
    }
}
