//! Every metric of the node, in one place (listed for operators in
//! `docs/operations.md`). Each series carries the `node` label, set once on
//! the registry.

use banter_protocol::ErrorCode;
use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::collections::HashMap;

/// Why a delivery or a client frame was dropped (`banter_messages_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The client's outbound queue was full (the client is then closed 4002).
    SlowConsumer,
    /// Over the rate limit: the client frame was not processed.
    RateLimited,
    /// The bus could not take a message (answered `error unavailable`).
    BusUnavailable,
    /// A bus payload that was not valid UTF-8 (never written by a Banter node).
    BadPayload,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::SlowConsumer,
        DropReason::RateLimited,
        DropReason::BusUnavailable,
        DropReason::BadPayload,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::RateLimited => "rate_limited",
            DropReason::BusUnavailable => "bus_unavailable",
            DropReason::BadPayload => "bad_payload",
        }
    }
}

/// The node's metrics. Cheap to share behind the `Node` handle; every series
/// is pre-registered, so `/metrics` shows zeros rather than missing series.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `banter_connections`: open WebSocket sessions.
    pub connections: IntGauge,
    /// `banter_connections_total`: sessions ever opened.
    pub connections_total: IntCounter,
    /// `banter_frames_received_total`: client text frames.
    pub frames_received: IntCounter,
    /// `banter_messages_published_total`: messages the bus accepted from this node's clients.
    pub published: IntCounter,
    /// `banter_messages_delivered_total`: frames handed to local sockets by the fan-out.
    pub delivered: IntCounter,
    /// `banter_bus_messages_received_total`: envelopes this node's subscriber received.
    pub bus_received: IntCounter,
    dropped: HashMap<DropReason, IntCounter>,
    /// `banter_publish_seconds`: client frame in → bus accepted.
    pub publish_seconds: Histogram,
    /// `banter_fanout_seconds`: bus delivery → written to the local socket
    /// (observed once per socket write batch, from its oldest frame).
    pub fanout_seconds: Histogram,
    /// `banter_rooms_local`: rooms with at least one member on this node.
    pub rooms_local: IntGauge,
    /// `banter_bus_up`: 1 while the bus is connected.
    pub bus_up: IntGauge,
    /// `banter_bus_reconnects_total`.
    pub bus_reconnects: IntCounter,
    /// `banter_bus_shards_up`: on Redis Cluster, the shard primaries the
    /// subscriber holds a live connection to. Registered only in cluster
    /// mode, by [`Metrics::shards_up`].
    shards_up: IntGauge,
    shards_registered: std::sync::Once,
    /// `banter_bus_gaps_total{outcome="repaired"}`: interruptions of a
    /// topic's delivery whose missed messages came from history.
    pub gaps_repaired: IntCounter,
    /// `banter_bus_gaps_total{outcome="unrepaired"}`: holes announced with `gap`.
    pub gaps_unrepaired: IntCounter,
    /// `banter_bus_gap_messages_total`: messages delivered by gap repair.
    pub gap_messages: IntCounter,
    /// `banter_bus_lag_seconds`: how long the newest batch the fan-out took
    /// had waited for it.
    pub bus_lag: Gauge,
    /// `banter_slow_consumers_total`: clients closed with 4002.
    pub slow_consumers: IntCounter,
    /// `banter_rate_limited_total`: client frames refused by the token bucket.
    pub rate_limited: IntCounter,
    errors: HashMap<ErrorCode, IntCounter>,
}

impl Metrics {
    /// Registers every series with the `node` label set to `node_id`.
    /// Sets `banter_bus_shards_up`, registering it on first use (it exists
    /// only on a node in cluster mode).
    pub fn shards_up(&self, up: usize) {
        self.shards_registered.call_once(|| {
            if let Err(e) = self.registry.register(Box::new(self.shards_up.clone())) {
                tracing::warn!(error = %e, "cannot register banter_bus_shards_up");
            }
        });
        self.shards_up.set(i64::try_from(up).unwrap_or(i64::MAX));
    }

    pub fn new(node_id: &str) -> Result<Metrics, prometheus::Error> {
        let labels = HashMap::from([("node".to_owned(), node_id.to_owned())]);
        let registry = Registry::new_custom(None, Some(labels))?;
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency.clone()))?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let vec =
            |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
                let v = IntCounterVec::new(Opts::new(name, help), &[label])?;
                registry.register(Box::new(v.clone()))?;
                Ok(v)
            };

        let dropped_vec = vec(
            "banter_messages_dropped_total",
            "Messages not delivered or not processed, by reason",
            "reason",
        )?;
        let dropped = DropReason::ALL
            .iter()
            .map(|r| (*r, dropped_vec.with_label_values(&[r.as_str()])))
            .collect();
        let errors_vec = vec(
            "banter_errors_total",
            "Error frames sent to clients, by code",
            "code",
        )?;
        let errors = ErrorCode::ALL
            .iter()
            .map(|c| (*c, errors_vec.with_label_values(&[c.as_str()])))
            .collect();
        let gaps = vec(
            "banter_bus_gaps_total",
            "Interruptions of a topic's live delivery, by outcome: repaired from history, or announced with gap",
            "outcome",
        )?;
        let bus_lag = prometheus::Gauge::new(
            "banter_bus_lag_seconds",
            "How far the fan-out is behind the bus: the wait of the newest batch it took",
        )?;
        registry.register(Box::new(bus_lag.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            connections: gauge("banter_connections", "Open WebSocket sessions")?,
            connections_total: counter("banter_connections_total", "WebSocket sessions opened")?,
            frames_received: counter(
                "banter_frames_received_total",
                "Client text frames received",
            )?,
            published: counter(
                "banter_messages_published_total",
                "Messages from this node's clients accepted by the bus",
            )?,
            delivered: counter(
                "banter_messages_delivered_total",
                "Frames handed to local sockets by the fan-out",
            )?,
            bus_received: counter(
                "banter_bus_messages_received_total",
                "Envelopes received from the bus by this node's subscriber",
            )?,
            dropped,
            publish_seconds: histogram(
                "banter_publish_seconds",
                "Client frame in to bus accepted",
            )?,
            fanout_seconds: histogram(
                "banter_fanout_seconds",
                "Bus delivery to written to the local socket",
            )?,
            rooms_local: gauge("banter_rooms_local", "Rooms with a member on this node")?,
            bus_up: gauge("banter_bus_up", "1 while the bus is connected")?,
            shards_up: IntGauge::new(
                "banter_bus_shards_up",
                "Redis Cluster shard primaries the subscriber is connected to",
            )?,
            shards_registered: std::sync::Once::new(),
            bus_reconnects: counter("banter_bus_reconnects_total", "Bus reconnections")?,
            gaps_repaired: gaps.with_label_values(&["repaired"]),
            gaps_unrepaired: gaps.with_label_values(&["unrepaired"]),
            gap_messages: counter(
                "banter_bus_gap_messages_total",
                "Messages delivered from history by gap repair",
            )?,
            bus_lag,
            slow_consumers: counter(
                "banter_slow_consumers_total",
                "Clients closed because their outbound queue overflowed",
            )?,
            rate_limited: counter(
                "banter_rate_limited_total",
                "Client frames refused by the rate limit",
            )?,
            errors,
            registry,
        })
    }

    /// Counts one dropped message.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// Counts `n` messages dropped for `reason`.
    pub fn dropped_n(&self, reason: DropReason, n: usize) {
        if let Some(c) = self.dropped.get(&reason) {
            c.inc_by(n as u64);
        }
    }

    /// Counts one error frame sent.
    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(&code) {
            c.inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encode error: {e}\n"))
    }
}
