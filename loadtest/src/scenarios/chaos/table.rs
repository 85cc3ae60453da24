//! The chaos table (one row per fault) and the report `main` prints.

use super::ChaosOutcome;
use super::round::RoundOutcome;
use crate::report::{Report, counts_cell};

/// The columns, in order.
const HEAD: [&str; 12] = [
    "fault",
    "acked",
    "delivered live",
    "repaired",
    "recovered (since)",
    "announced (gap)",
    "refused",
    "lost",
    "duplicated",
    "reordered",
    "time to resume",
    "verdict",
];

fn cells(r: &RoundOutcome) -> Vec<String> {
    if let Some(e) = &r.error {
        let mut c = vec![r.fault.clone()];
        c.extend(std::iter::repeat_n("–".to_string(), HEAD.len() - 2));
        c.push(format!("**error**: {}", e.lines().next().unwrap_or("")));
        return c;
    }
    let t = &r.totals;
    vec![
        r.fault.clone(),
        r.acked.to_string(),
        t.live.to_string(),
        r.repaired.map_or("n/a".into(), |v| v.to_string()),
        t.recovered.to_string(),
        t.announced.to_string(),
        r.refused.to_string(),
        t.lost.to_string(),
        t.duplicated.to_string(),
        t.reordered.to_string(),
        r.resume_ms
            .map_or("never".into(), |ms| format!("{:.0} ms", ms)),
        if r.clean() { "ok" } else { "**FAIL**" }.into(),
    ]
}

/// One row as a progress line.
pub fn line(r: &RoundOutcome) -> String {
    HEAD.iter()
        .zip(cells(r))
        .map(|(h, c)| format!("{h}: {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of the memory table (rounds that watched a node: `overload`).
const MEMORY_HEAD: [&str; 14] = [
    "fault",
    "node",
    "readers (cut by the node)",
    "flood sent / acked",
    "RSS at start",
    "flood start (readers in)",
    "flood end",
    "growth during the flood",
    "max (at)",
    "end",
    "bus lag max",
    "bus reconnects",
    "gaps announced by the node",
    "Redis: largest subscriber output buffer",
];

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("n/a".into(), f)
}

fn memory_cells(r: &RoundOutcome) -> Option<Vec<String>> {
    let m = r.memory.as_ref()?;
    let (readers, cut, sent, acked) = r.flood.as_ref().map_or((0, 0, 0, 0), |f| {
        (
            f.readers,
            f.readers_cut.values().sum::<u64>(),
            f.sent,
            f.acked,
        )
    });
    Some(vec![
        r.fault.clone(),
        m.node.to_string(),
        format!("{readers} ({cut})"),
        format!("{sent} / {acked}"),
        mib(m.rss_start_kib),
        mib(m.rss_readers_kib),
        mib(m.rss_flood_end_kib),
        format!("{:.2} MiB/s", m.rss_growth_kib_per_sec / 1024.0),
        format!(
            "{} ({:.1} s)",
            mib(m.rss_max_kib),
            (m.rss_max_at_ms - r.fault_start_ms) / 1000.0
        ),
        mib(m.rss_end_kib),
        opt(m.lag_max_seconds, |l| format!("{l:.1} s")),
        opt(m.delta(|g| g.reconnects), |d| format!("{d:.0}")),
        opt(m.delta(|g| g.gaps_unrepaired), |d| format!("{d:.0}")),
        format!("{:.1} MiB", m.redis_omem_max as f64 / 1048576.0),
    ])
}

/// The flooded node's memory, one row per round that watched one; empty
/// when none did.
pub fn memory_table(o: &ChaosOutcome) -> String {
    let rows: Vec<Vec<String>> = o.rounds.iter().filter_map(memory_cells).collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "### the flooded node's memory (RSS every 250 ms; max at s after the fault's start)\n\n",
    );
    s.push_str(&format!("| {} |\n", MEMORY_HEAD.join(" | ")));
    s.push_str(&format!(
        "| --- | ---: |{}\n",
        " ---: |".repeat(MEMORY_HEAD.len() - 2)
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s.push('\n');
    s
}

/// The markdown table, one row per fault (and the memory table after it,
/// when a round watched a node).
pub fn table(o: &ChaosOutcome) -> String {
    let mut s = format!(
        "### chaos: {} publisher(s) on node 1, {} subscriber(s) on the other node(s) of {}, {} room(s), {} msg/s, on {}\n\n",
        o.publishers, o.subscribers, o.nodes, o.rooms, o.rate, o.redis
    );
    s.push_str(&format!("| {} |\n", HEAD.join(" | ")));
    s.push_str(&format!(
        "| --- |{}\n",
        " ---: |".repeat(HEAD.len() - 2) + " --- |"
    ));
    for r in &o.rounds {
        s.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    s.push('\n');
    s.push_str(&memory_table(o));
    s
}

/// The summary `main` prints after the table, and the JSON result.
pub fn report(o: &ChaosOutcome) -> Report {
    let mut r = Report::new("chaos", o);
    let failing: Vec<&str> = o
        .rounds
        .iter()
        .filter(|r| !r.clean())
        .map(|r| r.fault.as_str())
        .collect();
    let sum = |f: fn(&RoundOutcome) -> u64| o.rounds.iter().map(f).sum::<u64>();
    r.row("rounds", o.rounds.len())
        .row("acked", sum(|r| r.acked))
        .row("refused (honest)", sum(|r| r.refused))
        .row("announced holes (honest)", sum(|r| r.totals.announced))
        .row(
            "lost / duplicated / reordered",
            format!(
                "{} / {} / {}",
                sum(|r| r.totals.lost),
                sum(|r| r.totals.duplicated),
                sum(|r| r.totals.reordered)
            ),
        )
        .row("reconnects", sum(|r| r.reconnects));
    for round in &o.rounds {
        if !round.lost_examples.is_empty() {
            r.row(
                &format!("{}: first losses", round.fault),
                round
                    .lost_examples
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        if round.lost_messages > 0 {
            r.row(
                &format!("{}: messages lost", round.fault),
                format!(
                    "{} distinct; of them in the room's history at the end: {}",
                    round.lost_messages,
                    round
                        .lost_in_history
                        .map_or("unknown (not readable)".into(), |n| n.to_string())
                ),
            );
        }
        if let Some(m) = &round.memory {
            r.row(
                &format!("{}: node {} RSS start / max / end", round.fault, m.node),
                format!(
                    "{} / {} / {} (bus lag max {}, bus reconnects {})",
                    mib(m.rss_start_kib),
                    mib(m.rss_max_kib),
                    mib(m.rss_end_kib),
                    opt(m.lag_max_seconds, |l| format!("{l:.1} s")),
                    opt(m.delta(|g| g.reconnects), |d| format!("{d:.0}"))
                ),
            );
        }
        if !round.refused_by_code.is_empty() {
            r.row(
                &format!("{}: refusals", round.fault),
                counts_cell(&round.refused_by_code),
            );
        }
    }
    r.row(
        "verdict",
        if failing.is_empty() {
            "ok: nothing acked was silently lost, duplicated or reordered".to_string()
        } else {
            format!("FAIL: {}", failing.join(", "))
        },
    );
    r.ok = o.clean();
    r
}
