//! The process cluster of `scripts/cluster.sh` — Redis, three `banter-node`
//! processes (the binary cargo built for this package), nginx and
//! Prometheus, using the same nginx and Prometheus files as docker compose —
//! works end to end through nginx, on one Redis and (`up --redis-cluster`)
//! on a Redis Cluster. The static checks of those files (their own tools'
//! checks, what they must contain) are in crates/deploy-checks.
//!
//! The tools are Debian packages (`nginx`, `prometheus`, `redis-server`,
//! `redis-tools`); scripts/test.sh installs them. A missing tool fails the
//! test with the package to install: it is never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_testkit::deploy::{Cluster, dashboard};
use banter_testkit::{redis, run_ok, tool};
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// One process cluster at a time: each is a dozen processes, and CI has
/// two cores.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _one = ONE_CLUSTER.lock().await;
    let c = Cluster::new(
        "cluster",
        &[
            ("BANTER_BIN", env!("CARGO_BIN_EXE_banter-node")),
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
        move || run_ok(&mut cmd)
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
    let seen = message(&mut ann, "welcome back").await.id;

    // Redis restarts on its own files (appendonly, as docker-compose.yml
    // runs it): the room's history and its epoch survive, so a `since` from
    // before the restart still recovers, with `recovered: true`.
    let kept = bob.say("lobby", "kept across the restart").await;
    let restart = tokio::task::spawn_blocking({
        let mut cmd = c.script(&["restart-redis"]);
        move || run_ok(&mut cmd)
    });
    restart.await.unwrap();
    within(20, "a since from before the restart recovers", async || {
        let mut carol = Client::connect(lb, "name=Carol").await;
        carol
            .send(json!({"type":"join","room":"lobby","since":seen}))
            .await;
        let answer = carol
            .recv_until(|f| {
                matches!(
                    f,
                    banter_protocol::ServerFrame::Joined { .. }
                        | banter_protocol::ServerFrame::Error { .. }
                )
            })
            .await;
        carol.close().await;
        match answer {
            banter_protocol::ServerFrame::Joined {
                recovered, history, ..
            } => {
                assert!(recovered, "the history survived the restart");
                assert_eq!(history.iter().map(|m| &m.id).collect::<Vec<_>>(), [&kept]);
                true
            }
            _ => false, // the node is still reconnecting
        }
    })
    .await;
    let mut after = None;
    within(20, "bob's node takes a message again", async || {
        bob.send(json!({"type":"send","room":"lobby","text":"after the restart"}))
            .await;
        let answer = bob
            .recv_until(|f| {
                matches!(
                    f,
                    banter_protocol::ServerFrame::Ack { .. }
                        | banter_protocol::ServerFrame::Error { .. }
                )
            })
            .await;
        if let banter_protocol::ServerFrame::Ack { id, .. } = answer {
            after = Some(id);
        }
        after.is_some()
    })
    .await;
    let after = after.unwrap();
    let epoch = |id: &banter_protocol::MessageId| id.as_str().split(':').next().map(str::to_owned);
    assert_eq!(epoch(&after), epoch(&kept), "the same epoch");

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

/// A command on the Redis Cluster instance at `port`.
fn redis_query<T: redis::FromRedisValue>(port: u16, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    cmd.query(&mut con).unwrap()
}

/// Polls every node until its `/readyz` is 200 and its
/// `banter_bus_shards_up` is 3.
async fn shards_up(c: &Cluster, secs: u64) {
    for (n, node) in c.nodes.iter().enumerate() {
        let want = format!("banter_bus_shards_up{{node=\"node{}\"}} 3", n + 1);
        within(secs, &format!("{want}, ready"), async || {
            let (code, body) = get(*node, "/metrics").await;
            let up = code == 200 && body.lines().any(|l| l == want);
            up && get(*node, "/readyz").await.0 == 200
        })
        .await;
    }
}

/// `up --redis-cluster`: six `redis-server --cluster-enabled yes` instances
/// (three primaries, three replicas) instead of one Redis, and the nodes on
/// `--redis-cluster` with all six as seeds. Messages cross nodes through
/// nginx in rooms on each of the three primaries, every node holds a
/// subscriber connection to each primary, the cluster `up` returns survives
/// losing a primary at once (its replicas have synced), and `status` and
/// `down` handle the instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_cluster_on_redis_cluster() {
    let _one = ONE_CLUSTER.lock().await;
    tool("redis-server", "redis-server");
    tool("redis-cli", "redis-tools");
    tool("nginx", "nginx");
    tool("prometheus", "prometheus");
    let c = Cluster::new(
        "redis-cluster",
        &[
            ("BANTER_BIN", env!("CARGO_BIN_EXE_banter-node")),
            ("BANTER__SERVER__DRAIN_TIMEOUT_MS", "3000"),
        ],
    );
    let started = Instant::now();
    let up = c.sh(&["up", "--redis-cluster"]);
    let seeds: Vec<String> = c
        .redis_cluster_ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    assert!(up.contains(&seeds.join(",")), "{up}");

    // Each node runs with --redis-cluster and all six seeds.
    for n in 1..=3 {
        let pid = c.file(&format!("pids/node{n}.pid"));
        let pid = pid.split_whitespace().next().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<_> = cmdline
            .split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect();
        let flag = args.iter().position(|a| a == "--redis-cluster");
        let flag = flag.unwrap_or_else(|| panic!("node{n}: {args:?}"));
        assert_eq!(args[flag + 1], seeds.join(","), "node{n}");
        assert!(!args.iter().any(|a| a == "--redis"), "node{n}: {args:?}");
    }

    // status: six instances, three primaries and three replicas, all ok.
    let status = c.sh(&["status"]);
    for p in &c.redis_cluster_ports {
        assert!(status.contains(&format!("redis-{p} running")), "{status}");
    }
    let primaries = |s: &str| s.matches(" primary cluster_state:ok").count();
    let replicas = |s: &str| s.matches(" replica (link up) cluster_state:ok").count();
    assert_eq!((primaries(&status), replicas(&status)), (3, 3), "{status}");
    assert!(
        status.contains("redis-cluster cluster_state:ok, 3 primaries serving slots"),
        "{status}"
    );

    // Every node holds a subscriber connection to each of the three primaries.
    shards_up(&c, 10).await;

    // Two clients through nginx land on two nodes, and talk in three rooms
    // whose slots (by the rooms' names) are on the three primaries.
    let mut ann = Client::connect(c.nginx, "name=Ann").await;
    let mut bob = Client::connect(c.nginx, "name=Bob").await;
    assert_ne!(ann.node, bob.node, "least_conn spreads two sockets");
    let rooms = ["news", "lobby", "dev"];
    for room in rooms {
        ann.join(room).await;
        bob.join(room).await;
        ann.say(room, &format!("{room}: hi from Ann")).await;
        let m = message(&mut bob, &format!("{room}: hi from Ann")).await;
        assert_eq!((m.room.as_str(), &m.from), (room, &ann.user));
        bob.say(room, &format!("{room}: hi from Bob")).await;
        message(&mut ann, &format!("{room}: hi from Bob")).await;
    }
    // Each room's channel is a shard channel, subscribed by both nodes on the
    // primary that owns its slot and nowhere else.
    let mut owners = Vec::new();
    for room in rooms {
        let channel = format!("banter:room:{{{room}}}");
        let subscribed: Vec<(u16, i64)> = c
            .redis_cluster_ports
            .iter()
            .map(|&p| {
                let (_, n): (String, i64) =
                    redis_query(p, redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(&channel));
                (p, n)
            })
            .filter(|&(_, n)| n > 0)
            .collect();
        let [(port, 2)] = subscribed[..] else {
            panic!("{channel}: subscribers per instance {subscribed:?}");
        };
        let role: Vec<redis::Value> = redis_query(port, &mut redis::cmd("ROLE"));
        assert_eq!(
            role.first(),
            Some(&redis::Value::BulkString(b"master".to_vec())),
            "{channel} on {port}"
        );
        owners.push(port);
    }
    let news = owners[0];
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 3, "the rooms are on three primaries");

    // The primary of `news` dies: its replica takes over, every node is back
    // on three shards, and the same sockets chat on in that room.
    let pid = c.file(&format!("pids/redis-{news}.pid"));
    let pid = pid.split_whitespace().next().unwrap();
    run_ok(std::process::Command::new("kill").args(["-KILL", pid]));
    let killed = Instant::now();
    within(15, "a replica took over", async || {
        let s = c.sh(&["status"]);
        s.contains(&format!("redis-{news} exited")) && primaries(&s) == 3 && replicas(&s) == 2
    })
    .await;
    shards_up(&c, 10).await;
    // Sending resumes within cluster-node-timeout (cluster.sh's 2 s) + 5 s of
    // the kill; until then a send may be refused (`unavailable`, never a
    // false ack), and a client tries again, as users do.
    let resumed = killed + Duration::from_secs(2 + 5);
    let mut attempt = 0;
    let text = loop {
        attempt += 1;
        let text = format!("after the failover #{attempt}");
        match ann.try_say("news", &text).await {
            Ok(_) => break text,
            Err(code) => {
                assert!(
                    Instant::now() < resumed,
                    "still refused ({code}) after {:?}",
                    killed.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    message(&mut bob, &text).await;
    bob.say("news", "still here").await;
    message(&mut ann, "still here").await;
    ann.close().await;
    bob.close().await;

    let down = c.sh(&["down"]);
    assert!(down.contains("down"), "{down}");
    assert!(c.sh(&["status"]).contains("not running"));
    for p in &c.redis_cluster_ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *p)).is_err(),
            "redis-{p} still answers after down"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
