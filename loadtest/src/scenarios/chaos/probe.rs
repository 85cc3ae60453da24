//! Talking to the cluster's processes beside the WebSocket traffic: one
//! Redis command at a time over RESP, one HTTP/1.1 GET at a time (`/readyz`,
//! `/metrics`), reading the Prometheus counters the chaos table shows, and
//! picking free ports. Every call is bounded by a timeout.

use anyhow::{Context, anyhow, bail};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A Redis reply (RESP2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `:1`
    Int(i64),
    /// `$n` (None: the null bulk string).
    Bulk(Option<String>),
    /// `*n` (`CLUSTER GETKEYSINSLOT`): the null array is empty.
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as text (an array's items one per line).
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) => s.clone(),
            Reply::Int(i) => i.to_string(),
            Reply::Bulk(b) => b.clone().unwrap_or_default(),
            Reply::Array(items) => items.iter().map(Reply::text).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Reads one reply; a Redis error reply is an `Err`.
fn read_reply<'a>(
    r: &'a mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Reply>> + Send + 'a>> {
    Box::pin(async move {
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => bail!("redis said: {rest}"),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; usize::try_from(n)? + 2];
                    r.read_exact(&mut buf).await?;
                    buf.truncate(buf.len() - 2);
                    Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
                }
            }
            "*" => {
                let n: i64 = rest.parse()?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(read_reply(r).await?);
                }
                Reply::Array(items)
            }
            _ => bail!("unexpected reply `{line:.40}`"),
        })
    })
}

/// Runs one Redis command on a fresh connection to 127.0.0.1:`port`.
/// A Redis error reply is an `Err`.
pub async fn redis(port: u16, args: &[&str], timeout: Duration) -> anyhow::Result<Reply> {
    let what = args.join(" ");
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(req.as_bytes()).await?;
        read_reply(&mut BufReader::new(stream)).await
    })
    .await
    .map_err(|_| anyhow!("no answer within {timeout:?}"))
    .and_then(|r| r)
    .with_context(|| format!("redis `{what}` on port {port}"))
}

/// `GET path` from a node: (status, body).
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP response"))?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        anyhow::Ok((status, dechunk(body)))
    })
    .await
    .map_err(|_| anyhow!("no answer within {timeout:?}"))
    .and_then(|r| r)
    .with_context(|| format!("GET http://{addr}{path}"))
}

/// Undoes chunked transfer encoding when the body looks chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.into();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.into();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else {
            return body.into();
        };
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or("");
    }
}

/// The node counters the table reads: `None` when the node does not
/// export the metric (yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct NodeCounters {
    /// `banter_bus_gap_messages_total`: messages the node's gap repair re-read.
    pub gap_messages: Option<f64>,
    /// `banter_bus_gaps_total{outcome="repaired"}`.
    pub gaps_repaired: Option<f64>,
    /// `banter_bus_gaps_total{outcome="unrepaired"}`.
    pub gaps_unrepaired: Option<f64>,
    /// `banter_bus_reconnects_total`.
    pub bus_reconnects: Option<f64>,
}

impl NodeCounters {
    /// Reads them from Prometheus text.
    pub fn parse(text: &str) -> NodeCounters {
        NodeCounters {
            gap_messages: sum(text, "banter_bus_gap_messages_total", None),
            gaps_repaired: sum(text, "banter_bus_gaps_total", Some(r#"outcome="repaired""#)),
            gaps_unrepaired: sum(
                text,
                "banter_bus_gaps_total",
                Some(r#"outcome="unrepaired""#),
            ),
            bus_reconnects: sum(text, "banter_bus_reconnects_total", None),
        }
    }

    /// Field-wise sum; a field is `None` only when both are.
    pub fn plus(self, o: NodeCounters) -> NodeCounters {
        let f = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        };
        NodeCounters {
            gap_messages: f(self.gap_messages, o.gap_messages),
            gaps_repaired: f(self.gaps_repaired, o.gaps_repaired),
            gaps_unrepaired: f(self.gaps_unrepaired, o.gaps_unrepaired),
            bus_reconnects: f(self.bus_reconnects, o.bus_reconnects),
        }
    }
}

/// The sum of every sample of `name` (exactly that name; whose labels
/// contain `label`, if given) in Prometheus text; `None` when there is none.
pub fn sample(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    sum(text, name, label)
}

/// The sum of every sample of `name` (whose labels contain `label`, if given).
fn sum(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.chars().next() {
            Some('{') => match rest.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue, // another metric with this prefix
        };
        if label.is_some_and(|l| !labels.contains(l)) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// `n` distinct free ports of 127.0.0.1 below the ephemeral range, so that
/// no client socket takes one while its process is restarting.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    pick_ports(n, 0, &[])
}

/// How far above its client port a Redis Cluster instance listens for its
/// cluster bus (fixed by Redis).
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// `n` ports for Redis Cluster instances: each port and its bus port
/// (+[`CLUSTER_BUS_OFFSET`]) free and below the ephemeral range, none of
/// them in `taken` (the nodes' ports).
pub fn free_cluster_ports(n: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    pick_ports(n, CLUSTER_BUS_OFFSET, taken)
}

/// `n` ports `p` with `p` and `p + twin` (when `twin` > 0) free, all distinct
/// and outside `taken`.
fn pick_ports(n: usize, twin: u16, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let base = 10000u32;
    let top = low.saturating_sub(u32::from(twin));
    anyhow::ensure!(
        top > base + n as u32,
        "the ephemeral port range starts at {low}: no room below it for {n} port pairs"
    );
    let span = top - base;
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    let mut out: Vec<u16> = Vec::with_capacity(n);
    let mut used: Vec<u16> = taken.to_vec();
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + (seed.wrapping_add(k.wrapping_mul(104_729))) % span)?;
        let pair = [port, port + twin];
        if pair.iter().any(|p| used.contains(p)) || !pair.iter().all(|&p| free(p)) {
            continue;
        }
        used.extend(pair);
        out.push(port);
        if out.len() == n {
            return Ok(out);
        }
    }
    bail!("no {n} free ports on 127.0.0.1 between {base} and {top}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_and_absent_ones_stay_absent() {
        let text = "# HELP x\nbanter_bus_gap_messages_total 7\n\
            banter_bus_gaps_total{outcome=\"repaired\"} 2\n\
            banter_bus_gaps_total{outcome=\"unrepaired\"} 1\n\
            banter_bus_gaps_total_other 9\n";
        let c = NodeCounters::parse(text);
        assert_eq!(c.gap_messages, Some(7.0));
        assert_eq!(c.gaps_repaired, Some(2.0));
        assert_eq!(c.gaps_unrepaired, Some(1.0));
        assert_eq!(c.bus_reconnects, None);
        assert_eq!(c.plus(c).gap_messages, Some(14.0));
        assert_eq!(
            NodeCounters::parse("")
                .plus(NodeCounters::parse(""))
                .gap_messages,
            None
        );
    }

    #[test]
    fn cluster_ports_come_with_free_bus_ports() {
        let taken = free_ports(2).unwrap();
        let ports = free_cluster_ports(6, &taken).unwrap();
        assert_eq!(ports.len(), 6);
        for p in &ports {
            let bus = p + CLUSTER_BUS_OFFSET;
            assert!(!taken.contains(p) && !taken.contains(&bus));
            assert!(!ports.contains(&bus), "{p}'s bus port is another's port");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("plain text"), "plain text");
    }
}
