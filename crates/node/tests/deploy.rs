//! The cluster as operators run it. The deployment files pass their own
//! tools' checks (docker-compose, nginx, promtool), and the process cluster
//! of `scripts/cluster.sh` — Redis, three `banter-node` processes, nginx and
//! Prometheus, using the same nginx and Prometheus files as docker compose —
//! works end to end through nginx.
//!
//! The tools are Debian packages (`nginx`, `prometheus`, `docker-compose`,
//! `openssl`, `redis-server`); scripts/test.sh installs them. A missing tool
//! fails the test with the package to install: it is never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The path of a tool, or a failure naming the Debian package that has it.
/// nginx lives in /usr/sbin, which is not on every user's PATH.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install the Debian package `{package}` \
                 (apt-get install {package}), or run scripts/test.sh which does"
            )
        })
}

/// Runs a command to completion and fails with its output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `scripts/cluster.sh` state directory with its own ports. Dropping it runs
/// `down` (whatever happened) and removes the directory.
struct Cluster {
    dir: PathBuf,
    env: Vec<(String, String)>,
    nginx: SocketAddr,
    prometheus: SocketAddr,
}

impl Cluster {
    fn new(name: &str, extra_env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("banter-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = || banter_testkit::free_port().to_string();
        let (nginx, prometheus) = (port(), port());
        let mut env = vec![
            ("CLUSTER_DIR".to_owned(), dir.display().to_string()),
            (
                "BANTER_BIN".into(),
                env!("CARGO_BIN_EXE_banter-node").into(),
            ),
            ("NGINX_PORT".into(), nginx.clone()),
            ("NODE_PORTS".into(), [port(), port(), port()].join(",")),
            ("REDIS_PORT".into(), port()),
            ("PROMETHEUS_PORT".into(), prometheus.clone()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let addr = |p: String| format!("127.0.0.1:{p}").parse().unwrap();
        Cluster {
            dir,
            env,
            nginx: addr(nginx),
            prometheus: addr(prometheus),
        }
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo().join("scripts/cluster.sh"));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `cluster.sh ARGS`, which must succeed; its stdout.
    fn sh(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(&mut self.script(args)).stdout).into_owned()
    }

    fn file(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path)).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn compose_file_is_valid() {
    let compose = tool("docker-compose", "docker-compose");
    let file = repo().join("docker-compose.yml");
    run(Command::new(&compose)
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"]));
    let out = run(Command::new(&compose)
        .arg("-f")
        .arg(&file)
        .args(["config", "--services"]));
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

#[test]
fn nginx_config_is_valid_and_is_the_repository_file() {
    let nginx = tool("nginx", "nginx");
    let c = Cluster::new("nginx-t", &[("NGINX_READ_TIMEOUT", "7s")]);
    c.sh(&["render"]);
    let conf = c.dir.join("nginx/nginx.conf");
    let check = |conf: &Path| {
        run(Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(c.dir.join("nginx"))
            .arg("-c")
            .arg(conf)
            .arg("-e")
            .arg(c.dir.join("logs/nginx-t.log")));
    };
    check(&conf);

    // The process cluster runs nginx/banter.conf itself: only the listen port
    // and the read timeout differ.
    let ours = std::fs::read_to_string(repo().join("nginx/banter.conf")).unwrap();
    let rendered = c.file("nginx/banter.conf");
    let changed: Vec<_> = ours
        .lines()
        .zip(rendered.lines())
        .filter(|(a, b)| a != b)
        .map(|(_, b)| b.trim().to_owned())
        .collect();
    assert_eq!(ours.lines().count(), rendered.lines().count());
    assert_eq!(
        changed,
        [
            format!("listen {};", c.nginx),
            "proxy_read_timeout 7s;".into()
        ]
    );
    for directive in [
        "map $http_upgrade $connection_upgrade",
        "least_conn;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_next_upstream error timeout http_502 http_503;",
        "location = /metrics",
    ] {
        assert!(
            ours.contains(directive),
            "nginx/banter.conf lacks {directive}"
        );
    }
    let upstream = c.file("nginx/banter-upstream.conf");
    assert_eq!(upstream.matches("max_fails=1 fail_timeout=5s;").count(), 3);

    // The TLS server block, next to it, with a self-signed certificate.
    let openssl = tool("openssl", "openssl");
    let tls = c.dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    run(Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(tls.join("privkey.pem"))
        .arg("-out")
        .arg(tls.join("fullchain.pem")));
    let tls_conf = std::fs::read_to_string(repo().join("nginx/banter-tls.conf"))
        .unwrap()
        .replace("/etc/banter/tls", &tls.display().to_string());
    std::fs::write(c.dir.join("nginx/banter-tls.conf"), tls_conf).unwrap();
    let with_tls = c.file("nginx/nginx.conf").replace(
        "include banter.conf;",
        "include banter.conf;\n    include banter-tls.conf;",
    );
    let tls_main = c.dir.join("nginx/nginx-tls.conf");
    std::fs::write(&tls_main, with_tls).unwrap();
    check(&tls_main);
}

#[test]
fn prometheus_config_and_alert_rules_are_valid() {
    let promtool = tool("promtool", "prometheus");
    let dir = repo().join("deploy/prometheus");
    // As compose runs it (targets/nodes.yml = node1..node3), and as the
    // process cluster runs it: the same two files, copied unchanged.
    run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(dir.join("prometheus.yml")));
    run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dir.join("alerts.yml")));
    run(Command::new(&promtool)
        .current_dir(&dir)
        .args(["test", "rules", "alerts_test.yml"]));
    let c = Cluster::new("promtool", &[]);
    c.sh(&["render"]);
    run(Command::new(&promtool)
        .args(["check", "config"])
        .arg(c.dir.join("prometheus/prometheus.yml")));
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

/// Every panel of the dashboard, with its PromQL.
fn dashboard() -> Vec<(String, Vec<String>)> {
    let path = repo().join("deploy/grafana/dashboards/banter.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let exprs = p["targets"].as_array().expect("targets");
            let exprs = exprs.iter().map(|t| t["expr"].as_str().unwrap().to_owned());
            (p["title"].as_str().unwrap().to_owned(), exprs.collect())
        })
        .collect()
}

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
    let ds = repo().join("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert!(
        std::fs::read_to_string(ds)
            .unwrap()
            .contains("uid: prometheus")
    );
}

/// GET over HTTP/1.0 (no chunked bodies): (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_owned())
}

/// A Prometheus HTTP API answer's `data`.
async fn prom(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = get(addr, path).await;
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("success")),
        "{path}: {body}"
    );
    v["data"].clone()
}

async fn query(addr: SocketAddr, promql: &str) -> Vec<Value> {
    let enc: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let data = prom(addr, &format!("/api/v1/query?query={enc}")).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` every 200 ms for at most `secs` seconds.
async fn within(secs: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The status line of a WebSocket upgrade through nginx, from a client
/// behind a proxy at 203.0.113.7, with this Origin.
async fn upgrade_status(addr: SocketAddr, origin: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.lines().next().unwrap_or_default().to_owned()
}

/// Waits for a chat message with this text (other frames skipped).
async fn message(c: &mut Client, text: &str) -> banter_protocol::Message {
    loop {
        let m = c.next_message().await;
        if m.text == text {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_cluster_behind_nginx() {
    let c = Cluster::new(
        "cluster",
        &[
            ("NGINX_READ_TIMEOUT", "2s"),
            ("BANTER__HEARTBEAT__PING_INTERVAL_MS", "500"),
            ("BANTER__HEARTBEAT__IDLE_TIMEOUT_MS", "3000"),
            ("BANTER__SERVER__DRAIN_TIMEOUT_MS", "3000"),
            ("BANTER__LOG__LEVEL", "info,banter_node=debug"),
        ],
    );
    tool("nginx", "nginx");
    tool("prometheus", "prometheus");
    let started = Instant::now();
    let up = c.sh(&["up"]);
    assert!(up.contains(&format!("http://{}/", c.nginx)), "{up}");
    assert!(
        c.file("nginx/banter.conf")
            .contains("proxy_read_timeout 2s;")
    );
    let lb = c.nginx;

    // The page, health and readiness through nginx; metrics only on the nodes.
    assert_eq!(get(lb, "/").await.0, 200);
    assert_eq!(get(lb, "/healthz").await.0, 200);
    assert_eq!(get(lb, "/readyz").await.0, 200);
    assert_eq!(get(lb, "/metrics").await.0, 404, "/metrics is not public");

    // Prometheus scrapes the three nodes, with the alert rules loaded, and
    // every dashboard query is valid PromQL that it answers.
    let pm = c.prometheus;
    within(30, "three banter targets up", async || {
        let data = prom(pm, "/api/v1/targets?state=active").await;
        let targets = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up = targets
            .iter()
            .filter(|t| t["labels"]["job"] == "banter" && t["health"] == "up");
        up.count() == 3
    })
    .await;
    let nodes = |r: &[Value]| {
        let mut n: Vec<_> = r.iter().map(|s| s["metric"]["node"].to_string()).collect();
        n.sort();
        n.join(",")
    };
    let delivered = query(pm, "banter_messages_delivered_total").await;
    assert_eq!(nodes(&delivered), r#""node1","node2","node3""#);
    let groups = prom(pm, "/api/v1/rules").await;
    assert_eq!(groups["groups"][0]["rules"].as_array().unwrap().len(), 4);
    for (_, exprs) in dashboard() {
        for e in exprs {
            let e = e.replace("$node", ".*").replace("$__rate_interval", "1m");
            query(pm, &e).await;
        }
    }

    // An idle socket: nginx gives up on a proxied socket after 2 s without
    // a byte from the node; the node's 500 ms pings keep this one open. It is
    // read all along, so the client answers the pings.
    let mut idle = Client::connect(lb, "name=idle").await;
    let idle_node = idle.node.clone();
    let idle_task = tokio::spawn(async move {
        let since = Instant::now();
        let mut pings = 0;
        while since.elapsed() < Duration::from_secs(5) {
            let left = Duration::from_secs(5).saturating_sub(since.elapsed());
            match tokio::time::timeout(left, idle.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(WsMessage::Ping(_)))) => pings += 1,
                Ok(other) => panic!("idle socket, after {:?}: {other:?}", since.elapsed()),
            }
        }
        idle.send(json!({"type":"ping","ref":"x"})).await;
        let pong: Value = serde_json::from_str(&idle.recv_raw().await).unwrap();
        assert_eq!(pong, json!({"type":"pong","ref":"x"}));
        pings
    });

    // least_conn: with one socket open on each node so far, the next goes to
    // a node without one.
    let mut ann = Client::connect(lb, "name=Ann").await;
    let mut bob = Client::connect(lb, "name=Bob").await;
    let mut spread = [&idle_node, &ann.node, &bob.node];
    spread.sort();
    assert_eq!(spread, ["node1", "node2", "node3"], "one socket per node");
    ann.join("lobby").await;
    bob.join("lobby").await;
    ann.say("lobby", "hi from Ann").await;
    assert_eq!(message(&mut bob, "hi from Ann").await.from, ann.user);
    bob.say("lobby", "hi from Bob").await;
    assert_eq!(message(&mut ann, "hi from Bob").await.from, bob.user);

    // Ann's node is stopped: she gets 1001, comes back through nginx on a
    // node that runs (nginx skips the stopped one), and chats on.
    let gone = ann.node.clone();
    let n = gone.trim_start_matches("node").to_owned();
    let stop = tokio::task::spawn_blocking({
        let mut cmd = c.script(&["stop-node", &n]);
        move || run(&mut cmd)
    });
    assert_eq!(ann.expect_close().await, 1001, "drain closes with 1001");
    stop.await.unwrap();
    for _ in 0..3 {
        let ann = Client::connect(lb, "name=Ann").await;
        assert_ne!(ann.node, gone, "nginx sent a client to the stopped node");
        ann.close().await;
    }
    let mut ann = Client::connect(lb, "name=Ann").await;
    ann.join("lobby").await;
    ann.say("lobby", "Ann again").await;
    assert_eq!(message(&mut bob, "Ann again").await.from, ann.user);
    bob.say("lobby", "welcome back").await;
    message(&mut ann, "welcome back").await;

    // The node's default Origin rule (same host) holds through nginx, which
    // passes the Host header on with its port.
    let same = format!("http://{lb}");
    assert!(upgrade_status(lb, &same).await.contains(" 101 "));
    assert!(
        upgrade_status(lb, "http://evil.example")
            .await
            .contains(" 403 ")
    );
    // nginx adds its peer to X-Forwarded-For, and the nodes trust nginx: their
    // logs name the client the header names.
    within(5, "a node log naming 203.0.113.7", async || {
        (1..=3).any(|n| {
            let log = std::fs::read_to_string(c.dir.join(format!("logs/node{n}.log")));
            log.unwrap_or_default().contains("client=203.0.113.7")
        })
    })
    .await;

    // What the chat delivered reaches Prometheus.
    within(15, "deliveries scraped", async || {
        let r = query(pm, "sum(banter_messages_delivered_total)").await;
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .is_some_and(|v| v != "0")
    })
    .await;

    let pings = idle_task
        .await
        .expect("the idle socket outlived nginx's read timeout");
    assert!(
        pings >= 4,
        "the node pinged the idle socket ({pings} pings)"
    );

    let down = c.sh(&["down"]);
    assert!(down.contains("down"), "{down}");
    assert!(c.sh(&["status"]).contains("not running"));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
