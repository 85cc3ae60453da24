//! `banter-node`, the real binary cargo built for this package, as a child
//! process.

use super::{eventually, http};
use std::net::SocketAddr;
use std::time::Duration;

/// `banter-node` as a real process, for tests that signal or kill it.
pub struct NodeProcess {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
}

impl NodeProcess {
    /// Starts the binary on a free port with `env` (`BANTER__...`) and waits until it is ready.
    pub async fn start(id: &str, redis_url: &str, env: &[(&str, &str)]) -> NodeProcess {
        let node = NodeProcess::spawn(id, redis_url, env);
        let addr = node.addr;
        eventually("node process ready", async || {
            matches!(http(addr, "GET", "/readyz", &[], "").await, Ok((200, _)))
        })
        .await;
        node
    }

    /// [`start`](Self::start) without waiting for anything.
    pub fn spawn(id: &str, redis_url: &str, env: &[(&str, &str)]) -> NodeProcess {
        let port = banter_testkit::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_banter-node"))
            .args([
                "--listen",
                &addr.to_string(),
                "--node-id",
                id,
                "--redis",
                redis_url,
            ])
            .env_clear()
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn banter-node");
        NodeProcess { addr, child }
    }

    /// Sends a signal (`TERM`, `KILL`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Waits for the exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("exit")
            .unwrap()
            .code()
    }
}
