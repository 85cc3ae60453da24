//! `churn`: connections arriving at an open-loop rate; each opens, joins a
//! room, sends one message, waits for its ack and closes. Reports errors and
//! connect+join latency measured from the *intended* arrival time.

use super::check_nodes;
use crate::cli::ChurnArgs;
use crate::conn::{self, Target};
use crate::procfs::{CpuSnapshot, CpuUsage, raise_nofile};
use crate::report::{Counts, RateOf, Report, bump, counts_cell, spawn_progress};
use crate::stats::{Percentiles, Recorder};
use crate::wire::{self, Reply};
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// The outcome of a churn run.
#[derive(Debug, Default, Serialize)]
pub struct ChurnOutcome {
    pub offered_rate: f64,
    pub duration_secs: f64,
    pub arrivals: u64,
    /// Arrivals not started because --max-inflight were alive.
    pub skipped: u64,
    pub completed: u64,
    pub errors: Counts,
    /// Intended arrival → `joined` received.
    pub connect_join_ms: Percentiles,
    /// `send` written → `ack` received.
    pub ack_ms: Percentiles,
    pub cpu: CpuUsage,
}

#[derive(Debug)]
struct Shared {
    inflight: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Counts>,
    join: Recorder,
    ack: Recorder,
}

async fn one(i: usize, target: Target, room: String, intended: Instant, sh: Arc<Shared>) {
    let fail = |e: String| {
        sh.failed.fetch_add(1, Ordering::Relaxed);
        bump(
            &mut sh.errors.lock().unwrap_or_else(PoisonError::into_inner),
            e,
        );
    };
    let mut ws = match conn::open(&target, &format!("room={room}&name=c-{i}")).await {
        Ok(ws) => ws,
        Err(e) => return fail(e.label()),
    };
    sh.join.record(i, intended.elapsed().as_micros() as u64);
    let frame = format!(r#"{{"type":"send","room":"{room}","text":"churn {i}","ref":1}}"#);
    let sent_at = Instant::now();
    if let Err(e) = conn::send_text(&mut ws, frame).await {
        return fail(format!("send: {e}"));
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = ws.next().await {
            if let Ok(WsMessage::Text(t)) = m {
                match wire::parse_reply(&t) {
                    Reply::Ack(_) => return Ok(()),
                    Reply::Error(code, Some(_)) => return Err(format!("send error: {code}")),
                    _ => {}
                }
            }
        }
        Err("closed before ack".to_string())
    })
    .await
    .unwrap_or_else(|_| Err("no ack within 10 s".into()));
    match answer {
        Ok(()) => {
            sh.ack.record(i, sent_at.elapsed().as_micros() as u64);
            sh.completed.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => fail(e),
    }
    conn::close(ws).await;
}

/// Runs `churn`.
pub async fn run(args: &ChurnArgs) -> anyhow::Result<ChurnOutcome> {
    let common = &args.common;
    check_nodes(common)?;
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    raise_nofile();
    let sh = Arc::new(Shared {
        inflight: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(Counts::new()),
        join: Recorder::new(16),
        ack: Recorder::new(16),
    });
    let mut out = ChurnOutcome {
        offered_rate: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        ..ChurnOutcome::default()
    };
    let progress_stop = CancellationToken::new();
    let arrivals = Arc::new(AtomicU64::new(0));
    {
        let (sh, arrivals) = (sh.clone(), arrivals.clone());
        let mut rate = RateOf::default();
        spawn_progress(common.quiet, progress_stop.clone(), move |t| {
            format!(
                "[churn t={t:.0}s] arrivals={:.0}/s inflight={} completed={} failed={}",
                rate.per_sec(arrivals.load(Ordering::Relaxed)),
                sh.inflight.load(Ordering::Relaxed),
                sh.completed.load(Ordering::Relaxed),
                sh.failed.load(Ordering::Relaxed),
            )
        });
    }
    let cpu0 = CpuSnapshot::take(&common.pids);
    let start = Instant::now();
    let total = (args.rate * args.duration.as_secs_f64()).floor() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for j in 0..total {
        let intended = start + Duration::from_secs_f64(j as f64 / args.rate);
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        while tasks.try_join_next().is_some() {}
        arrivals.fetch_add(1, Ordering::Relaxed);
        if sh.inflight.load(Ordering::Relaxed) >= args.max_inflight as u64 {
            out.skipped += 1;
            continue;
        }
        let i = j as usize;
        let target = Target::pick(&common.nodes, common.sources, i);
        let room = format!("churn-{}", i % args.rooms.max(1));
        let sh2 = sh.clone();
        sh.inflight.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            one(i, target, room, intended, sh2.clone()).await;
            sh2.inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let drain = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    });
    if drain.await.is_err() {
        bump(&mut out.errors, "still running 30 s after the last arrival");
    }
    out.cpu = cpu0.usage(&CpuSnapshot::take(&common.pids));
    progress_stop.cancel();
    out.arrivals = total;
    out.completed = sh.completed.load(Ordering::Relaxed);
    let errs = sh
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    crate::report::merge_counts(&mut out.errors, &errs);
    out.connect_join_ms = Percentiles::of(&sh.join.merged());
    out.ack_ms = Percentiles::of(&sh.ack.merged());
    Ok(out)
}

/// The summary of a churn outcome.
pub fn report(o: &ChurnOutcome) -> Report {
    let mut r = Report::new("churn", o);
    r.row(
        "offered",
        format!(
            "{} connections/s for {:.0} s",
            o.offered_rate, o.duration_secs
        ),
    )
    .row(
        "arrivals / completed / skipped (max in flight)",
        format!("{} / {} / {}", o.arrivals, o.completed, o.skipped),
    )
    .row("errors", counts_cell(&o.errors))
    .row(
        "connect+join p50/p90/p99/p99.9/max",
        o.connect_join_ms.cell(),
    )
    .row("send→ack p50/p90/p99/p99.9/max", o.ack_ms.cell())
    .row(
        "load tool CPU",
        format!("{:.2} s", o.cpu.load_tool_cpu_secs),
    );
    if !o.cpu.node_cpu_secs.is_empty() {
        r.row("node CPU", format!("{:.2} s", o.cpu.nodes_cpu_secs));
    }
    r.ok = o.errors.is_empty() && o.skipped == 0;
    r
}
