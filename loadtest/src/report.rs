//! What a run prints: a progress line a second on stderr while it runs, then
//! a markdown summary table and a JSON result.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counts of named failures.
pub type Counts = BTreeMap<String, u64>;

/// Adds one to `key`.
pub fn bump(counts: &mut Counts, key: impl Into<String>) {
    *counts.entry(key.into()).or_default() += 1;
}

/// Adds `other` into `into`.
pub fn merge_counts(into: &mut Counts, other: &Counts) {
    for (k, v) in other {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// `a=1, b=2`, or `0` when empty.
pub fn counts_cell(c: &Counts) -> String {
    if c.is_empty() {
        return "0".into();
    }
    c.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The result of one scenario.
#[derive(Clone, Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Summary rows: (metric, value).
    pub rows: Vec<(String, String)>,
    /// The full result.
    pub json: serde_json::Value,
    /// False when the run found something wrong (smoke: loss, dup, reorder).
    pub ok: bool,
}

impl Report {
    /// A report of `outcome`, with no rows yet.
    pub fn new(scenario: &str, outcome: &impl Serialize) -> Report {
        Report {
            scenario: scenario.into(),
            rows: Vec::new(),
            json: serde_json::to_value(outcome).unwrap_or(serde_json::Value::Null),
            ok: true,
        }
    }

    /// Adds a row.
    pub fn row(&mut self, metric: &str, value: impl ToString) -> &mut Report {
        self.rows.push((metric.into(), value.to_string()));
        self
    }

    /// The summary as a markdown table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "### {}\n\n| metric | value |\n| --- | --- |\n",
            self.scenario
        );
        for (k, v) in &self.rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s
    }

    /// The JSON result on one line, with `scenario` and `ok` added.
    pub fn json_line(&self) -> String {
        let mut v = self.json.clone();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("scenario".into(), self.scenario.clone().into());
            m.insert("ok".into(), self.ok.into());
        }
        v.to_string()
    }
}

/// Prints `line()` to stderr once a second until `stop` fires (or never, when `quiet`).
pub fn spawn_progress(
    quiet: bool,
    stop: CancellationToken,
    mut line: impl FnMut(f64) -> String + Send + 'static,
) {
    if quiet {
        return;
    }
    let start = Instant::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => eprintln!("{}", line(start.elapsed().as_secs_f64())),
            }
        }
    });
}

/// Per-second rate of a counter between two progress ticks.
#[derive(Debug, Default)]
pub struct RateOf {
    last: u64,
    at: Option<Instant>,
}

impl RateOf {
    /// The rate since the last call.
    pub fn per_sec(&mut self, now_value: u64) -> f64 {
        let now = Instant::now();
        let rate = match self.at {
            Some(t) => {
                (now_value.saturating_sub(self.last)) as f64
                    / now.duration_since(t).as_secs_f64().max(1e-6)
            }
            None => 0.0,
        };
        self.last = now_value;
        self.at = Some(now);
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_json() {
        #[derive(Serialize)]
        struct O {
            n: u32,
        }
        let mut r = Report::new("x", &O { n: 3 });
        r.row("conns", 3);
        assert!(r.table().contains("| conns | 3 |"));
        let j: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
        assert_eq!(j["n"], 3);
        assert_eq!(j["scenario"], "x");
    }

    #[test]
    fn counts() {
        let mut c = Counts::new();
        bump(&mut c, "a");
        bump(&mut c, "a");
        let mut d = Counts::new();
        merge_counts(&mut d, &c);
        assert_eq!(counts_cell(&d), "a: 2");
    }
}
