//! The deployment as operators run it: the process cluster of
//! `scripts/cluster.sh` (its configs rendered, or the whole cluster up), and
//! the Grafana dashboard's panels. Used by the static deployment checks
//! (crates/deploy-checks) and by the live cluster test of banter-node.

use crate::redis_cluster::free_cluster_port;
use crate::{free_ports, repo_root, run_ok};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

/// A `scripts/cluster.sh` state directory with its own free ports. Dropping
/// it runs `down` (whatever happened) and removes the directory.
///
/// `up` needs the binary: pass `("BANTER_BIN", env!("CARGO_BIN_EXE_banter-node"))`
/// in the environment; `render` does not.
#[derive(Debug)]
pub struct Cluster {
    /// `CLUSTER_DIR`: configs, pids, logs.
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    /// nginx, the cluster's public address.
    pub nginx: SocketAddr,
    /// Prometheus's address.
    pub prometheus: SocketAddr,
    /// The nodes' own addresses (`NODE_PORTS`), node1 first: their
    /// `/metrics`, which nginx does not serve.
    pub nodes: Vec<SocketAddr>,
    /// `REDIS_CLUSTER_PORTS`: the six instances of `up --redis-cluster`.
    pub redis_cluster_ports: Vec<u16>,
}

impl Cluster {
    /// A cluster named `name` (its directory under the temp dir, unique to
    /// this process), with `extra_env` passed to every `cluster.sh` call.
    pub fn new(name: &str, extra_env: &[(&str, &str)]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("banter-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let plain = free_ports(6);
        let redis_cluster_ports = cluster_ports(6, &plain);
        let plain: Vec<String> = plain.iter().map(u16::to_string).collect();
        let (nginx, prometheus, redis) = (plain[0].clone(), plain[1].clone(), plain[2].clone());
        let list = |ports: &[u16]| ports.iter().map(u16::to_string).collect::<Vec<_>>();
        let mut env = vec![
            ("CLUSTER_DIR".to_owned(), dir.display().to_string()),
            ("NGINX_PORT".into(), nginx.clone()),
            ("NODE_PORTS".into(), plain[3..].join(",")),
            ("REDIS_PORT".into(), redis),
            (
                "REDIS_CLUSTER_PORTS".into(),
                list(&redis_cluster_ports).join(","),
            ),
            ("PROMETHEUS_PORT".into(), prometheus.clone()),
        ];
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let addr = |p: &str| format!("127.0.0.1:{p}").parse().unwrap();
        Cluster {
            dir,
            env,
            nginx: addr(&nginx),
            prometheus: addr(&prometheus),
            nodes: plain[3..].iter().map(|p| addr(p)).collect(),
            redis_cluster_ports,
        }
    }

    /// `cluster.sh ARGS` with this cluster's environment, not yet run.
    pub fn script(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo_root().join("scripts/cluster.sh"));
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// `cluster.sh ARGS`, which must succeed; its stdout.
    pub fn sh(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run_ok(&mut self.script(args)).stdout).into_owned()
    }

    /// A file of the state directory (`nginx/banter.conf`, `logs/node1.log`).
    pub fn file(&self, path: &str) -> String {
        let path = self.dir.join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

/// `n` distinct free ports for Redis Cluster instances: none is another's
/// cluster-bus port (port + 10000), and neither a port nor its bus port is
/// one of `taken`.
fn cluster_ports(n: usize, taken: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_cluster_port();
        let clash = |q: u16| q == p || q == p + 10_000 || q + 10_000 == p;
        if !ports.iter().any(|&q| clash(q)) && !taken.iter().any(|&t| t == p || t == p + 10_000) {
            ports.push(p);
        }
    }
    ports
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every panel of deploy/grafana/dashboards/banter.json: (title, its PromQL
/// expressions).
pub fn dashboard() -> Vec<(String, Vec<String>)> {
    let path = repo_root().join("deploy/grafana/dashboards/banter.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    json["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| {
            let exprs = p["targets"].as_array().expect("targets");
            let exprs = exprs.iter().map(|t| t["expr"].as_str().unwrap().to_owned());
            (p["title"].as_str().unwrap().to_owned(), exprs.collect())
        })
        .collect()
}
