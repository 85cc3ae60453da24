//! `--proto pusher`: the fan-out scenario spoken as a Pusher app does it, so
//! that Banter's Pusher front door and another Pusher-protocol server (a
//! benchmark peer such as sockudo) run the same load. Subscribers open
//! `/app/{key}?protocol=7` and subscribe the channel; publishers trigger
//! over the signed HTTP API (`POST /apps/{id}/events`), one keep-alive
//! connection each, and a 200 is the ack.

use crate::conn::{ConnectError, Target, Ws};
use crate::report::bump;
use crate::scenarios::publish::{Job, PubCounters, PubStats};
use crate::wire::{self, Stamp};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// The Pusher app the run speaks to.
#[derive(Clone, Debug)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
}

/// The event name the publishers trigger.
pub const EVENT: &str = "bench";

/// Opens `/app/{key}?protocol=7` and subscribes `channel`: past
/// `connection_established` and `subscription_succeeded`.
pub async fn open(target: &Target, app: &App, channel: &str) -> Result<Ws, ConnectError> {
    let fut = async {
        let path = format!("/app/{}?protocol=7&client=banter-load&version=1", app.key);
        let mut ws = crate::conn::handshake_path(target, &path).await?;
        wait_event(&mut ws, "pusher:connection_established").await?;
        let subscribe =
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}});
        ws.send(WsMessage::text(subscribe.to_string()))
            .await
            .map_err(ConnectError::from_ws)?;
        wait_event(&mut ws, "pusher_internal:subscription_succeeded").await?;
        Ok(ws)
    };
    tokio::time::timeout(crate::conn::CONNECT_TIMEOUT, fut)
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn wait_event(ws: &mut Ws, event: &str) -> Result<(), ConnectError> {
    let prefix = format!(r#"{{"event":"{event}""#);
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                if t.starts_with(&prefix) || t.contains(&format!(r#""event":"{event}""#)) {
                    return Ok(());
                }
                if t.contains(r#""event":"pusher:error""#)
                    || t.contains(r#""event":"pusher:subscription_error""#)
                {
                    return Err(ConnectError::JoinError(t.chars().take(120).collect()));
                }
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(ConnectError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ConnectError::from_ws(e)),
        }
    }
}

/// The stamp in a Pusher event frame of [`EVENT`] (its `data` is the bench
/// text, which needs no escaping), or `None`.
pub fn parse_event(frame: &str) -> Option<Stamp> {
    if !frame.contains(r#""event":"bench""#) {
        return None;
    }
    let at = frame.find(r#""data":""#)? + r#""data":""#.len();
    wire::parse_stamp(frame.as_bytes().get(at..)?)
}

/// `POST /apps/{id}/events` for one bench message, signed as Pusher signs.
fn trigger_request(
    app: &App,
    node: SocketAddr,
    channel: &str,
    text: &str,
) -> hyper::Request<Full<Bytes>> {
    let body = serde_json::json!({"name": EVENT, "channels": [channel], "data": text}).to_string();
    let md5 = hex::encode(Md5::digest(body.as_bytes()));
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = format!("/apps/{}/events", app.id);
    let query = format!(
        "auth_key={}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}",
        app.key
    );
    let signature = sign(&app.secret, &format!("POST\n{path}\n{query}"));
    let uri = format!("{path}?{query}&auth_signature={signature}");
    hyper::Request::post(uri)
        .header("host", node.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
}

fn sign(secret: &str, message: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        unreachable!("HMAC takes a key of any length");
    };
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// One HTTP publisher: triggers each due job in turn on its own keep-alive
/// connection, and counts the 200s as acks; stops taking jobs at `taking`
/// (the schedule ended), and at once at `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn publisher(
    number: u32,
    node: SocketAddr,
    app: App,
    mut jobs: mpsc::Receiver<Job>,
    channel: String,
    size: usize,
    epoch: Instant,
    counters: Arc<PubCounters>,
    stop: CancellationToken,
    taking: CancellationToken,
) -> PubStats {
    let mut st = PubStats::new();
    let mut sender = None;
    loop {
        let job = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = taking.cancelled() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let stamp = Stamp {
            publisher: number,
            seq: job.seq,
            t_us: job.t_us,
        };
        let now_us = epoch.elapsed().as_micros() as u64;
        st.send_lag
            .saturating_record(now_us.saturating_sub(job.t_us).max(1));
        let text = wire::encode_text(stamp, size);
        st.sent += 1;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        // A server may close a keep-alive connection after any answer: the
        // request goes again on a new one (once).
        let mut answer = None;
        for _ in 0..2 {
            if sender.as_ref().is_none_or(|s: &Sender| s.is_closed()) {
                sender = connect(node).await.ok();
            }
            let Some(s) = sender.as_mut() else {
                break;
            };
            let req = trigger_request(&app, node, &channel, &text);
            let sent = tokio::time::timeout(Duration::from_secs(10), async {
                s.ready().await?;
                let res = s.send_request(req).await?;
                let status = res.status();
                let _ = res.into_body().collect().await;
                Ok::<_, hyper::Error>(status)
            })
            .await;
            match sent {
                Ok(Ok(status)) => {
                    answer = Some(status);
                    break;
                }
                _ => sender = None,
            }
        }
        counters.answered.fetch_add(1, Ordering::Relaxed);
        match answer {
            Some(status) if status.is_success() => {
                let now_us = epoch.elapsed().as_micros() as u64;
                if st.acked.insert(job.seq) {
                    st.ack_latency
                        .saturating_record(now_us.saturating_sub(job.t_us).max(1));
                }
            }
            Some(status) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                bump(&mut st.errors, format!("http {}", status.as_u16()));
            }
            None => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                bump(&mut st.errors, "http failed");
            }
        }
    }
    st
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(node: SocketAddr) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(node).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_stamp() {
        let text = wire::encode_text(
            Stamp {
                publisher: 2,
                seq: 9,
                t_us: 77,
            },
            40,
        );
        let frame = format!(r#"{{"event":"bench","channel":"c","data":"{text}"}}"#);
        assert_eq!(
            parse_event(&frame),
            Some(Stamp {
                publisher: 2,
                seq: 9,
                t_us: 77
            })
        );
        assert_eq!(parse_event(r#"{"event":"other","data":"1:2:3:"}"#), None);
    }
}
