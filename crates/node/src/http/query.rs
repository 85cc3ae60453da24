//! Query strings: `key=value` pairs, percent-decoded, and the query of the
//! WebSocket routes.

/// The decoded `key=value` pairs of a query string, in order. A pair
/// without `=` has an empty value.
pub(crate) fn pairs(query: Option<&str>) -> impl Iterator<Item = (&str, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key, percent_decode(value))
        })
}

/// The query of `/ws` and `/text`: only the keys Banter knows.
#[derive(Debug, Default)]
pub(crate) struct WsQuery {
    pub name: Option<String>,
    pub room: Option<String>,
    pub token: Option<String>,
}

impl WsQuery {
    pub fn parse(query: Option<&str>) -> WsQuery {
        let mut q = WsQuery::default();
        for (key, value) in pairs(query) {
            match key {
                "name" => q.name = Some(value),
                "room" => q.room = Some(value),
                "token" => q.token = Some(value),
                _ => {}
            }
        }
        q
    }
}

/// Decodes `%XX` and `+`; invalid escapes are kept as they are, and the
/// result is lossily made UTF-8 (a display name is validated afterwards).
fn percent_decode(s: &str) -> String {
    decode(s, true)
}

/// Decodes the `%XX` of one path segment (`+` stays `+` there).
pub(crate) fn path_decode(s: &str) -> String {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_percent_decoding() {
        let q = WsQuery::parse(Some("name=Ann%20B&room=lobby&x=1&token="));
        assert_eq!(q.name.as_deref(), Some("Ann B"));
        assert_eq!(q.room.as_deref(), Some("lobby"));
        assert_eq!(q.token.as_deref(), Some(""));
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%E6%97%A5"), "日");
        assert_eq!(percent_decode("%zz%"), "%zz%");
        let all: Vec<_> = pairs(Some("limit=5&since=1-0&flag")).collect();
        assert_eq!(
            all,
            [
                ("limit", "5".into()),
                ("since", "1-0".into()),
                ("flag", String::new())
            ]
        );
    }
}
