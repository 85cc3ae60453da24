//! The smoke run of `banter-load` against real nodes in this process: a
//! correctness check (zero loss, duplicates and reordering), not a timing.
//! One node on the in-memory bus, and two nodes on one real Redis with the
//! publishers on the second node, as the benchmark runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_load::cli::{Common, SmokeArgs};
use banter_node::config::Config;
use banter_node::{Node, run};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn config(id: &str, redis: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.node.id = id.into();
    c.redis.url = redis.into();
    c.redis.pool_size = 4;
    // The smoke run publishes faster than a chat user may.
    c.limits.rate_per_sec = 100_000;
    c.limits.burst = 100_000;
    c
}

async fn start(config: Config, shutdown: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::connect(config).await.unwrap();
    tokio::spawn(run(listener, node.clone(), shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.readiness().is_err() {
        assert!(tokio::time::Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    addr
}

fn smoke_args(nodes: Vec<SocketAddr>) -> SmokeArgs {
    SmokeArgs {
        common: Common {
            nodes,
            sources: 2,
            ..Common::default()
        },
        subscribers: 20,
        publishers: 2,
        rate: 200.0,
        duration: Duration::from_secs(2),
    }
}

fn assert_clean(report: &banter_load::report::Report) {
    println!("{}", report.table());
    let j = &report.json;
    assert!(report.ok, "smoke found problems:\n{}", report.table());
    assert_eq!(j["lost"], 0);
    assert_eq!(j["duplicates"], 0);
    assert_eq!(j["out_of_order"], 0);
    assert_eq!(j["subscribers_connected"], 20);
    // 2.5 s at 200 msg/s, give or take the edges.
    assert!(j["acked"].as_u64().unwrap() >= 400, "{}", report.table());
    assert!(j["deliveries_total"].as_u64().unwrap() >= 20 * 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_on_one_in_memory_node() {
    let shutdown = CancellationToken::new();
    let addr = start(config("smoke-mem", ""), &shutdown).await;
    let report = banter_load::smoke(&smoke_args(vec![addr])).await.unwrap();
    assert_clean(&report);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_on_two_nodes_over_redis() {
    let redis = banter_testkit::RedisServer::start();
    let shutdown = CancellationToken::new();
    let a = start(config("smoke-a", &redis.url()), &shutdown).await;
    let b = start(config("smoke-b", &redis.url()), &shutdown).await;
    let report = banter_load::smoke(&smoke_args(vec![a, b])).await.unwrap();
    assert_clean(&report);
    shutdown.cancel();
}
