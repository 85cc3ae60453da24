//! Counting: which sequence numbers arrived (loss, duplicates, reordering)
//! and latency histograms shared by many tasks.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};

/// A growable set of sequence numbers (a bitmap from 0).
#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false when it was already there.
    #[inline]
    pub fn insert(&mut self, seq: u64) -> bool {
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if w >= self.words.len() {
            self.words.resize(w + 1 + w / 2, 0);
        }
        let fresh = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.len += u64::from(fresh);
        fresh
    }

    /// How many numbers are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many numbers of `self` are not in `other`.
    pub fn missing_in(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let o = other.words.get(i).copied().unwrap_or(0);
                u64::from((w & !o).count_ones())
            })
            .sum()
    }
}

/// What a receiver saw of one sender's sequence.
#[derive(Clone, Debug, Default)]
pub struct SenderTrack {
    /// Every sequence number received.
    pub received: SeqSet,
    /// The highest so far.
    pub max: Option<u64>,
}

/// Order and duplicate counters of one receiver, over all its senders.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    /// One entry per sender number.
    pub senders: Vec<SenderTrack>,
    /// Distinct messages received.
    pub received: u64,
    /// A sequence number seen twice.
    pub duplicates: u64,
    /// A sequence number lower than one already seen from that sender.
    pub out_of_order: u64,
}

impl Tracker {
    /// Records `seq` from `sender`; true when it is new.
    #[inline]
    pub fn on_message(&mut self, sender: usize, seq: u64) -> bool {
        if sender >= self.senders.len() {
            self.senders.resize_with(sender + 1, SenderTrack::default);
        }
        let track = &mut self.senders[sender];
        if !track.received.insert(seq) {
            self.duplicates += 1;
            return false;
        }
        self.received += 1;
        match track.max {
            Some(m) if seq < m => self.out_of_order += 1,
            _ => track.max = Some(seq),
        }
        true
    }

    /// Messages of each sender in `acked` that this receiver never got.
    pub fn lost(&self, acked: &[SeqSet]) -> u64 {
        let empty = SeqSet::default();
        acked
            .iter()
            .enumerate()
            .map(|(i, a)| a.missing_in(self.senders.get(i).map_or(&empty, |t| &t.received)))
            .sum()
    }

    /// Messages received that their sender never saw acked (in flight at
    /// the end, or answered with an error yet delivered).
    pub fn unacked(&self, acked: &[SeqSet]) -> u64 {
        let empty = SeqSet::default();
        self.senders
            .iter()
            .enumerate()
            .map(|(i, t)| t.received.missing_in(acked.get(i).unwrap_or(&empty)))
            .sum()
    }
}

/// A new latency histogram in µs: 1 µs to 10 minutes, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Latencies recorded by many tasks at once into a few locked shards.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    /// A recorder with `n` shards.
    pub fn new(n: usize) -> Recorder {
        Recorder {
            shards: (0..n.max(1)).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Records `us` in the shard of task `task`.
    #[inline]
    pub fn record(&self, task: usize, us: u64) {
        let shard = &self.shards[task % self.shards.len()];
        let mut h = shard.lock().unwrap_or_else(PoisonError::into_inner);
        h.saturating_record(us.max(1));
    }

    /// All shards added together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for s in &self.shards {
            let h = s.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = all.add(&*h);
        }
        all
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Percentiles {
    /// From a histogram of µs.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 / p90 / p99 / p99.9 / max` for a table cell.
    pub fn cell(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} / {:.2} ms (n={})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// A histogram as (value, count) pairs, to carry between processes.
pub fn to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs into `h`.
pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, c) in pairs {
        let _ = h.record_n(v.max(1), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqset_counts_and_diffs() {
        let mut a = SeqSet::default();
        assert!(a.insert(0));
        assert!(a.insert(1000));
        assert!(!a.insert(1000));
        assert_eq!(a.len(), 2);
        let mut b = SeqSet::default();
        b.insert(1000);
        assert_eq!(a.missing_in(&b), 1);
        assert_eq!(b.missing_in(&a), 0);
    }

    #[test]
    fn tracker_tells_duplicates_reorders_and_losses() {
        let mut t = Tracker::default();
        for s in [0, 1, 3, 2, 3] {
            t.on_message(0, s);
        }
        assert_eq!(t.received, 4);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1);
        let mut acked = SeqSet::default();
        for s in 0..6 {
            acked.insert(s);
        }
        assert_eq!(t.lost(&[acked.clone()]), 2);
        t.on_message(1, 0);
        assert_eq!(t.unacked(&[acked]), 1);
    }

    #[test]
    fn recorder_merges_and_pairs_round_trip() {
        let r = Recorder::new(4);
        for i in 0..1000 {
            r.record(i, 1000 + i as u64);
        }
        let h = r.merged();
        assert_eq!(h.len(), 1000);
        let mut back = new_histogram();
        add_pairs(&mut back, &to_pairs(&h));
        assert_eq!(back.len(), 1000);
        let p = Percentiles::of(&back);
        assert!(p.p50_ms > 1.4 && p.p50_ms < 1.6, "{p:?}");
    }
}
