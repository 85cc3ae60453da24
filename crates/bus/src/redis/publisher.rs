//! Chat messages on one Redis are stored and published in batches: a group
//! commit. One task owns the node's publishing. It sends what is waiting as
//! one call of `lua/publish_batch.lua` and, while that call is out, lets the
//! next messages gather; when the answer is back it sends them all at once.
//!
//! - A lone message goes at once: nothing waits for a batch to fill, so a
//!   quiet room costs no latency. Under load a batch holds what arrived
//!   during one round trip, so Redis reads, runs and answers one command
//!   for many messages, writes each subscriber connection once per batch,
//!   and the node reads one reply.
//! - Busy, it lingers: when the previous call went out less than [`BUSY`]
//!   ago (the node publishes more than about 100 messages a second), the
//!   next waits [`LINGER`] for company before it goes. At 5,000 messages a
//!   second per node that makes batches of about four where the round trip
//!   alone gathered 1.3: a message costs Redis a fifth to a third less
//!   CPU, for a millisecond or two more latency (BENCHMARKS.md). On a quiet
//!   node a message still goes at once.
//! - Each message in a batch is its own step of the script: one that Redis
//!   refuses is answered with its error alone. A batch whose call fails as a
//!   whole (the connection died) answers every one of its messages with
//!   that error, as each single call did before.
//! - This node's messages reach Redis in the order they were handed over,
//!   one batch after the other, so a room's order from this node holds.
//! - Bounded: [`QUEUE`] messages wait at most (a sender then waits for room),
//!   and a call carries at most [`BATCH`] messages and about [`BATCH_BYTES`].
//!
//! On Redis Cluster a script's keys must share one slot and rooms spread
//! over all of them, so messages there keep a call each
//! ([`super::history::publish_message`]).

use super::commands::Commands;
use super::history::{Prepared, Retention};
use crate::BusError;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Stores and publishes a batch: see the script's own comment.
static PUBLISH_BATCH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/publish_batch.lua")));

/// Messages waiting for the publishing task at most.
const QUEUE: usize = 1024;
/// Messages per script call at most.
const BATCH: usize = 64;
/// About how many bytes one call carries at most (a message bigger than
/// this still goes, alone).
const BATCH_BYTES: usize = 256 * 1024;
/// A call that follows the previous one this soon finds the node busy...
const BUSY: Duration = Duration::from_millis(10);
/// ...and waits this long for more messages to go with it (tokio's timer
/// ticks in milliseconds: the wait is one to two).
const LINGER: Duration = Duration::from_millis(1);

/// Where a message was stored: its history's epoch and its stream id.
pub(super) type Stored = (String, String);

/// One message waiting, with where its answer goes.
struct Job {
    prepared: Prepared,
    answer: oneshot::Sender<Result<Stored, BusError>>,
}

/// The handle on the publishing task; the task ends when the last handle
/// is dropped.
#[derive(Debug)]
pub(super) struct Publisher {
    jobs: mpsc::Sender<Job>,
}

impl Publisher {
    pub(super) fn start(
        commands: Arc<Commands>,
        retention: Retention,
        publish: &'static str,
    ) -> Publisher {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(queue, commands, retention, publish));
        Publisher { jobs }
    }

    /// Stores and publishes one message, in a batch with whatever else is
    /// waiting.
    pub(super) async fn publish(&self, prepared: Prepared) -> Result<Stored, BusError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { prepared, answer })
            .await
            .map_err(|_| BusError::Closed)?;
        answered.await.map_err(|_| BusError::Closed)?
    }
}

async fn run(
    mut queue: mpsc::Receiver<Job>,
    commands: Arc<Commands>,
    retention: Retention,
    publish: &'static str,
) {
    let mut waiting = Vec::with_capacity(BATCH);
    let mut sent: Option<Instant> = None;
    while queue.recv_many(&mut waiting, BATCH).await > 0 {
        if waiting.len() < BATCH && sent.is_some_and(|at| at.elapsed() < BUSY) {
            tokio::time::sleep(LINGER).await;
            while waiting.len() < BATCH {
                let Ok(job) = queue.try_recv() else { break };
                waiting.push(job);
            }
        }
        sent = Some(Instant::now());
        let mut jobs = waiting.drain(..).peekable();
        while jobs.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(job) =
                jobs.next_if(|job| batch.is_empty() || bytes + job.prepared.size() <= BATCH_BYTES)
            {
                bytes += job.prepared.size();
                batch.push(job);
            }
            let answers = store(&commands, retention, publish, &batch).await;
            for (job, answer) in batch.into_iter().zip(answers) {
                // A sender that gave up waiting is no longer there to tell.
                let _ = job.answer.send(answer);
            }
        }
    }
}

/// One script call for `batch`: an answer per message, in order.
async fn store(
    commands: &Commands,
    retention: Retention,
    publish: &'static str,
    batch: &[Job],
) -> Vec<Result<Stored, BusError>> {
    let invocation = || {
        let mut invocation = PUBLISH_BATCH.prepare_invoke();
        invocation
            .arg(retention.trim())
            .arg(retention.size)
            .arg(retention.ttl_ms())
            .arg(publish);
        for Job { prepared, .. } in batch {
            invocation.key(&prepared.stream).key(&prepared.epoch);
            invocation
                .arg(&prepared.record)
                .arg(&prepared.channel)
                .arg(&prepared.head)
                .arg(&prepared.tail)
                .arg(&prepared.fresh);
        }
        invocation
    };
    let replies: Result<Vec<Stored>, BusError> = commands
        .run(|mut conn| async move { invocation().invoke_async(&mut conn).await })
        .await;
    match replies {
        Ok(replies) if replies.len() == batch.len() => replies
            .into_iter()
            .map(|(epoch, sid)| {
                if epoch.is_empty() {
                    Err(BusError::Unexpected(format!("a refused message: {sid}")))
                } else {
                    Ok((epoch, sid))
                }
            })
            .collect(),
        Ok(replies) => {
            let unexpected = format!("{} answers to {} messages", replies.len(), batch.len());
            batch
                .iter()
                .map(|_| Err(BusError::Unexpected(unexpected.clone())))
                .collect()
        }
        Err(e) => batch.iter().map(|_| Err(again(&e))).collect(),
    }
}

/// The same failure once more, for each message of a batch that failed as a
/// whole (not every error is `Clone`; those that are not are told as text).
fn again(e: &BusError) -> BusError {
    match e {
        BusError::Redis(e) => BusError::Redis(e.clone()),
        BusError::Down => BusError::Down,
        BusError::Closed => BusError::Closed,
        BusError::NotReplicated => BusError::NotReplicated,
        other => BusError::Unexpected(other.to_string()),
    }
}
