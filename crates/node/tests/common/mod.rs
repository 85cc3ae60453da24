//! Test harness: nodes on 127.0.0.1:0 (in-process), on one real Redis or on
//! one in-memory network, and a WebSocket client that speaks the protocol.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub use banter_node::config::Config;
use banter_node::{Node, run};
use banter_protocol::{MessageId, ServerFrame, User};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(5);

/// A config for a test node: loopback, port 0, short timers.
pub fn config(id: &str, redis_url: Option<&str>) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.node.id = id.into();
    c.redis.url = redis_url.unwrap_or_default().into();
    c.redis.pool_size = 4;
    c.presence.ttl_ms = 3_000;
    // Scenarios send fast; the rate limit has tests of its own.
    c.limits.rate_per_sec = 10_000;
    c.limits.burst = 10_000;
    c
}

/// A node serving on 127.0.0.1 in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub node: Node,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl TestNode {
    /// A node on the backends its config names (Redis, or in-memory).
    pub async fn start(config: Config) -> TestNode {
        let node = Node::connect(config).await.expect("node");
        TestNode::serve(node).await
    }

    /// Serves an already built node.
    pub async fn serve(node: Node) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (node, shutdown) = (node.clone(), shutdown.clone());
            async move { run(listener, node, shutdown).await.expect("run") }
        });
        let t = TestNode {
            addr,
            node,
            shutdown,
            task,
        };
        t.wait_ready().await;
        t
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok((200, _)) = http(self.addr, "GET", "/readyz", &[], "").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} never became ready",
                self.node.id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client on `/ws?{query}`, past its `welcome`.
    pub async fn client(&self, query: &str) -> Client {
        Client::connect(self.addr, query).await
    }

    /// Drains the node and waits for `run` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("drain")
            .unwrap();
    }
}

/// Two nodes that share a bus and presence: either one real Redis or one
/// in-memory network. Scenarios run against both.
pub struct Pair {
    pub a: TestNode,
    pub b: TestNode,
    pub redis: Option<banter_testkit::RedisServer>,
}

impl Pair {
    pub async fn redis() -> Pair {
        let redis = banter_testkit::RedisServer::start();
        let a = TestNode::start(config("node-a", Some(&redis.url()))).await;
        let b = TestNode::start(config("node-b", Some(&redis.url()))).await;
        Pair {
            a,
            b,
            redis: Some(redis),
        }
    }

    pub async fn memory() -> Pair {
        let network = banter_bus::MemoryNetwork::new();
        let presence = Arc::new(banter_presence::MemoryPresence::new(Duration::from_millis(
            3_000,
        )));
        let mut nodes = Vec::new();
        for id in ["node-a", "node-b"] {
            let (bus, inbox) = network.connect();
            let node =
                Node::with_backends(config(id, None), Arc::new(bus), inbox, presence.clone())
                    .unwrap();
            nodes.push(TestNode::serve(node).await);
        }
        let b = nodes.pop().unwrap();
        let a = nodes.pop().unwrap();
        Pair { a, b, redis: None }
    }
}

/// A protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: User,
    pub node: String,
    next_ref: u64,
}

impl Client {
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let mut c = Client {
            ws,
            user: User::parse("x", "x").unwrap(),
            node: String::new(),
            next_ref: 0,
        };
        match c.recv().await {
            ServerFrame::Welcome { user, node, .. } => {
                c.user = user;
                c.node = node;
            }
            other => panic!("first frame must be welcome, got {other:?}"),
        }
        c
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .unwrap();
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    /// The next server frame (pings skipped), within [`WAIT`].
    pub async fn recv(&mut self) -> ServerFrame {
        let text = self.recv_raw().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a server frame ({e}): {text}"))
    }

    /// The next text frame, raw.
    pub async fn recv_raw(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the wait")
                .expect("socket ended")
                .expect("socket error");
            match msg {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let f = self.recv().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// Nothing arrives for `d` (pings aside).
    pub async fn expect_silence(&mut self, d: Duration) {
        let got = tokio::time::timeout(d, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => return Some(t.as_str().to_owned()),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    _ => return None,
                }
            }
        })
        .await;
        if let Ok(Some(t)) = got {
            panic!("expected silence, got {t}");
        }
    }

    /// Joins `room` and returns (users, count).
    pub async fn join(&mut self, room: &str) -> (Vec<User>, usize) {
        self.send(json!({"type":"join","room":room})).await;
        match self
            .recv_until(|f| matches!(f, ServerFrame::Joined { .. } | ServerFrame::Error { .. }))
            .await
        {
            ServerFrame::Joined { users, count, .. } => (users, count),
            other => panic!("join {room}: {other:?}"),
        }
    }

    /// Sends a chat text and returns the acked id (frames before the ack are skipped).
    pub async fn say(&mut self, room: &str, text: &str) -> MessageId {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        self.send(json!({"type":"send","room":room,"text":text,"ref":r}))
            .await;
        match self
            .recv_until(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await
        {
            ServerFrame::Ack { id, reference } => {
                assert_eq!(reference, Some(r.as_str().into()));
                id
            }
            other => panic!("send: {other:?}"),
        }
    }

    /// The next chat message (other frames skipped).
    pub async fn next_message(&mut self) -> banter_protocol::Message {
        match self
            .recv_until(|f| matches!(f, ServerFrame::Message(_)))
            .await
        {
            ServerFrame::Message(m) => m,
            _ => unreachable!(),
        }
    }

    /// Waits for the server's close frame and returns its code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close within the wait");
            match msg {
                Some(Ok(WsMessage::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(WsMessage::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close: {e}"),
                None => panic!("socket ended without a close frame"),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A minimal HTTP/1.1 client: (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Polls `check` until it returns true, within [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Client {
    /// Sends any WebSocket message (binary, raw frames).
    pub async fn send_ws(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.unwrap();
    }
}

/// `banter-node` as a real process, for tests that signal or kill it.
pub struct NodeProcess {
    pub addr: SocketAddr,
    pub child: tokio::process::Child,
}

impl NodeProcess {
    /// Starts the binary on a free port with `env` (`BANTER__...`) and waits until it is ready.
    pub async fn start(id: &str, redis_url: &str, env: &[(&str, &str)]) -> NodeProcess {
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
        eventually("node process ready", async || {
            matches!(http(addr, "GET", "/readyz", &[], "").await, Ok((200, _)))
        })
        .await;
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

impl Client {
    /// The next text frame if the socket has one (for draining), `None` at its end.
    pub async fn recv_raw_opt(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(WsMessage::Text(t)) => return Some(t.as_str().to_owned()),
                Ok(WsMessage::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
}

impl Client {
    /// A client on an open socket that has not received `welcome` (auth tests).
    pub fn unwelcomed(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            user: User::parse("x", "x").unwrap(),
            node: String::new(),
            next_ref: 0,
        }
    }
}

impl Client {
    /// Asks `who` and returns the snapshot (users, count); other frames are skipped.
    pub async fn who(&mut self, room: &str) -> (Vec<User>, usize) {
        self.send(serde_json::json!({"type":"who","room":room}))
            .await;
        let snapshot = |f: &ServerFrame| {
            matches!(
                f,
                ServerFrame::Presence {
                    event: banter_protocol::PresenceEvent::Snapshot { .. },
                    ..
                }
            )
        };
        match self.recv_until(snapshot).await {
            ServerFrame::Presence {
                event: banter_protocol::PresenceEvent::Snapshot { users },
                count,
                ..
            } => (users, count),
            _ => unreachable!(),
        }
    }
}

impl Client {
    /// Waits for the presence `leave` of user `id` (other frames skipped) and
    /// returns the room's count after it.
    pub async fn leave_of(&mut self, id: &banter_protocol::UserId) -> usize {
        let leave = |f: &ServerFrame| matches!(f, ServerFrame::Presence { event: banter_protocol::PresenceEvent::Leave { user }, .. } if &user.id == id);
        match self.recv_until(leave).await {
            ServerFrame::Presence { count, .. } => count,
            _ => unreachable!(),
        }
    }
}
