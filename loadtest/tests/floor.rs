//! The `floor` measurement end to end, with small numbers: every byte
//! written is read, each frame of the window is timed once, and the frames
//! are the size a node's `message` frame is. A correctness check of the
//! tool, not a timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use banter_load::cli::FloorArgs;
use banter_load::scenarios::floor;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_written_is_read_and_timed_once() {
    let args = FloorArgs {
        sockets: 20,
        writers: 2,
        rate: 20.0,
        size: 100,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
    };
    let o = floor::run(&args).await.unwrap();
    assert_eq!(o.writers, 2);
    assert_eq!(o.bytes_written, o.bytes_read, "bytes lost on loopback");
    // 20 rounds in the 1 s window, 20 sockets each.
    assert_eq!(o.writes, 400);
    assert_eq!(
        o.latency.count, o.writes,
        "each frame of the window timed once"
    );
    assert!(o.writer_us_per_write >= 0.0 && o.writes_per_cpu_sec > 0.0);
    let r = floor::report(&o);
    assert!(r.ok, "{}", r.table());
}

#[test]
fn frames_have_one_length_and_carry_a_bench_stamp() {
    let a = floor::message_frame(100, 0, 0).unwrap();
    let b = floor::message_frame(100, 12_345, 987_654_321).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(a[0], 0x81, "FIN + text, unmasked");
    // A 100-byte text makes a frame over 125 bytes: a 16-bit length follows.
    assert_eq!(b[1], 126);
    assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len() - 4);
    let json = std::str::from_utf8(&b[4..]).unwrap();
    let stamp = banter_load::wire::parse_message(json).unwrap();
    assert_eq!((stamp.seq, stamp.t_us), (12_345, 987_654_321));
}
