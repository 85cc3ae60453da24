//! The protocol client: a WebSocket to a node's `/ws`, and the frames tests
//! send and wait for.

use super::WAIT;
use banter_protocol::{MessageId, PresenceEvent, ServerFrame, User, UserId};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A protocol client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub user: User,
    pub node: String,
    next_ref: u64,
}

// Connecting.
impl Client {
    /// A client on `ws://{addr}/ws?{query}`, past its `welcome`.
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        let url = format!("ws://{addr}/ws?{query}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        let mut c = Client::unwelcomed(ws);
        match c.recv().await {
            ServerFrame::Welcome { user, node, .. } => {
                c.user = user;
                c.node = node;
            }
            other => panic!("first frame must be welcome, got {other:?}"),
        }
        c
    }

    /// A client on an open socket that has not received `welcome` (auth tests).
    pub fn unwelcomed(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            user: User::parse("x", "x").unwrap(),
            node: String::new(),
            next_ref: 0,
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

// Sending.
impl Client {
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

    /// Sends any WebSocket message (binary, raw frames).
    pub async fn send_ws(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.unwrap();
    }
}

// Receiving.
impl Client {
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
}

// Protocol steps: a request and the frame that answers it.
impl Client {
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
        self.try_say(room, text)
            .await
            .unwrap_or_else(|refused| panic!("send: {refused}"))
    }

    /// Sends a chat text; the acked id, or the error frame (as text) when it
    /// was refused (frames before the answer are skipped).
    pub async fn try_say(&mut self, room: &str, text: &str) -> Result<MessageId, String> {
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
                Ok(id)
            }
            other => Err(format!("{other:?}")),
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

    /// Asks `who` and returns the snapshot (users, count); other frames are skipped.
    pub async fn who(&mut self, room: &str) -> (Vec<User>, usize) {
        self.send(json!({"type":"who","room":room})).await;
        let snapshot = |f: &ServerFrame| {
            matches!(
                f,
                ServerFrame::Presence {
                    event: PresenceEvent::Snapshot { .. },
                    ..
                }
            )
        };
        match self.recv_until(snapshot).await {
            ServerFrame::Presence {
                event: PresenceEvent::Snapshot { users, .. },
                count,
                ..
            } => (users, count),
            _ => unreachable!(),
        }
    }

    /// Waits for a presence diff in which user `id` joined (other frames
    /// skipped) and returns the room's count after it.
    pub async fn join_of(&mut self, id: &UserId) -> usize {
        let joined = |f: &ServerFrame| matches!(f, ServerFrame::Presence { event: PresenceEvent::Diff { joined, .. }, .. } if joined.iter().any(|u| &u.id == id));
        match self.recv_until(joined).await {
            ServerFrame::Presence { count, .. } => count,
            _ => unreachable!(),
        }
    }

    /// Waits for a presence diff in which user `id` left (other frames
    /// skipped) and returns the room's count after it.
    pub async fn leave_of(&mut self, id: &UserId) -> usize {
        let leave = |f: &ServerFrame| matches!(f, ServerFrame::Presence { event: PresenceEvent::Diff { left, .. }, .. } if left.iter().any(|u| &u.id == id));
        match self.recv_until(leave).await {
            ServerFrame::Presence { count, .. } => count,
            _ => unreachable!(),
        }
    }
}
