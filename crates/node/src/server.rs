//! The node's one HTTP port (SPEC.md section 3), on hyper 1: the chat page,
//! the WebSocket upgrade, health, readiness, metrics and the room API.

use crate::outlet::{Outlet, Socket};
use crate::session::{Identity, Mode};
use crate::{Node, api, auth, session};
use banter_protocol::{FrameError, RoomId};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// The chat page, embedded: no CDN, works offline.
const PAGE: &str = include_str!("../assets/index.html");

pub(crate) type Body = Full<Bytes>;

/// Serves one TCP connection: HTTP/1.1 requests until it closes or upgrades.
pub(crate) async fn serve_connection(stream: TcpStream, peer: SocketAddr, node: Node) {
    let shutdown = node.inner.shutdown.clone();
    let svc_node = node.clone();
    let service = service_fn(move |req| {
        let node = svc_node.clone();
        async move { Ok::<_, Infallible>(route(req, &node, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config().handshake_timeout())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        result = conn => if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "http connection ended");
        },
        () = shutdown.cancelled() => {}
    }
}

async fn route(req: Request<Incoming>, node: &Node, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" if get => response(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/healthz" if get => response(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        "/readyz" if get => match node.readiness() {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({"ready": true})),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"ready": false, "reason": reason}),
            ),
        },
        "/metrics" if get => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            node.inner.metrics.render(),
        ),
        "/ws" if get => upgrade(req, node, peer, false),
        "/text" if get => upgrade(req, node, peer, true),
        _ => {
            let api = path
                .strip_prefix("/api/rooms/")
                .and_then(|r| r.split_once('/'));
            let method = req.method().clone();
            match (api, method) {
                (Some((room, "presence")), _) if get => api::presence(node, room).await,
                (Some((room, "history")), _) if get => {
                    api::history(node, room, req.uri().query()).await
                }
                (Some((room, "messages")), Method::POST) => {
                    let room = room.to_owned();
                    api::publish(node, &room, req).await
                }
                (Some((_, "presence" | "history" | "messages")), _) => {
                    status(StatusCode::METHOD_NOT_ALLOWED)
                }
                _ if matches!(
                    path.as_str(),
                    "/" | "/healthz" | "/readyz" | "/metrics" | "/ws" | "/text"
                ) =>
                {
                    status(StatusCode::METHOD_NOT_ALLOWED)
                }
                _ => status(StatusCode::NOT_FOUND),
            }
        }
    }
}

fn response(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = code;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

pub(crate) fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    response(code, "application/json", value.to_string())
}

fn status(code: StatusCode) -> Response<Body> {
    let reason = code.canonical_reason().unwrap_or("error");
    json(code, &serde_json::json!({ "error": reason }))
}

/// The query of `/ws`: only the keys Banter knows, percent-decoded.
#[derive(Debug, Default)]
struct WsQuery {
    name: Option<String>,
    room: Option<String>,
    token: Option<String>,
}

impl WsQuery {
    fn parse(query: Option<&str>) -> WsQuery {
        let mut q = WsQuery::default();
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "name" => q.name = Some(value),
                "room" => q.room = Some(value),
                "token" => q.token = Some(value),
                _ => {}
            }
        }
        q
    }
}

/// Decodes `%XX` and `+`; invalid escapes are kept as they are, and the
/// result is lossily made UTF-8 (a display name is validated afterwards).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a browser page from `origin` may open a socket on `host`.
fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true; // not a browser: Origin guards browsers' ambient credentials only
    };
    let origin = origin.trim_end_matches('/');
    if allowed.is_empty() {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        return host.is_some_and(|h| h.eq_ignore_ascii_case(authority));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn client_ip(
    peer: SocketAddr,
    headers: &hyper::HeaderMap,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    let mut ip = peer.ip();
    if !trusted.contains(&ip) {
        return ip;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<std::net::IpAddr>() {
            Ok(hop) if trusted.contains(&hop) => ip = hop,
            Ok(hop) => return hop,
            Err(_) => return ip,
        }
    }
    ip
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The WebSocket upgrade of `/ws` (or `/text`): checks, the 101, then the session task.
fn upgrade(
    mut req: Request<Incoming>,
    node: &Node,
    peer: SocketAddr,
    text: bool,
) -> Response<Body> {
    let config = node.config();
    if node.draining() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "draining"}),
        );
    }
    if node.inner.hub.connection_count() >= config.server.max_connections {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "too many connections"}),
        );
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let upgrade_ok = header_has_token(&req, header::CONNECTION, "upgrade")
        && header_has_token(&req, header::UPGRADE, "websocket");
    let (true, Some(key)) = (upgrade_ok, key) else {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "expected a WebSocket upgrade"}),
        );
    };
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut res = json(
            StatusCode::UPGRADE_REQUIRED,
            &serde_json::json!({"error": "WebSocket version 13 only"}),
        );
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if !origin_allowed(&config.server.allowed_origins, origin, host) {
        tracing::debug!(client = %client_ip(peer, req.headers(), &config.server.trusted_proxies), ?origin, "origin refused");
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "origin not allowed"}),
        );
    }

    let client = client_ip(peer, req.headers(), &config.server.trusted_proxies);
    let query = WsQuery::parse(req.uri().query());
    let identity = match (&query.token, config.auth.anonymous) {
        (Some(token), _) => match node.inner.verifier.verify(token) {
            Ok(user) => Identity::Known(user),
            Err(e) => {
                tracing::debug!(%client, error = %e, "token refused");
                return json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": "unauthorized"}),
                );
            }
        },
        (None, true) => Identity::Known(auth::guest(query.name.as_deref())),
        (None, false) if text => {
            return json(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"error": "a token is required"}),
            );
        }
        (None, false) => Identity::AwaitAuth,
    };
    let room = query.room.map(|r| r.parse::<RoomId>());
    let mode = if text {
        match room {
            Some(Ok(room)) => Mode::Text { room },
            _ => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "/text needs ?room= with a valid room"}),
                );
            }
        }
    } else {
        Mode::Json {
            join: room.map(|r| r.map_err(FrameError::from)),
        }
    };

    let ws_config = ws_config(config.limits.max_frame_bytes);
    let outbound_queue = config.limits.outbound_queue;
    let session_node = node.clone();
    // Only the upgrade handle goes into the session: the request's header
    // values are slices of hyper's 8 KiB read buffer, and holding the request
    // for the socket's lifetime would keep that buffer alive per socket.
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    node.inner.sessions.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        // Back to the bare TcpStream: no hyper wrapper on the hot path, and
        // the fan-out writes to it directly through the outlet.
        let (ws, outlet) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let outlet = Arc::new(Outlet::new(
                    parts.io.into_inner(),
                    outbound_queue,
                    text,
                    session_node.inner.metrics.fanout_seconds.clone(),
                ));
                let ws = WebSocketStream::from_partially_read(
                    Socket::new(outlet.clone()),
                    parts.read_buf.to_vec(),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                (ws, outlet)
            }
            Err(_) => {
                tracing::error!(%peer, "upgraded connection is not a TcpStream");
                return;
            }
        };
        tracing::debug!(%client, "socket open");
        session::run(ws, outlet, session_node, identity, mode).await;
    });

    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}

/// tungstenite's buffers, sized for chat. Its defaults (128 KiB read buffer,
/// allocated eagerly; 128 KiB write high-water mark; 64 MiB messages) cost
/// ≈136 KB of RSS per idle socket. A 512-byte read buffer (it grows for a
/// larger frame, up to the limit) costs ≈0.5 KB. Only the socket's own
/// frames (replies, pings, the close) pass through tungstenite, and none
/// waits in its write buffer: each goes straight to the outlet, which orders
/// it among the live messages (see [`crate::outlet`]).
/// Incoming messages and frames are capped at `limits.max_frame_bytes`
/// (close 1009 above it), which also caps how far the read buffer can grow.
/// Outgoing frames are not capped by that limit (a `joined` with many users
/// can be larger), only by `max_write_buffer_size`.
pub(crate) fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        .max_write_buffer_size(16 * 1024 * 1024)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
        .accept_unmasked_frames(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_percent_decoding() {
        let q = WsQuery::parse(Some("name=Ann%20B&room=lobby&x=1&token="));
        assert_eq!(q.name.as_deref(), Some("Ann B"));
        assert_eq!(q.room.as_deref(), Some("lobby"));
        assert_eq!(q.token.as_deref(), Some(""));
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%E6%97%A5"), "日");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted: Vec<std::net::IpAddr> =
            vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(
            client_ip(proxy, &h, &trusted).to_string(),
            "203.0.113.9",
            "right-most untrusted hop"
        );
        assert_eq!(
            client_ip(proxy, &h, &[]).to_string(),
            "10.0.0.1",
            "nobody trusted: the peer"
        );
        let stranger: SocketAddr = "198.51.100.7:1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &h, &trusted).to_string(),
            "198.51.100.7",
            "forged by a client"
        );
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(&none, None, Some("a:8080")));
        assert!(origin_allowed(&none, Some("http://a:8080"), Some("a:8080")));
        assert!(!origin_allowed(
            &none,
            Some("http://evil:8080"),
            Some("a:8080")
        ));
        let any = vec!["*".to_owned()];
        assert!(origin_allowed(&any, Some("http://evil"), Some("a")));
        let list = vec!["https://chat.example".to_owned()];
        assert!(origin_allowed(
            &list,
            Some("https://chat.example"),
            Some("x")
        ));
        assert!(!origin_allowed(
            &list,
            Some("https://other.example"),
            Some("x")
        ));
    }
}
