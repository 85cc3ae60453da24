//! `plot`: latency percentiles against offered load, from fan-out JSON
//! results, as a hand-written SVG (log-log polylines) and a markdown table.

use anyhow::Context as _;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One fan-out run, as plotted.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Offered messages/s.
    pub rate: f64,
    /// p50, p90, p99, p99.9 in ms.
    pub pct: [f64; 4],
    /// The rest of the row, for the table.
    pub json: Value,
}

const SERIES: [(&str, &str); 4] = [
    ("p50", "#1b9e77"),
    ("p90", "#7570b3"),
    ("p99", "#d95f02"),
    ("p99.9", "#e7298a"),
];

/// Reads fan-out results, sorted by offered rate.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?;
        let v: Value =
            serde_json::from_str(text.trim()).with_context(|| format!("{}", p.display()))?;
        let l = &v["latency"];
        let f = |k: &str| l[k].as_f64().unwrap_or(0.0);
        points.push(Point {
            rate: v["offered_rate"].as_f64().unwrap_or(0.0),
            pct: [f("p50_ms"), f("p90_ms"), f("p99_ms"), f("p999_ms")],
            json: v,
        });
    }
    points.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    Ok(points)
}

/// The sweep as a markdown table.
pub fn table(points: &[Point]) -> String {
    let mut s = String::from(
        "| offered msg/s | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost / dup / reordered | publish errors | node CPU s | deliveries / node CPU-s | load tool µs / delivery | machine busy |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for p in points {
        let j = &p.json;
        let n = |v: &Value| v.as_f64().unwrap_or(0.0);
        let errors: u64 = j["publish_errors"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let per_cpu = j["deliveries_per_node_cpu_sec"]
            .as_f64()
            .map_or("n/a".into(), |d| format!("{d:.0}"));
        let busy = j["cpu"]["machine_busy_share"]
            .as_f64()
            .map_or("n/a".into(), |b| format!("{:.0} %", b * 100.0));
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} / {} / {} | {} | {:.2} | {} | {:.2} | {} |",
            p.rate,
            n(&j["deliveries_per_sec"]),
            p.pct[0],
            p.pct[1],
            p.pct[2],
            p.pct[3],
            n(&j["latency"]["max_ms"]),
            j["lost"],
            j["duplicates"],
            j["out_of_order"],
            errors,
            n(&j["cpu"]["nodes_cpu_secs"]),
            per_cpu,
            n(&j["load_tool_us_per_delivery"]),
            busy,
        );
    }
    s
}

/// The SVG chart: x = offered msg/s, y = latency ms, both log10.
pub fn svg(points: &[Point], title: &str) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 460.0, 70.0, 130.0, 40.0, 55.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let pos = |v: f64| v.max(1e-3);
    let xs: Vec<f64> = points.iter().map(|p| pos(p.rate)).collect();
    let ys: Vec<f64> = points.iter().flat_map(|p| p.pct).map(pos).collect();
    let lo = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor()
    };
    let hi = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .log10()
            .ceil()
    };
    let (x0, mut x1) = if xs.is_empty() {
        (0.0, 1.0)
    } else {
        (lo(&xs), hi(&xs))
    };
    let (y0, mut y1) = if ys.is_empty() {
        (0.0, 1.0)
    } else {
        (lo(&ys), hi(&ys))
    };
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |v: f64| ml + (pos(v).log10() - x0) / (x1 - x0) * pw;
    let sy = |v: f64| mt + ph - (pos(v).log10() - y0) / (y1 - y0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        ml + pw / 2.0,
        escape(title)
    );
    // Grid and ticks at 1, 2, 5 × 10^k.
    for (lo, hi, horizontal) in [(x0, x1, false), (y0, y1, true)] {
        let mut k = lo as i32;
        while f64::from(k) < hi + 1e-9 {
            for m in [1.0, 2.0, 5.0] {
                let v = m * 10f64.powi(k);
                if v.log10() > hi + 1e-9 {
                    continue;
                }
                let major = m == 1.0;
                let stroke = if major { "#bbb" } else { "#eee" };
                let label = if v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                };
                if horizontal {
                    let y = sy(v);
                    let _ = writeln!(
                        s,
                        r#"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="{stroke}"/>"#,
                        ml + pw
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#,
                        ml - 6.0,
                        y + 4.0
                    );
                } else {
                    let x = sx(v);
                    let _ = writeln!(
                        s,
                        r#"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{}" stroke="{stroke}"/>"#,
                        mt + ph
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
                        mt + ph + 16.0
                    );
                }
            }
            k += 1;
        }
    }
    let _ = writeln!(
        s,
        r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">offered load (messages/s into the room, log scale)</text>"#,
        ml + pw / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">end-to-end latency, ms (log scale)</text>"#,
        mt + ph / 2.0
    );
    for (i, (name, color)) in SERIES.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.rate), sy(p.pct[i])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for p in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(p.rate),
                sy(p.pct[i])
            );
        }
        let ly = mt + 20.0 + i as f64 * 20.0;
        let lx = ml + pw + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{name}</text>"#,
            lx + 30.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes the SVG to `out` and returns the markdown table.
pub fn run(paths: &[PathBuf], out: &Path) -> anyhow::Result<String> {
    let points = load(paths)?;
    anyhow::ensure!(!points.is_empty(), "no results to plot");
    std::fs::write(
        out,
        svg(
            &points,
            "Banter fan-out: latency percentiles against offered load",
        ),
    )
    .with_context(|| format!("{}", out.display()))?;
    Ok(table(&points))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_per_percentile() {
        let pts: Vec<Point> = [(50.0, 1.0), (500.0, 2.0), (5000.0, 40.0)]
            .iter()
            .map(|&(rate, p)| Point {
                rate,
                pct: [p, p * 2.0, p * 3.0, p * 4.0],
                json: serde_json::json!({"offered_rate": rate, "lost": 0, "duplicates": 0, "out_of_order": 0}),
            })
            .collect();
        let s = svg(&pts, "t");
        assert_eq!(s.matches("<polyline").count(), 4);
        assert!(s.starts_with("<svg"));
        assert_eq!(table(&pts).lines().count(), 5);
    }
}
