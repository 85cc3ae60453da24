//! The node's one HTTP port, on hyper 1: the chat page, the WebSocket
//! upgrades, health, readiness, metrics and the room API. This folder
//! decides who gets in; [`crate::conn`] drives a socket once it is in.
//!
//! - this file: one TCP connection's HTTP/1.1 requests, and the route table.
//! - `upgrade`: `/ws` and `/text`: the checks, the 101, the socket's task.
//! - `api`: the room API under `/api/rooms/`.
//! - `peer`: the client's address, its origin, upgrade headers.
//! - `query`: query strings; `reply`: the answers.

mod api;
pub(crate) mod connect;
mod peer;
pub(crate) mod query;
pub(crate) mod reply;
mod upgrade;

use crate::node::Node;
use crate::outlet::Format;
use base64::Engine;
use hyper::HeaderMap;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use reply::{Body, json, response, status};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::LazyLock;
use tokio::net::TcpStream;

/// The chat page, embedded: no CDN, works offline.
const PAGE: &str = include_str!("../../assets/index.html");

/// The page's Content-Security-Policy but for `connect-src` (which names the
/// request's host): only the page's own inline script and styles, by their
/// hashes, may run; nothing may frame it. Computed once, from [`PAGE`].
static PAGE_POLICY: LazyLock<String> = LazyLock::new(|| page_policy(PAGE));

/// Serves one TCP connection: HTTP/1.1 requests until it closes or
/// upgrades, or the node's drain is over (during the drain it answers, so
/// load balancers read `/readyz`'s 503 instead of a refused connection).
pub(crate) async fn serve_connection(stream: TcpStream, peer: SocketAddr, node: Node) {
    let stopped = node.inner.stopped.clone();
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
        () = stopped.cancelled() => {}
    }
}

/// Whether the Pusher front door is on (`pusher.key` set).
fn pusher_on(node: &Node) -> bool {
    node.config().pusher.enabled()
}

/// The fixed routes; everything else is the room API or 404.
const FIXED: [&str; 6] = ["/", "/healthz", "/readyz", "/metrics", "/ws", "/text"];

async fn route(req: Request<Incoming>, node: &Node, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" if get => page(req.headers()),
        "/healthz" if get => response(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        "/readyz" if get => readyz(node),
        "/metrics" if get => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            node.inner.metrics.render(),
        ),
        "/ws" if get => upgrade::upgrade(req, node, peer, Format::Json).await,
        "/text" if get => upgrade::upgrade(req, node, peer, Format::Text).await,
        _ if FIXED.contains(&path.as_str()) => status(StatusCode::METHOD_NOT_ALLOWED),
        p if p.starts_with("/app/") && pusher_on(node) => {
            if get {
                upgrade::upgrade(req, node, peer, Format::Pusher).await
            } else {
                status(StatusCode::METHOD_NOT_ALLOWED)
            }
        }
        p if p.starts_with("/apps/") && pusher_on(node) => {
            crate::pusher::api::route(node, req).await
        }
        _ if path.starts_with("/api/users/") => match path
            .strip_prefix("/api/users/")
            .and_then(|r| r.split_once('/'))
        {
            Some((user, "dialogs")) if get => api::dialogs(node, user, &req).await,
            Some((_, "dialogs")) => status(StatusCode::METHOD_NOT_ALLOWED),
            _ => status(StatusCode::NOT_FOUND),
        },
        _ => match path
            .strip_prefix("/api/rooms/")
            .and_then(|r| r.split_once('/'))
        {
            Some((room, "presence")) if get => api::presence(node, room, &req).await,
            Some((room, "history")) if get => api::history(node, room, &req).await,
            Some((room, "messages")) if req.method() == Method::POST => {
                let room = room.to_owned();
                api::publish(node, &room, req).await
            }
            Some((_, "presence" | "history" | "messages")) => {
                status(StatusCode::METHOD_NOT_ALLOWED)
            }
            _ => status(StatusCode::NOT_FOUND),
        },
    }
}

/// `GET /readyz`: 200 while the bus is up and the node is not draining.
fn readyz(node: &Node) -> Response<Body> {
    match node.readiness() {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"ready": true})),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "reason": reason}),
        ),
    }
}

/// `GET /`: the page, with its policy (see [`PAGE_POLICY`]), unframeable,
/// and sending no referrer (its URL may hold `?token=`).
fn page(headers: &HeaderMap) -> Response<Body> {
    let mut res = response(StatusCode::OK, "text/html; charset=utf-8", PAGE);
    // The page opens its socket on its own host: `'self'` covers that in
    // current browsers, the explicit ws/wss sources in older ones.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| plain_authority(h));
    let connect = match host {
        Some(h) => format!("connect-src 'self' ws://{h} wss://{h}"),
        None => "connect-src 'self'".to_owned(),
    };
    let headers = res.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&format!("{}; {connect}", *PAGE_POLICY)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// Whether `host` is a bare `host[:port]` that can go into a policy as is.
fn plain_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The policy of `page` (see [`PAGE_POLICY`]): `'sha256-...'` sources for
/// each inline `<script>` and `<style>` block and each `style="..."`
/// attribute, and `'none'` for everything the page does not use.
fn page_policy(page: &str) -> String {
    let scripts = sources(blocks(page, "script"));
    let styles = sources(blocks(page, "style"));
    let attributes = sources(attributes(page, " style=\""));
    let script_src = if scripts.is_empty() {
        "'none'".to_owned()
    } else {
        scripts
    };
    let mut style_src = styles;
    if !attributes.is_empty() {
        style_src = format!("{style_src} 'unsafe-hashes' {attributes}");
    }
    let style_src = if style_src.is_empty() {
        "'none'".to_owned()
    } else {
        style_src
    };
    format!(
        "default-src 'none'; script-src {script_src}; style-src {}; img-src data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        style_src.trim()
    )
}

/// The hash sources of `texts`, space-separated. Browsers hash the text as
/// parsed, with line breaks normalised to `\n`.
fn sources<'a>(texts: impl Iterator<Item = &'a str>) -> String {
    texts
        .map(|text| {
            let text = text.replace("\r\n", "\n").replace('\r', "\n");
            let digest = Sha256::digest(text.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The contents of every `<tag ...>...</tag>` block of `page`.
fn blocks<'a>(page: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut rest = page;
    std::iter::from_fn(move || {
        loop {
            let at = rest.find(&open)?;
            let after = &rest[at + open.len()..];
            // `<styles>` or `<scripted>` are other tags.
            if !after.starts_with(['>', ' ', '\t', '\n']) {
                rest = after;
                continue;
            }
            let body = &after[after.find('>')? + 1..];
            let end = body.find(&close)?;
            rest = &body[end + close.len()..];
            return Some(&body[..end]);
        }
    })
}

/// The values of every `name"...."` attribute of `page` (`name` ends in `="`).
fn attributes<'a>(page: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> {
    let mut rest = page;
    std::iter::from_fn(move || {
        let at = rest.find(name)?;
        let value = &rest[at + name.len()..];
        let end = value.find('"')?;
        rest = &value[end..];
        Some(&value[..end])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_every_inline_block() {
        let page = "<style>a{}</style><p style=\"x:1\"><script>go()</script><script >b()</script>";
        let policy = page_policy(page);
        let hash = |s: &str| sources(std::iter::once(s));
        assert!(
            policy.contains(&format!("script-src {} {};", hash("go()"), hash("b()"))),
            "{policy}"
        );
        assert!(
            policy.contains(&format!(
                "style-src {} 'unsafe-hashes' {};",
                hash("a{}"),
                hash("x:1")
            )),
            "{policy}"
        );
        assert!(page_policy("<p>").contains("script-src 'none'; style-src 'none';"));
        let served = page_policy(PAGE);
        assert!(!served.contains("unsafe-inline"), "{served}");
        assert!(plain_authority("chat.example.com:8443"));
        assert!(plain_authority("[::1]:80"));
        assert!(!plain_authority("a; script-src *"));
    }
}
