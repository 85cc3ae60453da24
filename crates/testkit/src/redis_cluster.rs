//! A real Redis Cluster owned by one test: `redis-server
//! --cluster-enabled yes` processes on loopback (primaries and their
//! replicas), joined by `redis-cli --cluster create`, with a short
//! `cluster-node-timeout` so failovers happen within a test's patience.
//! Killed on drop.

use crate::tool;
use redis::{FromRedisValue, RedisResult};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to form, and a failover to complete.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// Every connect, read and write of the helper's own client.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// `cluster-node-timeout`: how long a primary may be unreachable before
/// its replica takes over.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

/// One `redis-server --cluster-enabled yes`.
#[derive(Debug)]
pub struct ClusterNode {
    pub port: u16,
    /// Its TLS port, in a cluster started by [`RedisCluster::start_tls`].
    pub tls_port: Option<u16>,
    child: Option<Child>,
}

/// See the module docs.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
    dir: std::path::PathBuf,
    /// Whether the nodes also serve TLS, and talk TLS among themselves.
    tls: bool,
}

/// A free port below 55536 whose cluster-bus twin (port + 10000) is free too.
pub(crate) fn free_cluster_port() -> u16 {
    loop {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = l.local_addr().map(|a| a.port()) else {
            continue;
        };
        if port < 55_536 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits
    /// until every node reports `cluster_state:ok`.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(primaries, replicas, false)
    }

    /// [`start`](Self::start) over TLS: each node also has a TLS port for
    /// clients ([`tls_url`](Self::tls_url); `CLUSTER SLOTS` asked over TLS
    /// names these), the cluster bus and replication use TLS, and the
    /// certificate for 127.0.0.1 is signed by a CA made for this cluster
    /// ([`ca_file`](Self::ca_file)). The helper's own client keeps the plain
    /// ports.
    pub fn start_tls(primaries: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(primaries, replicas, true)
    }

    fn start_with(primaries: usize, replicas: usize, tls: bool) -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "banter-cluster-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if tls {
            crate::redis_server::make_certificates(&dir);
        }
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
            tls,
        };
        for _ in 0..primaries * (1 + replicas) {
            let node = cluster.spawn_ready();
            cluster.nodes.push(node);
        }
        let cli = tool("redis-cli", "redis-tools");
        let mut create = Command::new(&cli);
        if tls {
            // Over TLS, so that the nodes meet on their TLS cluster bus.
            create.arg("--tls").arg("--cacert").arg(cluster.ca_file());
        }
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.tls_port.unwrap_or(node.port)));
        }
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let out = create.output().expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        cluster
    }

    /// A new node on free ports, answering `PING`. Ports are free when
    /// picked but may be taken before `redis-server` binds them (a test
    /// beside this one picked the same): a node that exits for that is
    /// started again on other ports.
    fn spawn_ready(&self) -> ClusterNode {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let mut node = ClusterNode {
                port: free_cluster_port(),
                tls_port: self.tls.then(free_cluster_port),
                child: None,
            };
            self.spawn(&mut node);
            while query::<String>(node.port, &["PING"]).is_err() {
                let exited = node
                    .child
                    .as_mut()
                    .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
                if exited {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {} never answered",
                    node.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(child) = node.child.as_mut()
                && matches!(child.try_wait(), Ok(None))
            {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server kept exiting at start (ports taken?)"
            );
        }
    }

    fn spawn(&self, node: &mut ClusterNode) {
        let redis_server = tool("redis-server", "redis-server");
        let conf = self.dir.join(format!("nodes-{}.conf", node.port));
        let child = Command::new(redis_server)
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(&conf)
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica takes over however long it was since its primary
            // last wrote (an idle test cluster writes rarely).
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--repl-ping-replica-period", "1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning", "--enable-debug-command", "yes"])
            .args(self.tls_args(node))
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install the Debian package `redis-server`")
            });
        node.child = Some(child);
    }

    /// The TLS arguments of `node`, in a TLS cluster.
    fn tls_args(&self, node: &ClusterNode) -> Vec<String> {
        let Some(tls_port) = node.tls_port.filter(|_| self.tls) else {
            return Vec::new();
        };
        let mut args = crate::redis_server::tls_port_args(&self.dir, tls_port);
        args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        args
    }

    /// TLS seed URLs joined with commas: `rediss://127.0.0.1:{tls port}/`;
    /// fails unless started by [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let port = n.tls_port.expect("started with start_tls");
                format!("rediss://127.0.0.1:{port}/")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The PEM file of the CA that signed the nodes' certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    /// Seed URLs, one per node: `redis://127.0.0.1:{port}/`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// The seed URLs joined with commas (`redis.url` in cluster mode).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees
    /// on who serves every slot.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let ok = self.running().all(|port| {
                query::<String>(port, &["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// Ports of the primaries, as a running node sees them now.
    pub fn primaries(&self) -> Vec<u16> {
        let port = self.running().next().expect("a running node");
        let nodes: String = query(port, &["CLUSTER", "NODES"]).expect("CLUSTER NODES");
        let mut out: Vec<u16> = nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .filter_map(|l| {
                let addr = l.split_whitespace().nth(1)?;
                addr.split(['@', ':']).nth(1)?.parse().ok()
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// The port of the primary serving `key` (its slot).
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.running().next().expect("a running node");
        let slot: i64 = query(port, &["CLUSTER", "KEYSLOT", key]).expect("KEYSLOT");
        let slots: redis::Value = query(port, &["CLUSTER", "SLOTS"]).expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let redis::Value::Array(r) = range else {
                continue;
            };
            let (Some(lo), Some(hi), Some(redis::Value::Array(primary))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let (lo, hi) = (
                i64::from_redis_value(lo.clone()).unwrap_or(-1),
                i64::from_redis_value(hi.clone()).unwrap_or(-1),
            );
            if (lo..=hi).contains(&slot) {
                return primary
                    .get(1)
                    .and_then(|p| i64::from_redis_value(p.clone()).ok())
                    .and_then(|p| u16::try_from(p).ok())
                    .expect("a primary port");
            }
        }
        panic!("no primary for slot {slot}")
    }

    /// Kills the node on `port` (SIGKILL); its replica takes over after
    /// `cluster-node-timeout`.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = node.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a replica has replaced the (killed) primary on `port`:
    /// as many primaries as before, `port` not among them, the cluster ok.
    pub fn wait_failover(&self, port: u16, primaries: usize) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            let now = self.primaries();
            if !now.contains(&port) && now.len() == primaries {
                let ok = self.running().all(|p| {
                    query::<String>(p, &["CLUSTER", "INFO"])
                        .is_ok_and(|info| info.contains("cluster_state:ok"))
                });
                if ok {
                    return;
                }
            }
            if Instant::now() >= deadline {
                let seen = self.running().next().unwrap_or(port);
                let nodes: String = query(seen, &["CLUSTER", "NODES"]).unwrap_or_default();
                panic!("no failover of {port}: {now:?}\n{nodes}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Moves `slots` slots from the primary on `from` to the primary on `to`
    /// with `redis-cli --cluster reshard`, while traffic goes on.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) {
        let id = |port: u16| -> String {
            query::<String>(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID")
        };
        let cli = tool("redis-cli", "redis-tools");
        let out = Command::new(cli)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(
            out.status.success(),
            "reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_ok();
    }

    /// A command on the node at `port`.
    pub fn query<T: FromRedisValue>(&self, port: u16, args: &[&str]) -> RedisResult<T> {
        query(port, args)
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn query<T: FromRedisValue>(port: u16, args: &[&str]) -> RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con)
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_fails_over_and_reshards() {
        let mut c = RedisCluster::start(3, 1);
        assert_eq!(c.primaries().len(), 3);
        let p = c.primary_of("{lobby}");
        let other = *c.primaries().iter().find(|x| **x != p).unwrap();
        c.reshard(p, other, 10);
        c.kill(p);
        c.wait_failover(p, 3);
        assert_eq!(c.primaries().len(), 3, "a replica took over");
    }
}
