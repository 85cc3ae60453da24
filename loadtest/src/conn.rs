//! Opening client sockets: bound to a 127.0.0.x source address (so more than
//! one ephemeral-port range is available), upgraded to a WebSocket with small
//! buffers, past `welcome` and, when asked, `joined`. Failures are sorted by
//! the limit that caused them.

use banter_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

/// One client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long a connect + upgrade + welcome (+ joined) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a connection could not be made, by the limit behind it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectError {
    /// EMFILE/ENFILE: this process is out of file descriptors.
    FdLimit,
    /// EADDRNOTAVAIL: no ephemeral port left for this source address.
    EphemeralPorts,
    /// The node answered the upgrade with 503 (`server.max_connections` or draining).
    NodeRefused503,
    /// Another HTTP status for the upgrade.
    Http(u16),
    /// TCP connection refused: nothing listening, or its backlog is full.
    ConnRefused,
    /// Connection reset or closed before welcome/joined.
    Closed,
    /// Nothing within [`CONNECT_TIMEOUT`].
    Timeout,
    /// The node answered `join` with an error.
    JoinError(String),
    /// Anything else.
    Other(String),
}

impl ConnectError {
    /// A short label for tables and JSON.
    pub fn label(&self) -> String {
        match self {
            ConnectError::FdLimit => "fd_limit (EMFILE: this process's open-files limit)".into(),
            ConnectError::EphemeralPorts => {
                "ephemeral_ports (EADDRNOTAVAIL: no free source port)".into()
            }
            ConnectError::NodeRefused503 => {
                "node_503 (node refused the upgrade: max_connections or draining)".into()
            }
            ConnectError::Http(s) => format!("http_{s}"),
            ConnectError::ConnRefused => "conn_refused (nothing listening or backlog full)".into(),
            ConnectError::Closed => "closed_early (reset before welcome/joined)".into(),
            ConnectError::Timeout => "timeout".into(),
            ConnectError::JoinError(c) => format!("join_error_{c}"),
            ConnectError::Other(e) => format!("other: {e}"),
        }
    }

    fn from_io(e: &std::io::Error) -> ConnectError {
        match e.raw_os_error() {
            Some(23 | 24) => ConnectError::FdLimit,
            Some(99) => ConnectError::EphemeralPorts,
            Some(111) => ConnectError::ConnRefused,
            Some(104 | 32) => ConnectError::Closed,
            _ => ConnectError::Other(e.to_string()),
        }
    }

    pub(crate) fn from_ws(e: WsError) -> ConnectError {
        match e {
            WsError::Io(io) => ConnectError::from_io(&io),
            WsError::Http(resp) if resp.status().as_u16() == 503 => ConnectError::NodeRefused503,
            WsError::Http(resp) => ConnectError::Http(resp.status().as_u16()),
            WsError::ConnectionClosed | WsError::AlreadyClosed => ConnectError::Closed,
            WsError::Protocol(p) => ConnectError::Other(p.to_string()),
            other => ConnectError::Other(other.to_string()),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// Where connection `i` goes: node `i % nodes`, source address
/// 127.0.0.(1 + (i / nodes) % sources).
#[derive(Clone, Debug)]
pub struct Target {
    /// The node.
    pub node: SocketAddr,
    /// The source address to bind.
    pub source: Ipv4Addr,
}

impl Target {
    /// The target of connection number `i`.
    pub fn pick(nodes: &[SocketAddr], sources: u8, i: usize) -> Target {
        let n = nodes.len().max(1);
        let k = usize::from(sources.max(1));
        let src = u8::try_from(1 + (i / n) % k).unwrap_or(1);
        Target {
            node: nodes[i % n],
            source: Ipv4Addr::new(127, 0, 0, src),
        }
    }
}

/// Small buffers: the tool holds tens of thousands of sockets, and
/// tungstenite zero-fills up to `read_buffer_size` bytes before every read.
/// It also reads at most that much per `recvfrom`, whatever the frame: a
/// `joined` of a big room (4 KB) took five reads with 1 KB. One page takes it
/// in one, and touches no more memory than the 1 KB buffer did (tungstenite
/// grew that one to the frame's length for the first `joined` anyway).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(8192)
        .max_write_buffer_size(1 << 24)
}

/// Connects to `ws://{target.node}/ws?{query}` from `target.source` and reads
/// up to `welcome`; when `query` has `room=`, also up to that room's `joined`.
pub async fn open(target: &Target, query: &str) -> Result<Ws, ConnectError> {
    let wants_join = query.split('&').any(|kv| kv.starts_with("room="));
    let fut = async {
        let mut ws = handshake(target, query).await?;
        wait_for(&mut ws, |f| matches!(f, ServerFrame::Welcome { .. })).await?;
        if wants_join {
            wait_for(&mut ws, |f| matches!(f, ServerFrame::Joined { .. })).await?;
        }
        Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn handshake(target: &Target, query: &str) -> Result<Ws, ConnectError> {
    handshake_path(target, &format!("/ws?{query}")).await
}

/// Upgrades `ws://{target.node}{path}` from `target.source`.
pub async fn handshake_path(target: &Target, path: &str) -> Result<Ws, ConnectError> {
    let socket = TcpSocket::new_v4().map_err(|e| ConnectError::from_io(&e))?;
    socket
        .bind(SocketAddr::from((target.source, 0)))
        .map_err(|e| ConnectError::from_io(&e))?;
    let stream = socket
        .connect(target.node)
        .await
        .map_err(|e| ConnectError::from_io(&e))?;
    let _ = stream.set_nodelay(true);
    let url = format!("ws://{}{path}", target.node);
    let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(ConnectError::from_ws)?;
    Ok(ws)
}

/// Reads frames until one matches `want`; a join `error` fails.
async fn wait_for(ws: &mut Ws, want: impl Fn(&ServerFrame) -> bool) -> Result<(), ConnectError> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                // Presence and messages may come first: skip what is not asked for.
                if t.starts_with(r#"{"type":"presence""#) || t.starts_with(r#"{"type":"message""#) {
                    continue;
                }
                let frame: ServerFrame = serde_json::from_str(&t)
                    .map_err(|e| ConnectError::Other(format!("bad frame: {e}")))?;
                if want(&frame) {
                    return Ok(());
                }
                if let ServerFrame::Error { code, .. } = frame {
                    return Err(ConnectError::JoinError(code.to_string()));
                }
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(ConnectError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ConnectError::from_ws(e)),
        }
    }
}

/// Closes politely (close frame, bounded wait), ignoring errors.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Sends one text frame (feed + flush).
pub async fn send_text(ws: &mut Ws, text: String) -> Result<(), WsError> {
    ws.send(WsMessage::text(text)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_spread_over_nodes_and_sources() {
        let nodes: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let t: Vec<Target> = (0..8).map(|i| Target::pick(&nodes, 2, i)).collect();
        assert_eq!(t[0].node.port(), 1);
        assert_eq!(t[1].node.port(), 2);
        assert_eq!(t[0].source, Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(t[2].source, Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(t[4].source, Ipv4Addr::new(127, 0, 0, 1));
    }

    #[test]
    fn errors_are_named_by_limit() {
        let e = std::io::Error::from_raw_os_error(24);
        assert_eq!(ConnectError::from_io(&e), ConnectError::FdLimit);
        let e = std::io::Error::from_raw_os_error(99);
        assert_eq!(ConnectError::from_io(&e), ConnectError::EphemeralPorts);
    }
}
