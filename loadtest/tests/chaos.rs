//! A short `chaos` run against the debug `banter-node` cargo built beside
//! this test: two faults (`kill-pubsub`, `sigstop`) on two nodes, each on a
//! fresh Redis and fresh nodes the tool starts and stops itself. First the
//! accounting must add up; then the verdict: nothing acked silently lost,
//! duplicated or reordered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_load::cli::ChaosArgs;
use banter_load::scenarios::chaos::{self, Fault};
use std::time::{Duration, Instant};

fn args() -> ChaosArgs {
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
        redis_cluster: false,
        shards: 3,
        replicas: 1,
        node_timeout: Duration::from_millis(1500),
        redis_cli: "redis-cli".into(),
        publishers: 1,
        subscribers: 3,
        rooms: 1,
        rate: 200.0,
        size: 64,
        faults: vec![
            "kill-pubsub".parse::<Fault>().unwrap(),
            "sigstop".parse::<Fault>().unwrap(),
        ],
        fault_at: Duration::from_secs(1),
        hold: Duration::from_secs(2),
        duration: Duration::from_secs(3),
        after: Duration::from_millis(1500),
        drain: Duration::from_secs(4),
        persistence: false,
        history_size: 0,
        logs: None,
        quiet: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_pubsub_and_sigstop_lose_nothing_acked() {
    let args = args();
    let started = Instant::now();
    let o = chaos::run(&args).await.unwrap();
    let table = chaos::table(&o);
    println!("{table}(in {:.1} s)", started.elapsed().as_secs_f64());
    assert_eq!(o.rounds.len(), 2);
    // The accounting adds up, whatever the node did.
    for r in &o.rounds {
        assert!(r.error.is_none(), "{}: {:?}", r.fault, r.error);
        assert!(r.acked > 300, "{}: too little traffic\n{table}", r.fault);
        assert_eq!(r.sent, r.acked + r.refused + r.unanswered, "{}", r.fault);
        let t = &r.totals;
        // Every subscriber joined before publishing: each acked message is
        // expected once per subscriber, and is exactly one of four things.
        assert_eq!(t.expected, 3 * r.acked, "{}", r.fault);
        assert_eq!(
            t.live + t.recovered + t.announced + t.lost,
            t.expected,
            "{}",
            r.fault
        );
        assert_eq!(r.per_subscriber.len(), 3);
        assert!(
            !r.fault_notes.is_empty(),
            "{}: the fault did nothing",
            r.fault
        );
        assert!(r.fault_end_ms > r.fault_start_ms);
        assert!(
            r.resume_ms.is_some(),
            "{}: traffic never resumed\n{table}",
            r.fault
        );
    }
    assert!(o.rounds[1].fault_end_ms - o.rounds[1].fault_start_ms >= 2000.0);
    // The verdict.
    let report = chaos::report(&o);
    for r in &o.rounds {
        assert_eq!(
            (r.totals.lost, r.totals.duplicated, r.totals.reordered),
            (0, 0, 0),
            "{}: acked messages silently lost / duplicated / reordered\n{table}\n{}",
            r.fault,
            report.table()
        );
    }
    assert!(report.ok);
}
