//! The `oom` fault: Redis refusing writes for a bounded time.

use super::cluster::PROBE_TIMEOUT;
use super::probe;
use anyhow::Context;
use std::time::Duration;

/// How far above `used_memory` the `oom` fault sets `maxmemory`: less than
/// one trimmed stream node, so the next writes cross it.
const OOM_MARGIN: u64 = 1024;

/// A number from `INFO section`'s line `prefix...` (0 when absent).
async fn info_number(port: u16, section: &str, prefix: &str) -> anyhow::Result<u64> {
    let info = probe::redis(port, &["INFO", section], PROBE_TIMEOUT).await?;
    Ok(info
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// `maxmemory` just above what Redis uses, with `noeviction`: writes are
/// refused with OOM for `hold`, then the limit is lifted again (also when
/// setting it failed half-way). Redis's memory saws up and down (streams
/// are trimmed a node at a time, client buffers come and go), so a limit set
/// at a peak may sit above the next trough: whenever Redis has refused
/// nothing for 250 ms, the limit is cut to well below what it uses.
pub async fn run(port: u16, hold: Duration) -> anyhow::Result<String> {
    let used = info_number(port, "memory", "used_memory:").await?;
    anyhow::ensure!(used > 0, "no used_memory in INFO memory");
    let limit = used + OOM_MARGIN;
    let refused_before = info_number(port, "errorstats", "errorstat_OOM:count=").await?;
    let set = async {
        let policy = ["CONFIG", "SET", "maxmemory-policy", "noeviction"];
        probe::redis(port, &policy, PROBE_TIMEOUT).await?;
        probe::redis(
            port,
            &["CONFIG", "SET", "maxmemory", &limit.to_string()],
            PROBE_TIMEOUT,
        )
        .await?;
        let until = tokio::time::Instant::now() + hold;
        let (mut seen, mut cuts) = (refused_before, 0);
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = tokio::time::sleep_until(until) => break,
            }
            let refused = info_number(port, "errorstats", "errorstat_OOM:count=").await?;
            if refused == seen {
                let now = info_number(port, "memory", "used_memory:").await?;
                let cut = (now.min(limit) / 2).to_string();
                probe::redis(port, &["CONFIG", "SET", "maxmemory", &cut], PROBE_TIMEOUT).await?;
                cuts += 1;
            }
            seen = refused;
        }
        anyhow::Ok((cuts, seen - refused_before))
    }
    .await;
    let restore = probe::redis(port, &["CONFIG", "SET", "maxmemory", "0"], PROBE_TIMEOUT)
        .await
        .context("lifting maxmemory again");
    let (cuts, refused) = set?;
    restore?;
    Ok(format!(
        "maxmemory {limit} (used_memory {used} + {OOM_MARGIN} B), noeviction, for {hold:?} \
         (cut to half after 250 ms with no refusal: {cuts} times); Redis refused {refused} \
         commands with OOM"
    ))
}
