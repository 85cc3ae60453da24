//! Test support shared by every crate's tests: a real `redis-server` on a
//! free loopback port, started per test and stopped on drop.
//!
//! A missing `redis-server` fails the test with the Debian package to
//! install; it is never a silent skip.

// Test support: failing loudly is its job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 with no persistence
    /// and waits (at most 10 s) until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port it listens on, stable across [`stop`](Self::stop) and
    /// [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit: the outage a
    /// node must survive.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-server ({e}): install the Debian package `redis-server` \
                         (apt-get install redis-server), or run scripts/test.sh which does"
                    )
                });
            self.child = Some(child);
            if self.wait_ready(deadline) {
                return;
            }
            // The port may still be in TIME_WAIT use after a kill: try again.
            self.stop();
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_ready(&mut self, deadline: Instant) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false; // exited: port taken, most likely
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok()
                    && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs one command with `redis-cli`-free plain RESP and returns the raw
    /// reply text, for tests that check Redis itself (`PUBSUB CHANNELS`, keys).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("redis connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        s.write_all(req.as_bytes()).expect("redis write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the reply is complete: good enough for the small replies tests use.
        loop {
            let n = s.read(&mut buf).expect("redis read");
            out.extend_from_slice(&buf[..n]);
            if n == 0 || resp_complete(&out) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The channels Redis has subscribers for that match `pattern`
    /// (`PUBSUB CHANNELS pattern`), sorted.
    pub fn pubsub_channels(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["PUBSUB", "CHANNELS", pattern]);
        let mut lines = reply
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with('*') && !l.starts_with('$'))
            .map(str::to_owned)
            .collect::<Vec<_>>();
        lines.sort();
        lines
    }

    /// The number of pattern subscriptions (`PUBSUB NUMPAT`).
    pub fn numpat(&self) -> i64 {
        let reply = self.command(&["PUBSUB", "NUMPAT"]);
        reply.trim().trim_start_matches(':').parse().unwrap_or(-1)
    }
}

/// Whether `buf` holds one whole RESP reply (simple parser for test replies).
fn resp_complete(buf: &[u8]) -> bool {
    fn parse(buf: &[u8], pos: usize) -> Option<usize> {
        let end = buf[pos..].windows(2).position(|w| w == b"\r\n")? + pos;
        let line = std::str::from_utf8(&buf[pos + 1..end]).ok()?;
        let next = end + 2;
        match buf.get(pos)? {
            b'+' | b'-' | b':' => Some(next),
            b'$' => {
                let n: i64 = line.parse().ok()?;
                if n < 0 {
                    Some(next)
                } else {
                    let stop = next + n as usize + 2;
                    (buf.len() >= stop).then_some(stop)
                }
            }
            b'*' => {
                let n: i64 = line.parse().ok()?;
                let mut p = next;
                for _ in 0..n.max(0) {
                    p = parse(buf, p)?;
                }
                Some(p)
            }
            _ => None,
        }
    }
    parse(buf, 0).is_some()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_restarts() {
        let mut r = RedisServer::start();
        assert_eq!(r.command(&["SET", "k", "v"]), "+OK\r\n");
        assert!(r.command(&["GET", "k"]).contains("v"));
        assert_eq!(r.numpat(), 0);
        r.stop();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
        r.restart();
        assert_eq!(r.command(&["PING"]), "+PONG\r\n");
    }
}
