//! One round: a fresh cluster, subscribers then publishers, one fault at
//! `--fault-at`, publishing until `--after` past its end, a bounded drain,
//! the cluster stopped, and the accounting of what every client logged.

use super::cluster::{Cluster, Spec};
use super::faults::{self, Fault, Kind, Window};
use super::ledger::{self, Accounting, Acked, Key};
use super::overload::{Flood, Memory, Watch};
use super::probe::NodeCounters;
use super::publisher::{self, Outcome, Phases, PubLog, SharedPubLog};
use super::shared::{Role, Shared, stamp_key};
use super::subscriber::{self, SharedSubLog, SubLog, lock};
use crate::cli::ChaosArgs;
use crate::report::{Counts, bump, merge_counts};
use anyhow::bail;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long every client may take to join at the start.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// A drain also ends when nothing new has been read for this long (and
/// every subscriber is connected): what is missing then is not coming.
const QUIET: Duration = Duration::from_millis(1500);

/// The result of one round: one row of the table.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoundOutcome {
    /// The fault (`restart+aof`: with a persistent Redis).
    pub fault: String,
    /// Redis persisted (AOF, fsync always).
    pub persistence: bool,
    /// The fault's window, ms since the round's epoch.
    pub fault_start_ms: f64,
    /// When the cluster was whole again.
    pub fault_end_ms: f64,
    /// What the fault did.
    pub fault_notes: Vec<String>,
    /// Publishing time, s.
    pub publishing_secs: f64,
    /// Messages the rate asked for over that time.
    pub offered: u64,
    /// Messages written.
    pub sent: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages refused with an `error` (not stored: honest).
    pub refused: u64,
    /// Refusals by code.
    pub refused_by_code: Counts,
    /// Messages without an answer (the publisher's socket ended first).
    pub unanswered: u64,
    /// The (subscriber, message) classification, summed.
    pub totals: ledger::Tally,
    /// Per subscriber.
    pub per_subscriber: Vec<ledger::Tally>,
    /// Messages the nodes' gap repair re-read (`banter_bus_gap_messages_total`), if exported.
    pub repaired: Option<u64>,
    /// The nodes' counters over the round.
    pub node_counters: NodeCounters,
    /// `gap` frames read, all subscribers.
    pub gap_notices: u64,
    /// `joined` with `since` and `recovered: false` read, all subscribers.
    pub unrecovered_joins: u64,
    /// From the fault's end to the first moment a message sent after it had
    /// reached every subscriber, ms.
    pub resume_ms: Option<f64>,
    /// The longest any subscriber went without a new message of a room, ms.
    pub longest_silence_ms: f64,
    /// Subscriber and publisher sessions beyond the first (reconnects).
    pub reconnects: u64,
    /// Why client sessions ended.
    pub session_ends: Counts,
    /// A few silent losses: subscriber, publisher, seq and the acked id.
    pub lost_examples: Vec<String>,
    /// Distinct messages some subscriber lost silently.
    pub lost_messages: u64,
    /// Of those, how many the room's history still held at the end of the
    /// round (the node did not deliver what Redis kept), when it was read;
    /// the others Redis no longer has (lost there, or trimmed).
    pub lost_in_history: Option<u64>,
    /// What the flood did (`overload`).
    pub flood: Option<Flood>,
    /// The flooded node's RSS and bus counters over the round (`overload`).
    pub memory: Option<Memory>,
    /// Why the round could not run, if it could not.
    pub error: Option<String>,
}

impl RoundOutcome {
    /// Nothing silently lost, duplicated or reordered, and the round ran.
    pub fn clean(&self) -> bool {
        self.error.is_none()
            && self.totals.lost == 0
            && self.totals.duplicated == 0
            && self.totals.reordered == 0
    }
}

/// Runs one round of `fault`.
pub async fn run(args: &ChaosArgs, spec: &Spec, fault: Fault) -> anyhow::Result<RoundOutcome> {
    let mut spec = spec.clone();
    spec.redis.persistence |= fault.aof;
    let tag = fault.to_string().replace(['+', ':', '='], "-");
    let mut cluster = Cluster::start(&spec, &tag).await?;
    let nodes = cluster.addrs();
    let rooms = (0..args.rooms.max(1))
        .map(|r| format!("chaos-{r}"))
        .collect();
    let shared = Arc::new(Shared::new(nodes.clone(), rooms, args.size));
    let victim = nodes.len().saturating_sub(1);
    // The flooded node's memory, every 250 ms of the round (and that of the
    // Redis that serves the flooded room).
    let watch = match (fault.kind, cluster.node_pid(victim)) {
        (Kind::Overload, Some(pid)) => {
            let (_, redis_port) = cluster.redis().primary_of(&shared.rooms[0]).await?;
            Some(Watch::start(
                &shared,
                victim,
                (pid, nodes[victim]),
                redis_port,
            ))
        }
        _ => None,
    };
    let (m, p) = (args.subscribers, args.publishers.max(1));
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let phases = Phases {
        go: CancellationToken::new(),
        stop_send: CancellationToken::new(),
        stop: stop.clone(),
    };
    // Publishers on node 0, subscribers on the others (all on 0 with one node).
    let sub_home = |s: usize| {
        if nodes.len() > 1 {
            1 + s % (nodes.len() - 1)
        } else {
            0
        }
    };
    let subs: Vec<SharedSubLog> = (0..m)
        .map(|_| Arc::new(Mutex::new(SubLog::default())))
        .collect();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for (s, log) in subs.iter().enumerate() {
        let run = subscriber::run(sub_home(s), shared.clone(), log.clone(), stop.clone());
        tasks.push(tokio::spawn(run));
    }
    if !shared.wait_ready(m, 0, JOIN_TIMEOUT).await {
        bail!(
            "subscribers did not all join within {JOIN_TIMEOUT:?}:\n{}",
            cluster.log_tail()
        );
    }
    let period = Duration::from_secs_f64(p as f64 / args.rate.max(0.1));
    let pubs: Vec<SharedPubLog> = (0..p)
        .map(|_| Arc::new(Mutex::new(PubLog::default())))
        .collect();
    for (i, log) in pubs.iter().enumerate() {
        let room = i % args.rooms.max(1);
        let run = publisher::run(
            i as u32,
            0,
            room,
            period,
            shared.clone(),
            log.clone(),
            phases.clone(),
        );
        tasks.push(tokio::spawn(run));
    }
    if !shared.wait_ready(m, p, JOIN_TIMEOUT).await {
        bail!(
            "publishers did not all join within {JOIN_TIMEOUT:?}:\n{}",
            cluster.log_tail()
        );
    }
    phases.go.cancel();
    let start = tokio::time::Instant::now();
    let start_us = shared.now_us();
    tokio::time::sleep_until(start + args.fault_at).await;
    let window = faults::inject(fault, &mut cluster, &shared, (m, p), args.hold, victim).await?;
    let fault_end = shared.epoch + Duration::from_micros(window.end_us);
    let end = (start + args.duration).max(tokio::time::Instant::from_std(fault_end) + args.after);
    tokio::time::sleep_until(end).await;
    phases.stop_send.cancel();
    let publishing_secs = (shared.now_us() - start_us) as f64 / 1e6;
    drain(&shared, &subs, &pubs, m, args.drain).await;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let memory = match watch {
        Some(w) => Some(
            w.finish(
                start_us,
                window
                    .flood
                    .as_ref()
                    .map(|f| (f.flood_start_us, f.flood_end_us)),
            )
            .await,
        ),
        None => None,
    };
    let counters = cluster.counters().await;
    let (mut o, lost) = outcome(
        fault,
        spec.redis.persistence,
        args,
        &window,
        publishing_secs,
        counters,
        &subs,
        &pubs,
    );
    if !lost.is_empty() {
        o.lost_in_history = in_history(&cluster, &shared, &lost).await;
    }
    cluster.stop().await;
    o.flood = window.flood;
    o.memory = memory;
    Ok(o)
}

/// Waits until every publisher has its answers and every subscriber has
/// read every acked message; or nothing new came for [`QUIET`] with every
/// subscriber connected; or `limit`.
async fn drain(
    shared: &Shared,
    subs: &[SharedSubLog],
    pubs: &[SharedPubLog],
    m: usize,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    let (mut last_events, mut last_change) = (0usize, tokio::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let mut acked: Vec<Vec<Key>> = vec![Vec::new(); shared.rooms.len()];
        let mut pending = false;
        for (i, log) in pubs.iter().enumerate() {
            let room = i % shared.rooms.len();
            for (seq, s) in lock(log).sent.iter().enumerate() {
                match s.outcome {
                    Outcome::Pending => pending = true,
                    Outcome::Acked { .. } => acked[room].push((i as u32, seq as u64)),
                    _ => {}
                }
            }
        }
        let mut events = 0;
        let mut complete = !pending;
        for log in subs {
            let l = lock(log);
            events += l.events.len();
            complete &= acked.iter().enumerate().all(|(r, keys)| {
                keys.iter()
                    .all(|k| l.read.get(r).is_some_and(|set| set.contains(k)))
            });
        }
        if complete {
            return;
        }
        let now = tokio::time::Instant::now();
        if events != last_events {
            (last_events, last_change) = (events, now);
        } else if !pending && shared.ready(Role::Subscriber) >= m && now - last_change >= QUIET {
            return;
        }
    }
}

/// How many of the `lost` messages the rooms' histories hold now (`None`:
/// a history could not be read).
async fn in_history(cluster: &Cluster, shared: &Shared, lost: &ledger::LostSet) -> Option<u64> {
    let mut held = 0;
    for (r, room) in shared.rooms.iter().enumerate() {
        if !lost.iter().any(|(lr, _)| *lr == r) {
            continue;
        }
        let texts = cluster.redis().history_texts(room).await.ok()?;
        let keys: std::collections::HashSet<Key> =
            texts.iter().filter_map(|t| stamp_key(t)).collect();
        held += lost
            .iter()
            .filter(|(lr, k)| *lr == r && keys.contains(k))
            .count() as u64;
    }
    Some(held)
}

/// The round's row, and every message lost silently (room, key).
#[allow(clippy::too_many_arguments)]
fn outcome(
    fault: Fault,
    persistence: bool,
    args: &ChaosArgs,
    window: &Window,
    publishing_secs: f64,
    counters: NodeCounters,
    subs: &[SharedSubLog],
    pubs: &[SharedPubLog],
) -> (RoundOutcome, ledger::LostSet) {
    let rooms = args.rooms.max(1);
    let mut o = RoundOutcome {
        fault: fault.to_string(),
        persistence,
        fault_start_ms: window.start_us as f64 / 1000.0,
        fault_end_ms: window.end_us as f64 / 1000.0,
        fault_notes: window.notes.clone(),
        publishing_secs,
        offered: (args.rate * publishing_secs).round() as u64,
        repaired: counters.gap_messages.map(|v| v as u64),
        node_counters: counters,
        ..RoundOutcome::default()
    };
    let (mut acked, mut refused, mut ids) =
        (Vec::new(), Vec::new(), std::collections::HashMap::new());
    for (i, log) in pubs.iter().enumerate() {
        let l = lock(log);
        o.reconnects += l.sessions.saturating_sub(1);
        merge_counts(&mut o.session_ends, &l.ends);
        for (seq, s) in l.sent.iter().enumerate() {
            let key = (i as u32, seq as u64);
            o.sent += 1;
            match &s.outcome {
                Outcome::Acked { ack_us, id } => {
                    acked.push(Acked {
                        key,
                        room: i % rooms,
                        sent_us: s.sent_us,
                        ack_us: *ack_us,
                    });
                    ids.insert(key, id.clone());
                }
                Outcome::Refused(code) => {
                    refused.push(key);
                    bump(&mut o.refused_by_code, code.clone());
                }
                Outcome::Pending | Outcome::Unanswered => o.unanswered += 1,
            }
        }
    }
    o.acked = acked.len() as u64;
    o.refused = refused.len() as u64;
    let events: Vec<Vec<ledger::Event>> = subs
        .iter()
        .map(|log| {
            let l = lock(log);
            o.reconnects += l.sessions.saturating_sub(1);
            merge_counts(&mut o.session_ends, &l.ends);
            l.events.clone()
        })
        .collect();
    for e in events.iter().flatten() {
        match e {
            ledger::Event::Gap { .. } => o.gap_notices += 1,
            ledger::Event::Joined {
                since: true,
                recovered: false,
                ..
            } => o.unrecovered_joins += 1,
            _ => {}
        }
    }
    let acc: Accounting = ledger::account(&acked, &refused, rooms, &events, Some(window.end_us));
    o.totals = acc.total;
    o.per_subscriber = acc.per_subscriber;
    o.resume_ms = acc.resume_us.map(|us| us as f64 / 1000.0);
    o.longest_silence_ms = acc.longest_silence_us as f64 / 1000.0;
    o.lost_examples = acc
        .lost_examples
        .iter()
        .map(|&(s, p, seq)| {
            let id = ids.get(&(p, seq)).map_or("?", String::as_str);
            format!("subscriber {s}: publisher {p} seq {seq} (id {id})")
        })
        .collect();
    o.lost_messages = acc.lost_messages.len() as u64;
    (o, acc.lost_messages)
}
