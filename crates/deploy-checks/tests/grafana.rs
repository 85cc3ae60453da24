//! deploy/grafana: the dashboard has a panel, with the right PromQL, for
//! each metric operators watch, on the provisioned data source. (The live
//! cluster test in crates/node runs every one of its queries on Prometheus.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_testkit::deploy::dashboard;
use banter_testkit::repo_root;

#[test]
fn grafana_dashboard_has_the_panels() {
    let panels = dashboard();
    for (title, metric) in [
        ("Connections", "banter_connections"),
        ("Frames in", "banter_frames_received_total"),
        ("Deliveries out", "banter_messages_delivered_total"),
        ("Publish latency p50/p99", "banter_publish_seconds_bucket"),
        ("Fan-out latency p50/p99", "banter_fanout_seconds_bucket"),
        ("Bus up", "banter_bus_up"),
        ("Bus reconnects", "banter_bus_reconnects_total"),
        ("Slow consumers", "banter_slow_consumers_total"),
        ("Rate-limited", "banter_rate_limited_total"),
    ] {
        let (_, exprs) = panels
            .iter()
            .find(|(t, _)| t == title)
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "{title}: {exprs:?}"
        );
    }
    for latency in ["Publish latency p50/p99", "Fan-out latency p50/p99"] {
        let (_, exprs) = panels.iter().find(|(t, _)| t == latency).unwrap();
        assert!(
            exprs
                .iter()
                .any(|e| e.starts_with("histogram_quantile(0.5,"))
        );
        assert!(
            exprs
                .iter()
                .any(|e| e.starts_with("histogram_quantile(0.99,"))
        );
    }
    // The data source the dashboard names is the provisioned one.
    let ds = repo_root().join("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        std::fs::read_to_string(ds)
            .unwrap()
            .contains("uid: prometheus")
    );
}
