//! A short `chaos --redis-cluster` run against the debug `banter-node`
//! cargo built beside this test: one `primary-kill` round on a fresh Redis
//! Cluster (three primaries, three replicas, real `redis-server` processes
//! joined by `redis-cli --cluster create`) and two nodes. The primary of the
//! room's slot is SIGKILLed under traffic; its replica takes over; nothing
//! acked may be silently lost, duplicated or reordered, and delivery must be
//! back within `cluster-node-timeout` + 5 s of the kill. Its own test binary,
//! so it never runs beside the single-Redis chaos test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_load::cli::ChaosArgs;
use banter_load::scenarios::chaos::{self, Fault};
use std::time::{Duration, Instant};

const NODE_TIMEOUT: Duration = Duration::from_millis(1500);

fn args(faults: &str) -> ChaosArgs {
    let node_bin = chaos::default_node_bin();
    assert!(
        node_bin.is_file(),
        "no banter-node binary beside this test ({}): build it first with \
         `cargo build -p banter-node` (this test does not build it)",
        node_bin.display()
    );
    ChaosArgs {
        nodes: 2,
        node_bin: Some(node_bin),
        redis_bin: "redis-server".into(),
        redis_cluster: true,
        shards: 3,
        replicas: 1,
        node_timeout: NODE_TIMEOUT,
        redis_cli: "redis-cli".into(),
        publishers: 1,
        subscribers: 3,
        rooms: 1,
        rate: 200.0,
        size: 64,
        faults: faults
            .split(',')
            .map(|f| f.parse::<Fault>().unwrap())
            .collect(),
        fault_at: Duration::from_secs(1),
        hold: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        after: Duration::from_secs(2),
        drain: Duration::from_secs(5),
        persistence: false,
        // The failover's hole (a few seconds of traffic) fits in history.
        history_size: 2000,
        logs: None,
        quiet: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_loses_nothing_acked() {
    let started = Instant::now();
    let o = chaos::run(&args("primary-kill")).await.unwrap();
    let table = chaos::table(&o);
    println!("{table}(in {:.1} s)", started.elapsed().as_secs_f64());
    let r = &o.rounds[0];
    assert!(r.error.is_none(), "{}: {:?}", r.fault, r.error);
    assert!(r.acked > 300, "too little traffic\n{table}");
    assert_eq!(r.sent, r.acked + r.refused + r.unanswered);
    let t = &r.totals;
    assert_eq!(t.expected, 3 * r.acked);
    assert_eq!(t.live + t.recovered + t.announced + t.lost, t.expected);
    let notes = r.fault_notes.join("\n");
    assert!(notes.contains("(a new primary)"), "no failover:\n{notes}");
    assert_eq!(
        (t.lost, t.duplicated, t.reordered),
        (0, 0, 0),
        "acked messages silently lost / duplicated / reordered\n{table}\n{}",
        chaos::report(&o).table()
    );
    let resume = r.resume_ms.expect("delivery never resumed");
    let from_kill = Duration::from_secs_f64((r.fault_end_ms - r.fault_start_ms + resume) / 1000.0);
    assert!(
        from_kill <= NODE_TIMEOUT + Duration::from_secs(5),
        "delivery back {from_kill:?} after the kill\n{notes}"
    );
}

#[tokio::test]
async fn missing_redis_tools_are_named_by_their_package() {
    let mut a = args("primary-kill");
    a.redis_cli = "/nonexistent/redis-cli".into();
    let o = chaos::run(&a).await.unwrap();
    let e = o.rounds[0].error.clone().unwrap_or_default();
    assert!(e.contains("redis-tools"), "{e}");
    let mut a = args("primary-kill");
    a.redis_bin = "/nonexistent/redis-server".into();
    let o = chaos::run(&a).await.unwrap();
    let e = o.rounds[0].error.clone().unwrap_or_default();
    assert!(e.contains("Debian package redis-server"), "{e}");
}

#[test]
fn cluster_faults_are_refused_without_a_cluster() {
    let mut a = args("primary-kill");
    a.redis_cluster = false;
    let rt = tokio::runtime::Runtime::new().unwrap();
    for fault in ["primary-kill", "reshard"] {
        a.faults = vec![fault.parse().unwrap()];
        let e = rt.block_on(chaos::run(&a)).unwrap_err().to_string();
        assert!(e.contains("needs --redis-cluster"), "{fault}: {e}");
    }
}
