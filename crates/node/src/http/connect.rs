//! `auth.connect_url`: the app's own session check. On each upgrade without
//! a token the node POSTs what the browser sent (the query, the cookies and
//! a few headers) to the app, as
//! `{"query":{..},"cookies":{..},"headers":{..}}`, and takes the identity the
//! app answers: 200 `{"user":{"id","name"}}`. A 401 or 403 refuses the
//! upgrade with 401; anything else, or no answer within [`TIMEOUT`], refuses
//! it with 503. It never falls back to a guest.
//!
//! Answers are cached for [`CACHE_TTL`] per distinct request (a page that
//! reconnects does not ask the app again), at most [`CACHE_ENTRIES`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use banter_protocol::{DisplayName, User, UserId};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;

use super::query::pairs;

/// The longest the app may take to answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer (an identity or a refusal) is reused.
const CACHE_TTL: Duration = Duration::from_secs(10);
/// The most answers kept.
const CACHE_ENTRIES: usize = 4096;
/// The most bytes of the app's answer read.
const ANSWER_BYTES: usize = 16 * 1024;
/// The request headers passed on to the app (cookies go separately, parsed).
const HEADERS: [&str; 6] = [
    "authorization",
    "origin",
    "user-agent",
    "x-forwarded-for",
    "x-real-ip",
    "accept-language",
];

/// What the app said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// This is who the connection belongs to.
    User(User),
    /// The app refused (401/403).
    Refused,
    /// The app failed, answered something else, or not in time.
    Failed,
}

/// The hook, with its cache.
#[derive(Debug)]
pub(crate) struct ConnectHook {
    url: Uri,
    cache: Mutex<HashMap<String, (Instant, Verdict)>>,
}

#[derive(Deserialize)]
struct Answer {
    user: AnsweredUser,
}

#[derive(Deserialize)]
struct AnsweredUser {
    id: Value,
    #[serde(default)]
    name: Option<String>,
}

impl ConnectHook {
    /// The hook for `auth.connect_url` (checked at start: an http:// URL);
    /// `None` when it is empty.
    pub fn new(url: &str) -> Option<ConnectHook> {
        let url = url.parse().ok().filter(|_| !url.is_empty())?;
        Some(ConnectHook {
            url,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Asks the app who sent `query` and `headers`.
    pub async fn check(&self, query: Option<&str>, headers: &HeaderMap) -> Verdict {
        let body = request_body(query, headers);
        if let Some(verdict) = self.cached(&body) {
            return verdict;
        }
        let verdict = match tokio::time::timeout(TIMEOUT, self.ask(body.clone())).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                tracing::warn!(url = %self.url, error = %e, "auth.connect_url failed");
                Verdict::Failed
            }
            Err(_) => {
                tracing::warn!(url = %self.url, "auth.connect_url did not answer in time");
                Verdict::Failed
            }
        };
        if verdict != Verdict::Failed {
            self.remember(body, verdict.clone());
        }
        verdict
    }

    fn cached(&self, body: &str) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (at, verdict) = cache.get(body)?;
        (at.elapsed() < CACHE_TTL).then(|| verdict.clone())
    }

    fn remember(&self, body: String, verdict: Verdict) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(body, (Instant::now(), verdict));
    }

    /// One POST to the app over a fresh HTTP/1.1 connection.
    async fn ask(&self, body: String) -> Result<Verdict, Box<dyn std::error::Error + Send + Sync>> {
        let host = self.url.host().ok_or("no host")?;
        let port = self.url.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.url.authority().map_or(host, |a| a.as_str());
        let req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let res = sender.send_request(req).await?;
        let status = res.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(Verdict::Refused);
        }
        if status != StatusCode::OK {
            tracing::warn!(url = %self.url, %status, "auth.connect_url answered neither 200 nor 401/403");
            return Ok(Verdict::Failed);
        }
        let bytes = Limited::new(res.into_body(), ANSWER_BYTES)
            .collect()
            .await?
            .to_bytes();
        Ok(identity(&bytes).map_or_else(
            || {
                tracing::warn!(url = %self.url, "auth.connect_url's 200 holds no valid user");
                Verdict::Failed
            },
            Verdict::User,
        ))
    }
}

/// The user in the app's 200: a valid id that is not one the node keeps
/// for itself (a guest's `g-`, `system`); a missing or bad name becomes a
/// guest name.
fn identity(body: &[u8]) -> Option<User> {
    let answer: Answer = serde_json::from_slice(body).ok()?;
    // A number is a fine id too (Django's primary keys).
    let id = match answer.user.id {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if crate::auth::reserved(&id) {
        return None;
    }
    let id = UserId::try_from(id).ok()?;
    let name = answer
        .user
        .name
        .and_then(|n| DisplayName::try_from(n).ok())
        .unwrap_or_else(crate::auth::guest_name);
    Some(User { id, name })
}

/// `{"query":{..},"cookies":{..},"headers":{..}}` for one upgrade request.
fn request_body(query: Option<&str>, headers: &HeaderMap) -> String {
    let query: Map<String, Value> = pairs(query)
        .map(|(k, v)| (k.to_owned(), Value::String(v)))
        .collect();
    let mut cookies = Map::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                cookies.insert(k.to_owned(), Value::String(v.trim_matches('"').to_owned()));
            }
        }
    }
    let mut passed = Map::new();
    for name in HEADERS {
        if let Some(v) = headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
        {
            passed.insert(name.to_owned(), Value::String(v.to_owned()));
        }
    }
    json!({"query": query, "cookies": cookies, "headers": passed}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_carries_query_cookies_and_chosen_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "sessionid=abc; csrftoken=x".parse().unwrap(),
        );
        headers.insert(header::USER_AGENT, "ua".parse().unwrap());
        headers.insert("x-secret", "no".parse().unwrap());
        let body: Value = serde_json::from_str(&request_body(
            Some("session_key=k%201&opponent=7"),
            &headers,
        ))
        .unwrap();
        assert_eq!(body["query"]["session_key"], "k 1");
        assert_eq!(body["query"]["opponent"], "7");
        assert_eq!(body["cookies"]["sessionid"], "abc");
        assert_eq!(body["headers"]["user-agent"], "ua");
        assert!(body["headers"].get("x-secret").is_none());
    }

    #[test]
    fn only_valid_unreserved_ids_are_taken() {
        let user = identity(br#"{"user":{"id":42,"name":"Ann"}}"#).unwrap();
        assert_eq!((user.id.as_str(), user.name.as_str()), ("42", "Ann"));
        assert!(identity(br#"{"user":{"id":"system"}}"#).is_none());
        assert!(identity(br#"{"user":{"id":"g-abc"}}"#).is_none());
        assert!(identity(br#"{"user":{"id":"has space"}}"#).is_none());
        assert!(identity(br#"{"user":null}"#).is_none());
        assert!(identity(b"not json").is_none());
        let unnamed = identity(br#"{"user":{"id":"u1"}}"#).unwrap();
        assert!(unnamed.name.as_str().starts_with("guest-"));
    }
}
