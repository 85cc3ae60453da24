//! The scenarios, and what they share: opening many sockets at a bounded
//! concurrency and checking that every target is on this machine.

pub mod bigroom;
pub mod chaos;
pub mod churn;
pub mod fanout;
pub mod floor;
pub mod idle;
pub(crate) mod publish;
pub mod rooms;
mod tables;

pub use tables::{fanout_report, rooms_report};

use crate::cli::Common;
use crate::conn::{self, Target, Ws};
use crate::report::{Counts, bump};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Refuses any node that is not on the loopback network: this tool only
/// loads servers on this machine.
pub fn check_nodes(common: &Common) -> anyhow::Result<()> {
    anyhow::ensure!(!common.nodes.is_empty(), "--nodes is empty");
    for n in &common.nodes {
        anyhow::ensure!(
            n.ip().is_loopback() && n.is_ipv4(),
            "node {n} is not on 127.0.0.0/8: banter-load only targets this machine"
        );
    }
    anyhow::ensure!(
        common.pids.is_empty() || common.pids.len() == common.nodes.len(),
        "--pids must name one process per node (same order as --nodes)"
    );
    Ok(())
}

/// What opening a batch of sockets came to.
#[derive(Debug, Default)]
pub struct Opened {
    /// Sockets opened.
    pub ok: u64,
    /// Failures by cause.
    pub errors: Counts,
    /// Wall-clock seconds it took.
    pub secs: f64,
}

impl Opened {
    /// Connections per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }

    /// The limit that stopped the batch, in words.
    pub fn stopped_by(&self) -> String {
        match self.errors.iter().max_by_key(|(_, v)| **v) {
            None => "nothing: every connection opened".into(),
            Some((k, v)) => format!("{k} ({v} failures)"),
        }
    }
}

/// Opens connections `offset .. offset + count` (numbering picks node and
/// source address) with `query(i)`, at most `concurrency` at once, and hands
/// each open socket to `on_open`. `opened` counts successes as they come,
/// for progress lines.
pub async fn open_all(
    common: &Common,
    offset: usize,
    count: usize,
    query: impl Fn(usize) -> String,
    opened: Arc<AtomicU64>,
    on_open: impl FnMut(usize, Ws),
) -> Opened {
    let dial = |i: usize, target: Target| {
        let q = query(i);
        async move { conn::open(&target, &q).await }
    };
    open_all_with(common, offset, count, dial, opened, on_open).await
}

/// [`open_all`] with another way to open each socket (`dial`), e.g. the
/// Pusher protocol's.
pub async fn open_all_with<F>(
    common: &Common,
    offset: usize,
    count: usize,
    dial: impl Fn(usize, Target) -> F,
    opened: Arc<AtomicU64>,
    mut on_open: impl FnMut(usize, Ws),
) -> Opened
where
    F: std::future::Future<Output = Result<Ws, conn::ConnectError>>,
{
    let start = Instant::now();
    let mut out = Opened::default();
    let nodes = &common.nodes;
    let sources = common.sources;
    let dial = &dial;
    let mut results = futures_util::stream::iter(offset..offset + count)
        .map(|i| {
            let target = Target::pick(nodes, sources, i);
            async move { (i, dial(i, target).await) }
        })
        .buffer_unordered(common.concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(ws) => {
                out.ok += 1;
                opened.fetch_add(1, Ordering::Relaxed);
                on_open(i, ws);
            }
            Err(e) => bump(&mut out.errors, e.label()),
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out
}
