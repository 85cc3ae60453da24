//! The rate limit on a client's frames: a token bucket (`limits.rate_per_sec`,
//! `limits.burst`) whose refusals are `error rate_limited`, charged by what
//! a request costs; and the flood detector behind close 1008, over a
//! sliding window. Time the node itself spent waiting (on Redis, for this
//! client's own request) is not charged to the client: frames it sent
//! meanwhile at its allowed rate are not refused when they are read in a
//! burst afterwards.

use banter_protocol::CloseReason;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The flood detector's window: a client that sends [`FLOOD_FACTOR`] times
/// its rate over any such span (plus its burst) is closed with 1008.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// How many times the allowed rate counts as flooding.
const FLOOD_FACTOR: u64 = 3;
/// The window is counted in slices this long: it slides by one slice.
const FLOOD_SLICE: Duration = Duration::from_millis(250);
/// At most this much of the node's own waiting is credited to a client.
const MAX_CREDIT: Duration = Duration::from_secs(10);

/// See the module docs.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    /// May go below zero: a costly request paid on credit.
    tokens: f64,
    /// Tokens above `burst` the node owes for its own waiting.
    credit: f64,
    last: Instant,
    /// Frames per slice over the last window, newest last, each with the
    /// slice's start.
    slices: VecDeque<(Instant, u64)>,
    /// Frames in `slices`.
    in_window: u64,
    /// Frames in one window that count as flooding.
    flood_frames: u64,
}

impl Bucket {
    pub fn new(rate_per_sec: u32, burst: u32) -> Bucket {
        let window = FLOOD_WINDOW.as_secs();
        Bucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            credit: 0.0,
            last: Instant::now(),
            slices: VecDeque::new(),
            in_window: 0,
            flood_frames: FLOOD_FACTOR * u64::from(rate_per_sec) * window + u64::from(burst),
        }
    }

    /// Takes a token for a frame: `Ok(true)` to process it, `Ok(false)` to
    /// refuse it, `Err` when the client floods.
    pub fn take(&mut self, now: Instant) -> Result<bool, CloseReason> {
        self.count(now)?;
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst + self.credit);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if self.tokens <= self.burst {
                self.credit = 0.0; // what the node owed is spent
            }
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Charges `cost` more tokens for a request that turned out costly (a
    /// history page of many messages): the bucket may go into debt, and the
    /// client's next frames wait for it to be repaid.
    pub fn charge(&mut self, cost: f64) {
        self.tokens -= cost;
    }

    /// The node spent `waited` on the client's own request: what the client
    /// sent meanwhile at its rate is not held against it.
    pub fn node_waited(&mut self, waited: Duration) {
        let max = MAX_CREDIT.as_secs_f64() * self.rate;
        self.credit = (self.credit + waited.as_secs_f64() * self.rate).min(max);
    }

    /// Counts a frame in the sliding window.
    fn count(&mut self, now: Instant) -> Result<(), CloseReason> {
        while let Some(&(start, n)) = self.slices.front() {
            if now.duration_since(start) < FLOOD_WINDOW {
                break;
            }
            self.in_window -= n;
            self.slices.pop_front();
        }
        match self.slices.back_mut() {
            Some((start, n)) if now.duration_since(*start) < FLOOD_SLICE => *n += 1,
            _ => self.slices.push_back((now, 1)),
        }
        self.in_window += 1;
        if self.in_window > self.flood_frames {
            return Err(CloseReason::Policy);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_passes_then_the_rate_refills() {
        let mut bucket = Bucket::new(10, 5);
        let now = Instant::now();
        let passed = (0..8).filter(|_| bucket.take(now) == Ok(true)).count();
        assert_eq!(passed, 5, "the burst, then refusals");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(bucket.take(Instant::now()), Ok(true));
        assert_eq!(bucket.take(Instant::now()), Ok(true));
        assert_eq!(
            bucket.take(Instant::now()),
            Ok(false),
            "0.2 s buys two frames"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn three_times_the_rate_for_a_window_is_a_flood() {
        let mut bucket = Bucket::new(2, 4);
        // 3 × 2/s × 10 s + 4 = 64 frames in any 10 s are tolerated.
        for _ in 0..64 {
            assert!(bucket.take(Instant::now()).is_ok());
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(bucket.take(Instant::now()), Err(CloseReason::Policy));
    }

    /// A fixed window let a flood straddling its boundary through: half of
    /// it at the end of one window, half at the start of the next.
    #[tokio::test(start_paused = true)]
    async fn a_flood_across_a_window_boundary_is_caught() {
        let mut bucket = Bucket::new(2, 4);
        tokio::time::advance(Duration::from_millis(9_000)).await;
        let mut closed = false;
        for _ in 0..100 {
            if bucket.take(Instant::now()).is_err() {
                closed = true;
                break;
            }
            tokio::time::advance(Duration::from_millis(20)).await;
        }
        assert!(
            closed,
            "100 frames in 2 s at 2/s is a flood wherever windows fall"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_a_client_sent_while_the_node_waited_is_not_refused() {
        let mut bucket = Bucket::new(20, 40);
        let start = Instant::now();
        assert_eq!(bucket.take(start), Ok(true));
        // The node waits 5 s on Redis for this client's request; meanwhile the
        // client sends at its rate, 100 frames, read in one burst afterwards.
        tokio::time::advance(Duration::from_secs(5)).await;
        bucket.node_waited(Duration::from_secs(5));
        let now = Instant::now();
        let passed = (0..200).filter(|_| bucket.take(now) == Ok(true)).count();
        assert_eq!(
            passed,
            100 + 39,
            "what it sent meanwhile, plus its burst, no more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_costly_request_is_paid_before_the_next() {
        let mut bucket = Bucket::new(10, 10);
        let now = Instant::now();
        assert_eq!(bucket.take(now), Ok(true));
        bucket.charge(15.0);
        assert_eq!(bucket.take(now), Ok(false), "in debt");
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(
            bucket.take(Instant::now()),
            Ok(true),
            "repaid after 0.7 s at 10/s"
        );
    }
}
