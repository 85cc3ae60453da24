//! docker-compose.yml passes `docker-compose config` (the Debian package
//! `docker-compose`; a missing tool fails the test, never a skip) and
//! declares the cluster's services.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_testkit::{repo_root, run_ok, tool};
use std::process::Command;

#[test]
fn compose_file_is_valid() {
    let compose = tool("docker-compose", "docker-compose");
    let file = repo_root().join("docker-compose.yml");
    run_ok(
        Command::new(&compose)
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"]),
    );
    let out = run_ok(
        Command::new(&compose)
            .arg("-f")
            .arg(&file)
            .args(["config", "--services"]),
    );
    let mut services: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    services.sort();
    let want = [
        "grafana",
        "nginx",
        "node1",
        "node2",
        "node3",
        "prometheus",
        "redis",
    ];
    assert_eq!(services, want);
}
