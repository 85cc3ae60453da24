//! The node's clocks and random ids: wall-clock milliseconds for what goes on
//! the wire, and compact monotonic stamps for what is measured per frame.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// When the process started, for the compact clocks.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the Unix epoch: the `ts` stamped on messages.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the process started, wrapping every ~71 minutes: a
/// 4-byte timestamp for latencies far shorter than that.
pub(crate) fn clock_us() -> u32 {
    START.elapsed().as_micros() as u32
}

/// Seconds elapsed since a [`clock_us`] stamp.
pub(crate) fn seconds_since(stamp: u32) -> f64 {
    f64::from(clock_us().wrapping_sub(stamp)) / 1e6
}

/// Whole seconds since the process started (for the stuck-write check).
pub(crate) fn clock_s() -> u32 {
    u32::try_from(START.elapsed().as_secs()).unwrap_or(u32::MAX)
}

/// A random id of `len` characters from `[a-z0-9]`.
pub fn random_id(len: usize) -> String {
    use rand::RngExt;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.random_range(0..CHARS.len())]))
        .collect()
}
