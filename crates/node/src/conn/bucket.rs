//! The rate limit on a client's frames: a token bucket (`limits.rate_per_sec`,
//! `limits.burst`) whose refusals are `error rate_limited`, and the flood
//! detector behind close 1008.

use banter_protocol::CloseReason;
use std::time::Duration;
use tokio::time::Instant;

/// The flood detector's window: a client that sends [`FLOOD_FACTOR`] times
/// its rate for this long (plus its burst) is closed with 1008.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// How many times the allowed rate counts as flooding.
const FLOOD_FACTOR: u64 = 3;

/// See the module docs.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Frames received in the current window.
    window_frames: u64,
    window_start: Instant,
    /// Frames in one window that count as flooding.
    flood_frames: u64,
}

impl Bucket {
    pub fn new(rate_per_sec: u32, burst: u32) -> Bucket {
        let now = Instant::now();
        let window = FLOOD_WINDOW.as_secs();
        Bucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            window_frames: 0,
            window_start: now,
            flood_frames: FLOOD_FACTOR * u64::from(rate_per_sec) * window + u64::from(burst),
        }
    }

    /// Takes a token: `Ok(true)` to process the frame, `Ok(false)` to refuse
    /// it, `Err` when the client floods.
    pub fn take(&mut self, now: Instant) -> Result<bool, CloseReason> {
        if now.duration_since(self.window_start) >= FLOOD_WINDOW {
            self.window_start = now;
            self.window_frames = 0;
        }
        self.window_frames += 1;
        if self.window_frames > self.flood_frames {
            return Err(CloseReason::Policy);
        }
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(true)
        } else {
            Ok(false)
        }
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
        // 3 × 2/s × 10 s + 4 = 64 frames in one window are tolerated.
        for _ in 0..64 {
            assert!(bucket.take(Instant::now()).is_ok());
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(bucket.take(Instant::now()), Err(CloseReason::Policy));
    }
}
