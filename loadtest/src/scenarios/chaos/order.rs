//! The order of a room, as its subscribers and publishers tell it, and who
//! read it otherwise.
//!
//! A room has one order (one stream per room, one publish channel), so every
//! subscriber who read two messages must have read them the same way round,
//! and one publisher's acked messages come in its sequence order. The room's
//! order is rebuilt as a topological sort of "u was read right before v" (by
//! some subscriber: a soft edge) and "u is v's predecessor among its
//! publisher's acked messages" (a hard edge). When readers disagree the graph
//! has a cycle; it is broken by dropping soft edges only, so each
//! disagreement leaves at least one subscriber who read a message right after
//! one that ranks later: that read is counted as reordered.

use super::ledger::{Acked, Key, RoomView};
use std::collections::{BTreeSet, HashMap};

/// The rank of every message read in one room (0 = first in the room's order).
pub(super) fn room_ranks<'a>(
    views: impl Iterator<Item = &'a RoomView>,
    acked: &[&Acked],
) -> HashMap<Key, usize> {
    let views: Vec<&RoomView> = views.collect();
    let keys: BTreeSet<Key> = views.iter().flat_map(|v| v.order.iter().copied()).collect();
    let keys: Vec<Key> = keys.into_iter().collect();
    let index: HashMap<Key, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let n = keys.len();
    let mut soft: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut soft_in = vec![0usize; n];
    for v in &views {
        for w in v.order.windows(2) {
            if let (Some(&a), Some(&b)) = (index.get(&w[0]), index.get(&w[1])) {
                soft[a].push(b);
                soft_in[b] += 1;
            }
        }
    }
    // Each publisher's acked messages that someone read, in sequence order.
    let mut chains: HashMap<u32, Vec<Key>> = HashMap::new();
    for a in acked {
        if index.contains_key(&a.key) {
            chains.entry(a.key.0).or_default().push(a.key);
        }
    }
    let mut hard: Vec<Option<usize>> = vec![None; n];
    let mut hard_in = vec![0usize; n];
    for chain in chains.values_mut() {
        chain.sort_unstable();
        for w in chain.windows(2) {
            if let (Some(&a), Some(&b)) = (index.get(&w[0]), index.get(&w[1])) {
                hard[a] = Some(b);
                hard_in[b] += 1;
            }
        }
    }
    let mut done = vec![false; n];
    let mut ready: BTreeSet<usize> = (0..n)
        .filter(|&i| soft_in[i] == 0 && hard_in[i] == 0)
        .collect();
    let mut rank = HashMap::with_capacity(n);
    while rank.len() < n {
        let next = match ready.pop_first() {
            Some(i) => i,
            // A cycle: the message free of hard predecessors with the fewest
            // soft edges still pointing at it. One always exists: the lowest
            // remaining message of any chain, or one in no chain.
            None => match (0..n)
                .filter(|&i| !done[i] && hard_in[i] == 0)
                .min_by_key(|&i| (soft_in[i], i))
            {
                Some(i) => i,
                None => break,
            },
        };
        done[next] = true;
        rank.insert(keys[next], rank.len());
        let succ = soft[next].iter().copied().chain(hard[next]);
        for (j, v) in succ.enumerate() {
            if j < soft[next].len() {
                soft_in[v] = soft_in[v].saturating_sub(1);
            } else {
                hard_in[v] = hard_in[v].saturating_sub(1);
            }
            if !done[v] && soft_in[v] == 0 && hard_in[v] == 0 {
                ready.insert(v);
            }
        }
    }
    rank
}

/// Messages one subscriber read after one that ranks later in the room, or
/// (for acked messages) after a higher sequence number of the same publisher.
pub(super) fn reordered(
    view: &RoomView,
    rank: &HashMap<Key, usize>,
    acked: &HashMap<Key, &Acked>,
) -> u64 {
    let mut max_rank: Option<usize> = None;
    let mut max_seq: HashMap<u32, u64> = HashMap::new();
    let mut count = 0;
    for k in &view.order {
        let r = rank.get(k).copied().unwrap_or(0);
        let by_rank = max_rank.is_some_and(|m| r < m);
        let by_seq = acked.contains_key(k) && max_seq.get(&k.0).is_some_and(|&m| k.1 < m);
        count += u64::from(by_rank || by_seq);
        max_rank = Some(max_rank.map_or(r, |m| m.max(r)));
        if acked.contains_key(k) {
            let m = max_seq.entry(k.0).or_insert(k.1);
            *m = (*m).max(k.1);
        }
    }
    count
}
