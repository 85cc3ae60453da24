//! A small `bigroom` run against one node in this process (the in-memory
//! bus): 200 members join one room, are held with chatter, then the same
//! 200 connections join no room. The figures are printed; what is checked
//! is the accounting: everyone joined, everyone ended with the room's exact
//! count, every chat message reached every member, and the `joined` frame
//! stayed small.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_load::cli::{BigroomArgs, Common, ShardArgs};
use banter_load::scenarios::bigroom;
use banter_node::config::Config;
use banter_node::{Node, run};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One node on the in-memory bus, serving until the token is cancelled.
async fn start_node() -> (std::net::SocketAddr, CancellationToken) {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.node.id = "bigroom".into();
    c.redis.url = String::new();
    c.limits.rate_per_sec = 100_000;
    c.limits.burst = 100_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = Node::connect(c).await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(listener, node.clone(), shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.readiness().is_err() {
        assert!(Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, shutdown)
}

fn args(addr: std::net::SocketAddr, members: usize, join_rate: f64) -> BigroomArgs {
    BigroomArgs {
        common: Common {
            nodes: vec![addr],
            sources: 2,
            concurrency: 32,
            ..Common::default()
        },
        shard: ShardArgs {
            procs: 1,
            shard: None,
        },
        members,
        room: "hall".into(),
        join_rate,
        hold: Duration::from_secs(2),
        chatter: 5.0,
        chatters: 2,
        diff_interval: Duration::from_secs(1),
        no_baseline: false,
        redis_port: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_members_fill_one_room() {
    let (addr, shutdown) = start_node().await;
    let args = args(addr, 200, 0.0);
    let started = Instant::now();
    let o = bigroom::run(&args)
        .await
        .unwrap()
        .expect("the parent reports");
    let report = bigroom::report(&o);
    println!(
        "{}(in {:.1} s)",
        report.table(),
        started.elapsed().as_secs_f64()
    );
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    assert!(o.dropped.is_empty(), "{:?}", o.dropped);
    assert_eq!(o.joined, 200);
    assert_eq!(o.join_latency.count, 200);
    assert!(o.fill_secs > 0.0 && o.fill_rate_per_sec > 0.0);
    // Every member ended with the room's exact count.
    assert_eq!(o.expected_count, 200);
    assert_eq!(o.final_count_ok, 200, "{:?}", o.final_counts);
    // Presence was counted, and the first page keeps `joined` small.
    assert!(o.presence.total_frames >= 200, "{:?}", o.presence);
    assert!(o.joined_bytes_max > 0 && o.joined_bytes_max < 16 * 1024);
    // The chatter reached everyone, once.
    assert!(o.chat.1 >= 5, "{:?}", o.chat);
    assert_eq!(o.chat.2, 0);
    assert_eq!(o.deliveries.0, o.deliveries.1);
    // The baseline ran over the same connections.
    let b = o.baseline.as_ref().expect("a baseline");
    assert_eq!(b.opened, 200);
    assert!(o.fill_slowdown.is_some());
    assert_eq!(o.goals.len(), 4);
    assert!(report.ok, "{}", report.table());
    shutdown.cancel();
}

/// With `--join-rate`, the joins and the baseline's connections are both
/// spread over members ÷ rate: 60 at 100 per second take 0.6 s each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_rate_paces_the_fill_and_the_baseline() {
    let (addr, shutdown) = start_node().await;
    let o = bigroom::run(&args(addr, 60, 100.0))
        .await
        .unwrap()
        .expect("the parent reports");
    println!("{}", bigroom::report(&o).table());
    assert_eq!(o.joined, 60);
    assert!(o.fill_secs >= 0.55, "the fill is paced: {} s", o.fill_secs);
    let b = o.baseline.as_ref().expect("a baseline");
    assert_eq!(b.opened, 60);
    assert!(b.secs >= 0.55, "the baseline is paced too: {} s", b.secs);
    assert!(
        o.fill_slowdown.is_some_and(|s| s < 1.5),
        "{:?}",
        o.fill_slowdown
    );
    shutdown.cancel();
}
