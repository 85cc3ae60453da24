//! `banter-load`: Banter's load generator. It speaks the JSON protocol of
//! `docs/protocol.md` to nodes on this machine and reports throughput,
//! latency, order and the resources the nodes and the tool itself used.
//!
//! # Layout
//!
//! - [`cli`]: the flags of every scenario, as plain structs.
//! - [`conn`]: opening one socket from a 127.0.0.x source address, past
//!   `welcome`/`joined`; failures named by the limit behind them.
//! - [`wire`]: the hot path: bench message text, and finding its fields in a
//!   node's frame without a full JSON parse.
//! - [`stats`]: sequence tracking (loss, duplicates, reordering) and
//!   HdrHistogram latency recording shared by many tasks.
//! - [`procfs`]: RSS and CPU of the nodes, this process and the machine; the
//!   open-files limit.
//! - [`shard`]: splitting a run over processes when one fd limit is too small.
//! - [`scenarios`]: `idle`, `bigroom` (one public room of thousands),
//!   `fanout` (and `smoke`), `rooms`, `churn`, and `floor`, the kernel's own
//!   cost per delivery with no server at all; `chaos`, which starts its own
//!   Redis and nodes and injects faults.
//! - [`report`]: progress lines, the summary table and the JSON result.
//! - [`plot`]: latency against offered load, as SVG and a markdown table.
//!
//! Everything targets 127.0.0.0/8 only, is bounded in count and time, and
//! stops by itself.

pub mod cli;
pub mod conn;
pub mod plot;
pub mod procfs;
pub mod pusher;
pub mod report;
pub mod scenarios;
pub mod shard;
pub mod stats;
pub mod wire;

use cli::{Command, SmokeArgs};
use report::Report;

/// Runs the smoke scenario: a small fan-out whose report is `ok` only with
/// zero loss, duplicates and reordering and every socket intact.
pub async fn smoke(args: &SmokeArgs) -> anyhow::Result<Report> {
    let outcome = scenarios::fanout::run(&args.fanout()).await?;
    Ok(scenarios::fanout_report("smoke", &outcome))
}

/// Runs one command; `None` when this process is a shard of a parent (the
/// parent reports) or nothing is to be reported.
pub async fn run(command: &Command) -> anyhow::Result<Option<Report>> {
    Ok(match command {
        Command::Idle(a) => scenarios::idle::run(a)
            .await?
            .map(|o| scenarios::idle::report(&o)),
        Command::Bigroom(a) => scenarios::bigroom::run(a)
            .await?
            .map(|o| scenarios::bigroom::report(&o)),
        Command::Fanout(a) => {
            let o = scenarios::fanout::run(a).await?;
            Some(scenarios::fanout_report("fanout", &o))
        }
        Command::Rooms(a) => scenarios::rooms::run(a)
            .await?
            .map(|o| scenarios::rooms_report(&o)),
        Command::Churn(a) => Some(scenarios::churn::report(&scenarios::churn::run(a).await?)),
        Command::Smoke(a) => Some(smoke(a).await?),
        Command::Floor(a) => Some(scenarios::floor::report(&scenarios::floor::run(a).await?)),
        Command::Chaos(a) => {
            let o = scenarios::chaos::run(a).await?;
            print!("{}", scenarios::chaos::table(&o));
            Some(scenarios::chaos::report(&o))
        }
        Command::Plot(a) => {
            print!("{}", plot::run(&a.results, &a.out)?);
            None
        }
    })
}
