//! The `banter-node` binary as operators run it: configuration precedence,
//! `--print-config`, exit code 2 on bad values, and a SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn node(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_banter-node"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run banter-node")
}

fn printed(out: &Output) -> toml::Table {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .parse()
        .expect("--print-config prints TOML")
}

#[test]
fn print_config_shows_the_defaults() {
    let t = printed(&node(&["--print-config"], &[]));
    assert_eq!(t["server"]["listen"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(t["redis"]["url"].as_str(), Some(""));
    assert_eq!(t["redis"]["key_prefix"].as_str(), Some("banter"));
    assert_eq!(t["limits"]["max_frame_bytes"].as_integer(), Some(65536));
    assert_eq!(t["limits"]["outbound_queue"].as_integer(), Some(1024));
    assert_eq!(t["heartbeat"]["ping_interval_ms"].as_integer(), Some(25000));
    assert_eq!(t["presence"]["ttl_ms"].as_integer(), Some(30000));
    assert_eq!(t["auth"]["anonymous"].as_bool(), Some(true));
    assert_eq!(t["log"]["format"].as_str(), Some("text"));
    assert_eq!(
        t["node"]["id"].as_str().map(str::len),
        Some(8),
        "a random 8-character id"
    );
}

/// docs/configuration.md lists every key with its default as
/// `--print-config` prints them: the two must not drift apart.
#[test]
fn the_documented_defaults_are_the_printed_ones() {
    let mut printed = printed(&node(&["--print-config"], &[]));
    let doc = std::fs::read_to_string(banter_testkit::repo_root().join("docs/configuration.md"))
        .expect("docs/configuration.md");
    let marker = "with no\nfile and no `BANTER__` variables:\n\n```toml\n";
    let start = doc.find(marker).expect("the defaults block") + marker.len();
    let block = &doc[start..start + doc[start..].find("```").expect("its end")];
    let mut documented: toml::Table = block.parse().expect("the block is TOML");
    for t in [&mut printed, &mut documented] {
        t["node"].as_table_mut().unwrap().remove("id"); // random on every run
    }
    assert_eq!(
        documented, printed,
        "docs/configuration.md's defaults block is out of date"
    );
}

#[test]
fn defaults_then_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("banter-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("banter.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:9001\"\n[limits]\nmax_rooms = 5\nburst = 7\n[node]\nid = \"from-file\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let t = printed(&node(&["--config", path, "--print-config"], &[]));
    assert_eq!(
        t["limits"]["max_rooms"].as_integer(),
        Some(5),
        "file over defaults"
    );
    assert_eq!(t["node"]["id"].as_str(), Some("from-file"));

    let env = [
        ("BANTER__LIMITS__MAX_ROOMS", "6"),
        ("BANTER__SERVER__LISTEN", "127.0.0.1:9002"),
        ("BANTER__REDIS__URL", "redis://127.0.0.1:1/"),
        (
            "BANTER__SERVER__ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        ),
        ("BANTER__LOG__FORMAT", "json"),
    ];
    let t = printed(&node(&["--config", path, "--print-config"], &env));
    assert_eq!(
        t["limits"]["max_rooms"].as_integer(),
        Some(6),
        "env over file"
    );
    assert_eq!(
        t["limits"]["burst"].as_integer(),
        Some(7),
        "file keys env does not set stay"
    );
    assert_eq!(t["server"]["listen"].as_str(), Some("127.0.0.1:9002"));
    assert_eq!(t["redis"]["url"].as_str(), Some("redis://127.0.0.1:1/"));
    assert_eq!(t["log"]["format"].as_str(), Some("json"));
    let origins: Vec<_> = t["server"]["allowed_origins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(origins, ["https://a.example", "https://b.example"]);

    let t = printed(&node(
        &[
            "--config",
            path,
            "--listen",
            "127.0.0.1:9003",
            "--redis",
            "redis://127.0.0.1:2/",
            "--node-id",
            "flag",
            "--print-config",
        ],
        &env,
    ));
    assert_eq!(
        t["server"]["listen"].as_str(),
        Some("127.0.0.1:9003"),
        "flags over env"
    );
    assert_eq!(t["redis"]["url"].as_str(), Some("redis://127.0.0.1:2/"));
    assert_eq!(t["node"]["id"].as_str(), Some("flag"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_value_exits_2_naming_the_key() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &[],
            &[("BANTER__LIMITS__MAX_ROOMS", "many")],
            "limits.max_rooms",
        ),
        (
            &[],
            &[("BANTER__LIMITS__MAX_ROOMS", "0")],
            "limits.max_rooms",
        ),
        (&["--listen", "not-an-address"], &[], "server.listen"),
        (&["--node-id", "has space"], &[], "node.id"),
        (&["--redis", "http://x"], &[], "redis.url"),
        (&[], &[("BANTER__LOG__FORMAT", "xml")], "log.format"),
    ];
    for (args, env, key) in cases {
        let out = node(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(key), "{args:?} {env:?} must name {key}: {err}");
    }
    let out = node(&["--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn sigterm_drains_clients_with_1001_and_exits_0() {
    let port = banter_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banter-node"))
        .args(["--listen", &listen, "--node-id", "sig"])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = listen.parse().unwrap();
    eventually("node up", async || {
        matches!(http(addr, "GET", "/readyz", &[], "").await, Ok((200, _)))
    })
    .await;
    let mut c = Client::connect(addr, "room=lobby").await;
    c.recv().await;
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(c.expect_close().await, 1001);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
