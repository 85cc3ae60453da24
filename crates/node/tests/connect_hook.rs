//! `auth.connect_url` against a small real HTTP server playing the app
//! (django-private-chat's `?session_key=` check): it admits, refuses (401)
//! and fails closed (503) when the app errs, is slow or is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::ServerFrame;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The app: answers by the `session_key` in the query (or the `sessionid`
/// cookie), and keeps every body it was sent.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn answer(body: serde_json::Value) -> (StatusCode, String) {
    let key = body["query"]["session_key"]
        .as_str()
        .or(body["cookies"]["sessionid"].as_str())
        .unwrap_or("")
        .to_owned();
    match key.as_str() {
        "good" => (
            StatusCode::OK,
            r#"{"user":{"id":"django-7","name":"Ann"}}"#.into(),
        ),
        "numeric" => (StatusCode::OK, r#"{"user":{"id":42,"name":"Num"}}"#.into()),
        "bad" => (StatusCode::UNAUTHORIZED, "{}".into()),
        "forbidden" => (StatusCode::FORBIDDEN, "{}".into()),
        "broken" => (StatusCode::INTERNAL_SERVER_ERROR, "oops".into()),
        "guest" => (StatusCode::OK, r#"{"user":{"id":"g-sneaky"}}"#.into()),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(4)).await;
            (StatusCode::OK, r#"{"user":{"id":"late"}}"#.into())
        }
        _ => (StatusCode::UNAUTHORIZED, "{}".into()),
    }
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let bytes = req.into_body().collect().await?.to_bytes();
                            let body: serde_json::Value =
                                serde_json::from_slice(&bytes).unwrap_or_default();
                            kept.lock().unwrap().push(body.clone());
                            let (status, text) = answer(body).await;
                            let mut res = Response::new(Full::new(Bytes::from(text)));
                            *res.status_mut() = status;
                            Ok::<_, hyper::Error>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, seen }
    }
}

async fn node_for(url: &str) -> TestNode {
    let mut c = config("hooked", None);
    c.auth.connect_url = url.into();
    c.auth.jwt_secret = "s3cret".into();
    TestNode::start(c).await
}

/// The upgrade's HTTP status, or the welcome's user id.
async fn open(node: &TestNode, query: &str, cookie: Option<&str>) -> Result<String, u16> {
    let mut req = format!("ws://{}/ws?{query}", node.addr)
        .into_client_request()
        .unwrap();
    if let Some(cookie) = cookie {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    req.headers_mut()
        .insert("user-agent", "hook-test".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => {
            let mut c = Client::unwelcomed(ws);
            match c.recv().await {
                ServerFrame::Welcome { user, .. } => Ok(user.id.to_string()),
                other => panic!("{other:?}"),
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn the_app_admits_and_names_the_user() {
    let app = App::start().await;
    let node = node_for(&format!("http://{}/chat/connect", app.addr)).await;
    assert_eq!(
        open(&node, "session_key=good&opponent=bob", None).await,
        Ok("django-7".into())
    );
    assert_eq!(
        open(&node, "", Some("sessionid=good; other=1")).await,
        Ok("django-7".into())
    );
    assert_eq!(
        open(&node, "session_key=numeric", None).await,
        Ok("42".into())
    );
    let seen = app.seen.lock().unwrap().clone();
    let first = &seen[0];
    assert_eq!(first["query"]["session_key"], "good");
    assert_eq!(first["query"]["opponent"], "bob");
    assert_eq!(first["headers"]["user-agent"], "hook-test");
    assert_eq!(seen[1]["cookies"]["sessionid"], "good");
    // The same request again is answered from the cache.
    assert_eq!(
        open(&node, "session_key=good&opponent=bob", None).await,
        Ok("django-7".into())
    );
    assert_eq!(app.seen.lock().unwrap().len(), seen.len(), "cached");
}

#[tokio::test]
async fn the_app_refuses_with_401() {
    let app = App::start().await;
    let node = node_for(&format!("http://{}/chat/connect", app.addr)).await;
    assert_eq!(open(&node, "session_key=bad", None).await, Err(401));
    assert_eq!(open(&node, "session_key=forbidden", None).await, Err(401));
    assert_eq!(
        open(&node, "", None).await,
        Err(401),
        "no session, no guest"
    );
}

#[tokio::test]
async fn the_hook_fails_closed_with_503() {
    let app = App::start().await;
    let node = node_for(&format!("http://{}/chat/connect", app.addr)).await;
    assert_eq!(open(&node, "session_key=broken", None).await, Err(503));
    assert_eq!(
        open(&node, "session_key=guest", None).await,
        Err(503),
        "an id the node reserves is not taken"
    );
    let started = Instant::now();
    assert_eq!(open(&node, "session_key=slow", None).await, Err(503));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
        "{took:?}"
    );
    // The app is down: nothing listens on its port.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = free.local_addr().unwrap();
    drop(free);
    let node = node_for(&format!("http://{gone}/chat/connect")).await;
    assert_eq!(open(&node, "session_key=good", None).await, Err(503));
}

#[tokio::test]
async fn a_token_still_wins() {
    let app = App::start().await;
    let node = node_for(&format!("http://{}/chat/connect", app.addr)).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub":"jwt-user","name":"J"}),
        &jsonwebtoken::EncodingKey::from_secret(b"s3cret"),
    )
    .unwrap();
    assert_eq!(
        open(&node, &format!("token={token}"), None).await,
        Ok("jwt-user".into())
    );
    assert!(app.seen.lock().unwrap().is_empty(), "the app was not asked");
}
