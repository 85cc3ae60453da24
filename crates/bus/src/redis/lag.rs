//! [`Lag`]: how far behind the bus the subscriber reads.

use std::time::Duration;

/// How far behind the bus the node reads, from the stream ids of the
/// messages it takes: each carries Redis's clock when it was stored. The
/// smallest difference to the node's clock seen so far stands for the
/// clocks' offset plus the network's latency; what a message's difference
/// exceeds it by is how long it waited to be read (in the client library's
/// unbounded buffer, while the fan-out was behind). The floor creeps up by
/// [`LAG_FLOOR_CREEP`] of the time that passes, so a clock that steps
/// forward is absorbed instead of counting as lag for ever.
#[derive(Debug, Default)]
pub(super) struct Lag {
    floor: Option<(i64, u64)>,
    /// The lag of the newest message read.
    pub(super) now: Duration,
}

/// The share of elapsed time by which [`Lag`]'s floor may rise (1 %).
const LAG_FLOOR_CREEP: u64 = 100;

impl Lag {
    /// Notes a message stored at `stored_ms` (Redis's clock) read at
    /// `now_ms` (ours); returns its lag.
    pub(super) fn observe(&mut self, stored_ms: u64, now_ms: u64) -> Duration {
        let difference = i64::try_from(now_ms).unwrap_or(i64::MAX)
            - i64::try_from(stored_ms).unwrap_or(i64::MAX);
        // The floor as of `now_ms`: where it was set, risen since.
        let risen = self.floor.map(|(floor, at)| {
            let creep =
                i64::try_from(now_ms.saturating_sub(at) / LAG_FLOOR_CREEP).unwrap_or(i64::MAX);
            floor.saturating_add(creep)
        });
        let floor = match risen {
            Some(floor) if floor <= difference => floor,
            _ => {
                self.floor = Some((difference, now_ms));
                difference
            }
        };
        self.now = Duration::from_millis(u64::try_from(difference - floor).unwrap_or(0));
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    #[test]
    fn lag_is_what_a_message_waited_beyond_the_clocks_offset() {
        let mut lag = Lag::default();
        // Redis's clock runs 3 s ahead of ours; messages read at once.
        assert_eq!(ms(lag.observe(13_000, 10_000)), 0);
        assert_eq!(ms(lag.observe(13_010, 10_010)), 0);
        // One read 2 s after it was stored (less the floor's 1 % creep).
        assert_eq!(ms(lag.observe(13_020, 12_020)), 2_000 - 20);
        // A faster read lowers the floor at once.
        assert_eq!(ms(lag.observe(14_100, 11_000)), 0);
        assert_eq!(ms(lag.observe(14_100, 11_050)), 50);
        // Frequent reads do not stop the creep.
        for t in 0..1_000 {
            lag.observe(14_100 + t, 11_050 + t);
        }
        assert_eq!(ms(lag.observe(15_100, 12_050)), 50 - 10);
    }

    #[test]
    fn a_clock_that_steps_forward_is_absorbed() {
        let mut lag = Lag::default();
        assert_eq!(ms(lag.observe(1_000, 1_000)), 0);
        // Our clock jumps 10 s ahead: it looks like lag at first (less the
        // creep of the 10 s that passed)...
        assert_eq!(ms(lag.observe(1_001, 11_001)), 10_000 - 100);
        // ... and fades as the floor creeps up (1 % of the time passed).
        let mut now = 11_001;
        let mut last = Duration::MAX;
        for _ in 0..100 {
            now += 10_000;
            last = lag.observe(now - 10_000, now);
        }
        assert!(last < Duration::from_millis(100), "{last:?}");
    }
}
