//! The summary tables of the fan-out and rooms scenarios.

use super::fanout::FanoutOutcome;
use super::rooms::RoomsOutcome;
use crate::procfs::CpuUsage;
use crate::report::{Report, counts_cell};

/// The summary of a fan-out outcome.
pub fn fanout_report(name: &str, o: &FanoutOutcome) -> Report {
    let mut r = Report::new(name, o);
    r.row(
        "subscribers / publishers connected",
        format!(
            "{} / {} (asked {} / {})",
            o.subscribers_connected, o.publishers_connected, o.subscribers, o.publishers
        ),
    )
    .row(
        "offered rate",
        format!(
            "{} msg/s of {} B, warm-up {:.1} s, window {:.1} s",
            o.offered_rate, o.size, o.warmup_secs, o.window_secs
        ),
    )
    .row("connect errors", counts_cell(&o.connect_errors))
    .row("sent / acked", format!("{} / {}", o.sent, o.acked))
    .row("publish errors", counts_cell(&o.publish_errors))
    .row("tool backlog drops", o.tool_dropped)
    .row(
        "deliveries/s (window)",
        format!("{:.0}", o.deliveries_per_sec),
    )
    .row("latency p50/p90/p99/p99.9/max", o.latency.cell())
    .row("ack latency p50/p90/p99/p99.9/max", o.ack_latency.cell())
    .row("tool send lag p50/p90/p99/p99.9/max", o.send_lag.cell())
    .row(
        "lost / duplicated / out of order",
        order_cell(o.lost, o.duplicates, o.out_of_order),
    )
    .row("received but unacked", o.received_unacked)
    .row("sockets closed early", counts_cell(&o.closed_early))
    .row(
        "load tool CPU",
        format!(
            "{:.2} s = {:.2} µs per delivery ({:.0} % of it in the kernel)",
            o.cpu.load_tool_cpu_secs,
            o.load_tool_us_per_delivery,
            100.0 * o.cpu.load_tool_sys_secs / o.cpu.load_tool_cpu_secs.max(1e-9)
        ),
    )
    .row("machine busy share", busy_cell(&o.cpu));
    if let Some(d) = o.deliveries_per_node_cpu_sec {
        r.row(
            "node CPU (window)",
            format!(
                "{:.2} s ({:?})",
                o.cpu.nodes_cpu_secs,
                o.cpu
                    .node_cpu_secs
                    .iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
            ),
        )
        .row("deliveries per node CPU-second", format!("{d:.0}"))
        .row(
            "node RSS KiB before → after",
            format!("{:?} → {:?}", o.node_rss_kib_before, o.node_rss_kib_after),
        );
    }
    r.ok = o.clean();
    r
}

/// The summary of a rooms outcome.
pub fn rooms_report(o: &RoomsOutcome) -> Report {
    let t = &o.totals;
    let mut r = Report::new("rooms", o);
    r.row(
        "rooms × members",
        format!(
            "{} × {} = {} connections (processes: {})",
            o.rooms,
            o.members,
            o.rooms * o.members,
            o.procs
        ),
    )
    .row(
        "connected / connect errors",
        format!("{} / {}", t.connected, counts_cell(&t.connect_errors)),
    )
    .row("connect rate", format!("{:.0} /s", o.connect_rate_per_sec))
    .row(
        "offered",
        format!(
            "1 msg / {:.1} s per member = {:.0} msg/s",
            o.interval_secs, o.offered_rate
        ),
    )
    .row("sent / acked", format!("{} / {}", t.sent, t.acked))
    .row("publish errors", counts_cell(&t.publish_errors))
    .row(
        "deliveries/s (window)",
        format!("{:.0}", o.deliveries_per_sec),
    )
    .row("latency p50/p90/p99/p99.9/max", o.latency_ms.cell())
    .row("ack latency p50/p90/p99/p99.9/max", o.ack_latency_ms.cell())
    .row(
        "lost / duplicated / out of order",
        order_cell(t.lost, t.duplicates, t.out_of_order),
    )
    .row("received but unacked", t.received_unacked)
    .row("sockets closed early", counts_cell(&t.closed_early))
    .row(
        "load tool CPU",
        format!(
            "{:.2} s = {:.2} µs per delivery",
            t.tool_cpu_secs, o.load_tool_us_per_delivery
        ),
    )
    .row("machine busy share", busy_cell(&o.cpu));
    if let Some(d) = o.deliveries_per_node_cpu_sec {
        r.row(
            "node CPU (window)",
            format!("{:.2} s", o.cpu.nodes_cpu_secs),
        )
        .row("deliveries per node CPU-second", format!("{d:.0}"));
    }
    r.ok = t.lost == 0 && t.duplicates == 0 && t.out_of_order == 0;
    r
}

/// The machine's busy share over the window, or `n/a`.
fn busy_cell(cpu: &CpuUsage) -> String {
    cpu.machine_busy_share
        .map_or("n/a".into(), |b| format!("{:.0} %", b * 100.0))
}

/// `lost / duplicated / out of order`.
fn order_cell(lost: u64, duplicates: u64, out_of_order: u64) -> String {
    format!("{lost} / {duplicates} / {out_of_order}")
}
