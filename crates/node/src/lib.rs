//! The Banter relay node: accepts WebSocket clients, publishes what they say
//! to the bus, and fans what the bus carries out to its local sockets.
//!
//! # Layout
//!
//! The flow runs one way: [`http`] lets a client in, [`conn`] drives its
//! socket, [`hub`] knows who is in which room, [`outlet`] puts bytes on the
//! wire. The bus's traffic enters at [`fanout`] and meets the same hub.
//!
//! - this file: [`run`]: the accept loop and the drain.
//! - [`node`]: the [`Node`] handle everything shares, built on Redis or memory.
//! - `http/`: the one HTTP port: routes, the WebSocket upgrade (who may come
//!   in, who they are, what they speak), the room API, replies.
//! - `conn/`: one socket from upgrade to close: the loop, the session and
//!   what each frame does, the rate bucket, the rules for texts and requests.
//! - `hub/`: the local rooms and users and their sockets; joining and leaving
//!   touch bus subscriptions and presence here only.
//! - `fanout`: the node's one subscriber task: bus inbox → one [`outlet`]
//!   delivery per message → the hub's sockets.
//! - `outlet/`: one socket's write side: the bounded queue, the hold during a
//!   reply, the recovery floors, the kick, each wire format encoded once.
//! - `presence`: presence as members see it: changes merged into diffs,
//!   snapshots.
//! - `housekeeping`: the periodic task (presence refresh, stuck writes,
//!   bus metrics).
//! - [`config`]: the configuration (defaults < TOML < env < flags), validated.
//! - [`metrics`]: every metric, one place. `auth`: tokens and guests.
//!   `clock`: timestamps and random ids.
//!
//! [`run`] drives a [`Node`] on a listener until its shutdown token fires,
//! then drains: readiness turns 503, every client gets close 1001, presence
//! entries are removed, all within `server.drain_timeout_ms`.

mod auth;
mod clock;
pub mod config;
mod conn;
mod fanout;
mod housekeeping;
mod http;
mod hub;
pub mod metrics;
mod node;
mod outlet;
mod presence;
mod pusher;

pub use clock::random_id;
pub use node::{Node, NodeError};

use banter_protocol::CloseReason;
use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// After a failed `accept` (out of file descriptors, most likely), wait this
/// long before the next, rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts HTTP connections on `listener` for `node` until `until` is done;
/// returns its outcome.
async fn accept<T>(listener: &TcpListener, node: &Node, until: impl Future<Output = T>) -> T {
    tokio::pin!(until);
    loop {
        tokio::select! {
            out = &mut until => return out,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(http::serve_connection(stream, peer, node.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves `node` on `listener` until `shutdown` is cancelled, then drains
/// (see the crate docs) and returns.
pub async fn run(
    listener: TcpListener,
    node: Node,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let inbox = node
        .inner
        .inbox
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .ok_or(NodeError::AlreadyRunning)?;
    let inner = &node.inner;
    let background = CancellationToken::new();
    let config = node.config();
    let fanout = fanout::Fanout {
        hub: inner.hub.clone(),
        metrics: inner.metrics.clone(),
        presence: inner.presence.clone(),
        diffs: presence::Diffs::new(config.diff_interval(), config.presence.events_max_members),
        list_limit: config.presence.list_limit,
    };
    let fanout = tokio::spawn(fanout::run(inbox, fanout));
    let housekeeping = tokio::spawn(housekeeping::run(node.clone(), background.clone()));
    let tallies = config
        .pusher
        .enabled()
        .then(|| tokio::spawn(pusher::tally::run(node.clone(), background.clone())));
    tracing::info!(node = %node.id(), addr = %listener.local_addr()?, "serving");

    accept(&listener, &node, shutdown.cancelled()).await;

    tracing::info!(node = %node.id(), sessions = inner.hub.connection_count(), "draining");
    inner.draining.store(true, Ordering::Relaxed);
    inner.shutdown.cancel();
    inner.hub.kick_all(CloseReason::ShuttingDown);
    inner.sessions.close();
    // Still accepting: `/readyz` answers 503 (and upgrades are refused)
    // until the process is gone, as load balancers expect.
    let drained = tokio::time::timeout(node.config().drain_timeout(), inner.sessions.wait());
    if accept(&listener, &node, drained).await.is_err() {
        tracing::warn!(
            left = inner.sessions.len(),
            "drain timeout: closing the rest abruptly"
        );
    }
    drop(listener);
    inner.stopped.cancel();
    background.cancel();
    let _ = housekeeping.await;
    if let Some(tallies) = tallies {
        let _ = tallies.await;
    }
    fanout.abort();
    tracing::info!(node = %node.id(), "stopped");
    Ok(())
}
