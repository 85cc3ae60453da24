//! The WebSocket upgrade of `/ws` and `/text`: who may come in, who they
//! are, what they speak; then the 101 and the socket's own task.

use super::connect::{ConnectHook, Verdict};
use super::peer::{client_ip, header_has_token, origin_allowed};
use super::query::WsQuery;
use super::reply::{Body, error};
use crate::auth;
use crate::conn::{self, Identity, Mode};
use crate::node::Node;
use crate::outlet::{Format, Outlet, Socket};
use banter_protocol::{CloseReason, FrameError, RoomId};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A refused upgrade: the status, and what the JSON body tells the client.
struct Refusal(StatusCode, &'static str);

impl Refusal {
    fn into_response(self) -> Response<Body> {
        let Refusal(code, what) = self;
        let mut res = error(code, what);
        if code == StatusCode::UPGRADE_REQUIRED {
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        res
    }
}

/// Upgrades `/ws` (`format` JSON) or `/text` (`format` Text), or says why not.
pub(crate) async fn upgrade(
    req: Request<Incoming>,
    node: &Node,
    peer: SocketAddr,
    format: Format,
) -> Response<Body> {
    try_upgrade(req, node, peer, format)
        .await
        .unwrap_or_else(Refusal::into_response)
}

async fn try_upgrade(
    mut req: Request<Incoming>,
    node: &Node,
    peer: SocketAddr,
    format: Format,
) -> Result<Response<Body>, Refusal> {
    let slot = admit(node)?;
    let key = handshake(&req)?;
    let client = client_ip(peer, req.headers(), &node.config().server.trusted_proxies);
    // A Pusher app's page is served from its own host, never the node's
    // (pusher-js connects to `wsHost`): the default "same host" rule would
    // refuse every browser, so only an explicit allow-list is applied there.
    // Its private and presence channels carry their own signed auth.
    let pusher_any_origin =
        format == Format::Pusher && node.config().server.allowed_origins.is_empty();
    if !pusher_any_origin {
        check_origin(&req, node, client)?;
    }
    let query = WsQuery::parse(req.uri().query());
    let (identity, mode) = if format == Format::Pusher {
        // Pusher sockets are anonymous: their channels carry the auth.
        let refusal = pusher_refusal(node, &req);
        (Identity::Known(auth::guest(None)), Mode::Pusher { refusal })
    } else {
        let identity = match (&node.inner.connect, &query.token) {
            (Some(hook), None) => app_session(hook, &req, client).await?,
            _ => identify(node, &query, format, client)?,
        };
        (identity, mode(query.room, format)?)
    };
    // Only the upgrade handle goes into the session: the request's header
    // values are slices of hyper's 8 KiB read buffer, and holding the request
    // for the socket's lifetime would keep that buffer alive per socket.
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    let session_node = node.clone();
    node.inner.sessions.spawn(async move {
        // Held until this task ends, however it ends.
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => open(upgraded, session_node, client, identity, mode, format).await,
            Err(e) => tracing::debug!(%client, error = %e, "upgrade failed"),
        }
    });
    Ok(switching_protocols(&key))
}

/// One socket counted in `NodeInner::sockets` (against
/// `server.max_connections`), from its admission until this is dropped:
/// with the refused upgrade, or at the end of the socket's task.
struct Slot(Node);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.inner.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the node takes another socket at all: not while draining, not
/// past `server.max_connections` sockets, counting those that wait for
/// their `auth` frame. Takes the socket's slot.
fn admit(node: &Node) -> Result<Slot, Refusal> {
    if node.draining() {
        return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, "draining"));
    }
    let max = node.config().server.max_connections;
    node.inner
        .sockets
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .map(|_| Slot(node.clone()))
        .map_err(|_| Refusal(StatusCode::SERVICE_UNAVAILABLE, "too many connections"))
}

/// The WebSocket handshake (RFC 6455 4.2.1): a GET over HTTP/1.1, an
/// upgrade to `websocket`, a key that is 16 bytes in base64, and version 13.
/// Returns the key.
fn handshake(req: &Request<Incoming>) -> Result<HeaderValue, Refusal> {
    if req.method() != Method::GET || req.version() != Version::HTTP_11 {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade is a GET over HTTP/1.1",
        ));
    }
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let upgrade = header_has_token(req, header::CONNECTION, "upgrade")
        && header_has_token(req, header::UPGRADE, "websocket");
    let (true, Some(key)) = (upgrade, key) else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade",
        ));
    };
    let nonce = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !nonce.is_ok_and(|n| n.len() == 16) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION);
    if version.map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 only",
        ));
    }
    Ok(key)
}

/// A browser page may open a socket only from an allowed origin
/// (`server.allowed_origins`).
fn check_origin(req: &Request<Incoming>, node: &Node, client: IpAddr) -> Result<(), Refusal> {
    let get = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let origin = get(header::ORIGIN);
    if origin_allowed(
        &node.config().server.allowed_origins,
        origin,
        get(header::HOST),
    ) {
        Ok(())
    } else {
        tracing::debug!(%client, ?origin, "origin refused");
        Err(Refusal(StatusCode::FORBIDDEN, "origin not allowed"))
    }
}

/// Who the socket belongs to: the `?token=`'s user, a guest, or (with
/// `auth.anonymous = false` and no token) whoever its `auth` frame names.
fn identify(
    node: &Node,
    query: &WsQuery,
    format: Format,
    client: IpAddr,
) -> Result<Identity, Refusal> {
    match (&query.token, node.config().auth.anonymous) {
        (Some(token), _) => match node.inner.verifier.verify(token) {
            Ok(user) => Ok(Identity::Known(user)),
            Err(e) => {
                tracing::debug!(%client, error = %e, "token refused");
                Err(Refusal(StatusCode::UNAUTHORIZED, "unauthorized"))
            }
        },
        (None, true) => Ok(Identity::Known(auth::guest(query.name.as_deref()))),
        // A plain-text client cannot send an `auth` frame.
        (None, false) if format == Format::Text => {
            Err(Refusal(StatusCode::UNAUTHORIZED, "a token is required"))
        }
        (None, false) => Ok(Identity::AwaitAuth),
    }
}

/// Who the app's session check (`auth.connect_url`) says the socket
/// belongs to; refused with 401 when the app refuses, 503 when it fails.
async fn app_session(
    hook: &ConnectHook,
    req: &Request<Incoming>,
    client: IpAddr,
) -> Result<Identity, Refusal> {
    match hook.check(req.uri().query(), req.headers()).await {
        Verdict::User(user) => Ok(Identity::Known(user)),
        Verdict::Refused => {
            tracing::debug!(%client, "the app refused the session");
            Err(Refusal(StatusCode::UNAUTHORIZED, "unauthorized"))
        }
        Verdict::Failed => Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session check is unavailable",
        )),
    }
}

/// Why a Pusher socket is closed as soon as it opens, if it is: an app key
/// that is not this node's, or a protocol version other than 5 to 7
/// (pusher-js speaks 7).
fn pusher_refusal(node: &Node, req: &Request<Incoming>) -> Option<CloseReason> {
    let key = req.uri().path().strip_prefix("/app/").unwrap_or("");
    if key != node.config().pusher.key {
        return Some(CloseReason::PusherUnknownApp);
    }
    let protocol = super::query::pairs(req.uri().query())
        .find(|(k, _)| *k == "protocol")
        .map(|(_, v)| v);
    match protocol.as_deref().and_then(|p| p.parse::<u8>().ok()) {
        Some(5..=7) => None,
        _ => Some(CloseReason::PusherProtocol),
    }
}

/// What the socket does first: `/text` needs its room; `/ws?room=` joins it.
fn mode(room: Option<String>, format: Format) -> Result<Mode, Refusal> {
    let room = room.map(|r| r.parse::<RoomId>());
    match format {
        Format::Text => match room {
            Some(Ok(room)) => Ok(Mode::Text { room }),
            _ => Err(Refusal(
                StatusCode::BAD_REQUEST,
                "/text needs ?room= with a valid room",
            )),
        },
        Format::Json => Ok(Mode::Json {
            join: room.map(|r| r.map_err(FrameError::from)),
        }),
        Format::Pusher => Ok(Mode::Pusher { refusal: None }),
    }
}

/// The 101 that completes the handshake for `key`.
fn switching_protocols(key: &HeaderValue) -> Response<Body> {
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

/// The upgraded connection becomes a socket: its outlet over the bare
/// `TcpStream` (no hyper wrapper on the hot path: the fan-out writes to it
/// directly), tungstenite over the outlet, then the socket's own task.
async fn open(
    upgraded: hyper::upgrade::Upgraded,
    node: Node,
    client: IpAddr,
    identity: Identity,
    mode: Mode,
    format: Format,
) {
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        tracing::error!(%client, "upgraded connection is not a TcpStream");
        return;
    };
    let Parts { io, read_buf, .. } = parts;
    // Copied, then dropped: what hyper read past the request is a slice of
    // its 8 KiB read buffer, which must not live as long as the socket.
    let leftover = read_buf.to_vec();
    drop(read_buf);
    let limits = &node.config().limits;
    let outlet = Arc::new(
        Outlet::new(
            io.into_inner(),
            limits.outbound_queue,
            format,
            node.inner.metrics.fanout_seconds.clone(),
        )
        .with_byte_limit(limits.outbound_bytes),
    );
    let ws = WebSocketStream::from_partially_read(
        Socket::new(outlet.clone()),
        leftover,
        Role::Server,
        Some(conn::ws_config(limits.max_frame_bytes)),
    )
    .await;
    tracing::debug!(%client, "socket open");
    conn::run(ws, outlet, node, identity, mode).await;
}
