//! Test support shared by every crate's tests, all of it on real processes:
//!
//! - [`RedisServer`]: a real `redis-server` on a free loopback port, started
//!   per test and stopped on drop, with a typed client (the `redis` crate,
//!   re-exported as [`redis`]) and the faults tests need: kill and restart,
//!   SIGSTOP/SIGCONT, `CLIENT KILL TYPE pubsub`.
//! - [`RedisCluster`]: a real Redis Cluster of `redis-server
//!   --cluster-enabled yes` processes (primaries and replicas), with kill,
//!   failover and resharding.
//! - [`Proxy`]: a loopback TCP proxy a test can cut, for one client's
//!   connection failing while the server stays up.
//! - [`repo_root`], [`tool`] and [`run_ok`]: the repository, the external
//!   tools the deployment checks drive, and running them.
//! - [`deploy`]: the process cluster of `scripts/cluster.sh` and the Grafana
//!   dashboard's queries, for the deployment checks and the live cluster test.
//!
//! A missing binary fails the test with the Debian package to install; it is
//! never a silent skip.

// Test support: failing loudly is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod deploy;
mod proxy;
mod redis_cluster;
mod redis_server;
mod tools;

pub use ::redis;
pub use proxy::Proxy;
pub use redis_cluster::{NODE_TIMEOUT_MS, RedisCluster};
pub use redis_server::RedisServer;
pub use tools::{repo_root, run_ok, tool};

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` ports on 127.0.0.1 that were free a moment ago, all different: each
/// is held until all are picked (ports picked one by one, each released
/// before the next, can repeat: a node once got its Redis's port).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}
