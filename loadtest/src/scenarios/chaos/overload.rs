//! The `overload` fault: one node's fan-out made unable to keep up for a
//! bounded time, and what that node's memory did meanwhile.
//!
//! The flood: `readers` sockets that read (and discard) everything, joined
//! to the first room on the victim node (the last one, where the round's
//! subscribers are), and a few flood publishers on the first node sending
//! `rate` messages a second into that room, open loop, for `for`. Every
//! message is to be written to every reader: far more than the node can
//! deliver on this machine, so its fan-out falls behind, its inbox fills,
//! and (past the node's lag bound, 5 s) it drops its Redis subscriber
//! connection and repairs from history what it missed, announcing with
//! `gap` what history no longer holds. The round's subscribers read through
//! all of it and are accounted as in every round.
//!
//! The watch: the victim's RSS every 250 ms for the whole round, and its
//! `/metrics` (bus lag, bus reconnects, slow consumers cut, holes announced)
//! every 250 ms, from separate tasks so that a slow `/metrics` never delays
//! an RSS sample.

use super::probe;
use super::shared::Shared;
use crate::conn::{self, Target, Ws};
use crate::procfs;
use crate::report::{Counts, bump};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// How big the flood is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overload {
    /// Reading sockets on the victim node, in the first room.
    pub readers: u32,
    /// Flood messages per second, all flood publishers together.
    pub rate: u32,
    /// Text size of a flood message, bytes.
    pub size: u32,
    /// How long the flood lasts, ms.
    pub for_ms: u64,
}

impl Default for Overload {
    fn default() -> Overload {
        Overload {
            readers: 3000,
            rate: 2000,
            size: 200,
            for_ms: 15_000,
        }
    }
}

impl Overload {
    /// The flood's length.
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.for_ms)
    }

    /// Reads `readers=N:rate=N:size=N:for=DURATION` (any of them, any order).
    pub fn parse(spec: &str) -> Result<Overload, String> {
        let mut o = Overload::default();
        for part in spec.split(':').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected key=value"))?;
            let num = || {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("`{part}`: not a positive number"))
            };
            match k {
                "readers" => o.readers = num()?,
                "rate" => o.rate = num()?,
                "size" => o.size = num()?,
                "for" => {
                    let d = crate::cli::parse_duration(v)?;
                    o.for_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                }
                _ => return Err(format!("`{k}`: one of readers, rate, size, for")),
            }
        }
        Ok(o)
    }
}

impl fmt::Display for Overload {
    /// Empty for the defaults, else `:readers=..:rate=..:size=..:for=..ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Overload::default() {
            return Ok(());
        }
        write!(
            f,
            ":readers={}:rate={}:size={}:for={}ms",
            self.readers, self.rate, self.size, self.for_ms
        )
    }
}

/// Flood publishers (on the first node).
const FLOOD_PUBLISHERS: u32 = 4;
/// Readers being opened at once.
const OPEN_CONCURRENCY: usize = 64;

/// What the flood did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Flood {
    /// Readers asked for, on node `node`.
    pub readers_asked: u64,
    /// The victim node (index).
    pub node: usize,
    /// Readers that joined.
    pub readers: u64,
    /// Readers that could not connect or join, by cause.
    pub reader_errors: Counts,
    /// Readers the node closed before the flood ended, by reason (4002: a
    /// slow consumer cut off).
    pub readers_cut: Counts,
    /// Seconds to open the readers.
    pub open_secs: f64,
    /// Flood messages asked per second.
    pub rate: f64,
    /// How long the flood ran, s.
    pub flood_secs: f64,
    /// Flood messages sent, acked and refused.
    pub sent: u64,
    /// Acked.
    pub acked: u64,
    /// Refused.
    pub refused: u64,
    /// Messages the readers read, all together.
    pub reader_frames: u64,
    /// When the flood started and stopped, µs since the round's epoch.
    pub flood_start_us: u64,
    /// Stopped.
    pub flood_end_us: u64,
}

/// One reader: reads until `stop`; why the node ended it, if it did.
async fn read(mut ws: Ws, frames: Arc<AtomicU64>, stop: CancellationToken) -> Option<String> {
    let stop = stop.child_token();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut n = 0u64;
    let ended = loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break None,
            m = ws.next() => match m {
                Some(Ok(WsMessage::Text(_))) => n += 1,
                Some(Ok(WsMessage::Close(c))) => {
                    break Some(format!("close {}", c.map_or(0, |c| u16::from(c.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(format!("error: {e}")),
                None => break Some("ended".into()),
            },
        }
    };
    frames.fetch_add(n, Ordering::Relaxed);
    if ended.is_none() {
        drop(ws); // no close handshake: a thousand closes would queue behind the flood
    }
    ended
}

/// A flood publisher: sends one message per `period` until `stop`, reading
/// (and discarding) what comes back; (sent, acked, refused).
async fn publish(
    mut ws: Ws,
    room: String,
    number: u32,
    period: Duration,
    size: usize,
    stop: CancellationToken,
) -> (u64, u64, u64) {
    let (mut sent, mut acked, mut refused) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let pad = "f".repeat(size);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(WsMessage::Text(t))) => {
                    if t.starts_with(r#"{"type":"ack""#) {
                        acked += 1;
                    } else if t.starts_with(r#"{"type":"error""#) {
                        refused += 1;
                    }
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                sent += 1;
                // Not a bench stamp: the round's subscribers skip it.
                let text = format!("flood {number} {sent} {pad}");
                let frame = serde_json::json!({"type": "send", "room": room, "text": text});
                if ws.send(WsMessage::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(ws);
    (sent, acked, refused)
}

/// Runs the flood: readers on `victim`, publishers on `home`, into `room`.
pub async fn flood(
    shared: &Shared,
    (victim, home): (usize, usize),
    room: &str,
    spec: Overload,
) -> anyhow::Result<Flood> {
    let nodes = &shared.nodes;
    let mut out = Flood {
        readers_asked: u64::from(spec.readers),
        node: victim,
        rate: f64::from(spec.rate),
        ..Flood::default()
    };
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    let frames = Arc::new(AtomicU64::new(0));
    let opened = tokio::time::Instant::now();
    let target = nodes[victim % nodes.len()];
    let mut readers: Vec<JoinHandle<Option<String>>> = Vec::new();
    let query = format!("name=reader&room={room}");
    let mut results = futures_util::stream::iter(0..spec.readers as usize)
        .map(|i| {
            // Two source addresses of their own: the round's other clients use 127.0.0.1.
            let t = Target {
                node: target,
                source: std::net::Ipv4Addr::new(127, 0, 0, if i % 2 == 0 { 2 } else { 3 }),
            };
            let q = query.clone();
            async move { conn::open(&t, &q).await }
        })
        .buffer_unordered(OPEN_CONCURRENCY);
    while let Some(r) = results.next().await {
        match r {
            Ok(ws) => {
                out.readers += 1;
                readers.push(tokio::spawn(read(ws, frames.clone(), stop.clone())));
            }
            Err(e) => bump(&mut out.reader_errors, e.label()),
        }
    }
    out.open_secs = opened.elapsed().as_secs_f64();
    let period = Duration::from_secs_f64(f64::from(FLOOD_PUBLISHERS) / f64::from(spec.rate.max(1)));
    let home_addr: SocketAddr = nodes[home % nodes.len()];
    let mut pubs = Vec::new();
    for n in 0..FLOOD_PUBLISHERS {
        let t = Target {
            node: home_addr,
            source: std::net::Ipv4Addr::LOCALHOST,
        };
        let ws = conn::open(&t, &format!("name=flood-{n}&room={room}"))
            .await
            .map_err(|e| anyhow::anyhow!("flood publisher {n}: {}", e.label()))?;
        let publish = publish(
            ws,
            room.to_owned(),
            n,
            period,
            spec.size as usize,
            stop.clone(),
        );
        pubs.push(tokio::spawn(publish));
    }
    out.flood_start_us = shared.now_us();
    tokio::time::sleep(spec.duration()).await;
    stop.cancel();
    out.flood_end_us = shared.now_us();
    out.flood_secs = (out.flood_end_us - out.flood_start_us) as f64 / 1e6;
    for p in pubs {
        if let Ok((s, a, r)) = p.await {
            out.sent += s;
            out.acked += a;
            out.refused += r;
        }
    }
    for r in readers {
        if let Ok(Some(reason)) = r.await {
            bump(&mut out.readers_cut, reason);
        }
    }
    out.reader_frames = frames.load(Ordering::Relaxed);
    Ok(out)
}

/// The victim's counters that the memory table shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Gauges {
    /// `banter_bus_lag_seconds`.
    pub lag_seconds: Option<f64>,
    /// `banter_bus_reconnects_total`.
    pub reconnects: Option<f64>,
    /// `banter_slow_consumers_total`.
    pub slow_consumers: Option<f64>,
    /// `banter_bus_gaps_total{outcome="unrepaired"}`.
    pub gaps_unrepaired: Option<f64>,
    /// `banter_connections`.
    pub connections: Option<f64>,
}

impl Gauges {
    fn parse(text: &str) -> Gauges {
        let n = super::probe::NodeCounters::parse(text);
        Gauges {
            lag_seconds: probe::sample(text, "banter_bus_lag_seconds", None),
            reconnects: n.bus_reconnects,
            slow_consumers: probe::sample(text, "banter_slow_consumers_total", None),
            gaps_unrepaired: n.gaps_unrepaired,
            connections: probe::sample(text, "banter_connections", None),
        }
    }
}

/// What the watch saw of the victim node over the round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    /// The node watched (index).
    pub node: usize,
    /// RSS samples: (ms since the round's epoch, KiB).
    pub rss_kib: Vec<(f64, u64)>,
    /// RSS when the round's publishing began.
    pub rss_start_kib: u64,
    /// RSS with the readers joined, just before the flood.
    pub rss_readers_kib: u64,
    /// RSS when the flood stopped (the readers still there).
    pub rss_flood_end_kib: u64,
    /// (flood end − flood start) RSS per second of flood, KiB/s.
    pub rss_growth_kib_per_sec: f64,
    /// The most RSS any sample saw.
    pub rss_max_kib: u64,
    /// When it was seen, ms since the round's epoch.
    pub rss_max_at_ms: f64,
    /// The last sample (after the drain, the readers gone).
    pub rss_end_kib: u64,
    /// `/metrics` readings taken / that failed (a node too busy to answer
    /// within 2 s).
    pub metrics_samples: (u64, u64),
    /// The first reading and the last.
    pub first: Gauges,
    /// The last.
    pub last: Gauges,
    /// The largest `banter_bus_lag_seconds` read.
    pub lag_max_seconds: Option<f64>,
    /// When the first bus reconnect was seen, ms since the round's epoch.
    pub first_reconnect_ms: Option<f64>,
    /// Redis beside it: (ms, `used_memory` bytes, the largest output buffer
    /// of a pub/sub client (`omem`, bytes): where what a node does not read waits).
    pub redis: Vec<(f64, u64, u64)>,
    /// The largest `omem` of a pub/sub client seen, bytes.
    pub redis_omem_max: u64,
    /// The largest `used_memory` seen, bytes.
    pub redis_used_max: u64,
}

impl Memory {
    /// `last − first` of a counter.
    pub fn delta(&self, f: impl Fn(&Gauges) -> Option<f64>) -> Option<f64> {
        Some(f(&self.last)? - f(&self.first).unwrap_or(0.0))
    }
}

/// `/metrics` readings taken, failed, and each good one with its time (ms).
type Readings = (u64, u64, Vec<(f64, Gauges)>);

/// A running watch of one node.
#[derive(Debug)]
pub struct Watch {
    stop: CancellationToken,
    rss: JoinHandle<Vec<(f64, u64)>>,
    metrics: JoinHandle<Readings>,
    redis: JoinHandle<Vec<(f64, u64, u64)>>,
    node: usize,
}

const EVERY: Duration = Duration::from_millis(250);

impl Watch {
    /// Starts sampling node `node` (process `pid`, HTTP on `addr`), and the
    /// Redis on `redis_port`.
    pub fn start(
        shared: &Arc<Shared>,
        node: usize,
        (pid, addr): (u32, SocketAddr),
        redis_port: u16,
    ) -> Watch {
        let stop = CancellationToken::new();
        let redis = {
            let (stop, shared) = (stop.clone(), shared.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut tick = tokio::time::interval(EVERY);
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {
                            let at = shared.now_us() as f64 / 1000.0;
                            if let Some((used, omem)) = redis_memory(redis_port).await {
                                out.push((at, used, omem));
                            }
                        }
                    }
                }
                out
            })
        };
        let rss = {
            let (stop, shared) = (stop.clone(), shared.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut tick = tokio::time::interval(EVERY);
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {
                            if let Some(kib) = procfs::rss_kib(pid) {
                                out.push((shared.now_us() as f64 / 1000.0, kib));
                            }
                        }
                    }
                }
                if let Some(kib) = procfs::rss_kib(pid) {
                    out.push((shared.now_us() as f64 / 1000.0, kib));
                }
                out
            })
        };
        let metrics = {
            let (stop, shared) = (stop.clone(), shared.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut out) = (0, 0, Vec::new());
                let mut tick = tokio::time::interval(EVERY);
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tick.tick() => {
                            let at = shared.now_us() as f64 / 1000.0;
                            match probe::http_get(addr, "/metrics", Duration::from_secs(2)).await {
                                Ok((200, text)) => {
                                    ok += 1;
                                    out.push((at, Gauges::parse(&text)));
                                }
                                _ => failed += 1,
                            }
                        }
                    }
                }
                (ok, failed, out)
            })
        };
        Watch {
            stop,
            rss,
            metrics,
            redis,
            node,
        }
    }

    /// Stops the watch; what it saw, with `start_us` (publishing's start) and
    /// `flood_us` (the flood's start and end) marking the samples to name.
    pub async fn finish(self, start_us: u64, flood_us: Option<(u64, u64)>) -> Memory {
        self.stop.cancel();
        let rss = self.rss.await.unwrap_or_default();
        let (ok, failed, gauges) = self.metrics.await.unwrap_or_default();
        let redis = self.redis.await.unwrap_or_default();
        let at_or_before = |t_us: u64| {
            let t = t_us as f64 / 1000.0;
            rss.iter()
                .take_while(|(at, _)| *at <= t)
                .last()
                .or(rss.first())
                .map_or(0, |(_, k)| *k)
        };
        let (max_at, max) = rss
            .iter()
            .copied()
            .max_by_key(|(_, k)| *k)
            .unwrap_or_default();
        let first_reconnect_ms = gauges.first().and_then(|(_, g0)| {
            let base = g0.reconnects.unwrap_or(0.0);
            gauges
                .iter()
                .find(|(_, g)| g.reconnects.is_some_and(|r| r > base))
                .map(|(at, _)| *at)
        });
        Memory {
            node: self.node,
            rss_start_kib: at_or_before(start_us),
            rss_readers_kib: flood_us.map_or(0, |f| at_or_before(f.0)),
            rss_flood_end_kib: flood_us.map_or(0, |f| at_or_before(f.1)),
            rss_growth_kib_per_sec: flood_us.map_or(0.0, |(a, b)| {
                (at_or_before(b) as f64 - at_or_before(a) as f64) / ((b - a) as f64 / 1e6).max(1e-3)
            }),
            rss_max_kib: max,
            rss_max_at_ms: max_at,
            rss_end_kib: rss.last().map_or(0, |(_, k)| *k),
            metrics_samples: (ok, failed),
            first: gauges.first().map(|(_, g)| *g).unwrap_or_default(),
            last: gauges.last().map(|(_, g)| *g).unwrap_or_default(),
            lag_max_seconds: gauges
                .iter()
                .filter_map(|(_, g)| g.lag_seconds)
                .reduce(f64::max),
            first_reconnect_ms,
            rss_kib: rss,
            redis_omem_max: redis.iter().map(|r| r.2).max().unwrap_or(0),
            redis_used_max: redis.iter().map(|r| r.1).max().unwrap_or(0),
            redis,
        }
    }
}

/// Redis's `used_memory` and the largest output buffer (`omem`) of a pub/sub client.
async fn redis_memory(port: u16) -> Option<(u64, u64)> {
    let t = Duration::from_secs(2);
    let info = probe::redis(port, &["INFO", "memory"], t).await.ok()?;
    let used = info
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())?;
    let clients = probe::redis(port, &["CLIENT", "LIST", "TYPE", "pubsub"], t)
        .await
        .ok()?;
    Some((used, max_omem(&clients.text())))
}

/// The largest `omem=` of a `CLIENT LIST` reply.
fn max_omem(list: &str) -> u64 {
    list.lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("omem="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// Waits (bounded) until `addr`'s fan-out has caught up after the flood:
/// `banter_bus_lag_seconds` under a quarter second on two readings in a row.
pub async fn caught_up(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut good = 0;
    while tokio::time::Instant::now() < deadline {
        if let Ok((200, text)) = probe::http_get(addr, "/metrics", Duration::from_secs(2)).await {
            let lag = probe::sample(&text, "banter_bus_lag_seconds", None);
            good = if lag.is_some_and(|l| l < 0.25) {
                good + 1
            } else {
                0
            };
            if good >= 2 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        assert_eq!(Overload::parse(""), Ok(Overload::default()));
        let o = Overload::parse("readers=10:for=2s").unwrap();
        assert_eq!((o.readers, o.rate, o.for_ms), (10, 2000, 2000));
        assert_eq!(o.to_string(), ":readers=10:rate=2000:size=200:for=2000ms");
        assert_eq!(Overload::parse(&o.to_string()), Ok(o));
        assert_eq!(Overload::default().to_string(), "");
        assert!(Overload::parse("readers=0").is_err());
        assert!(Overload::parse("speed=3").is_err());
        assert!(Overload::parse("readers").is_err());
    }

    #[test]
    fn output_buffers_are_read() {
        let list = "id=3 addr=127.0.0.1:5 fd=8 name= age=1 omem=0 cmd=subscribe\n\
                    id=4 addr=127.0.0.1:6 fd=9 name= age=1 omem=9437184 cmd=subscribe\n";
        assert_eq!(max_omem(list), 9_437_184);
        assert_eq!(max_omem(""), 0);
    }

    #[test]
    fn gauges_are_read() {
        let text = "banter_bus_lag_seconds{node=\"b\"} 5.5\nbanter_bus_reconnects_total{node=\"b\"} 2\n\
                    banter_slow_consumers_total{node=\"b\"} 7\nbanter_connections{node=\"b\"} 3003\n\
                    banter_connections_total{node=\"b\"} 9000\n";
        let g = Gauges::parse(text);
        assert_eq!(g.lag_seconds, Some(5.5));
        assert_eq!(g.reconnects, Some(2.0));
        assert_eq!(g.slow_consumers, Some(7.0));
        assert_eq!(g.connections, Some(3003.0));
        assert_eq!(g.gaps_unrepaired, None);
    }
}
