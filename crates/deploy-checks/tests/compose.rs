//! docker-compose.yml and its Redis Cluster variant,
//! docker-compose.redis-cluster.yml, pass `docker-compose config` (the
//! Debian package `docker-compose`; a missing tool fails the test, never a
//! skip) and declare the cluster's services. The variant is checked against
//! the main file: the same nginx, Prometheus and Grafana, the same nodes but
//! for Redis (cluster mode, the six instances as seeds), and six cluster-mode
//! Redis instances that announce their fixed addresses, joined by a one-shot
//! init service before the nodes start.
//!
//! What is compared is `docker-compose config`'s normalized output (keys
//! sorted, anchors and merges resolved, two spaces per level), read as
//! blocks of lines: no YAML library needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_testkit::{repo_root, run_ok, tool};
use std::collections::BTreeMap;
use std::process::Command;

const MAIN: &str = "docker-compose.yml";
const REDIS_CLUSTER: &str = "docker-compose.redis-cluster.yml";

/// `docker-compose -f FILE ARGS`, which must succeed: its stdout.
fn compose(file: &str, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(tool("docker-compose", "docker-compose"))
            .arg("-f")
            .arg(repo_root().join(file))
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The service names, sorted.
fn service_names(file: &str) -> Vec<String> {
    let mut names: Vec<_> = compose(file, &["config", "--services"])
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Each service of the normalized configuration: its name and its block
/// (the lines under `  name:`, each still indented).
fn services(file: &str) -> BTreeMap<String, Vec<String>> {
    let config = compose(file, &["config"]);
    let mut out = BTreeMap::new();
    let mut lines = config
        .lines()
        .skip_while(|l| *l != "services:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .peekable();
    while let Some(head) = lines.next() {
        let name = head.trim().trim_end_matches(':').trim_matches('"');
        let mut block = Vec::new();
        while let Some(l) = lines.next_if(|l| l.starts_with("   ")) {
            block.push(l.to_owned());
        }
        out.insert(name.to_owned(), block);
    }
    out
}

/// The lines under a service's `key:` (its list items or nested keys).
fn field<'a>(block: &'a [String], key: &str) -> &'a [String] {
    let head = format!("    {key}:");
    let Some(start) = block.iter().position(|l| *l == head) else {
        return &[];
    };
    let rest = &block[start + 1..];
    let len = rest
        .iter()
        .take_while(|l| l.starts_with("    - ") || l.starts_with("     "))
        .count();
    &rest[..len]
}

/// A service's block without these keys (and what is under them).
fn without(block: &[String], keys: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skipping = false;
    for l in block {
        if !l.starts_with("    - ") && !l.starts_with("     ") {
            skipping = keys.iter().any(|k| *l == format!("    {k}:"));
        }
        if !skipping {
            out.push(l.clone());
        }
    }
    out
}

/// A YAML scalar as written by `docker-compose config`, unquoted.
fn scalar(s: &str) -> &str {
    let s = s.trim();
    for q in ['\'', '"'] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// A service's scalar (`image: ...`), unquoted.
fn value<'a>(block: &'a [String], key: &str) -> Option<&'a str> {
    let head = format!("    {key}: ");
    block.iter().find_map(|l| l.strip_prefix(&head)).map(scalar)
}

/// A service's fixed address on the default network.
fn address(block: &[String]) -> Option<String> {
    map(block, "networks").get("ipv4_address").cloned()
}

/// A service's list (`command`) as plain strings.
fn list(block: &[String], key: &str) -> Vec<String> {
    let items = field(block, key).iter();
    items
        .map(|l| scalar(l.trim_start().trim_start_matches("- ")).to_owned())
        .collect()
}

/// A service's map (`environment`, `depends_on`'s conditions) as key → value.
fn map(block: &[String], key: &str) -> BTreeMap<String, String> {
    field(block, key)
        .iter()
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), scalar(v).to_owned()))
        .collect()
}

/// Which services this one waits for, and on what condition.
fn depends_on(block: &[String]) -> BTreeMap<String, String> {
    let lines = field(block, "depends_on");
    lines
        .iter()
        .zip(lines.iter().skip(1))
        .filter_map(|(name, cond)| {
            let cond = cond.trim().strip_prefix("condition: ")?;
            Some((
                name.trim().trim_end_matches(':').to_owned(),
                cond.to_owned(),
            ))
        })
        .collect()
}

/// The value after `flag` in a command.
fn after<'a>(command: &'a [String], flag: &str) -> Option<&'a str> {
    let i = command.iter().position(|a| a == flag)?;
    command.get(i + 1).map(String::as_str)
}

#[test]
fn compose_file_is_valid() {
    compose(MAIN, &["config", "-q"]);
    let want = [
        "grafana",
        "nginx",
        "node1",
        "node2",
        "node3",
        "prometheus",
        "redis",
    ];
    assert_eq!(service_names(MAIN), want);
}

#[test]
fn redis_cluster_variant_is_valid_and_follows_the_main_file() {
    compose(REDIS_CLUSTER, &["config", "-q"]);
    let redis: Vec<String> = (1..=6).map(|i| format!("redis{i}")).collect();
    let mut want: Vec<String> = ["grafana", "nginx", "node1", "node2", "node3", "prometheus"]
        .map(String::from)
        .into();
    want.push("redis-cluster-init".into());
    want.extend(redis.iter().cloned());
    want.sort();
    assert_eq!(service_names(REDIS_CLUSTER), want);

    let main = services(MAIN);
    let variant = services(REDIS_CLUSTER);
    for name in ["nginx", "prometheus", "grafana"] {
        assert_eq!(variant[name], main[name], "{name} differs from {MAIN}'s");
    }

    // Six Redis 7 instances in cluster mode, each announcing its own fixed
    // address, otherwise started alike.
    let mut addrs = Vec::new();
    let generic = |name: &str| {
        let block = &variant[name];
        let addr = address(block).unwrap_or_else(|| panic!("{name}: no fixed address"));
        let rest = without(block, &["networks"]);
        let rest: Vec<_> = rest.iter().map(|l| l.replace(&addr, "ADDR")).collect();
        (addr, rest)
    };
    let (_, redis1) = generic("redis1");
    for name in &redis {
        let block = &variant[name];
        assert!(
            value(block, "image").is_some_and(|i| i.starts_with("redis:7")),
            "{name}: Redis 7 or later (sharded pub/sub)"
        );
        let command = list(block, "command");
        assert_eq!(command.first().map(String::as_str), Some("redis-server"));
        assert_eq!(after(&command, "--cluster-enabled"), Some("yes"), "{name}");
        let (addr, rest) = generic(name);
        assert_eq!(
            after(&command, "--cluster-announce-ip"),
            Some(addr.as_str()),
            "{name} announces its own address"
        );
        assert_eq!(
            rest, redis1,
            "{name} is started as redis1 is, but for its address"
        );
        addrs.push(addr);
    }
    let mut distinct = addrs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{addrs:?}");

    // The init creates the cluster of those six, after each is healthy, once.
    let init = &variant["redis-cluster-init"];
    let healthy: BTreeMap<_, _> = redis
        .iter()
        .map(|r| (r.clone(), "service_healthy".to_owned()))
        .collect();
    assert_eq!(depends_on(init), healthy);
    let text = std::fs::read_to_string(repo_root().join(REDIS_CLUSTER)).unwrap();
    let create = text
        .lines()
        .find(|l| l.contains("redis-cli --cluster create"))
        .expect("the init runs redis-cli --cluster create");
    let members: Vec<_> = addrs.iter().map(|a| format!("{a}:6379")).collect();
    assert!(
        create.contains(&format!(
            "create {} --cluster-replicas 1",
            members.join(" ")
        )),
        "{create}"
    );

    // The nodes: cluster mode, the six instances by name as seeds, started
    // after the init; everything else as in the main file.
    let seeds: Vec<_> = redis.iter().map(|r| format!("redis://{r}:6379/")).collect();
    for n in 1..=3 {
        let name = format!("node{n}");
        let (ours, theirs) = (&variant[&name], &main[&name]);
        let env = map(ours, "environment");
        assert_eq!(
            env.get("BANTER__REDIS__MODE").map(String::as_str),
            Some("cluster"),
            "{name}: BANTER__REDIS__MODE"
        );
        assert_eq!(
            env.get("BANTER__REDIS__URL"),
            Some(&seeds.join(",")),
            "{name}: BANTER__REDIS__URL lists every instance"
        );
        let command = list(ours, "command");
        assert_eq!(after(&command, "--node-id"), Some(name.as_str()));
        assert!(
            !command.iter().any(|a| a.starts_with("--redis")),
            "{name}: {command:?} (flags win over the environment)"
        );
        let mut main_command = list(theirs, "command");
        let i = main_command.iter().position(|a| a == "--redis").unwrap();
        main_command.drain(i..i + 2);
        assert_eq!(
            command, main_command,
            "{name}: the main file's, but --redis"
        );
        assert_eq!(
            depends_on(ours),
            BTreeMap::from([(
                "redis-cluster-init".to_owned(),
                "service_completed_successfully".to_owned()
            )]),
            "{name}"
        );
        let rest = |b: &[String]| {
            let mut b = without(b, &["command", "depends_on"]);
            b.retain(|l| !l.starts_with("      BANTER__REDIS__"));
            b
        };
        assert_eq!(rest(ours), rest(theirs), "{name} differs from {MAIN}'s");
    }
}
