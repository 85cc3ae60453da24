//! The bigroom summary: the figures, then the four targets.

use super::{BigroomOutcome, Goal};
use crate::report::{Report, counts_cell};

/// Filling the room may be at most this much slower than plain connecting.
const MAX_SLOWDOWN: f64 = 1.5;
/// Node RSS per joined connection, KiB.
const MAX_KIB_PER_MEMBER: f64 = 10.0;
/// Presence frames per member per diff interval while the room fills.
const MAX_FRAMES_PER_INTERVAL: f64 = 1.0;
/// The share of a diff interval two diffs must be apart (the rest is jitter).
const JITTER_SHARE: f64 = 0.9;
/// The largest `joined` frame, bytes.
const MAX_JOINED_BYTES: u64 = 16 * 1024;

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// The targets against the run.
pub fn goals(o: &BigroomOutcome) -> Vec<Goal> {
    let mut g = Vec::new();
    g.push(Goal {
        what: if o.join_rate_asked > 0.0 {
            format!(
                "fill rate against plain connecting, both paced at {:.0} joins/s",
                o.join_rate_asked
            )
        } else {
            "fill rate against plain connecting, both as fast as they go".into()
        },
        target: format!("baseline connect rate ÷ fill rate ≤ {MAX_SLOWDOWN}"),
        value: match (&o.baseline, o.fill_slowdown) {
            (Some(b), Some(s)) => format!(
                "{:.0} /s ÷ {:.0} /s = {s:.2}×",
                b.rate_per_sec, o.fill_rate_per_sec
            ),
            _ => "no baseline".into(),
        },
        met: o.fill_slowdown.map(|s| s <= MAX_SLOWDOWN),
    });
    let worst = o
        .node_kib_per_member
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    g.push(Goal {
        what: "node RSS per joined connection".into(),
        target: format!("≤ {MAX_KIB_PER_MEMBER} KiB"),
        value: worst.map_or("no --pids".into(), |w| format!("{w:.2} KiB (worst node)")),
        met: worst.map(|w| w <= MAX_KIB_PER_MEMBER),
    });
    let p = &o.presence;
    // A member reads each diff its node sends once; the node sends at most
    // one per interval. What one member reads within an interval also holds
    // the delivery jitter of a loaded machine (a diff written late to one
    // socket, the next on time), so the verdict is the node's own spacing
    // (each diff's first arrival at any member) and no diff read twice.
    let node_ok = p
        .node_min_spacing_ms
        .map(|ms| ms >= JITTER_SHARE * p.diff_interval_ms);
    g.push(Goal {
        what: "presence frames per member per diff interval while filling".into(),
        target: format!("≤ {MAX_FRAMES_PER_INTERVAL}"),
        value: format!(
            "diffs at least {} apart at each node, {} read twice; at the members: \
             {} within 90 % of an interval at most ({} members ever), shortest spacing {}",
            p.node_min_spacing_ms
                .map_or("–".into(), |ms| format!("{ms:.0} ms")),
            p.repeated,
            p.max_in_interval,
            p.members_over_one,
            p.min_spacing_ms
                .map_or("–".into(), |ms| format!("{ms:.0} ms"))
        ),
        met: node_ok.map(|ok| ok && p.repeated == 0),
    });
    g.push(Goal {
        what: "largest `joined` frame".into(),
        target: format!("< {} KiB", MAX_JOINED_BYTES / 1024),
        value: format!("{} B", o.joined_bytes_max),
        met: Some(o.joined_bytes_max < MAX_JOINED_BYTES),
    });
    g
}

/// `evalsha 3.00 × = 150 µs; ...`: calls and Redis time per unit.
fn commands(p: &super::redis::Phase) -> String {
    if p.top.is_empty() {
        return "–".into();
    }
    p.top
        .iter()
        .map(|c| format!("{} {:.2} × = {:.0} µs", c.command, c.calls, c.us))
        .collect::<Vec<_>>()
        .join("; ")
}

fn pct(part: f64, whole: f64) -> f64 {
    100.0 * part / whole.max(1e-9)
}

fn kib_list(v: &[f64]) -> String {
    v.iter()
        .map(|k| format!("{k:.2} KiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cpu_list(v: &[f64]) -> String {
    v.iter()
        .map(|c| format!("{c:.2}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// The summary of a bigroom outcome.
pub fn report(o: &BigroomOutcome) -> Report {
    let mut r = Report::new("bigroom", o);
    let p = &o.presence;
    r.row(
        "members joined / asked",
        format!(
            "{} / {} (per node: {:?})",
            o.joined, o.asked, o.joined_per_node
        ),
    )
    .row(
        "processes (fd limit soft/hard each)",
        format!("{} ({}/{})", o.procs, o.nofile.0, o.nofile.1),
    )
    .row(
        "join rate asked",
        if o.join_rate_asked > 0.0 {
            format!("{:.0} /s", o.join_rate_asked)
        } else {
            format!(
                "as fast as {} connections at once per process allow",
                o.concurrency
            )
        },
    )
    .row("connect or join errors", counts_cell(&o.errors))
    .row(
        "time to fill (first connect → last joined)",
        format!("{:.2} s", o.fill_secs),
    )
    .row(
        "fill rate (members joined per second)",
        format!("{:.0} /s", o.fill_rate_per_sec),
    );
    if let Some(b) = &o.baseline {
        r.row(
            if o.join_rate_asked > 0.0 {
                "baseline: the same connections, no room, at the same join rate"
            } else {
                "baseline: the same connections, no room"
            },
            format!(
                "{} opened in {:.2} s = {:.0} /s; errors: {}",
                b.opened,
                b.secs,
                b.rate_per_sec,
                counts_cell(&b.errors)
            ),
        );
    }
    if let Some(s) = o.fill_slowdown {
        r.row("baseline rate ÷ fill rate", format!("{s:.2}×"));
    }
    r.row(
        "connect (upgrade + welcome) p50/p90/p99/p99.9/max",
        o.connect_latency.cell(),
    )
    .row("join → joined p50/p90/p99/p99.9/max", o.join_latency.cell())
    .row(
        "largest `joined` frame",
        format!("{} B", o.joined_bytes_max),
    )
    .row(
        "presence frames per member while filling",
        format!(
            "{:.2} on average, {} at most, over a fill of {} diff intervals of {:.0} ms \
             ({:.3} /s per member in the room: {} frames over {:.0} member-seconds)",
            p.fill_frames_mean,
            p.fill_frames_max,
            p.fill_intervals,
            p.diff_interval_ms,
            p.fill_per_member_per_sec,
            p.fill_frames,
            p.fill_member_secs
        ),
    )
    .row(
        "presence frames per member while held",
        format!(
            "{:.4} /s ({} frames in {:.0} s)",
            p.hold_per_member_per_sec, p.hold_frames, o.hold_secs
        ),
    )
    .row(
        "most presence frames one member got within one diff interval (90 % of it: jitter)",
        format!(
            "{} ({} members ever got more than one; shortest spacing {}; frames repeating \
             the member's previous count: {})",
            p.max_in_interval,
            p.members_over_one,
            p.min_spacing_ms
                .map_or("–".into(), |ms| format!("{ms:.0} ms")),
            p.repeated
        ),
    )
    .row(
        "diffs each node sent (told apart by count) / shortest spacing at the node",
        format!(
            "{:?} / {} (by each diff's first arrival at any member)",
            p.node_diffs,
            p.node_min_spacing_ms
                .map_or("–".into(), |ms| format!("{ms:.0} ms"))
        ),
    )
    .row(
        "largest presence frame / all presence frames",
        format!("{} B / {}", p.largest_bytes, p.total_frames),
    )
    .row(
        "final count = members in the room",
        format!(
            "{} of {} members read count {} last (counts read last: {})",
            o.final_count_ok,
            o.joined,
            o.expected_count,
            o.final_counts
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .row(
        "chatter while held: sent / acked / refused",
        format!("{} / {} / {}", o.chat.0, o.chat.1, o.chat.2),
    )
    .row(
        "messages read / acked × members",
        format!("{} / {}", o.deliveries.0, o.deliveries.1),
    )
    .row("gap frames", o.gaps)
    .row("dropped before the hold ended", counts_cell(&o.dropped));
    if !o.node_rss_kib_before.is_empty() {
        r.row(
            "node RSS KiB before / all joined / end of hold",
            format!(
                "{:?} / {:?} / {:?}",
                o.node_rss_kib_before, o.node_rss_kib_joined, o.node_rss_kib_held
            ),
        )
        .row(
            "node RSS per joined member: all joined / end of hold",
            format!(
                "{} / {}",
                kib_list(&o.node_kib_per_member),
                kib_list(&o.node_kib_per_member_held)
            ),
        )
        .row(
            "node CPU: fill / hold",
            format!(
                "{} s / {} s ({:.0} µs per join)",
                cpu_list(&o.cpu_fill.node_cpu_secs),
                cpu_list(&o.cpu_hold.node_cpu_secs),
                o.cpu_fill.nodes_cpu_secs * 1e6 / (o.joined.max(1) as f64)
            ),
        );
        if let Some(f) = &o.redis_fill {
            let cpu = |p: &Option<super::redis::Phase>| {
                p.as_ref()
                    .map_or("–".into(), |p| format!("{:.2} s", p.cpu_secs))
            };
            r.row(
                "Redis CPU: fill / hold / baseline",
                format!(
                    "{} / {} / {} ({:.0} µs per join, {} per connection)",
                    cpu(&o.redis_fill),
                    cpu(&o.redis_hold),
                    cpu(&o.redis_baseline),
                    f.cpu_secs * 1e6 / o.joined.max(1) as f64,
                    o.redis_baseline.as_ref().zip(o.baseline.as_ref()).map_or(
                        "–".into(),
                        |(p, b)| format!("{:.0} µs", p.cpu_secs * 1e6 / b.opened.max(1) as f64)
                    )
                ),
            )
            .row("Redis commands per join (fill)", commands(f));
            if let Some(b) = &o.redis_baseline {
                r.row("Redis commands per connection (baseline)", commands(b));
            }
        }
        if let Some(b) = &o.baseline {
            r.row(
                "node CPU: baseline",
                format!(
                    "{} s ({:.0} µs per connection)",
                    cpu_list(&b.cpu.node_cpu_secs),
                    b.cpu.nodes_cpu_secs * 1e6 / (b.opened.max(1) as f64)
                ),
            );
        }
    }
    let busy = |c: &crate::procfs::CpuUsage| {
        c.machine_busy_share
            .map_or("–".into(), |s| format!("{:.0} %", 100.0 * s))
    };
    r.row(
        "load tool CPU: fill / hold / baseline (of it in the kernel)",
        format!(
            "{:.2} s ({:.0} %) / {:.2} s ({:.0} %) / {}",
            o.tool_cpu_secs.0,
            pct(o.tool_sys_secs.0, o.tool_cpu_secs.0),
            o.tool_cpu_secs.1,
            pct(o.tool_sys_secs.1, o.tool_cpu_secs.1),
            o.baseline.as_ref().map_or("–".into(), |b| format!(
                "{:.2} s ({:.0} %)",
                b.tool_cpu_secs,
                pct(b.tool_sys_secs, b.tool_cpu_secs)
            ))
        ),
    );
    r.row(
        "machine busy share: fill / hold / baseline",
        format!(
            "{} / {} / {}",
            busy(&o.cpu_fill),
            busy(&o.cpu_hold),
            o.baseline.as_ref().map_or("–".into(), |b| busy(&b.cpu))
        ),
    );
    for g in &o.goals {
        r.row(
            &format!("target: {} ({})", g.what, g.target),
            format!("{}: {}", yes_no(g.met), g.value),
        );
    }
    r.ok = o.errors.is_empty()
        && o.dropped.is_empty()
        && o.joined > 0
        && o.final_count_ok == o.joined
        && o.baseline.as_ref().is_none_or(|b| b.errors.is_empty());
    r
}
