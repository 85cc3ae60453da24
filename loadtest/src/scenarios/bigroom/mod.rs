//! `bigroom`: the public room at scale. M members, spread over the nodes and
//! the 127.0.0.x source addresses, connect and `join` one room (at
//! `--join-rate`, or as fast as `--concurrency` allows); once every one has
//! joined, they are held for `--hold` while a few of them chat. Then, as a
//! baseline, the same M connections are opened again joining no room (what
//! `idle` measures), so that filling the room can be set against plain
//! connecting on the same nodes in the same minute.
//!
//! Split over processes like `idle` when one fd limit is too small. Every
//! shard process goes through the same phases, each ended by a line to the
//! parent and started by its `GO`:
//!
//! 1. fill: connect and join its slice; `FILLED {part}`;
//! 2. hold: chatter, then the members stop reading; `HELD {part}` (their
//!    sockets still open, so the parent reads the nodes' RSS of a full room);
//! 3. close: every member closes; `CLOSED {}` (the parent waits for the
//!    nodes to settle);
//! 4. baseline (unless `--no-baseline`): open its slice again with no room;
//!    `BASELINE {part}`; on `GO` close them; `RESULT {}`.
//!
//! The parent reads the nodes' RSS and CPU between phases. Times that cross
//! processes are wall-clock µs.

mod member;
mod redis;
mod table;

pub use table::report;

use super::{check_nodes, open_all_with};
use crate::cli::BigroomArgs;
use crate::conn::{Target, Ws};
use crate::procfs::{CpuSnapshot, CpuUsage, raise_nofile, rss_all, self_cpu_split};
use crate::report::{Counts, bump, merge_counts, spawn_progress};
use crate::scenarios::chaos::probe;
use crate::shard::{self, Children};
use crate::stats::{Percentiles, add_pairs, new_histogram, to_pairs};
use anyhow::Context as _;
use futures_util::StreamExt;
use member::{Chat, Phases, wall_us};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Presence arrival times are carried between processes in buckets of this many µs.
const BUCKET_US: u64 = 10_000;

/// What one process saw while its slice filled the room.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FillPart {
    /// Members joined, per node (same order as --nodes).
    pub joined_per_node: Vec<u64>,
    /// Failures by cause.
    pub errors: Counts,
    /// Before the first connect, wall µs.
    pub start_us: u64,
    /// The last `joined` read, wall µs.
    pub end_us: u64,
    /// When each member read its `joined`, wall µs.
    pub joined_at_us: Vec<u64>,
    /// Connect + upgrade + `welcome`, µs (histogram pairs).
    pub connect_pairs: Vec<(u64, u64)>,
    /// `join` → `joined`, µs (histogram pairs).
    pub join_pairs: Vec<(u64, u64)>,
    /// The largest `joined` frame, bytes.
    pub joined_bytes_max: u64,
    /// This process's CPU seconds over the fill.
    pub tool_cpu_secs: f64,
    /// Of which in the kernel.
    pub tool_sys_secs: f64,
    /// This process's open-files limit (soft, hard).
    pub nofile: (u64, u64),
}

/// What one process's members saw, from their `join` to the hold's end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HoldPart {
    /// The hold began (wall µs).
    pub start_us: u64,
    /// The hold ended (wall µs), before the members closed.
    pub end_us: u64,
    /// `presence` frames by arrival, in buckets of [`BUCKET_US`]: (bucket, frames).
    pub presence_buckets: Vec<(u64, u64)>,
    /// Every `presence` frame, all members.
    pub presence_frames: u64,
    /// The largest `presence` frame, bytes.
    pub presence_bytes_max: u64,
    /// The most `presence` frames one member read within 90 % of one diff
    /// interval (the rest allows for delivery jitter).
    pub max_in_interval: u64,
    /// Members that once read more than one within it.
    pub members_over_one: u64,
    /// The shortest time between two `presence` frames of one member, µs.
    pub min_spacing_us: Option<u64>,
    /// Frames before the hold's end that carried a count the member had
    /// already read in its previous frame: one diff read twice.
    pub repeated: u64,
    /// `presence` frames each member read from its `join` to the hold's
    /// start (the fill and its last diff): (frames, members).
    pub fill_frames_per_member: Vec<(u64, u64)>,
    /// Each diff as the node sent it, told apart by (node, count): when any
    /// member of this process first read it, wall µs (before the hold's end).
    pub first_arrivals: Vec<(usize, u64, u64)>,
    /// The room's count each member last read: (count, members).
    pub final_counts: Vec<(u64, u64)>,
    /// Members that never read a count.
    pub no_count: u64,
    /// `message` frames read, all members.
    pub messages: u64,
    /// `gap` frames read, all members.
    pub gaps: u64,
    /// Chat messages sent / acked / refused.
    pub chat: (u64, u64, u64),
    /// Sockets that ended before the hold did, by reason.
    pub dropped: Counts,
    /// This process's CPU seconds over the hold.
    pub tool_cpu_secs: f64,
    /// Of which in the kernel.
    pub tool_sys_secs: f64,
}

/// What one process saw opening its slice again with no room.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BasePart {
    /// Sockets opened, per node.
    pub opened_per_node: Vec<u64>,
    /// Failures by cause.
    pub errors: Counts,
    /// Before the first connect, wall µs.
    pub start_us: u64,
    /// After the last, wall µs.
    pub end_us: u64,
    /// This process's CPU seconds.
    pub tool_cpu_secs: f64,
    /// Of which in the kernel.
    pub tool_sys_secs: f64,
}

/// The baseline: the same connections, no room.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Baseline {
    /// Connections opened.
    pub opened: u64,
    /// Failures by cause.
    pub errors: Counts,
    /// First connect to last `welcome`, s.
    pub secs: f64,
    /// Connections per second.
    pub rate_per_sec: f64,
    /// The nodes' CPU over it.
    pub cpu: CpuUsage,
    /// The tool's CPU seconds (every process).
    pub tool_cpu_secs: f64,
    /// Of which in the kernel.
    pub tool_sys_secs: f64,
}

/// Presence traffic as the members saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PresenceFigures {
    /// The diff interval the windows use, ms.
    pub diff_interval_ms: f64,
    /// Frames from the first connect to one diff interval past the last `joined`.
    pub fill_frames: u64,
    /// Member-seconds in the room over that window.
    pub fill_member_secs: f64,
    /// Frames per member per second while filling.
    pub fill_per_member_per_sec: f64,
    /// Frames each member read from its `join` to the hold: mean.
    pub fill_frames_mean: f64,
    /// And the most.
    pub fill_frames_max: u64,
    /// Diff intervals from the first connect to the last `joined`, rounded up.
    pub fill_intervals: u64,
    /// Frames over the hold.
    pub hold_frames: u64,
    /// Frames per member per second while held.
    pub hold_per_member_per_sec: f64,
    /// The most frames one member read within 90 % of one diff interval
    /// (a sliding window; the rest allows for delivery jitter).
    pub max_in_interval: u64,
    /// Members that once read more than one within it.
    pub members_over_one: u64,
    /// The shortest spacing between two frames of one member, ms.
    pub min_spacing_ms: Option<f64>,
    /// Frames that repeated the count of the member's previous frame.
    pub repeated: u64,
    /// Diffs each node sent (told apart by their count, until the hold's end).
    pub node_diffs: Vec<u64>,
    /// The shortest time between two diffs of one node, by the first arrival
    /// of each at any member, ms: the node's own spacing, without the
    /// delivery jitter of single members.
    pub node_min_spacing_ms: Option<f64>,
    /// Every frame, all members, the whole run.
    pub total_frames: u64,
    /// The largest frame, bytes.
    pub largest_bytes: u64,
}

/// A target of the issue, and where the run stands.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// What is measured.
    pub what: String,
    /// The target, in words.
    pub target: String,
    /// The figure.
    pub value: String,
    /// Met (`None`: not measured).
    pub met: Option<bool>,
}

/// The outcome of a bigroom run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BigroomOutcome {
    /// Members asked for.
    pub asked: usize,
    /// Members that joined.
    pub joined: u64,
    /// Per node.
    pub joined_per_node: Vec<u64>,
    /// Processes the run was split over.
    pub procs: usize,
    /// Their open-files limit (soft, hard).
    pub nofile: (u64, u64),
    /// Connect or join failures by cause.
    pub errors: Counts,
    /// `--join-rate` (0: as fast as --concurrency allows).
    pub join_rate_asked: f64,
    /// Connections being opened at once, per process.
    pub concurrency: usize,
    /// First connect to last `joined`, s.
    pub fill_secs: f64,
    /// Members joined per second of the fill.
    pub fill_rate_per_sec: f64,
    /// Connect + upgrade + `welcome`.
    pub connect_latency: Percentiles,
    /// `join` sent → `joined` read.
    pub join_latency: Percentiles,
    /// The largest `joined` frame, bytes.
    pub joined_bytes_max: u64,
    /// Presence traffic.
    pub presence: PresenceFigures,
    /// The count each member last read: (count, members).
    pub final_counts: Vec<(u64, u64)>,
    /// The count every member should have ended with (joined minus members dropped).
    pub expected_count: u64,
    /// Members whose last count was that.
    pub final_count_ok: u64,
    /// The hold, s.
    pub hold_secs: f64,
    /// Chat messages sent / acked / refused.
    pub chat: (u64, u64, u64),
    /// `message` frames read by all members, and how many the acked chat asked for.
    pub deliveries: (u64, u64),
    /// `gap` frames read.
    pub gaps: u64,
    /// Sockets that ended before the hold did, by reason.
    pub dropped: Counts,
    /// Node RSS before the fill, KiB.
    pub node_rss_kib_before: Vec<u64>,
    /// Node RSS with every member joined, KiB.
    pub node_rss_kib_joined: Vec<u64>,
    /// Node RSS at the end of the hold (every member still there), KiB.
    pub node_rss_kib_held: Vec<u64>,
    /// (joined − before) / members on that node, KiB.
    pub node_kib_per_member: Vec<f64>,
    /// (end of hold − before) / members on that node, KiB: after the chatter.
    pub node_kib_per_member_held: Vec<f64>,
    /// What Redis did over the fill, per join (with --redis-port).
    pub redis_fill: Option<redis::Phase>,
    /// Over the hold (its CPU; commands per member).
    pub redis_hold: Option<redis::Phase>,
    /// Over the baseline, per connection.
    pub redis_baseline: Option<redis::Phase>,
    /// Node and machine CPU over the fill.
    pub cpu_fill: CpuUsage,
    /// Over the hold.
    pub cpu_hold: CpuUsage,
    /// The baseline (the same connections, no room).
    pub baseline: Option<Baseline>,
    /// Baseline connect rate ÷ fill rate (target ≤ 1.5).
    pub fill_slowdown: Option<f64>,
    /// The load tool's CPU seconds (every process): fill, hold.
    pub tool_cpu_secs: (f64, f64),
    /// Of which in the kernel: fill, hold.
    pub tool_sys_secs: (f64, f64),
    /// The four targets.
    pub goals: Vec<Goal>,
}

/// A shard's members while they are in the room.
struct Filled {
    /// Each member's node (index into --nodes) and task.
    tasks: Vec<(usize, JoinHandle<member::Ended>)>,
    phases: Phases,
    part: FillPart,
}

/// This process's (total, kernel) CPU seconds since `(user, sys)` = `since`.
fn cpu_since(since: (f64, f64)) -> (f64, f64) {
    let (u, k) = self_cpu_split();
    (u + k - since.0 - since.1, k - since.1)
}

fn phases() -> Phases {
    Phases {
        hold: CancellationToken::new(),
        quiet: CancellationToken::new(),
        stop: CancellationToken::new(),
    }
}

/// `--join-rate`'s share of one of `count` processes: its k-th connection
/// starts k × (count ÷ rate) after the first; no wait without a rate.
#[derive(Clone, Copy, Debug)]
struct Pace {
    every: Option<Duration>,
    start: tokio::time::Instant,
}

impl Pace {
    fn new(args: &BigroomArgs, count: usize) -> Pace {
        Pace {
            every: (args.join_rate > 0.0)
                .then(|| Duration::from_secs_f64(count as f64 / args.join_rate)),
            start: tokio::time::Instant::now(),
        }
    }

    /// Waits for the k-th connection's turn.
    async fn turn(self, k: usize) {
        if let Some(every) = self.every {
            tokio::time::sleep_until(self.start + every.mul_f64(k as f64)).await;
        }
    }
}

/// Connects and joins members `slice(index, count)`, at the join rate's
/// share of this process.
async fn fill(args: &BigroomArgs, index: usize, count: usize) -> Filled {
    let nofile = raise_nofile();
    let cpu0 = self_cpu_split();
    let range = shard::slice(args.members, index, count);
    let phases = phases();
    let common = &args.common;
    let n_nodes = common.nodes.len().max(1);
    let chatters = args.chatters.min(args.members);
    let period = (args.chatter > 0.0 && chatters > 0)
        .then(|| Duration::from_secs_f64(chatters as f64 / args.chatter));
    let joined_n = Arc::new(AtomicU64::new(0));
    let progress_stop = CancellationToken::new();
    {
        let joined_n = joined_n.clone();
        spawn_progress(common.quiet, progress_stop.clone(), move |t| {
            format!(
                "[bigroom t={t:.0}s] joined={}",
                joined_n.load(Ordering::Relaxed)
            )
        });
    }
    let mut part = FillPart {
        joined_per_node: vec![0; n_nodes],
        start_us: wall_us(),
        nofile,
        ..FillPart::default()
    };
    let (mut connect_h, mut join_h) = (new_histogram(), new_histogram());
    let mut tasks = Vec::with_capacity(range.len());
    let pace = Pace::new(args, count);
    let room = args.room.as_str();
    let mut results = futures_util::stream::iter(range.enumerate())
        .map(|(k, i)| {
            let target = Target::pick(&common.nodes, common.sources, i);
            async move {
                pace.turn(k).await;
                (i, member::join(&target, i, room).await)
            }
        })
        .buffer_unordered(common.concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        match r {
            Ok(j) => {
                joined_n.fetch_add(1, Ordering::Relaxed);
                part.joined_per_node[i % n_nodes] += 1;
                connect_h.saturating_record(j.connect_us.max(1));
                join_h.saturating_record(j.join_us.max(1));
                part.joined_at_us.push(j.joined_at_us);
                part.end_us = part.end_us.max(j.joined_at_us);
                part.joined_bytes_max = part.joined_bytes_max.max(j.joined_bytes as u64);
                let chat = period.filter(|_| i < chatters).map(|period| Chat {
                    member: i,
                    period,
                    room: args.room.clone(),
                });
                let task = tokio::spawn(member::live(j, phases.clone(), chat));
                tasks.push((i % n_nodes, task));
            }
            Err(e) => bump(&mut part.errors, e),
        }
    }
    progress_stop.cancel();
    if part.end_us == 0 {
        part.end_us = wall_us();
    }
    part.connect_pairs = to_pairs(&connect_h);
    part.join_pairs = to_pairs(&join_h);
    (part.tool_cpu_secs, part.tool_sys_secs) = cpu_since(cpu0);
    Filled {
        tasks,
        phases,
        part,
    }
}

/// Holds the members for `--hold` (chatters speak until a little before its
/// end), then sums up what the members saw; their sockets, still open.
async fn hold(f: Filled, args: &BigroomArgs) -> (HoldPart, Vec<Ws>) {
    let cpu0 = self_cpu_split();
    let mut part = HoldPart {
        start_us: wall_us(),
        ..HoldPart::default()
    };
    f.phases.hold.cancel();
    let tail = (args.hold / 4).min(Duration::from_secs(1));
    tokio::time::sleep(args.hold.saturating_sub(tail)).await;
    f.phases.quiet.cancel();
    tokio::time::sleep(tail).await;
    part.end_us = wall_us();
    f.phases.stop.cancel();
    let window = jitter_window(args.diff_interval);
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
    let mut per_member: BTreeMap<u64, u64> = BTreeMap::new();
    let mut first: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let mut sockets = Vec::with_capacity(f.tasks.len());
    for (node, t) in f.tasks {
        let Ok((log, ws)) = t.await else {
            bump(&mut part.dropped, "member task failed");
            continue;
        };
        sockets.extend(ws);
        let mut previous = None;
        for (&at, &count) in log.presence_us.iter().zip(&log.presence_counts) {
            if at < part.end_us && count != u64::MAX {
                part.repeated += u64::from(previous == Some(count));
                previous = Some(count);
            }
            *buckets.entry(at / BUCKET_US).or_default() += 1;
            if count != u64::MAX && at < part.end_us {
                let f = first.entry((node, count)).or_insert(at);
                *f = (*f).min(at);
            }
        }
        part.presence_frames += log.presence_us.len() as u64;
        let before_hold = log.presence_us.partition_point(|&t| t < part.start_us);
        *per_member.entry(before_hold as u64).or_default() += 1;
        part.presence_bytes_max = part.presence_bytes_max.max(log.presence_bytes_max as u64);
        let (most, spacing) = member::window_stats(&log.presence_us, window);
        part.max_in_interval = part.max_in_interval.max(most);
        part.members_over_one += u64::from(most > 1);
        if let Some(s) = spacing {
            part.min_spacing_us = Some(part.min_spacing_us.map_or(s, |m| m.min(s)));
        }
        match log.last_count {
            Some(c) => *finals.entry(c).or_default() += 1,
            None => part.no_count += 1,
        }
        part.messages += log.messages;
        part.gaps += log.gaps;
        part.chat.0 += log.sent;
        part.chat.1 += log.acked;
        part.chat.2 += log.refused;
        if let Some(reason) = log.ended_early {
            bump(&mut part.dropped, reason);
        }
    }
    part.presence_buckets = buckets.into_iter().collect();
    part.final_counts = finals.into_iter().collect();
    part.fill_frames_per_member = per_member.into_iter().collect();
    part.first_arrivals = first.into_iter().map(|((n, c), at)| (n, c, at)).collect();
    (part.tool_cpu_secs, part.tool_sys_secs) = cpu_since(cpu0);
    (part, sockets)
}

/// Opens this slice again joining no room: the sockets and what it took.
async fn baseline(args: &BigroomArgs, index: usize, count: usize) -> (Vec<Ws>, BasePart) {
    let cpu0 = self_cpu_split();
    let range = shard::slice(args.members, index, count);
    let n_nodes = args.common.nodes.len().max(1);
    let mut part = BasePart {
        opened_per_node: vec![0; n_nodes],
        start_us: wall_us(),
        ..BasePart::default()
    };
    let mut sockets = Vec::with_capacity(range.len());
    // At the fill's pace when it had one: what the join rate asked costs
    // without the room.
    let (pace, first) = (Pace::new(args, count), range.start);
    let dial = |i: usize, target: Target| async move {
        pace.turn(i - first).await;
        crate::conn::open(&target, &format!("name=b{i}")).await
    };
    let o = open_all_with(
        &args.common,
        range.start,
        range.len(),
        dial,
        Arc::new(AtomicU64::new(0)),
        |i, ws| {
            part.opened_per_node[i % n_nodes] += 1;
            sockets.push(ws);
        },
    )
    .await;
    part.end_us = wall_us();
    part.errors = o.errors;
    (part.tool_cpu_secs, part.tool_sys_secs) = cpu_since(cpu0);
    (sockets, part)
}

async fn close_all(sockets: Vec<Ws>) {
    futures_util::stream::iter(sockets)
        .for_each_concurrent(512, crate::conn::close)
        .await;
}

/// The window "within one diff interval" counts frames in: 90 % of the
/// interval, since a diff the node sent on time can reach a member a few
/// milliseconds later than the one before it (two diffs 1,000 ms apart at
/// the node may arrive 992 ms apart).
fn jitter_window(diff_interval: Duration) -> u64 {
    u64::try_from(diff_interval.mul_f64(0.9).as_micros()).unwrap_or(u64::MAX)
}

/// A shard's line to its parent.
fn emit(tag: &str, part: &impl Serialize) -> anyhow::Result<()> {
    println!("{tag} {}", serde_json::to_string(part)?);
    Ok(())
}

/// A shard process: the phases, each reported to the parent and started by its `GO`.
async fn run_shard(args: &BigroomArgs, index: usize, procs: usize) -> anyhow::Result<()> {
    let f = fill(args, index, procs).await;
    emit("FILLED", &f.part)?;
    if !shard::wait_go().await {
        f.phases.stop.cancel();
        return Ok(());
    }
    let (part, members) = hold(f, args).await;
    emit("HELD", &part)?;
    if !shard::wait_go().await {
        return Ok(());
    }
    close_all(members).await;
    if !args.no_baseline {
        emit("CLOSED", &serde_json::json!({}))?;
        if !shard::wait_go().await {
            return Ok(());
        }
        let (sockets, part) = baseline(args, index, procs).await;
        emit("BASELINE", &part)?;
        shard::wait_go().await;
        close_all(sockets).await;
    }
    shard::result(&serde_json::json!({}))
}

/// The phases from the parent's side: in this process, or over children.
enum Driver<'a> {
    Local {
        args: &'a BigroomArgs,
        filled: Option<Box<Filled>>,
        members: Vec<Ws>,
        sockets: Vec<Ws>,
    },
    Children {
        children: Children,
        hold: Duration,
        baseline: bool,
    },
}

impl Driver<'_> {
    async fn fill(&mut self) -> anyhow::Result<Vec<FillPart>> {
        match self {
            Driver::Local { args, filled, .. } => {
                let f = fill(args, 0, 1).await;
                let part = f.part.clone();
                *filled = Some(Box::new(f));
                Ok(vec![part])
            }
            Driver::Children { children, .. } => {
                children.collect("FILLED", Duration::from_secs(900)).await
            }
        }
    }

    async fn hold(&mut self) -> anyhow::Result<Vec<HoldPart>> {
        match self {
            Driver::Local {
                args,
                filled,
                members,
                ..
            } => {
                let f = filled.take().context("hold before fill")?;
                let (part, sockets) = hold(*f, args).await;
                *members = sockets;
                Ok(vec![part])
            }
            Driver::Children { children, hold, .. } => {
                children.go().await?;
                children
                    .collect("HELD", *hold + Duration::from_secs(120))
                    .await
            }
        }
    }

    async fn close_members(&mut self) -> anyhow::Result<()> {
        match self {
            Driver::Local { members, .. } => close_all(std::mem::take(members)).await,
            Driver::Children {
                children, baseline, ..
            } => {
                children.go().await?;
                if *baseline {
                    let _: Vec<serde_json::Value> =
                        children.collect("CLOSED", Duration::from_secs(120)).await?;
                }
            }
        }
        Ok(())
    }

    async fn baseline(&mut self) -> anyhow::Result<Vec<BasePart>> {
        match self {
            Driver::Local { args, sockets, .. } => {
                let (s, part) = baseline(args, 0, 1).await;
                *sockets = s;
                Ok(vec![part])
            }
            Driver::Children { children, .. } => {
                children.go().await?;
                children.collect("BASELINE", Duration::from_secs(900)).await
            }
        }
    }

    async fn finish(self) -> anyhow::Result<()> {
        match self {
            Driver::Local {
                sockets,
                members,
                filled,
                ..
            } => {
                if let Some(f) = filled {
                    f.phases.stop.cancel();
                }
                close_all(members).await;
                close_all(sockets).await;
            }
            Driver::Children {
                mut children,
                baseline,
                ..
            } => {
                if baseline {
                    children.go().await?;
                }
                let _: Vec<serde_json::Value> =
                    children.collect("RESULT", Duration::from_secs(60)).await?;
                children.finish().await;
            }
        }
        Ok(())
    }
}

/// Waits (bounded) until the nodes hold no connection and their CPU is
/// quiet, so that the baseline does not pay for the members' leaving.
async fn settle(args: &BigroomArgs) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let mut open = 0.0;
        for n in &args.common.nodes {
            if let Ok((200, text)) = probe::http_get(*n, "/metrics", Duration::from_secs(3)).await {
                open += gauge(&text, "banter_connections").unwrap_or(0.0);
            }
        }
        if open < 0.5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let pids = &args.common.pids;
    if pids.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    }
    while tokio::time::Instant::now() < deadline {
        let a = CpuSnapshot::take(pids);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Under a tenth of a core, all nodes together.
        if a.usage(&CpuSnapshot::take(pids)).nodes_cpu_secs < 0.05 {
            break;
        }
    }
}

/// The sum of the samples of a Prometheus series `name` (exactly that name).
fn gauge(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some('{') => rest.split_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// Runs `bigroom`: in this process, as one shard of a parent, or as the
/// parent of several shards. `None` for a shard (it reports to its parent).
pub async fn run(args: &BigroomArgs) -> anyhow::Result<Option<BigroomOutcome>> {
    check_nodes(&args.common)?;
    anyhow::ensure!(args.members >= 1, "--members must be at least 1");
    anyhow::ensure!(
        !args.diff_interval.is_zero(),
        "--diff-interval must be positive"
    );
    let procs = shard::procs_for(args.members, args.shard.procs);
    if let Some(index) = args.shard.shard {
        run_shard(args, index, procs).await?;
        return Ok(None);
    }
    let quiet = args.common.quiet;
    let say = |s: String| {
        if !quiet {
            eprintln!("[bigroom] {s}");
        }
    };
    let pids = &args.common.pids;
    let rss_before = rss_all(pids);
    let mut driver = if procs <= 1 {
        Driver::Local {
            args,
            filled: None,
            members: Vec::new(),
            sockets: Vec::new(),
        }
    } else {
        Driver::Children {
            children: Children::spawn(procs)?,
            hold: args.hold,
            baseline: !args.no_baseline,
        }
    };
    say(format!(
        "{} members joining `{}` over {} node(s), {procs} process(es)",
        args.members,
        args.room,
        args.common.nodes.len()
    ));
    let port = args.redis_port;
    let redis0 = redis::read(port).await;
    let cpu0 = CpuSnapshot::take(pids);
    let fills = driver.fill().await?;
    let cpu_fill = cpu0.usage(&CpuSnapshot::take(pids));
    let redis1 = redis::read(port).await;
    let joined: u64 = fills.iter().flat_map(|p| &p.joined_per_node).sum();
    say(format!("{joined} joined; holding for {:?}", args.hold));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_joined = rss_all(pids);
    let cpu1 = CpuSnapshot::take(pids);
    let holds = driver.hold().await?;
    let cpu_hold = cpu1.usage(&CpuSnapshot::take(pids));
    let redis2 = redis::read(port).await;
    let rss_held = rss_all(pids);
    driver.close_members().await?;
    let mut base = None;
    let mut redis_base = (None, None);
    if !args.no_baseline {
        say("members closed; waiting for the nodes to settle, then the baseline".into());
        settle(args).await;
        let cpu2 = CpuSnapshot::take(pids);
        redis_base.0 = redis::read(port).await;
        let parts = driver.baseline().await?;
        let cpu = cpu2.usage(&CpuSnapshot::take(pids));
        redis_base.1 = redis::read(port).await;
        base = Some(baseline_of(&parts, cpu));
    }
    driver.finish().await?;
    let base_n = base.as_ref().map_or(0, |b| b.opened);
    let mut out = outcome(args, procs, &fills, &holds, base);
    out.redis_fill = redis::phase(redis0.as_ref(), redis1.as_ref(), joined, 6);
    out.redis_hold = redis::phase(redis1.as_ref(), redis2.as_ref(), joined, 3);
    out.redis_baseline = redis::phase(redis_base.0.as_ref(), redis_base.1.as_ref(), base_n, 4);
    out.cpu_fill = cpu_fill;
    out.cpu_hold = cpu_hold;
    out.node_rss_kib_before = rss_before;
    out.node_rss_kib_joined = rss_joined;
    out.node_rss_kib_held = rss_held;
    out.node_kib_per_member = out
        .node_rss_kib_before
        .iter()
        .zip(&out.node_rss_kib_joined)
        .zip(&out.joined_per_node)
        .map(|((b, j), n)| j.saturating_sub(*b) as f64 / (*n).max(1) as f64)
        .collect();
    out.node_kib_per_member_held = out
        .node_rss_kib_before
        .iter()
        .zip(&out.node_rss_kib_held)
        .zip(&out.joined_per_node)
        .map(|((b, h), n)| h.saturating_sub(*b) as f64 / (*n).max(1) as f64)
        .collect();
    out.goals = table::goals(&out);
    Ok(Some(out))
}

fn baseline_of(parts: &[BasePart], cpu: CpuUsage) -> Baseline {
    let mut b = Baseline {
        cpu,
        ..Baseline::default()
    };
    let (mut start, mut end) = (u64::MAX, 0);
    for p in parts {
        b.opened += p.opened_per_node.iter().sum::<u64>();
        merge_counts(&mut b.errors, &p.errors);
        start = start.min(p.start_us);
        end = end.max(p.end_us);
        b.tool_cpu_secs += p.tool_cpu_secs;
        b.tool_sys_secs += p.tool_sys_secs;
    }
    b.secs = end.saturating_sub(start) as f64 / 1e6;
    b.rate_per_sec = b.opened as f64 / b.secs.max(1e-9);
    b
}

fn frames_between(buckets: &BTreeMap<u64, u64>, from_us: u64, to_us: u64) -> u64 {
    buckets
        .range(from_us / BUCKET_US..to_us.div_ceil(BUCKET_US))
        .map(|(_, n)| n)
        .sum()
}

fn outcome(
    args: &BigroomArgs,
    procs: usize,
    fills: &[FillPart],
    holds: &[HoldPart],
    baseline: Option<Baseline>,
) -> BigroomOutcome {
    let mut o = BigroomOutcome {
        asked: args.members,
        procs: procs.max(1),
        join_rate_asked: args.join_rate,
        concurrency: args.common.concurrency,
        hold_secs: args.hold.as_secs_f64(),
        joined_per_node: vec![0; args.common.nodes.len()],
        ..BigroomOutcome::default()
    };
    let (mut connect_h, mut join_h) = (new_histogram(), new_histogram());
    let (mut start, mut end) = (u64::MAX, 0u64);
    for p in fills {
        for (i, n) in p.joined_per_node.iter().enumerate() {
            if let Some(slot) = o.joined_per_node.get_mut(i) {
                *slot += n;
            }
        }
        merge_counts(&mut o.errors, &p.errors);
        add_pairs(&mut connect_h, &p.connect_pairs);
        add_pairs(&mut join_h, &p.join_pairs);
        start = start.min(p.start_us);
        end = end.max(p.end_us);
        o.joined_bytes_max = o.joined_bytes_max.max(p.joined_bytes_max);
        o.nofile = p.nofile;
        o.tool_cpu_secs.0 += p.tool_cpu_secs;
        o.tool_sys_secs.0 += p.tool_sys_secs;
    }
    o.joined = o.joined_per_node.iter().sum();
    o.fill_secs = end.saturating_sub(start) as f64 / 1e6;
    o.fill_rate_per_sec = o.joined as f64 / o.fill_secs.max(1e-9);
    o.connect_latency = Percentiles::of(&connect_h);
    o.join_latency = Percentiles::of(&join_h);

    let interval_us = u64::try_from(args.diff_interval.as_micros()).unwrap_or(u64::MAX);
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    let mut finals: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut frames_sum, mut frames_n) = (0u64, 0u64);
    let mut first: BTreeMap<(usize, u64), u64> = BTreeMap::new();
    let pr = &mut o.presence;
    pr.diff_interval_ms = interval_us as f64 / 1000.0;
    let (mut hold_start, mut hold_end) = (u64::MAX, 0u64);
    let mut dropped = 0u64;
    for h in holds {
        for &(b, n) in &h.presence_buckets {
            *buckets.entry(b).or_default() += n;
        }
        for &(c, n) in &h.final_counts {
            *finals.entry(c).or_default() += n;
        }
        for &(node, count, at) in &h.first_arrivals {
            let f = first.entry((node, count)).or_insert(at);
            *f = (*f).min(at);
        }
        for &(f, n) in &h.fill_frames_per_member {
            frames_sum += f * n;
            frames_n += n;
            pr.fill_frames_max = pr.fill_frames_max.max(f);
        }
        pr.total_frames += h.presence_frames;
        pr.largest_bytes = pr.largest_bytes.max(h.presence_bytes_max);
        pr.max_in_interval = pr.max_in_interval.max(h.max_in_interval);
        pr.members_over_one += h.members_over_one;
        pr.repeated += h.repeated;
        if let Some(s) = h.min_spacing_us {
            let ms = s as f64 / 1000.0;
            pr.min_spacing_ms = Some(pr.min_spacing_ms.map_or(ms, |m: f64| m.min(ms)));
        }
        o.gaps += h.gaps;
        o.deliveries.0 += h.messages;
        o.chat.0 += h.chat.0;
        o.chat.1 += h.chat.1;
        o.chat.2 += h.chat.2;
        merge_counts(&mut o.dropped, &h.dropped);
        dropped += h.dropped.values().sum::<u64>();
        hold_start = hold_start.min(h.start_us);
        hold_end = hold_end.max(h.end_us);
        o.tool_cpu_secs.1 += h.tool_cpu_secs;
        o.tool_sys_secs.1 += h.tool_sys_secs;
    }
    // While filling: from the first connect to one diff interval past the
    // last join (the diff that announces it), per member in the room.
    let fill_to = end.saturating_add(interval_us);
    pr.fill_frames = frames_between(&buckets, start, fill_to);
    pr.fill_member_secs = fills
        .iter()
        .flat_map(|p| &p.joined_at_us)
        .map(|&t| fill_to.saturating_sub(t) as f64 / 1e6)
        .sum();
    pr.fill_per_member_per_sec = pr.fill_frames as f64 / pr.fill_member_secs.max(1e-9);
    pr.fill_frames_mean = frames_sum as f64 / frames_n.max(1) as f64;
    let mut per_node: Vec<Vec<u64>> = vec![Vec::new(); o.joined_per_node.len()];
    for ((node, _), at) in first {
        if let Some(v) = per_node.get_mut(node) {
            v.push(at);
        }
    }
    for v in &mut per_node {
        v.sort_unstable();
        pr.node_diffs.push(v.len() as u64);
        if let (_, Some(s)) = member::window_stats(v, 0) {
            let ms = s as f64 / 1000.0;
            pr.node_min_spacing_ms = Some(pr.node_min_spacing_ms.map_or(ms, |m: f64| m.min(ms)));
        }
    }
    pr.fill_intervals = end.saturating_sub(start).div_ceil(interval_us.max(1));
    if hold_end > hold_start {
        pr.hold_frames = frames_between(&buckets, hold_start, hold_end);
        let member_secs = o.joined as f64 * (hold_end - hold_start) as f64 / 1e6;
        pr.hold_per_member_per_sec = pr.hold_frames as f64 / member_secs.max(1e-9);
    }
    o.expected_count = o.joined.saturating_sub(dropped);
    o.final_count_ok = finals.get(&o.expected_count).copied().unwrap_or(0);
    o.final_counts = finals.into_iter().collect();
    o.deliveries.1 = o.chat.1 * o.joined;
    o.fill_slowdown = baseline
        .as_ref()
        .map(|b| b.rate_per_sec / o.fill_rate_per_sec.max(1e-9));
    o.baseline = baseline;
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;

    /// A shard part, written and read back as between processes.
    fn round_trip<T: Serialize + DeserializeOwned>(t: &T) -> T {
        serde_json::from_str(&serde_json::to_string(t).unwrap()).unwrap()
    }

    #[test]
    fn gauges_are_summed_by_exact_name() {
        let text = "banter_connections{node=\"a\"} 3\nbanter_connections_total{node=\"a\"} 9\n\
                    banter_connections{node=\"b\"} 4\n";
        assert_eq!(gauge(text, "banter_connections"), Some(7.0));
        assert_eq!(gauge(text, "banter_nothing"), None);
    }

    #[test]
    fn parts_cross_processes() {
        let p = HoldPart {
            presence_buckets: vec![(1, 2)],
            final_counts: vec![(200, 200)],
            ..HoldPart::default()
        };
        assert_eq!(round_trip(&p).final_counts, vec![(200, 200)]);
    }

    #[test]
    fn the_outcome_sorts_frames_into_fill_and_hold() {
        let args = crate::cli::BigroomArgs {
            common: crate::cli::Common::default(),
            shard: crate::cli::ShardArgs {
                procs: 1,
                shard: None,
            },
            members: 2,
            room: "hall".into(),
            join_rate: 0.0,
            hold: Duration::from_secs(10),
            chatter: 0.0,
            chatters: 0,
            diff_interval: Duration::from_secs(1),
            no_baseline: true,
            redis_port: None,
        };
        let s = 1_000_000;
        let fill = FillPart {
            joined_per_node: vec![2],
            start_us: 100 * s,
            end_us: 102 * s,
            joined_at_us: vec![101 * s, 102 * s],
            ..FillPart::default()
        };
        let hold = HoldPart {
            start_us: 104 * s,
            end_us: 114 * s,
            // Two frames while filling (one of them the final diff, within
            // a diff interval of the last join), one while held.
            presence_buckets: vec![
                (101 * s / BUCKET_US, 1),
                (102 * s / BUCKET_US + 50, 1),
                (110 * s / BUCKET_US, 1),
            ],
            presence_frames: 3,
            final_counts: vec![(2, 2)],
            ..HoldPart::default()
        };
        let o = outcome(&args, 1, &[fill], &[hold], None);
        assert_eq!(o.joined, 2);
        assert!((o.fill_secs - 2.0).abs() < 1e-9);
        assert_eq!(o.presence.fill_frames, 2);
        // Member-seconds: (103 − 101) + (103 − 102) = 3.
        assert!((o.presence.fill_member_secs - 3.0).abs() < 1e-9);
        assert_eq!(o.presence.hold_frames, 1);
        assert!((o.presence.hold_per_member_per_sec - 0.05).abs() < 1e-9);
        assert_eq!((o.expected_count, o.final_count_ok), (2, 2));
    }
}
