//! What Redis did over a phase, from its own counters (`INFO cpu` and
//! `INFO commandstats`): its CPU seconds, and the commands it ran with the
//! time it spent in each. Read over a loopback connection to the port given.

use crate::scenarios::chaos::probe;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Redis's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// `used_cpu_sys + used_cpu_user`.
    cpu_secs: f64,
    /// Per command: (calls, µs).
    commands: BTreeMap<String, (u64, u64)>,
}

/// One command over a phase, per unit of work (a join, a connection).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerUnit {
    /// The command (`evalsha`, `hmget`, ...).
    pub command: String,
    /// Calls per unit.
    pub calls: f64,
    /// µs of Redis time per unit.
    pub us: f64,
}

/// What Redis did over a phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    /// CPU seconds.
    pub cpu_secs: f64,
    /// The commands that took the most time, per unit.
    pub top: Vec<PerUnit>,
}

/// Reads the counters now; `None` without a port or when Redis does not answer.
pub async fn read(port: Option<u16>) -> Option<Counters> {
    let port = port?;
    let timeout = Duration::from_secs(3);
    let cpu = probe::redis(port, &["INFO", "cpu"], timeout).await.ok()?;
    let stats = probe::redis(port, &["INFO", "commandstats"], timeout)
        .await
        .ok()?;
    Some(parse(&cpu.text(), &stats.text()))
}

fn parse(cpu: &str, stats: &str) -> Counters {
    let field = |name: &str| {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut c = Counters {
        cpu_secs: field("used_cpu_sys:") + field("used_cpu_user:"),
        ..Counters::default()
    };
    for line in stats.lines() {
        let Some((name, rest)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let get = |key: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        c.commands
            .insert(name.to_owned(), (get("calls="), get("usec=")));
    }
    c
}

/// From `a` to `b`, per `units`: the CPU, and the `n` commands that took
/// the most time.
pub fn phase(a: Option<&Counters>, b: Option<&Counters>, units: u64, n: usize) -> Option<Phase> {
    let (a, b) = (a?, b?);
    let units = units.max(1) as f64;
    let mut top: Vec<PerUnit> = b
        .commands
        .iter()
        .map(|(name, &(calls, us))| {
            let (c0, u0) = a.commands.get(name).copied().unwrap_or((0, 0));
            PerUnit {
                command: name.clone(),
                calls: calls.saturating_sub(c0) as f64 / units,
                us: us.saturating_sub(u0) as f64 / units,
            }
        })
        // `info` is this module's own reading.
        .filter(|p| p.calls > 0.0 && p.command != "info")
        .collect();
    top.sort_by(|x, y| y.us.total_cmp(&x.us));
    top.truncate(n);
    Some(Phase {
        cpu_secs: b.cpu_secs - a.cpu_secs,
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_is_read_and_diffed() {
        let a = parse(
            "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\n",
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0\r\n",
        );
        let b = parse(
            "used_cpu_sys:2.5\r\nused_cpu_user:3.0\r\n",
            "cmdstat_evalsha:calls=40,usec=2000,usec_per_call=50.00\r\ncmdstat_hmget:calls=10,usec=100\r\n",
        );
        let p = phase(Some(&a), Some(&b), 10, 5).unwrap();
        assert!((p.cpu_secs - 2.0).abs() < 1e-9);
        assert_eq!(p.top[0].command, "evalsha");
        assert!((p.top[0].calls - 3.0).abs() < 1e-9 && (p.top[0].us - 150.0).abs() < 1e-9);
        assert_eq!(p.top[1].command, "hmget");
        assert!(phase(None, Some(&b), 1, 1).is_none());
    }
}
