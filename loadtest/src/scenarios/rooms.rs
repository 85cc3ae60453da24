//! `rooms`: the chat-app shape. Many small rooms, members spread over the
//! nodes, every member sending one message per interval (open loop, phases
//! spread evenly) and receiving its room's messages. Same report as fanout.
//! Rooms are disjoint, so the run splits over processes by room.

use super::{check_nodes, open_all};
use crate::cli::RoomsArgs;
use crate::conn::Ws;
use crate::procfs::{CpuSnapshot, CpuUsage, raise_nofile, self_cpu_seconds};
use crate::report::{Counts, RateOf, bump, merge_counts, spawn_progress};
use crate::shard::{self, Children};
use crate::stats::{Percentiles, Recorder, SeqSet, Tracker, add_pairs, new_histogram, to_pairs};
use crate::wire::{self, Reply, Stamp};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    start_us: AtomicU64,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    delivered: AtomicU64,
    sent: AtomicU64,
    /// `ack`s and `error`s with a `ref` received.
    answered: AtomicU64,
    latency: Recorder,
    ack_latency: Recorder,
    go: CancellationToken,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct MemberStats {
    /// Its number in the room (the `publisher` of its stamps).
    slot: u32,
    track: Tracker,
    acked: SeqSet,
    sent: u64,
    in_window: u64,
    errors: Counts,
    closed: Option<String>,
}

/// What one process measured (summed over its rooms).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomsPart {
    pub connected: u64,
    pub connect_errors: Counts,
    pub connect_secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub publish_errors: Counts,
    pub deliveries_total: u64,
    pub deliveries_in_window: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub received_unacked: u64,
    pub closed_early: Counts,
    /// Histograms as (µs, count) pairs, for the parent to merge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ack_latency: Vec<(u64, u64)>,
    pub tool_cpu_secs: f64,
}

/// The outcome of a rooms run.
#[derive(Debug, Default, Serialize)]
pub struct RoomsOutcome {
    pub rooms: usize,
    pub members: usize,
    pub interval_secs: f64,
    pub offered_rate: f64,
    pub procs: usize,
    #[serde(flatten)]
    pub totals: RoomsPart,
    pub connect_rate_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub latency_ms: Percentiles,
    pub ack_latency_ms: Percentiles,
    pub cpu: CpuUsage,
    pub load_tool_us_per_delivery: f64,
    pub deliveries_per_node_cpu_sec: Option<f64>,
}

#[allow(clippy::too_many_arguments)]
async fn member(
    idx: usize,
    slot: u32,
    mut ws: Ws,
    room: String,
    phase: Duration,
    interval: Duration,
    size: usize,
    sh: Arc<Shared>,
) -> MemberStats {
    let mut st = MemberStats {
        slot,
        ..MemberStats::default()
    };
    let mut intended: Vec<u64> = Vec::new();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    let sleep = tokio::time::sleep_until(far);
    tokio::pin!(sleep);
    let mut started = false;
    let mut next_us = 0u64;
    let (stop, go) = (sh.stop.child_token(), sh.go.child_token());
    // One registration for the task's life, on its own child token: polling
    // a fresh `cancelled()` per frame would lock the shared token each time.
    let cancelled = stop.cancelled();
    let go = go.cancelled();
    tokio::pin!(go);
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            () = &mut go, if !started => {
                started = true;
                next_us = sh.start_us.load(Ordering::Relaxed) + phase.as_micros() as u64;
                sleep.as_mut().reset(tokio::time::Instant::from_std(sh.epoch + Duration::from_micros(next_us)));
            }
            m = ws.next() => match m {
                Some(Ok(WsMessage::Text(t))) => {
                    let now_us = sh.epoch.elapsed().as_micros() as u64;
                    if let Some(s) = wire::parse_message(&t) {
                        sh.delivered.fetch_add(1, Ordering::Relaxed);
                        if st.track.on_message(s.publisher as usize, s.seq) {
                            let (a, b) = (sh.window_start_us.load(Ordering::Relaxed), sh.window_end_us.load(Ordering::Relaxed));
                            if (a..b).contains(&now_us) {
                                st.in_window += 1;
                            }
                            if (a..b).contains(&s.t_us) {
                                sh.latency.record(idx, now_us.saturating_sub(s.t_us));
                            }
                        }
                        continue;
                    }
                    match wire::parse_reply(&t) {
                        Reply::Ack(r) => {
                            sh.answered.fetch_add(1, Ordering::Relaxed);
                            if st.acked.insert(r) && let Some(&t0) = intended.get(r as usize) {
                                sh.ack_latency.record(idx, now_us.saturating_sub(t0));
                            }
                        }
                        Reply::Error(code, r) => {
                            if r.is_some() {
                                sh.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            bump(&mut st.errors, code);
                        }
                        Reply::Other => {}
                    }
                }
                Some(Ok(WsMessage::Close(c))) => {
                    st.closed = Some(format!("close {}", c.map_or(0, |c| u16::from(c.code))));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { st.closed = Some(format!("error: {e}")); break; }
                None => { st.closed = Some("ended".into()); break; }
            },
            () = &mut sleep, if started && next_us < sh.window_end_us.load(Ordering::Relaxed) => {
                let seq = st.sent;
                intended.push(next_us);
                let frame = wire::send_frame(&room, Stamp { publisher: slot, seq, t_us: next_us }, size);
                if let Err(e) = ws.send(WsMessage::text(frame)).await {
                    st.closed = Some(format!("write: {e}"));
                    break;
                }
                st.sent += 1;
                sh.sent.fetch_add(1, Ordering::Relaxed);
                next_us += interval.as_micros() as u64;
                sleep.as_mut().reset(tokio::time::Instant::from_std(sh.epoch + Duration::from_micros(next_us)));
            }
        }
    }
    if st.closed.is_none() {
        crate::conn::close(ws).await;
    }
    st
}

struct Slice {
    sh: Arc<Shared>,
    part: RoomsPart,
    /// Per room: its members' tasks.
    rooms: Vec<Vec<JoinHandle<MemberStats>>>,
    progress_stop: CancellationToken,
}

async fn open_slice(args: &RoomsArgs, index: usize, count: usize, prefix: &str) -> Slice {
    raise_nofile();
    let sh = Arc::new(Shared {
        epoch: Instant::now(),
        start_us: AtomicU64::new(0),
        window_start_us: AtomicU64::new(u64::MAX),
        window_end_us: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        latency: Recorder::new(64),
        ack_latency: Recorder::new(64),
        go: CancellationToken::new(),
        stop: CancellationToken::new(),
    });
    let range = shard::slice(args.rooms, index, count);
    let m = args.members.max(1);
    let total = args.rooms * m;
    let opened = Arc::new(AtomicU64::new(0));
    let progress_stop = CancellationToken::new();
    {
        let (sh, opened) = (sh.clone(), opened.clone());
        let (mut s, mut d) = (RateOf::default(), RateOf::default());
        spawn_progress(args.common.quiet, progress_stop.clone(), move |t| {
            format!(
                "[rooms t={t:.0}s] conns={} sent={:.0}/s delivered={:.0}/s",
                opened.load(Ordering::Relaxed),
                s.per_sec(sh.sent.load(Ordering::Relaxed)),
                d.per_sec(sh.delivered.load(Ordering::Relaxed)),
            )
        });
    }
    let mut rooms: Vec<Vec<JoinHandle<MemberStats>>> =
        (0..range.len()).map(|_| Vec::new()).collect();
    let room_name = |i: usize| format!("{prefix}-{}", i / m);
    let interval = args.interval;
    let o = open_all(
        &args.common,
        range.start * m,
        range.len() * m,
        |i| format!("room={}&name=m-{i}", room_name(i)),
        opened,
        |i, ws| {
            let phase =
                Duration::from_secs_f64(interval.as_secs_f64() * i as f64 / total.max(1) as f64);
            let task = member(
                i,
                (i % m) as u32,
                ws,
                room_name(i),
                phase,
                interval,
                args.size,
                sh.clone(),
            );
            rooms[i / m - range.start].push(tokio::spawn(task));
        },
    )
    .await;
    let part = RoomsPart {
        connected: o.ok,
        connect_errors: o.errors,
        connect_secs: o.secs,
        ..RoomsPart::default()
    };
    Slice {
        sh,
        part,
        rooms,
        progress_stop,
    }
}

async fn run_slice(mut s: Slice, args: &RoomsArgs) -> anyhow::Result<RoomsPart> {
    let sh = &s.sh;
    let start_us = sh.epoch.elapsed().as_micros() as u64 + 100_000;
    let (warm, win) = (
        args.warmup.as_micros() as u64,
        args.duration.as_micros() as u64,
    );
    sh.start_us.store(start_us, Ordering::Relaxed);
    sh.window_start_us.store(start_us + warm, Ordering::Relaxed);
    sh.window_end_us
        .store(start_us + warm + win, Ordering::Relaxed);
    sh.go.cancel();
    let at = |us: u64| tokio::time::Instant::from_std(sh.epoch + Duration::from_micros(us));
    tokio::time::sleep_until(at(start_us + warm)).await;
    let cpu0 = self_cpu_seconds();
    tokio::time::sleep_until(at(start_us + warm + win)).await;
    s.part.tool_cpu_secs = self_cpu_seconds() - cpu0;
    // Let the last answers and messages arrive: every send answered, then
    // deliveries still for a second (bounded: an overloaded node may never).
    let deadline = Instant::now() + Duration::from_secs(20);
    while sh.answered.load(Ordering::Relaxed) < sh.sent.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut last, mut still) = (u64::MAX, 0);
    while still < 50 && Instant::now() < deadline {
        let d = sh.delivered.load(Ordering::Relaxed);
        still = if d == last { still + 1 } else { 0 };
        last = d;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sh.stop.cancel();
    s.progress_stop.cancel();
    let p = &mut s.part;
    for room in s.rooms {
        let mut members = Vec::new();
        for t in room {
            members.push(t.await?);
        }
        // Members finished connecting in any order: index acks by slot.
        let mut acked: Vec<SeqSet> = vec![SeqSet::default(); args.members.max(1)];
        for m in &members {
            if let Some(a) = acked.get_mut(m.slot as usize) {
                *a = m.acked.clone();
            }
        }
        for m in &members {
            p.sent += m.sent;
            p.acked += m.acked.len();
            merge_counts(&mut p.publish_errors, &m.errors);
            p.deliveries_total += m.track.received + m.track.duplicates;
            p.deliveries_in_window += m.in_window;
            p.duplicates += m.track.duplicates;
            p.out_of_order += m.track.out_of_order;
            p.lost += m.track.lost(&acked);
            p.received_unacked += m.track.unacked(&acked);
            if let Some(c) = &m.closed {
                bump(&mut p.closed_early, c.clone());
            }
        }
    }
    p.latency = to_pairs(&sh.latency.merged());
    p.ack_latency = to_pairs(&sh.ack_latency.merged());
    Ok(s.part)
}

/// Runs `rooms`; `None` for a shard process (it reports to its parent).
pub async fn run(args: &RoomsArgs) -> anyhow::Result<Option<RoomsOutcome>> {
    check_nodes(&args.common)?;
    let members = args.rooms * args.members.max(1);
    let procs = shard::procs_for(members, args.shard.procs);
    if let Some(index) = args.shard.shard {
        let prefix = format!("rm{}", std::os::unix::process::parent_id());
        let s = open_slice(args, index, procs, &prefix).await;
        shard::ready(&s.part)?;
        if !shard::wait_go().await {
            return Ok(None);
        }
        shard::result(&run_slice(s, args).await?)?;
        return Ok(None);
    }
    let pids = &args.common.pids;
    let offset = Duration::from_millis(100);
    let (parts, cpu) = if procs <= 1 {
        let s = open_slice(args, 0, 1, &format!("rm{}", std::process::id())).await;
        let measure = measure(
            pids.clone(),
            (Instant::now() + offset, args.warmup, args.duration),
        );
        let (part, cpu) = tokio::join!(run_slice(s, args), measure);
        (vec![part?], cpu)
    } else {
        let mut children = Children::spawn(procs)?;
        let _ready: Vec<RoomsPart> = children.collect("READY", Duration::from_secs(600)).await?;
        children.go().await?;
        let measure = measure(
            pids.clone(),
            (Instant::now() + offset, args.warmup, args.duration),
        );
        let cpu = measure.await;
        let parts = children.collect("RESULT", Duration::from_secs(120)).await?;
        children.finish().await;
        (parts, cpu)
    };
    let mut out = RoomsOutcome {
        rooms: args.rooms,
        members: args.members,
        interval_secs: args.interval.as_secs_f64(),
        offered_rate: members as f64 / args.interval.as_secs_f64().max(1e-9),
        procs,
        cpu,
        ..RoomsOutcome::default()
    };
    let (mut lat, mut ack) = (new_histogram(), new_histogram());
    let t = &mut out.totals;
    let mut secs: f64 = 0.0;
    for p in &parts {
        t.connected += p.connected;
        merge_counts(&mut t.connect_errors, &p.connect_errors);
        secs = secs.max(p.connect_secs);
        t.sent += p.sent;
        t.acked += p.acked;
        merge_counts(&mut t.publish_errors, &p.publish_errors);
        t.deliveries_total += p.deliveries_total;
        t.deliveries_in_window += p.deliveries_in_window;
        t.lost += p.lost;
        t.duplicates += p.duplicates;
        t.out_of_order += p.out_of_order;
        t.received_unacked += p.received_unacked;
        merge_counts(&mut t.closed_early, &p.closed_early);
        add_pairs(&mut lat, &p.latency);
        add_pairs(&mut ack, &p.ack_latency);
        t.tool_cpu_secs += p.tool_cpu_secs;
    }
    t.connect_secs = secs;
    out.connect_rate_per_sec = t.connected as f64 / secs.max(1e-9);
    out.deliveries_per_sec = t.deliveries_in_window as f64 / args.duration.as_secs_f64().max(1e-9);
    out.load_tool_us_per_delivery = t.tool_cpu_secs * 1e6 / t.deliveries_in_window.max(1) as f64;
    out.cpu.load_tool_cpu_secs = t.tool_cpu_secs;
    if !pids.is_empty() && out.cpu.nodes_cpu_secs > 0.0 {
        out.deliveries_per_node_cpu_sec =
            Some(t.deliveries_in_window as f64 / out.cpu.nodes_cpu_secs);
    }
    out.latency_ms = Percentiles::of(&lat);
    out.ack_latency_ms = Percentiles::of(&ack);
    Ok(Some(out))
}

/// Node and machine CPU over (start + warm-up, + window).
async fn measure(pids: Vec<u32>, (start, warm, win): (Instant, Duration, Duration)) -> CpuUsage {
    tokio::time::sleep_until(tokio::time::Instant::from_std(start + warm)).await;
    let a = CpuSnapshot::take(&pids);
    tokio::time::sleep(win).await;
    a.usage(&CpuSnapshot::take(&pids))
}
