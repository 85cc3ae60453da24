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
mod peer;
mod query;
mod reply;
mod upgrade;

use crate::node::Node;
use crate::outlet::Format;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use reply::{Body, json, response, status};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The chat page, embedded: no CDN, works offline.
const PAGE: &str = include_str!("../../assets/index.html");

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

/// The fixed routes; everything else is the room API or 404.
const FIXED: [&str; 6] = ["/", "/healthz", "/readyz", "/metrics", "/ws", "/text"];

async fn route(req: Request<Incoming>, node: &Node, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path.as_str() {
        "/" if get => response(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/healthz" if get => response(StatusCode::OK, "text/plain; charset=utf-8", "ok"),
        "/readyz" if get => readyz(node),
        "/metrics" if get => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            node.inner.metrics.render(),
        ),
        "/ws" if get => upgrade::upgrade(req, node, peer, Format::Json),
        "/text" if get => upgrade::upgrade(req, node, peer, Format::Text),
        _ if FIXED.contains(&path.as_str()) => status(StatusCode::METHOD_NOT_ALLOWED),
        _ => match path
            .strip_prefix("/api/rooms/")
            .and_then(|r| r.split_once('/'))
        {
            Some((room, "presence")) if get => api::presence(node, room, req.uri().query()).await,
            Some((room, "history")) if get => api::history(node, room, req.uri().query()).await,
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
