//! The HTTP answers the node gives: a body type and a few constructors, so
//! every route answers JSON errors of one shape.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

/// Every response body is whole (no streaming).
pub(crate) type Body = Full<Bytes>;

/// A response with a body of `content_type`, never cached, and never
/// sniffed into another type (`nosniff`).
pub(crate) fn response(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = code;
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// A JSON response.
pub(crate) fn json(code: StatusCode, value: &serde_json::Value) -> Response<Body> {
    response(code, "application/json", value.to_string())
}

/// `{"error": what}` with `code`.
pub(crate) fn error(code: StatusCode, what: &str) -> Response<Body> {
    json(code, &serde_json::json!({ "error": what }))
}

/// `{"error": <the status's reason>}`.
pub(crate) fn status(code: StatusCode) -> Response<Body> {
    error(code, code.canonical_reason().unwrap_or("error"))
}
