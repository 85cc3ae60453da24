//! deploy/prometheus: the config and the alert rules pass `promtool` (the
//! Debian package `prometheus`; a missing tool fails the test, never a skip),
//! the rules' own unit tests pass, and the process cluster runs both files
//! unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_testkit::deploy::Cluster;
use banter_testkit::{repo_root, run_ok, tool};
use std::process::Command;

#[test]
fn prometheus_config_and_alert_rules_are_valid() {
    let promtool = tool("promtool", "prometheus");
    let dir = repo_root().join("deploy/prometheus");
    // As compose runs it (targets/nodes.yml = node1..node3), and as the
    // process cluster runs it: the same two files, copied unchanged.
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(dir.join("prometheus.yml")),
    );
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(dir.join("alerts.yml")),
    );
    run_ok(
        Command::new(&promtool)
            .current_dir(&dir)
            .args(["test", "rules", "alerts_test.yml"]),
    );
    let c = Cluster::new("promtool", &[]);
    c.sh(&["render"]);
    run_ok(
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(c.dir.join("prometheus/prometheus.yml")),
    );
    for f in ["prometheus.yml", "alerts.yml"] {
        let ours = std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(
            c.file(&format!("prometheus/{f}")),
            ours,
            "{f} is copied as is"
        );
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for expr in [
        "up{job=\"banter\"} == 0",
        "banter_bus_up == 0",
        "increase(banter_slow_consumers_total[5m])",
        "histogram_quantile(0.99, sum by (le) (rate(banter_publish_seconds_bucket[5m]))) > 0.05",
    ] {
        assert!(rules.contains(expr), "alerts.yml lacks {expr}");
    }
}
