//! The security review's findings, each against a real node on 127.0.0.1
//! with real sockets: who may read the room API, what a token must carry,
//! the ids a token may not take, the `/text` lines nobody can forge, the
//! page's headers, the upgrade's handshake, the publish body's deadline,
//! exact `ref`s, and `server.max_connections` counting every socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use banter_protocol::ServerFrame;
use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "security-secret";
const KEY: &str = "api-k3y";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(header: &Header, claims: &Value) -> String {
    encode(header, claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token for `claims` with an `exp` an hour away unless `claims` has one.
fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    sign(&Header::default(), &claims)
}

/// A node that knows `SECRET` and `KEY`, changed by `f`.
async fn node(f: impl FnOnce(&mut Config)) -> TestNode {
    let mut c = config("sec", None);
    c.auth.jwt_secret = SECRET.into();
    c.auth.api_key = KEY.into();
    // The production default, which the common test config relaxes.
    c.auth.require_exp = banter_node::config::AuthConfig::default().require_exp;
    f(&mut c);
    TestNode::start(c).await
}

/// The status of a WebSocket upgrade of `path`.
async fn ws_status(addr: SocketAddr, path: &str) -> u16 {
    let connect = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"));
    match tokio::time::timeout(WAIT, connect).await.expect("upgrade") {
        Ok((_, res)) => res.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Whether `token` is let in on `/ws?token=`.
async fn admitted(addr: SocketAddr, token: &str) -> bool {
    match ws_status(addr, &format!("/ws?token={token}")).await {
        101 => true,
        401 => false,
        other => panic!("expected 101 or 401, got {other}"),
    }
}

/// A response as it came: its status, its headers (names lower-cased), its body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn parse(text: &str) -> Raw {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.get(9..12))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Raw {
            status,
            headers,
            body: body.to_owned(),
        }
    }
}

/// Whether `buf` holds a whole response: a 101's headers (or those of an
/// answer to HEAD), or headers and as much body as their `Content-Length` says.
fn complete(buf: &[u8], head_only: bool) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    if head_only || head.starts_with("HTTP/1.1 101") {
        return true;
    }
    let parsed = Raw::parse(&format!("{head}\r\n\r\n"));
    parsed
        .header("content-length")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Sends `request` as it is and reads one answer: until the server closes,
/// or the response is complete (see [`complete`]).
async fn raw(addr: SocketAddr, request: &str, within: Duration) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if complete(&buf, request.starts_with("HEAD ")) {
                break;
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("no complete answer within the wait");
    Raw::parse(&String::from_utf8_lossy(&buf))
}

/// An HTTP/1.1 GET with `headers`, on a connection that closes after it.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw(addr, &req, WAIT).await
}

// Item 1, and 21b for the read routes.
#[tokio::test]
async fn the_read_api_needs_a_token_or_the_key_when_anonymous_is_off() {
    let private = node(|c| c.auth.anonymous = false).await;
    let user = token(json!({"sub":"reader"}));
    let wrong_key = encode(
        &Header::default(),
        &json!({"sub":"reader","exp": now() + 600}),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    let bearer = |t: &str| format!("Bearer {t}");
    for path in ["/api/rooms/lobby/history", "/api/rooms/lobby/presence"] {
        for (auth, want) in [
            (None, 401),
            (Some(bearer("wrong-key")), 401),
            (Some(bearer(&wrong_key)), 401),
            (Some(KEY.to_owned()), 401),
            (Some(bearer(KEY)), 200),
            (Some(bearer(&user)), 200),
            (Some(format!("bearer {user}")), 200),
            (Some(format!("BEARER {KEY}")), 200),
        ] {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| ("Authorization", a))
                .into_iter()
                .collect();
            let got = get(private.addr, path, &headers).await;
            assert_eq!(got.status, want, "{path} with {auth:?}: {}", got.body);
        }
    }

    let open = node(|_| {}).await;
    for path in ["/api/rooms/lobby/history", "/api/rooms/lobby/presence"] {
        assert_eq!(get(open.addr, path, &[]).await.status, 200, "{path}");
    }
}

async fn text_line<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a line within the wait")
            .expect("socket open")
            .expect("socket ok");
        if let WsMessage::Text(t) = msg {
            return t.as_str().to_owned();
        }
    }
}

// Item 2: live lines and the history a `/text` socket starts with.
#[tokio::test]
async fn nobody_can_forge_a_line_for_text_readers() {
    let n = node(|_| {}).await;
    let url = format!("ws://{}/text?room=plain&name=Tex", n.addr);
    let (mut live, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut ann = n.client("name=Ann").await;
    ann.join("plain").await;
    ann.say(
        "plain",
        "hi\nalice: send me your password\u{1b}[2J\r\nbye\u{202e}\u{9b}\u{7f}",
    )
    .await;
    let want = "Ann: hi\nAnn: alice: send me your password\u{fffd}[2J\nAnn: bye\u{fffd}\u{fffd}";
    assert_eq!(text_line(&mut live).await, want, "a live message");
    let (mut late, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(
        text_line(&mut late).await,
        want,
        "the history it starts with"
    );
}

// Item 3 and 16: what a token must carry.
#[tokio::test]
async fn a_token_must_expire_and_be_valid_now() {
    let n = node(|_| {}).await;
    let t = now();
    let no_exp = sign(&Header::default(), &json!({"sub":"u"}));
    assert!(
        !admitted(n.addr, &no_exp).await,
        "no exp: refused by default"
    );
    assert!(admitted(n.addr, &token(json!({"sub":"u"}))).await);
    for (claims, ok, why) in [
        (json!({"sub":"u","exp": t - 3600}), false, "expired"),
        (
            json!({"sub":"u","exp": t - 20}),
            true,
            "expired within the leeway",
        ),
        (json!({"sub":"u","nbf": t + 600}), false, "not yet valid"),
        (
            json!({"sub":"u","nbf": t + 20}),
            true,
            "nbf within the leeway",
        ),
        (json!({"sub":"u","nbf": t - 600}), true, "nbf passed"),
        (
            json!({"sub":"u","iat": t + 600}),
            false,
            "issued in the future",
        ),
        (
            json!({"sub":"u","iat": t + 20}),
            true,
            "iat within the leeway",
        ),
        (json!({"sub":"u","iat": t - 600}), true, "issued before"),
        (json!({"sub":"u","exp": "soon"}), false, "exp not a number"),
        (json!({"sub":"u","nbf": "later"}), false, "nbf not a number"),
        (json!({"sub":"u","iat": "then"}), false, "iat not a number"),
        (
            json!({"sub":"u","aud":"anyone"}),
            true,
            "aud unchecked without auth.audience",
        ),
    ] {
        assert_eq!(admitted(n.addr, &token(claims)).await, ok, "{why}");
    }

    let crit = Header {
        crit: Some(vec!["exp".into()]),
        ..Header::default()
    };
    let critical = sign(&crit, &json!({"sub":"u","exp": t + 600}));
    assert!(!admitted(n.addr, &critical).await, "a crit header");

    // The same rules for the `auth` frame.
    let private = node(|c| c.auth.anonymous = false).await;
    for (tok, ok) in [
        (token(json!({"sub":"u"})), true),
        (no_exp, false),
        (token(json!({"sub":"u","nbf": t + 600})), false),
        (critical, false),
    ] {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", private.addr))
            .await
            .unwrap();
        let mut c = Client::unwelcomed(ws);
        c.send(json!({"type":"auth","token":tok})).await;
        if ok {
            assert!(matches!(c.recv().await, ServerFrame::Welcome { .. }));
        } else {
            assert_eq!(c.expect_close().await, 4001);
        }
    }
}

// Item 3 and 16: the keys that change the rules.
#[tokio::test]
async fn the_token_rules_follow_auth_config() {
    let t = now();
    let lax = node(|c| c.auth.require_exp = false).await;
    let no_exp = sign(&Header::default(), &json!({"sub":"u"}));
    assert!(admitted(lax.addr, &no_exp).await, "require_exp = false");
    let future = sign(&Header::default(), &json!({"sub":"u","nbf": t + 600}));
    assert!(!admitted(lax.addr, &future).await, "nbf still checked");

    let tight = node(|c| c.auth.leeway_ms = 1_000).await;
    for (claims, ok, why) in [
        (json!({"sub":"u","exp": t + 60}), true, "valid"),
        (
            json!({"sub":"u","exp": t - 20}),
            false,
            "expired beyond 1 s",
        ),
        (json!({"sub":"u","nbf": t + 20}), false, "nbf beyond 1 s"),
        (json!({"sub":"u","iat": t + 20}), false, "iat beyond 1 s"),
    ] {
        assert_eq!(admitted(tight.addr, &token(claims)).await, ok, "{why}");
    }

    let iss = "https://id.example";
    let scoped = node(|c| {
        c.auth.audience = "chat".into();
        c.auth.issuer = iss.into();
    })
    .await;
    for (claims, ok, why) in [
        (
            json!({"sub":"u","aud":"chat","iss":iss}),
            true,
            "both match",
        ),
        (
            json!({"sub":"u","aud":["web","chat"],"iss":iss}),
            true,
            "aud in a list",
        ),
        (json!({"sub":"u","iss":iss}), false, "no aud"),
        (
            json!({"sub":"u","aud":"billing","iss":iss}),
            false,
            "another aud",
        ),
        (
            json!({"sub":"u","aud":["web"],"iss":iss}),
            false,
            "not in the list",
        ),
        (json!({"sub":"u","aud":"chat"}), false, "no iss"),
        (
            json!({"sub":"u","aud":"chat","iss":"https://evil.example"}),
            false,
            "another iss",
        ),
    ] {
        assert_eq!(admitted(scoped.addr, &token(claims)).await, ok, "{why}");
    }
}

// Item 3 and 14: the ids the node stamps itself are not a token's.
#[tokio::test]
async fn a_token_cannot_take_the_node_s_own_ids() {
    let n = node(|_| {}).await;
    let guest = n.client("name=Gus").await;
    assert!(guest.user.id.as_str().starts_with("g-"));
    for sub in [
        "system",
        "System",
        guest.user.id.as_str(),
        "g-anything",
        "G-x",
    ] {
        assert!(
            !admitted(n.addr, &token(json!({"sub": sub, "name":"Gus"}))).await,
            "sub {sub:?}"
        );
    }
    for sub in ["systems", "gus", "g", "ag-1", "auth0|g-1"] {
        assert!(admitted(n.addr, &token(json!({"sub": sub}))).await, "{sub}");
    }
}

// Item 15, through the node: what the others see of a name.
#[tokio::test]
async fn names_cannot_hide_or_reverse_text() {
    let n = node(|_| {}).await;
    let c = n.client("name=%E2%80%AEnimda%E2%80%AC%E2%81%A6x").await;
    assert_eq!(c.user.name.as_str(), "nimdax");
    for invisible in ["%E2%80%8B%E2%80%8D", "%EF%BB%BF", "%E2%81%A0%20%E2%80%8E"] {
        let c = n.client(&format!("name={invisible}")).await;
        assert!(
            c.user.name.as_str().starts_with("guest-"),
            "{invisible}: {}",
            c.user.name
        );
    }
}

// Item 20.
#[tokio::test]
async fn the_page_cannot_be_framed_and_runs_only_its_own_code() {
    use base64::Engine;
    use sha2::Digest;
    let n = node(|_| {}).await;
    let page = get(n.addr, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let csp = page.header("content-security-policy").expect("a CSP");
    let directive = |name: &str| -> Vec<String> {
        csp.split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix(name).filter(|r| r.starts_with(' ')))
            .unwrap_or_else(|| panic!("no {name} in {csp}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(directive("default-src"), ["'none'"]);
    assert_eq!(directive("frame-ancestors"), ["'none'"]);
    assert_eq!(directive("base-uri"), ["'none'"]);
    assert_eq!(directive("form-action"), ["'none'"]);
    assert!(directive("connect-src").contains(&"'self'".to_owned()));
    assert!(!csp.contains("'unsafe-inline'"), "{csp}");
    assert!(!csp.contains("'unsafe-eval'"), "{csp}");
    // Each inline block of the page as served is allowed by its hash.
    let hash = |s: &str| {
        let digest = sha2::Sha256::digest(s.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    for (tag, directive_name) in [("script", "script-src"), ("style", "style-src")] {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let start = page.body.find(&open).expect("an inline block") + open.len();
        let end = start + page.body[start..].find(&close).unwrap();
        let allowed = directive(directive_name);
        assert!(
            allowed.contains(&hash(&page.body[start..end])),
            "{directive_name} {allowed:?}"
        );
    }

    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/rooms/x/history",
        "/nope",
    ] {
        let got = get(n.addr, path, &[]).await;
        assert_eq!(
            got.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

/// An upgrade request for `/ws` as given.
fn upgrade_request(addr: SocketAddr, method: &str, version: &str, key: &str) -> String {
    format!(
        "{method} /ws HTTP/{version}\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

// Item 21a.
#[tokio::test]
async fn an_upgrade_needs_a_real_websocket_handshake() {
    let n = node(|_| {}).await;
    let good = "dGhlIHNhbXBsZSBub25jZQ==";
    let got = raw(n.addr, &upgrade_request(n.addr, "GET", "1.1", good), WAIT).await;
    assert_eq!(got.status, 101);
    assert_eq!(
        got.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    for (method, version, key, why) in [
        ("GET", "1.1", "abc", "not base64 of 16 bytes"),
        ("GET", "1.1", "not base64 at all!!!!!==", "not base64"),
        ("GET", "1.1", "AAAAAAAAAAAAAAAAAAAA", "15 bytes"),
        ("GET", "1.1", "AAAAAAAAAAAAAAAAAAAAAAAA", "18 bytes"),
        ("GET", "1.1", "", "empty"),
        ("GET", "1.0", good, "HTTP/1.0"),
        ("HEAD", "1.1", good, "HEAD"),
    ] {
        let got = raw(n.addr, &upgrade_request(n.addr, method, version, key), WAIT).await;
        assert_eq!(got.status, 400, "{why}: {}", got.body);
    }
}

// Item 21b for the publish API.
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let n = node(|_| {}).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {KEY}");
        let (code, body) = http(
            n.addr,
            "POST",
            "/api/rooms/news/messages",
            &[("Authorization", &auth)],
            r#"{"text":"hi"}"#,
        )
        .await
        .unwrap();
        assert_eq!(code, 202, "{scheme}: {body}");
    }
    for auth in [
        format!("Basic {KEY}"),
        format!("Bearer{KEY}"),
        KEY.to_owned(),
    ] {
        let (code, _) = http(
            n.addr,
            "POST",
            "/api/rooms/news/messages",
            &[("Authorization", &auth)],
            r#"{"text":"hi"}"#,
        )
        .await
        .unwrap();
        assert_eq!(code, 401, "{auth}");
    }
}

// Item 21c.
#[tokio::test]
async fn a_publish_body_that_never_arrives_gets_408() {
    let n = node(|_| {}).await;
    let req = format!(
        "POST /api/rooms/news/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Length: 100\r\n\r\n{{\"text\":",
        n.addr
    );
    let started = std::time::Instant::now();
    let got = raw(n.addr, &req, Duration::from_secs(20)).await;
    assert_eq!(got.status, 408, "{}", got.body);
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

// Item 21d.
#[tokio::test]
async fn a_huge_integer_ref_is_echoed_exactly() {
    let n = node(|_| {}).await;
    let mut c = n.client("").await;
    for r in [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",
        "7",
        "1.5",
    ] {
        c.send_text(&format!(r#"{{"type":"ping","ref":{r}}}"#))
            .await;
        let pong = c.recv_raw().await;
        assert!(pong.starts_with(r#"{"type":"pong""#), "{r}: {pong}");
        assert!(pong.contains(&format!(r#""ref":{r}"#)), "{r}: {pong}");
    }
}

// Item 11.
#[tokio::test]
async fn max_connections_counts_sockets_that_wait_for_their_auth_frame() {
    let n = node(|c| {
        c.auth.anonymous = false;
        c.server.max_connections = 5;
        c.server.handshake_timeout_ms = 10_000;
    })
    .await;
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", n.addr))
            .await
            .unwrap();
        waiting.push(ws);
    }
    assert_eq!(ws_status(n.addr, "/ws").await, 503, "the sixth");
    // A socket's slot is free once its task has ended, however it ended.
    let mut first = waiting.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    eventually("a slot is free again", async || {
        ws_status(n.addr, "/ws").await == 101
    })
    .await;
    let mut authed = Client::unwelcomed(waiting.remove(0));
    authed
        .send(json!({"type":"auth","token": token(json!({"sub":"u"}))}))
        .await;
    assert!(matches!(authed.recv().await, ServerFrame::Welcome { .. }));
    authed.close().await;
    drop(waiting);
    eventually("every slot is free", async || {
        let mut all = Vec::new();
        for _ in 0..5 {
            match tokio_tungstenite::connect_async(format!("ws://{}/ws", n.addr)).await {
                Ok((ws, _)) => all.push(ws),
                Err(_) => return false,
            }
        }
        true
    })
    .await;
}
