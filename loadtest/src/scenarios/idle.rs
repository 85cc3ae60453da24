//! `idle`: open N connections over the nodes and source addresses, hold
//! them, and report the connect rate, what stopped it, and each node's RSS
//! per connection. Split over processes when one fd limit is not enough.

use super::{check_nodes, open_all};
use crate::cli::IdleArgs;
use crate::conn::Ws;
use crate::procfs::{raise_nofile, rss_all};
use crate::report::{Counts, Report, bump, counts_cell, merge_counts, spawn_progress};
use crate::shard::{self, Children};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// What one process opened and saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdlePart {
    /// Sockets opened, per node (same order as --nodes).
    pub opened_per_node: Vec<u64>,
    /// Failures by cause.
    pub errors: Counts,
    /// Seconds the opening took.
    pub connect_secs: f64,
    /// Sockets the node closed while they were held, by reason.
    pub dropped_during_hold: Counts,
    /// This process's open-files limit (soft, hard) after raising it.
    pub nofile: (u64, u64),
}

/// The outcome of an idle run.
#[derive(Debug, Default, Serialize)]
pub struct IdleOutcome {
    pub asked: usize,
    pub opened: u64,
    pub procs: usize,
    pub connect_rate_per_sec: f64,
    pub errors: Counts,
    /// The limit that stopped the run, in words.
    pub stopped_by: String,
    pub dropped_during_hold: Counts,
    pub hold_secs: f64,
    pub node_rss_kib_before: Vec<u64>,
    pub node_rss_kib_held: Vec<u64>,
    pub node_rss_kib_after_close: Vec<u64>,
    /// (held − before) / sockets on that node, KiB.
    pub node_kib_per_connection: Vec<f64>,
    pub nofile: (u64, u64),
}

struct Held {
    part: IdlePart,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Option<String>>>,
}

/// Holds one socket until `stop`: reads (so pings are answered) and
/// returns why it ended early, if it did.
async fn hold(mut ws: Ws, stop: CancellationToken) -> Option<String> {
    // One registration for the task's life, on its own child token: polling
    // a fresh `cancelled()` per frame would lock the shared token each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            () = &mut cancelled => break,
            m = ws.next() => match m {
                Some(Ok(WsMessage::Close(c))) => {
                    return Some(format!("close {}", c.map_or(0, |c| u16::from(c.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("error: {e}")),
                None => return Some("ended".into()),
            },
        }
    }
    crate::conn::close(ws).await;
    None
}

async fn open_slice(args: &IdleArgs, index: usize, count: usize) -> Held {
    let nofile = raise_nofile();
    let range = shard::slice(args.connections, index, count);
    let stop = CancellationToken::new();
    let progress_stop = CancellationToken::new();
    let opened = Arc::new(AtomicU64::new(0));
    {
        let opened = opened.clone();
        spawn_progress(args.common.quiet, progress_stop.clone(), move |t| {
            format!("[idle t={t:.0}s] open={}", opened.load(Ordering::Relaxed))
        });
    }
    let n_nodes = args.common.nodes.len();
    let mut per_node = vec![0u64; n_nodes];
    let mut tasks = Vec::with_capacity(range.len());
    let room = args.room.clone();
    let query = move |i: usize| {
        if room.is_empty() {
            format!("name=idle-{i}")
        } else {
            format!("name=idle-{i}&room={room}")
        }
    };
    let o = open_all(
        &args.common,
        range.start,
        range.len(),
        query,
        opened,
        |i, ws| {
            per_node[i % n_nodes] += 1;
            tasks.push(tokio::spawn(hold(ws, stop.child_token())));
        },
    )
    .await;
    progress_stop.cancel();
    Held {
        part: IdlePart {
            opened_per_node: per_node,
            errors: o.errors,
            connect_secs: o.secs,
            dropped_during_hold: Counts::new(),
            nofile,
        },
        stop,
        tasks,
    }
}

async fn hold_and_close(mut held: Held, hold_for: Duration) -> IdlePart {
    tokio::time::sleep(hold_for).await;
    held.stop.cancel();
    for t in held.tasks {
        if let Ok(Some(reason)) = t.await {
            bump(&mut held.part.dropped_during_hold, reason);
        }
    }
    held.part
}

/// Runs `idle`: in this process, as one shard of a parent, or as the parent
/// of several shards. `None` for a shard (it reports to its parent).
pub async fn run(args: &IdleArgs) -> anyhow::Result<Option<IdleOutcome>> {
    check_nodes(&args.common)?;
    let procs = shard::procs_for(args.connections, args.shard.procs);
    if let Some(index) = args.shard.shard {
        let held = open_slice(args, index, procs).await;
        shard::ready(&held.part)?;
        shard::wait_go().await;
        let part = hold_and_close(held, args.hold).await;
        shard::result(&part)?;
        return Ok(None);
    }
    let pids = &args.common.pids;
    let before = rss_all(pids);
    let (parts, held_rss) = if procs <= 1 {
        let held = open_slice(args, 0, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held_rss = rss_all(pids);
        (vec![hold_and_close(held, args.hold).await], held_rss)
    } else {
        let mut children = Children::spawn(procs)?;
        let ready: Vec<IdlePart> = children.collect("READY", Duration::from_secs(600)).await?;
        let opened: u64 = ready.iter().flat_map(|p| &p.opened_per_node).sum();
        if !args.common.quiet {
            eprintln!("[idle] {procs} processes hold {opened} sockets");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held_rss = rss_all(pids);
        children.go().await?;
        let parts = children
            .collect("RESULT", args.hold + Duration::from_secs(60))
            .await?;
        children.finish().await;
        (parts, held_rss)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = IdleOutcome {
        asked: args.connections,
        procs: procs.max(1),
        hold_secs: args.hold.as_secs_f64(),
        node_rss_kib_before: before,
        node_rss_kib_held: held_rss,
        node_rss_kib_after_close: rss_all(pids),
        ..IdleOutcome::default()
    };
    let mut per_node = vec![0u64; args.common.nodes.len()];
    let mut secs: f64 = 0.0;
    for p in &parts {
        for (i, n) in p.opened_per_node.iter().enumerate() {
            per_node[i] += n;
        }
        merge_counts(&mut out.errors, &p.errors);
        merge_counts(&mut out.dropped_during_hold, &p.dropped_during_hold);
        secs = secs.max(p.connect_secs);
        out.nofile = p.nofile;
    }
    out.opened = per_node.iter().sum();
    out.connect_rate_per_sec = out.opened as f64 / secs.max(1e-9);
    out.stopped_by = super::Opened {
        ok: out.opened,
        errors: out.errors.clone(),
        secs,
    }
    .stopped_by();
    out.node_kib_per_connection = out
        .node_rss_kib_before
        .iter()
        .zip(&out.node_rss_kib_held)
        .zip(&per_node)
        .map(|((b, h), n)| h.saturating_sub(*b) as f64 / (*n).max(1) as f64)
        .collect();
    Ok(Some(out))
}

/// The summary of an idle outcome.
pub fn report(o: &IdleOutcome) -> Report {
    let mut r = Report::new("idle", o);
    r.row(
        "connections opened / asked",
        format!("{} / {}", o.opened, o.asked),
    )
    .row(
        "processes (fd limit soft/hard each)",
        format!("{} ({}/{})", o.procs, o.nofile.0, o.nofile.1),
    )
    .row("connect rate", format!("{:.0} /s", o.connect_rate_per_sec))
    .row("connect errors", counts_cell(&o.errors))
    .row("stopped by", &o.stopped_by)
    .row("dropped while held", counts_cell(&o.dropped_during_hold))
    .row("hold", format!("{:.0} s", o.hold_secs));
    if !o.node_rss_kib_before.is_empty() {
        r.row(
            "node RSS KiB before / held / after close",
            format!(
                "{:?} / {:?} / {:?}",
                o.node_rss_kib_before, o.node_rss_kib_held, o.node_rss_kib_after_close
            ),
        )
        .row(
            "node RSS per connection",
            o.node_kib_per_connection
                .iter()
                .map(|k| format!("{k:.2} KiB"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    r.ok = o.errors.is_empty() && o.dropped_during_hold.is_empty();
    r
}
