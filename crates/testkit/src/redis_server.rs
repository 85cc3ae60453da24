//! A real `redis-server` owned by one test, and a typed client for it.

use crate::{free_port, run_ok, tool};
use redis::{FromRedisValue, RedisResult, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every connect, read and write of the helper's own client gives up after
/// this; a [`pause`](RedisServer::pause)d server answers nothing.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for
/// `PING`, and [`RedisServer::pause`] for the process to stop.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process owned by one test, killed on drop.
///
/// Its own client (the methods that query it) opens one connection per
/// call, so it works the same before and after a [`stop`](Self::stop) and
/// [`restart`](Self::restart), and it is never a pub/sub client (a
/// [`client_kill_pubsub`](Self::client_kill_pubsub) does not touch it).
/// The methods block: in a multi-threaded tokio test wrap them in
/// `tokio::task::block_in_place`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// A TLS port beside the plain one ([`start_tls`](Self::start_tls)).
    tls: Option<Tls>,
}

/// A TLS listener's port and the directory of its certificates.
#[derive(Debug)]
struct Tls {
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of 127.0.0.1 with no persistence
    /// and waits (at most 10 s) until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            tls: None,
        };
        server.restart();
        server
    }

    /// [`start`](Self::start) with a TLS port too ([`tls_url`](Self::tls_url)),
    /// serving a certificate for 127.0.0.1 signed by a CA made for this
    /// server alone ([`ca_file`](Self::ca_file)), with `openssl`. Clients
    /// need no certificate. The helper's own client keeps the plain port.
    pub fn start_tls() -> RedisServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("banter-redis-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        make_certificates(&dir);
        let mut server = RedisServer {
            port,
            child: None,
            tls: Some(Tls {
                port: free_port(),
                dir,
            }),
        };
        server.restart();
        server
    }

    /// `rediss://127.0.0.1:{tls port}/`; fails unless started by
    /// [`start_tls`](Self::start_tls).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{}/", tls.port)
    }

    /// The PEM file of the CA that signed the TLS port's certificate.
    pub fn ca_file(&self) -> PathBuf {
        let tls = self.tls.as_ref().expect("started with start_tls");
        tls.dir.join("ca.pem")
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

    /// The process id of the running server; fails after [`stop`](Self::stop).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("redis-server is not running (stopped)")
    }

    /// Kills the server (SIGKILL) and waits for it to exit: the outage a
    /// node must survive. A paused server is killed too.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop);
    /// a running server is stopped first), with an empty data set.
    pub fn restart(&mut self) {
        self.stop();
        let redis_server = tool("redis-server", "redis-server");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let child = Command::new(&redis_server)
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--loglevel", "warning"])
                .args(self.tls_args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}): install the Debian package `redis-server` \
                         (apt-get install redis-server), or run scripts/test.sh which does",
                        redis_server.display()
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

    /// The TLS port's arguments, if it has one.
    fn tls_args(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(|tls| tls_port_args(&tls.dir, tls.port))
            .unwrap_or_default()
    }

    /// Whether the child answers `PING` before `deadline` (false if it exits).
    fn wait_ready(&mut self, deadline: Instant) -> bool {
        let client = self.client();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false; // exited: port taken, most likely
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut con| {
                    con.set_read_timeout(Some(Duration::from_millis(500)))?;
                    redis::cmd("PING").query::<String>(&mut con)
                });
            if matches!(pong.as_deref(), Ok("PONG")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, ...) to the server with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let kill = tool("kill", "procps");
        let status = Command::new(kill)
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
        assert!(status.success(), "kill -{sig} {pid}: {status}");
    }

    /// SIGSTOP: the server keeps its sockets open (connects still complete
    /// in the kernel) but answers nothing, until [`resume`](Self::resume).
    /// Returns once the process is stopped.
    pub fn pause(&self) {
        self.signal("STOP");
        self.wait_state("stopped", |state| state == 'T');
    }

    /// SIGCONT after [`pause`](Self::pause): the server answers again, and
    /// handles what queued up meanwhile. Returns once the process runs.
    pub fn resume(&self) {
        self.signal("CONT");
        self.wait_state("running again", |state| state != 'T');
    }

    /// Waits (bounded) until the process state letter of /proc/PID/stat
    /// (R, S, T, ...) satisfies `ok`.
    fn wait_state(&self, what: &str, ok: impl Fn(char) -> bool) {
        let pid = self.pid();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
            // "PID (COMM) STATE ...": the state follows the last ')'.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .unwrap_or_else(|| panic!("cannot read the state of {pid}: {stat}"));
            if ok(state) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} not {what} (state {state})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A `redis` crate client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// A new synchronous connection, every operation on it bounded by 5 s.
    pub fn connection(&self) -> RedisResult<redis::Connection> {
        let con = self.client().get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    /// Runs one command (`["PUBSUB", "NUMSUB", "a"]`) on a new connection and
    /// converts the reply; Redis errors and failed conversions are `Err`.
    pub fn try_query<T: FromRedisValue>(&self, args: &[&str]) -> RedisResult<T> {
        let (name, rest) = args.split_first().expect("a command");
        let mut con = self.connection()?;
        redis::cmd(name).arg(rest).query(&mut con)
    }

    /// [`try_query`](Self::try_query) that fails the test on any error.
    pub fn query<T: FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Runs one command and returns its reply as a [`Value`] (an error
    /// reply fails the test).
    pub fn command(&self, args: &[&str]) -> Value {
        self.query(args)
    }

    /// The channels Redis has subscribers for that match `pattern`
    /// (`PUBSUB CHANNELS pattern`), sorted.
    pub fn pubsub_channels(&self, pattern: &str) -> Vec<String> {
        let mut channels: Vec<String> = self.query(&["PUBSUB", "CHANNELS", pattern]);
        channels.sort();
        channels
    }

    /// The subscriber count of each channel (`PUBSUB NUMSUB channels...`),
    /// in the order asked.
    pub fn numsub(&self, channels: &[&str]) -> Vec<(String, i64)> {
        let args: Vec<&str> = ["PUBSUB", "NUMSUB"]
            .into_iter()
            .chain(channels.iter().copied())
            .collect();
        self.query(&args)
    }

    /// The number of pattern subscriptions (`PUBSUB NUMPAT`).
    pub fn numpat(&self) -> i64 {
        self.query(&["PUBSUB", "NUMPAT"])
    }

    /// Closes every pub/sub client's connection (`CLIENT KILL TYPE pubsub`)
    /// while the server stays up; returns how many it closed.
    pub fn client_kill_pubsub(&self) -> i64 {
        self.query(&["CLIENT", "KILL", "TYPE", "pubsub"])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(tls) = &self.tls {
            let _ = std::fs::remove_dir_all(&tls.dir);
        }
    }
}

/// `redis-server` arguments for a TLS port `port` serving the certificate
/// [`make_certificates`] wrote to `dir`; clients need none.
pub(crate) fn tls_port_args(dir: &Path, port: u16) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    [
        ("--tls-port", port.to_string()),
        ("--tls-cert-file", file("server.pem")),
        ("--tls-key-file", file("server.key")),
        ("--tls-ca-cert-file", file("ca.pem")),
        ("--tls-auth-clients", "no".into()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect()
}

/// A CA (`ca.pem`) and a certificate for IP 127.0.0.1 it signed
/// (`server.pem`, `server.key`) in `dir`, valid for a day.
pub(crate) fn make_certificates(dir: &Path) {
    let openssl = tool("openssl", "openssl");
    let at = |name: &str| dir.join(name);
    run_ok(
        Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=banter test CA", "-keyout"])
            .arg(at("ca.key"))
            .arg("-out")
            .arg(at("ca.pem")),
    );
    run_ok(
        Command::new(&openssl)
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(at("server.key"))
            .arg("-out")
            .arg(at("server.csr")),
    );
    std::fs::write(at("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext.cnf");
    run_ok(
        Command::new(&openssl)
            .args(["x509", "-req", "-days", "1", "-in"])
            .arg(at("server.csr"))
            .arg("-CA")
            .arg(at("ca.pem"))
            .arg("-CAkey")
            .arg(at("ca.key"))
            .args(["-CAcreateserial", "-out"])
            .arg(at("server.pem"))
            .arg("-extfile")
            .arg(at("ext.cnf")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn starts_answers_and_restarts() {
        let mut r = RedisServer::start();
        assert_eq!(r.command(&["SET", "k", "v"]), Value::Okay);
        assert_eq!(r.query::<String>(&["GET", "k"]), "v");
        assert_eq!(r.numpat(), 0);
        r.stop();
        assert!(TcpStream::connect(("127.0.0.1", r.port())).is_err());
        assert!(r.try_query::<Value>(&["PING"]).is_err());
        r.restart();
        assert_eq!(r.command(&["PING"]), Value::SimpleString("PONG".into()));
        assert_eq!(
            r.query::<Option<String>>(&["GET", "k"]),
            None,
            "empty after restart"
        );
    }

    #[test]
    fn error_replies_are_errors() {
        let r = RedisServer::start();
        r.command(&["SET", "k", "v"]);
        let err = r.try_query::<Value>(&["INCR", "k"]).unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
        assert!(r.try_query::<i64>(&["GET", "k"]).is_err(), "not a number");
    }

    #[test]
    fn pubsub_introspection_and_client_kill() {
        let r = RedisServer::start();
        assert!(r.pubsub_channels("*").is_empty());
        assert_eq!(r.client_kill_pubsub(), 0);

        let mut con = r.connection().unwrap();
        let mut subscriber = con.as_pubsub();
        // One channel a call: each returns once Redis confirmed it.
        subscriber.subscribe("b").unwrap();
        subscriber.subscribe("a").unwrap();
        assert_eq!(r.pubsub_channels("*"), ["a", "b"]);
        assert_eq!(r.pubsub_channels("a*"), ["a"]);
        assert_eq!(
            r.numsub(&["a", "c"]),
            [("a".to_owned(), 1), ("c".to_owned(), 0)]
        );
        assert_eq!(r.numpat(), 0);
        subscriber.psubscribe("p*").unwrap();
        assert_eq!(r.numpat(), 1);

        // The helper's own connections are not pub/sub clients.
        assert_eq!(r.client_kill_pubsub(), 1);
        assert!(r.pubsub_channels("*").is_empty());
        assert_eq!(r.numpat(), 0);
        assert_eq!(r.query::<String>(&["PING"]), "PONG");
    }

    #[test]
    fn pause_holds_replies_until_resume() {
        let r = RedisServer::start();
        let mut con = r.connection().unwrap();
        con.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        r.pause();
        let err = redis::cmd("PING").query::<String>(&mut con).unwrap_err();
        assert!(err.is_timeout(), "no answer while paused: {err}");
        r.resume();
        // A fresh connection: the timed-out one may hold the late PONG.
        assert_eq!(r.query::<String>(&["PING"]), "PONG");
        r.pause();
        r.resume();
        assert_eq!(r.query::<String>(&["PING"]), "PONG");
    }

    #[test]
    fn a_paused_server_can_be_stopped_and_restarted() {
        let mut r = RedisServer::start();
        let pid = r.pid();
        r.pause();
        r.stop();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        r.restart();
        assert_ne!(r.pid(), pid);
        assert_eq!(r.query::<String>(&["PING"]), "PONG");
    }
}
