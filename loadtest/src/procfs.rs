//! What /proc says about the node processes, this process and the machine:
//! RSS, CPU time, busy share, and the open-files limit.

use serde::Serialize;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// (utime, stime) of a process, in ticks, from a `/proc/<pid>/stat` path.
pub(crate) fn stat_ticks(path: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// CPU seconds (user + system) `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_ticks(&format!("/proc/{pid}/stat")).map(|(u, s)| (u + s) as f64 / TICKS_PER_SEC)
}

/// CPU seconds this process has used so far.
pub fn self_cpu_seconds() -> f64 {
    let (u, s) = self_cpu_split();
    u + s
}

/// (user, system) CPU seconds this process has used so far.
pub fn self_cpu_split() -> (f64, f64) {
    stat_ticks("/proc/self/stat").map_or((0.0, 0.0), |(u, s)| {
        (u as f64 / TICKS_PER_SEC, s as f64 / TICKS_PER_SEC)
    })
}

/// (busy, total) ticks of the whole machine from the `cpu` line of /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest fields are inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A snapshot of CPU counters, to diff over a measured window.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    own: (f64, f64),
    machine: Option<(u64, u64)>,
    nodes: Vec<Option<f64>>,
}

/// CPU use over a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    /// Wall-clock seconds of the window.
    pub wall_secs: f64,
    /// This load tool's CPU seconds (user + system).
    pub load_tool_cpu_secs: f64,
    /// Of which in the kernel (system time: mostly TCP receive and ACKs).
    pub load_tool_sys_secs: f64,
    /// Each node's CPU seconds (same order as --pids).
    pub node_cpu_secs: Vec<f64>,
    /// All nodes together.
    pub nodes_cpu_secs: f64,
    /// Share of the whole machine's CPU time that was busy (0..1).
    pub machine_busy_share: Option<f64>,
}

impl CpuSnapshot {
    /// Reads the counters now.
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            own: self_cpu_split(),
            machine: machine_ticks(),
            nodes: pids.iter().map(|&p| cpu_seconds(p)).collect(),
        }
    }

    /// What was used between `self` and `later`. `extra_own` adds CPU of
    /// child processes that measured themselves.
    pub fn usage(&self, later: &CpuSnapshot) -> CpuUsage {
        let node_cpu_secs: Vec<f64> = self
            .nodes
            .iter()
            .zip(&later.nodes)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            })
            .collect();
        let machine_busy_share = match (self.machine, later.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        CpuUsage {
            wall_secs: later.at.duration_since(self.at).as_secs_f64(),
            load_tool_cpu_secs: (later.own.0 + later.own.1) - (self.own.0 + self.own.1),
            load_tool_sys_secs: later.own.1 - self.own.1,
            nodes_cpu_secs: node_cpu_secs.iter().sum(),
            node_cpu_secs,
            machine_busy_share,
        }
    }
}

/// Raises this process's soft open-files limit to the hard limit; returns
/// (soft, hard) after the attempt.
pub fn raise_nofile() -> (u64, u64) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024))
}

/// Each node's RSS in KiB (same order as `pids`; 0 when unreadable).
pub fn rss_all(pids: &[u32]) -> Vec<u64> {
    pids.iter().map(|&p| rss_kib(p).unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_seconds(me).is_some());
        let a = CpuSnapshot::take(&[me]);
        let b = CpuSnapshot::take(&[me]);
        let u = a.usage(&b);
        assert_eq!(u.node_cpu_secs.len(), 1);
        assert!(u.wall_secs >= 0.0);
    }

    #[test]
    fn nofile_is_raised_to_hard() {
        let (soft, hard) = raise_nofile();
        assert_eq!(soft, hard);
    }
}
