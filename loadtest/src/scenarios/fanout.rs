//! `fanout` (and `smoke`): S subscribers in one room over the nodes, P
//! publishers on one node at an open-loop rate. Measures deliveries per
//! second, end-to-end latency from the *intended* send time, and per
//! publisher, per subscriber: lost, duplicated and out-of-order messages.

use super::publish::{self, Job, PubCounters, PubStats, Schedule};
use super::{Opened, check_nodes, open_all, open_all_with};
use crate::cli::{Common, FanoutArgs, Proto};
use crate::conn::Ws;
use crate::procfs::{CpuSnapshot, CpuUsage, raise_nofile, rss_all};
use crate::report::{Counts, RateOf, bump, merge_counts, spawn_progress};
use crate::stats::{Percentiles, Recorder, SeqSet, Tracker, new_histogram};
use crate::wire;
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// What subscriber tasks share.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Measured window, µs since the epoch (`u64::MAX` until known).
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    delivered: AtomicU64,
    latency: Recorder,
    /// Pusher event frames instead of Banter `message` frames.
    pusher: bool,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubStats {
    track: Tracker,
    in_window: u64,
    other_frames: u64,
    closed: Option<String>,
}

/// The outcome of a fan-out run.
#[derive(Debug, Default, Serialize)]
pub struct FanoutOutcome {
    /// Subscribers asked for / connected.
    pub subscribers: usize,
    pub subscribers_connected: u64,
    /// Publishers asked for / connected.
    pub publishers: usize,
    pub publishers_connected: u64,
    /// Offered rate, messages/s, all publishers together.
    pub offered_rate: f64,
    /// Text size in bytes.
    pub size: usize,
    pub warmup_secs: f64,
    pub window_secs: f64,
    /// Connection failures by cause.
    pub connect_errors: Counts,
    pub connect_rate_per_sec: f64,
    /// Frames written by the publishers / acked by the nodes.
    pub sent: u64,
    pub acked: u64,
    /// `error` answers to `send`, by code.
    pub publish_errors: Counts,
    /// Due messages the tool could not queue (its own backlog was full).
    pub tool_dropped: u64,
    /// Messages delivered to subscribers, whole run / inside the window.
    pub deliveries_total: u64,
    pub deliveries_in_window: u64,
    pub deliveries_per_sec: f64,
    /// Acked messages some subscriber never received (summed over subscribers).
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Received, but the publisher never saw an ack for it.
    pub received_unacked: u64,
    /// Sockets that ended before the run did, by reason.
    pub closed_early: Counts,
    /// End-to-end latency (intended send → received), messages sent inside the window.
    pub latency: Percentiles,
    /// Intended send → ack.
    pub ack_latency: Percentiles,
    /// Intended → actual write: the tool's own delay.
    pub send_lag: Percentiles,
    /// CPU over the window.
    pub cpu: CpuUsage,
    /// The load tool's CPU µs per delivered message.
    pub load_tool_us_per_delivery: f64,
    /// Deliveries per CPU-second of all node processes (needs --pids).
    pub deliveries_per_node_cpu_sec: Option<f64>,
    /// Node RSS in KiB, before connecting and after the run (needs --pids).
    pub node_rss_kib_before: Vec<u64>,
    pub node_rss_kib_after: Vec<u64>,
    /// The open-files limit this process ran with.
    pub nofile_limit: u64,
}

impl FanoutOutcome {
    /// True when nothing was lost, duplicated or reordered, every socket
    /// lasted, and messages did flow.
    pub fn clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.closed_early.is_empty()
            && self.connect_errors.is_empty()
            && self.acked > 0
            && self.deliveries_total > 0
    }
}

async fn subscriber(idx: usize, mut ws: Ws, sh: Arc<Shared>, stop: CancellationToken) -> SubStats {
    let mut st = SubStats::default();
    // One registration for the task's life, on its own child token: polling
    // a fresh `cancelled()` per frame would lock the shared token each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            biased;
            m = ws.next() => m,
            () = &mut cancelled => break,
        };
        match msg {
            Some(Ok(WsMessage::Text(t))) => {
                let stamp = if sh.pusher {
                    crate::pusher::parse_event(&t)
                } else {
                    wire::parse_message(&t)
                };
                let Some(stamp) = stamp else {
                    st.other_frames += 1;
                    continue;
                };
                let now_us = sh.epoch.elapsed().as_micros() as u64;
                sh.delivered.fetch_add(1, Ordering::Relaxed);
                if !st.track.on_message(stamp.publisher as usize, stamp.seq) {
                    continue;
                }
                let (ws_us, we_us) = (
                    sh.window_start_us.load(Ordering::Relaxed),
                    sh.window_end_us.load(Ordering::Relaxed),
                );
                if (ws_us..we_us).contains(&now_us) {
                    st.in_window += 1;
                }
                if (ws_us..we_us).contains(&stamp.t_us) {
                    sh.latency.record(idx, now_us.saturating_sub(stamp.t_us));
                }
            }
            Some(Ok(WsMessage::Close(c))) => {
                st.closed = Some(format!("close {}", c.map_or(0, |c| u16::from(c.code))));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                st.closed = Some(format!("error: {e}"));
                break;
            }
            None => {
                st.closed = Some("ended".into());
                break;
            }
        }
    }
    if st.closed.is_none() {
        crate::conn::close(ws).await;
    }
    st
}

/// Runs the fan-out scenario.
pub async fn run(args: &FanoutArgs) -> anyhow::Result<FanoutOutcome> {
    let common: &Common = &args.common;
    check_nodes(common)?;
    anyhow::ensure!(args.publishers >= 1, "--publishers must be at least 1");
    anyhow::ensure!(args.rate > 0.0, "--rate must be positive");
    let pub_node = args.publisher_node.unwrap_or(common.nodes.len() - 1);
    anyhow::ensure!(
        pub_node < common.nodes.len(),
        "--publisher-node out of range"
    );
    let (nofile, _) = raise_nofile();

    let mut out = FanoutOutcome {
        subscribers: args.subscribers,
        publishers: args.publishers,
        offered_rate: args.rate,
        size: args.size,
        warmup_secs: args.warmup.as_secs_f64(),
        window_secs: args.duration.as_secs_f64(),
        nofile_limit: nofile,
        node_rss_kib_before: rss_all(&common.pids),
        ..FanoutOutcome::default()
    };
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        window_start_us: AtomicU64::new(u64::MAX),
        window_end_us: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        latency: Recorder::new(32),
        pusher: args.pusher.proto == Proto::Pusher,
    });
    let counters = Arc::new(PubCounters::default());
    let stop = CancellationToken::new();
    let progress_stop = CancellationToken::new();
    let opened = Arc::new(AtomicU64::new(0));
    {
        let (sh, counters, opened) = (sh.clone(), counters.clone(), opened.clone());
        let (mut sent_rate, mut del_rate) = (RateOf::default(), RateOf::default());
        spawn_progress(common.quiet, progress_stop.clone(), move |t| {
            format!(
                "[fanout t={t:.0}s] conns={} sent={:.0}/s delivered={:.0}/s answered={} errors={} tool_dropped={}",
                opened.load(Ordering::Relaxed),
                sent_rate.per_sec(counters.sent.load(Ordering::Relaxed)),
                del_rate.per_sec(sh.delivered.load(Ordering::Relaxed)),
                counters.answered.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed),
                counters.tool_dropped.load(Ordering::Relaxed),
            )
        });
    }

    // Subscribers, round-robin over the nodes.
    let room = &args.room;
    let app = crate::pusher::App {
        id: args.pusher.pusher_app_id.clone(),
        key: args.pusher.pusher_key.clone(),
        secret: args.pusher.pusher_secret.clone(),
    };
    let mut subs: Vec<JoinHandle<SubStats>> = Vec::with_capacity(args.subscribers);
    let on_sub = |i, ws| {
        subs.push(tokio::spawn(subscriber(
            i,
            ws,
            sh.clone(),
            stop.child_token(),
        )))
    };
    let sub_open: Opened = if sh.pusher {
        let dial = |_, target: crate::conn::Target| {
            let app = app.clone();
            async move { crate::pusher::open(&target, &app, room).await }
        };
        open_all_with(common, 0, args.subscribers, dial, opened.clone(), on_sub).await
    } else {
        open_all(
            common,
            0,
            args.subscribers,
            |i| format!("room={room}&name=sub-{i}"),
            opened.clone(),
            on_sub,
        )
        .await
    };

    // Publishers, all on one node.
    let mut pub_common = common.clone();
    pub_common.nodes = vec![common.nodes[pub_node]];
    let mut pub_sockets: Vec<(usize, Ws)> = Vec::new();
    let pub_open = if sh.pusher {
        // HTTP publishers: nothing to open ahead.
        Opened {
            ok: args.publishers as u64,
            ..Opened::default()
        }
    } else {
        open_all(
            &pub_common,
            args.subscribers,
            args.publishers,
            |i| format!("room={room}&name=pub-{}", i - args.subscribers),
            opened.clone(),
            |i, ws| pub_sockets.push((i - args.subscribers, ws)),
        )
        .await
    };
    out.subscribers_connected = sub_open.ok;
    out.publishers_connected = pub_open.ok;
    out.connect_rate_per_sec = sub_open.rate();
    merge_counts(&mut out.connect_errors, &sub_open.errors);
    merge_counts(&mut out.connect_errors, &pub_open.errors);
    anyhow::ensure!(
        sh.pusher || !pub_sockets.is_empty(),
        "no publisher could connect: {}",
        pub_open.stopped_by()
    );
    pub_sockets.sort_by_key(|(i, _)| *i);

    // Let presence traffic from the joins settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_us = sh.epoch.elapsed().as_micros() as u64 + 50_000;
    let warmup_us = args.warmup.as_micros() as u64;
    let window_us = args.duration.as_micros() as u64;
    sh.window_start_us
        .store(start_us + warmup_us, Ordering::Relaxed);
    sh.window_end_us
        .store(start_us + warmup_us + window_us, Ordering::Relaxed);

    let mut queues = Vec::new();
    let mut pubs: Vec<JoinHandle<PubStats>> = Vec::new();
    // Cancelled when the schedule ends: a Pusher publisher, one trigger at
    // a time, may be far behind it, and must not go on taking jobs while
    // the drain counts what it expects.
    let taking = CancellationToken::new();
    if sh.pusher {
        for n in 0..args.publishers {
            let (tx, rx) = tokio::sync::mpsc::channel::<Job>(1 << 16);
            queues.push(tx);
            pubs.push(tokio::spawn(crate::pusher::publisher(
                n as u32,
                common.nodes[pub_node],
                app.clone(),
                rx,
                room.clone(),
                args.size,
                sh.epoch,
                counters.clone(),
                stop.child_token(),
                taking.clone(),
            )));
        }
    }
    for (n, (_, ws)) in pub_sockets.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(1 << 16);
        queues.push(tx);
        pubs.push(tokio::spawn(publish::publisher(
            n as u32,
            ws,
            rx,
            room.clone(),
            args.size,
            sh.epoch,
            counters.clone(),
            stop.child_token(),
        )));
    }
    let abort = Arc::new(AtomicBool::new(false));
    let pacer = publish::spawn_pacer(
        Schedule {
            epoch: sh.epoch,
            start_us,
            rate: args.rate,
            span: args.warmup + args.duration,
        },
        queues,
        counters.clone(),
        abort.clone(),
    );

    let at = |us: u64| tokio::time::Instant::from_std(sh.epoch + Duration::from_micros(us));
    tokio::time::sleep_until(at(start_us + warmup_us)).await;
    let cpu0 = CpuSnapshot::take(&common.pids);
    tokio::time::sleep_until(at(start_us + warmup_us + window_us)).await;
    let cpu1 = CpuSnapshot::take(&common.pids);
    out.cpu = cpu0.usage(&cpu1);
    let pacer_done = tokio::task::spawn_blocking(move || pacer.join().is_ok());
    let _ = tokio::time::timeout(Duration::from_secs(5), pacer_done).await;
    abort.store(true, Ordering::Relaxed);
    taking.cancel();

    // Drain: every sent frame answered, then every acked message delivered
    // (or nothing new for a second), bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    // Every frame sent answered (and, for good measure, none sent for 100 ms).
    let sent = || counters.sent.load(Ordering::Relaxed);
    let answered = || counters.answered.load(Ordering::Relaxed);
    let (mut last_sent, mut settled) = (u64::MAX, 0);
    while Instant::now() < deadline && settled < 5 {
        let now_sent = sent();
        settled = if answered() >= now_sent && now_sent == last_sent {
            settled + 1
        } else {
            0
        };
        last_sent = now_sent;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected = answered() * sub_open.ok;
    // Deliveries may still be on their way (a saturated machine runs
    // seconds behind): wait while they keep coming, up to a minute more,
    // so that what the run counts lost did not arrive at all.
    let deadline = deadline.max(Instant::now() + Duration::from_secs(60));
    let (mut last, mut still) = (u64::MAX, 0);
    while Instant::now() < deadline {
        let d = sh.delivered.load(Ordering::Relaxed);
        if d >= expected {
            break;
        }
        still = if d == last { still + 1 } else { 0 };
        if still >= 50 {
            break;
        }
        last = d;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    progress_stop.cancel();

    let mut acked_sets: Vec<SeqSet> = Vec::new();
    let (mut ack_h, mut lag_h) = (new_histogram(), new_histogram());
    for p in pubs {
        let st = p.await?;
        out.sent += st.sent;
        out.acked += st.acked.len();
        merge_counts(&mut out.publish_errors, &st.errors);
        let _ = ack_h.add(&st.ack_latency);
        let _ = lag_h.add(&st.send_lag);
        if let Some(c) = st.closed {
            bump(&mut out.closed_early, format!("publisher: {c}"));
        }
        acked_sets.push(st.acked);
    }
    for s in subs {
        let st = s.await?;
        out.deliveries_total += st.track.received + st.track.duplicates;
        out.deliveries_in_window += st.in_window;
        out.duplicates += st.track.duplicates;
        out.out_of_order += st.track.out_of_order;
        out.lost += st.track.lost(&acked_sets);
        out.received_unacked += st.track.unacked(&acked_sets);
        if let Some(c) = st.closed {
            bump(&mut out.closed_early, format!("subscriber: {c}"));
        }
    }
    out.tool_dropped = counters.tool_dropped.load(Ordering::Relaxed);
    out.latency = Percentiles::of(&sh.latency.merged());
    out.ack_latency = Percentiles::of(&ack_h);
    out.send_lag = Percentiles::of(&lag_h);
    out.deliveries_per_sec = out.deliveries_in_window as f64 / out.cpu.wall_secs.max(1e-9);
    out.load_tool_us_per_delivery =
        out.cpu.load_tool_cpu_secs * 1e6 / (out.deliveries_in_window.max(1) as f64);
    if !common.pids.is_empty() && out.cpu.nodes_cpu_secs > 0.0 {
        out.deliveries_per_node_cpu_sec =
            Some(out.deliveries_in_window as f64 / out.cpu.nodes_cpu_secs);
    }
    out.node_rss_kib_after = rss_all(&common.pids);
    Ok(out)
}
