//! Open-loop publishing for the fan-out scenario: one pacer thread decides
//! when each message is *meant* to go (so a slow node cannot slow the
//! schedule down: no coordinated omission), and one task per publisher
//! socket writes what is due, in batches, and counts `ack`s and `error`s.

use crate::conn::Ws;
use crate::report::{Counts, bump};
use crate::stats::{SeqSet, new_histogram};
use crate::wire::{self, Reply, Stamp};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// One message that is due: its sequence number and intended send time.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    /// Sequence number of its publisher.
    pub seq: u64,
    /// Intended send time, µs since the epoch.
    pub t_us: u64,
}

/// Counters the publishers share with the progress line and the driver.
#[derive(Debug, Default)]
pub struct PubCounters {
    /// Frames written.
    pub sent: AtomicU64,
    /// `ack`s and `error`s received for them.
    pub answered: AtomicU64,
    /// `error` answers.
    pub errors: AtomicU64,
    /// Due messages the pacer could not queue (a publisher's backlog was full).
    pub tool_dropped: AtomicU64,
}

/// The schedule: `rate` messages a second over all publishers, round-robin,
/// from `start_us` for `span`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// The run's epoch.
    pub epoch: Instant,
    /// First intended send time, µs since the epoch.
    pub start_us: u64,
    /// Messages per second, all publishers together.
    pub rate: f64,
    /// How long to publish.
    pub span: Duration,
}

/// Runs the pacer on its own OS thread (tokio's timer has 1 ms steps; a
/// thread sleep is within ~0.1 ms): at each intended time it hands the job
/// to its publisher's queue. Returns when the schedule is done or `abort`.
pub fn spawn_pacer(
    sched: Schedule,
    queues: Vec<mpsc::Sender<Job>>,
    counters: Arc<PubCounters>,
    abort: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let p = queues.len().max(1) as u64;
        let interval_us = 1e6 / sched.rate.max(1e-3);
        let total = (sched.rate * sched.span.as_secs_f64()).floor() as u64;
        for j in 0..total {
            if abort.load(Ordering::Relaxed) {
                break;
            }
            let t_us = sched.start_us + (j as f64 * interval_us) as u64;
            let due = sched.epoch + Duration::from_micros(t_us);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let job = Job { seq: j / p, t_us };
            if queues[(j % p) as usize].try_send(job).is_err() {
                counters.tool_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// What one publisher saw.
#[derive(Debug)]
pub struct PubStats {
    /// Sequence numbers the node acked.
    pub acked: SeqSet,
    /// Frames written.
    pub sent: u64,
    /// `error` answers by code.
    pub errors: Counts,
    /// Intended send time → ack, µs.
    pub ack_latency: Histogram<u64>,
    /// Intended → actual write time, µs: the tool's own scheduling delay.
    pub send_lag: Histogram<u64>,
    /// Why the socket ended early, if it did.
    pub closed: Option<String>,
}

impl PubStats {
    /// Nothing seen yet.
    pub fn new() -> PubStats {
        PubStats {
            acked: SeqSet::default(),
            sent: 0,
            errors: Counts::new(),
            ack_latency: new_histogram(),
            send_lag: new_histogram(),
            closed: None,
        }
    }
}

/// Drives one publisher socket: writes due jobs in batches (feed, flush
/// once), and reads answers until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn publisher(
    number: u32,
    mut ws: Ws,
    mut jobs: mpsc::Receiver<Job>,
    room: String,
    size: usize,
    epoch: Instant,
    counters: Arc<PubCounters>,
    stop: CancellationToken,
) -> PubStats {
    let mut st = PubStats::new();
    // Intended send time of each sequence number, for ack latency.
    let mut intended: Vec<u64> = Vec::new();
    let mut jobs_open = true;
    let mut batch: Vec<Job> = Vec::with_capacity(256);
    // One registration for the task's life, on its own child token: polling
    // a fresh `cancelled()` per frame would lock the shared token each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            msg = ws.next() => match msg {
                Some(Ok(WsMessage::Text(t))) => {
                    if wire::is_message(&t) {
                        continue;
                    }
                    let now_us = epoch.elapsed().as_micros() as u64;
                    match wire::parse_reply(&t) {
                        Reply::Ack(r) => {
                            counters.answered.fetch_add(1, Ordering::Relaxed);
                            if st.acked.insert(r)
                                && let Some(&t0) = intended.get(r as usize)
                            {
                                st.ack_latency.saturating_record(now_us.saturating_sub(t0).max(1));
                            }
                        }
                        Reply::Error(code, r) => {
                            if r.is_some() {
                                counters.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            bump(&mut st.errors, code);
                        }
                        Reply::Other => {}
                    }
                }
                Some(Ok(WsMessage::Close(c))) => {
                    st.closed = Some(format!("closed by node: {c:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    st.closed = Some(format!("socket error: {e}"));
                    break;
                }
                None => {
                    st.closed = Some("socket ended".into());
                    break;
                }
            },
            n = jobs.recv_many(&mut batch, 256), if jobs_open => {
                if n == 0 {
                    jobs_open = false;
                    continue;
                }
                if let Err(e) = write_batch(&mut ws, &mut batch, &mut intended, &room, size, number, epoch, &mut st).await {
                    st.closed = Some(format!("write failed: {e}"));
                    break;
                }
                counters.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    crate::conn::close(ws).await;
    st
}

#[allow(clippy::too_many_arguments)]
async fn write_batch(
    ws: &mut Ws,
    batch: &mut Vec<Job>,
    intended: &mut Vec<u64>,
    room: &str,
    size: usize,
    number: u32,
    epoch: Instant,
    st: &mut PubStats,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    for job in batch.drain(..) {
        let stamp = Stamp {
            publisher: number,
            seq: job.seq,
            t_us: job.t_us,
        };
        let seq = job.seq as usize;
        if intended.len() <= seq {
            intended.resize(seq + 1, 0);
        }
        intended[seq] = job.t_us;
        let now_us = epoch.elapsed().as_micros() as u64;
        st.send_lag
            .saturating_record(now_us.saturating_sub(job.t_us).max(1));
        ws.feed(WsMessage::text(wire::send_frame(room, stamp, size)))
            .await?;
        st.sent += 1;
    }
    ws.flush().await
}
