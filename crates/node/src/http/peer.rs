//! Who is asking: the client's address behind trusted proxies, whether its
//! browser origin may open a socket, and the upgrade headers.

use hyper::Request;
use hyper::body::Incoming;
use hyper::header;
use std::net::{IpAddr, SocketAddr};

/// Whether a browser page from `origin` may open a socket on `host`.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true; // not a browser: Origin guards browsers' ambient credentials only
    };
    let origin = origin.trim_end_matches('/');
    if allowed.is_empty() {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        return host.is_some_and(|h| h.eq_ignore_ascii_case(authority));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub(crate) fn client_ip(
    peer: SocketAddr,
    headers: &hyper::HeaderMap,
    trusted: &[IpAddr],
) -> IpAddr {
    let mut ip = peer.ip();
    if !trusted.contains(&ip) {
        return ip;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(hop) if trusted.contains(&hop) => ip = hop,
            Ok(hop) => return hop,
            Err(_) => return ip,
        }
    }
    ip
}

/// Whether header `name` lists `token` (comma-separated, any case).
pub(crate) fn header_has_token(
    req: &Request<Incoming>,
    name: header::HeaderName,
    token: &str,
) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap(),
        );
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted: Vec<std::net::IpAddr> =
            vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(
            client_ip(proxy, &h, &trusted).to_string(),
            "203.0.113.9",
            "right-most untrusted hop"
        );
        assert_eq!(
            client_ip(proxy, &h, &[]).to_string(),
            "10.0.0.1",
            "nobody trusted: the peer"
        );
        let stranger: SocketAddr = "198.51.100.7:1".parse().unwrap();
        assert_eq!(
            client_ip(stranger, &h, &trusted).to_string(),
            "198.51.100.7",
            "forged by a client"
        );
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        assert!(origin_allowed(&none, None, Some("a:8080")));
        assert!(origin_allowed(&none, Some("http://a:8080"), Some("a:8080")));
        assert!(!origin_allowed(
            &none,
            Some("http://evil:8080"),
            Some("a:8080")
        ));
        let any = vec!["*".to_owned()];
        assert!(origin_allowed(&any, Some("http://evil"), Some("a")));
        let list = vec!["https://chat.example".to_owned()];
        assert!(origin_allowed(
            &list,
            Some("https://chat.example"),
            Some("x")
        ));
        assert!(!origin_allowed(
            &list,
            Some("https://other.example"),
            Some("x")
        ));
    }
}
