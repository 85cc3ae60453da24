//! `floor`: what the kernel alone charges on this machine for one
//! delivery over loopback TCP, with no WebSocket server in the way.
//!
//! `--writers` threads play a perfect server: they share `--sockets`
//! accepted connections and, `--rate` times a second, write one ready-made
//! WebSocket frame (the bytes of a `message` frame carrying `--size` bytes of
//! text) to each of them, one `write` per socket, as a node does for a chat
//! message to a room. Another thread plays a perfect client: a tokio
//! current-thread runtime with one task per socket that only reads, counts
//! and times the frames. Each thread
//! reads its own CPU time from `/proc/thread-self/stat` over the measured
//! window, so the figures are the syscalls and the TCP stack, nothing else.
//!
//! On loopback the receiver's TCP processing runs in the sender's softirq,
//! so the writer's CPU per write is the least any server on this machine
//! can spend per delivery when each delivery is its own TCP segment, and
//! its inverse is the ceiling of deliveries per CPU-second.

use crate::cli::FloorArgs;
use crate::procfs::{TICKS_PER_SEC, raise_nofile};
use crate::report::Report;
use crate::stats::{Percentiles, Recorder};
use anyhow::Context as _;
use banter_protocol::{Message, ServerFrame, User};
use serde::Serialize;
use std::io::{Cursor, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// The outcome of a floor run.
#[derive(Debug, Default, Serialize)]
pub struct FloorOutcome {
    pub sockets: usize,
    pub writers: usize,
    pub rate: f64,
    pub window_secs: f64,
    /// Bytes of each write: a whole WebSocket frame.
    pub frame_bytes: usize,
    /// Writes in the measured window, all writers.
    pub writes: u64,
    /// Writer threads' CPU seconds over the window (user, system).
    pub writer_cpu_secs: (f64, f64),
    pub writer_us_per_write: f64,
    /// The ceiling: writes per writer CPU-second.
    pub writes_per_cpu_sec: f64,
    /// Reader thread CPU seconds over the window (user, system).
    pub reader_cpu_secs: (f64, f64),
    /// Reader CPU per frame written in the window.
    pub reader_us_per_frame: f64,
    /// From a round's intended start to the frame being read, for the
    /// rounds of the window.
    pub latency: Percentiles,
    /// `read` calls that returned data, over the whole run.
    pub reads: u64,
    /// Bytes written and read over the whole run (equal unless something broke).
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Rounds a writer started after the next one was due.
    pub late_rounds: u64,
}

/// (user, system) CPU seconds of the calling thread.
fn thread_cpu() -> (f64, f64) {
    crate::procfs::stat_ticks("/proc/thread-self/stat").map_or((0.0, 0.0), |(u, s)| {
        (u as f64 / TICKS_PER_SEC, s as f64 / TICKS_PER_SEC)
    })
}

fn minus(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 - b.0, a.1 - b.1)
}

/// The bytes a node writes for one `message` frame with `size` bytes of
/// text: the JSON behind an unmasked WebSocket text-frame header. The text
/// is a bench stamp of round `round` meant to go out at `t_us`, with
/// fixed-width numbers so every frame of a run has the same length.
pub fn message_frame(size: usize, round: u64, t_us: u64) -> anyhow::Result<Vec<u8>> {
    let mut text = format!("0:{round:010}:{t_us:013}:");
    while text.len() < size {
        text.push('x');
    }
    let json = ServerFrame::Message(Message {
        room: "bench-50".parse()?,
        id: "1795401234567-0".parse()?,
        from: User::parse("g-3f9c2a71d0b4", "guest-4821")?,
        text,
        ts: 1_795_401_234_567,
    })
    .to_json();
    let mut frame = Vec::with_capacity(json.len() + 4);
    Frame::message(json, OpCode::Data(Data::Text), true).format(&mut frame)?;
    Ok(frame)
}

/// The length of the header in front of a frame's payload.
fn header_len(frame: &[u8]) -> anyhow::Result<usize> {
    let mut cursor = Cursor::new(frame);
    FrameHeader::parse(&mut cursor)?.context("not a whole frame header")?;
    Ok(usize::try_from(cursor.position())?)
}

/// What a writer thread hands back.
#[derive(Default)]
struct WriterResult {
    writes: u64,
    cpu: (f64, f64),
    bytes: u64,
    late_rounds: u64,
}

/// From the first writer to the reader: the measured window begins or ends.
enum Window {
    Start,
    End,
}

/// The run's schedule, as offsets from its epoch (the instant the reader
/// has every socket connected).
#[derive(Clone, Copy)]
struct Plan {
    slot: Duration,
    size: usize,
    warmup: Duration,
    end: Duration,
}

impl Plan {
    fn new(args: &FloorArgs) -> Plan {
        Plan {
            slot: Duration::from_secs_f64(1.0 / args.rate),
            size: args.size,
            warmup: args.warmup,
            end: args.warmup + args.duration,
        }
    }

    /// Whether a round meant for `t` (since the epoch) is in the window.
    fn in_window(&self, t: Duration) -> bool {
        t >= self.warmup && t < self.end
    }
}

/// Runs the floor measurement.
pub async fn run(args: &FloorArgs) -> anyhow::Result<FloorOutcome> {
    anyhow::ensure!(args.sockets > 0, "--sockets must be at least 1");
    anyhow::ensure!(
        (1..=args.sockets).contains(&args.writers),
        "--writers must be between 1 and --sockets"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be positive"
    );
    let (soft, _) = raise_nofile();
    let needed = (args.sockets as u64) * 2 + 64;
    anyhow::ensure!(
        needed <= soft,
        "--sockets {} needs {needed} open files (both ends are in this process); the limit is {soft}",
        args.sockets,
    );
    let sample = message_frame(args.size, 0, 0)?;
    let plan = Plan::new(args);
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;

    // The reader connects every socket while the listener accepts them.
    let (window_tx, window_rx) = tokio::sync::mpsc::unbounded_channel::<Window>();
    let (connected_tx, connected_rx) = mpsc::channel::<anyhow::Result<Instant>>();
    let side = Arc::new(ReadSide {
        frame_bytes: sample.len(),
        header_bytes: header_len(&sample)?,
        plan,
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        latency: Recorder::new(1),
    });
    let reader = {
        let (n, side) = (args.sockets, side.clone());
        std::thread::Builder::new()
            .name("floor-reader".into())
            .spawn(move || read_all(addr, n, side, connected_tx, window_rx))?
    };
    let mut socks = Vec::with_capacity(args.sockets);
    while socks.len() < args.sockets {
        let (s, _) = listener.accept().context("accept")?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let epoch = connected_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the reader did not connect within 60 s")??;

    // The writers: each takes an equal share of the sockets.
    let per = args.sockets.div_ceil(args.writers);
    let mut writers = Vec::new();
    let mut window_tx = Some(window_tx);
    while !socks.is_empty() {
        let mine: Vec<TcpStream> = socks.drain(..per.min(socks.len())).collect();
        let window = window_tx.take();
        writers.push(
            std::thread::Builder::new()
                .name("floor-writer".into())
                .spawn(move || write_rounds(mine, plan, epoch, window))?,
        );
    }
    let results = tokio::task::spawn_blocking(move || {
        writers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| anyhow::anyhow!("a writer thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<WriterResult>>>()
    })
    .await??;
    let reader_cpu = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;

    let mut w = WriterResult::default();
    for r in &results {
        w.writes += r.writes;
        w.bytes += r.bytes;
        w.late_rounds += r.late_rounds;
        w.cpu = (w.cpu.0 + r.cpu.0, w.cpu.1 + r.cpu.1);
    }
    let writer_total = w.cpu.0 + w.cpu.1;
    let reader_total = reader_cpu.0 + reader_cpu.1;
    let per_write = |cpu: f64| cpu * 1e6 / (w.writes.max(1)) as f64;
    Ok(FloorOutcome {
        sockets: args.sockets,
        writers: results.len(),
        rate: args.rate,
        window_secs: args.duration.as_secs_f64(),
        frame_bytes: side.frame_bytes,
        writes: w.writes,
        writer_cpu_secs: w.cpu,
        writer_us_per_write: per_write(writer_total),
        writes_per_cpu_sec: w.writes as f64 / writer_total.max(1e-9),
        reader_cpu_secs: reader_cpu,
        reader_us_per_frame: per_write(reader_total),
        latency: Percentiles::of(&side.latency.merged()),
        reads: side.reads.load(Ordering::Relaxed),
        bytes_written: w.bytes,
        bytes_read: side.bytes.load(Ordering::Relaxed),
        late_rounds: w.late_rounds,
    })
}

/// One writer thread: a frame to each of its sockets per round, one
/// `write` each, until the window ends; then it closes them.
fn write_rounds(
    mut socks: Vec<TcpStream>,
    plan: Plan,
    epoch: Instant,
    window: Option<tokio::sync::mpsc::UnboundedSender<Window>>,
) -> anyhow::Result<WriterResult> {
    let mut out = WriterResult::default();
    let mut cpu_start = None;
    for round in 0u64.. {
        let due = plan.slot.mul_f64(round as f64);
        if due >= plan.end {
            break;
        }
        match (epoch + due).checked_duration_since(Instant::now()) {
            Some(wait) => std::thread::sleep(wait),
            None if round > 0 => out.late_rounds += 1,
            None => {}
        }
        let measured = plan.in_window(due);
        if measured && cpu_start.is_none() {
            if let Some(w) = &window {
                let _ = w.send(Window::Start);
            }
            cpu_start = Some(thread_cpu());
        }
        let frame = message_frame(plan.size, round, due.as_micros() as u64)?;
        for s in &mut socks {
            // Blocking writes: at chat rates the socket buffer never fills,
            // so each is one `write` syscall that returns at once.
            s.write_all(&frame).context("write")?;
        }
        out.bytes += (frame.len() * socks.len()) as u64;
        if measured {
            out.writes += socks.len() as u64;
        }
    }
    let cpu_end = thread_cpu();
    if let Some(w) = &window {
        let _ = w.send(Window::End);
    }
    out.cpu = minus(cpu_end, cpu_start.unwrap_or(cpu_end));
    // Closing every socket ends the reader's tasks.
    drop(socks);
    Ok(out)
}

/// What the reader's tasks share: the frames' shape, the schedule, and what
/// they count and time.
struct ReadSide {
    /// Every frame of a run has this length ([`message_frame`]).
    frame_bytes: usize,
    /// Of which the WebSocket header.
    header_bytes: usize,
    plan: Plan,
    /// `read` calls that returned data.
    reads: AtomicU64,
    bytes: AtomicU64,
    latency: Recorder,
}

/// The reader thread: connects `n` sockets, reads them on a current-thread
/// runtime (a task each), records each frame's latency; returns its own CPU
/// over the window.
fn read_all(
    addr: std::net::SocketAddr,
    n: usize,
    side: Arc<ReadSide>,
    connected: mpsc::Sender<anyhow::Result<Instant>>,
    mut window: tokio::sync::mpsc::UnboundedReceiver<Window>,
) -> anyhow::Result<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => socks.push(s),
                Err(e) => {
                    let _ = connected.send(Err(anyhow::anyhow!("connect: {e}")));
                    anyhow::bail!("connect: {e}");
                }
            }
        }
        let epoch = Instant::now();
        let tasks: Vec<_> = socks
            .into_iter()
            .map(|s| tokio::spawn(read_frames(s, epoch, side.clone())))
            .collect();
        let _ = connected.send(Ok(epoch));
        let mut cpu_start = None;
        let mut cpu = (0.0, 0.0);
        while let Some(w) = window.recv().await {
            match w {
                Window::Start => cpu_start = Some(thread_cpu()),
                Window::End => {
                    let end = thread_cpu();
                    cpu = minus(end, cpu_start.unwrap_or(end));
                    break;
                }
            }
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .context("a reader task did not end within 30 s of the close")??;
        }
        Ok(cpu)
    })
}

/// Reads one socket to its end, splitting what arrives into frames and
/// recording the latency of each frame of the window.
async fn read_frames(mut s: tokio::net::TcpStream, epoch: Instant, side: Arc<ReadSide>) {
    let frame_bytes = side.frame_bytes;
    let mut buf = vec![0u8; 4096];
    let mut partial: Vec<u8> = Vec::new();
    while let Ok(k) = s.read(&mut buf).await {
        if k == 0 {
            break;
        }
        let now = epoch.elapsed();
        side.reads.fetch_add(1, Ordering::Relaxed);
        side.bytes.fetch_add(k as u64, Ordering::Relaxed);
        partial.extend_from_slice(&buf[..k]);
        let whole = partial.len() - partial.len() % frame_bytes;
        for frame in partial[..whole].chunks_exact(frame_bytes) {
            let json = std::str::from_utf8(&frame[side.header_bytes..]);
            if let Some(stamp) = json.ok().and_then(crate::wire::parse_message) {
                let due = Duration::from_micros(stamp.t_us);
                if side.plan.in_window(due) {
                    side.latency
                        .record(0, now.saturating_sub(due).as_micros() as u64);
                }
            }
        }
        partial.drain(..whole);
    }
}

/// The summary of a floor run.
pub fn report(o: &FloorOutcome) -> Report {
    let mut r = Report::new("floor", o);
    r.row(
        "shape",
        format!(
            "{} sockets, writer threads: {}, {} rounds/s, one {}-byte write per socket per round, window {:.1} s",
            o.sockets, o.writers, o.rate, o.frame_bytes, o.window_secs
        ),
    )
    .row("writes in the window", o.writes)
    .row(
        "writer CPU",
        cpu_cell(o.writer_cpu_secs, o.writer_us_per_write, "write"),
    )
    .row(
        "ceiling: writes per writer CPU-second",
        format!("{:.0}", o.writes_per_cpu_sec),
    )
    .row(
        "reader CPU",
        cpu_cell(o.reader_cpu_secs, o.reader_us_per_frame, "frame"),
    )
    .row("latency p50/p90/p99/p99.9/max", o.latency.cell())
    .row("bytes written / read", format!("{} / {}", o.bytes_written, o.bytes_read))
    .row("late rounds", o.late_rounds);
    r.ok = o.bytes_written == o.bytes_read && o.writes > 0;
    r
}

/// `T s (K % in the kernel) = X µs per <unit>` for (user, system) seconds.
fn cpu_cell((user, system): (f64, f64), us_per: f64, unit: &str) -> String {
    let total = user + system;
    format!(
        "{total:.2} s ({:.0} % in the kernel) = {us_per:.2} µs per {unit}",
        100.0 * system / total.max(1e-9)
    )
}
