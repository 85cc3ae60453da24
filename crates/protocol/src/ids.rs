//! Validated identifiers and names. Each is checked once, when it is built
//! from outside input (`TryFrom<String>`, `FromStr`, or serde), so a value of
//! these types is always safe to put into a Redis key or channel name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an id or name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A room name outside `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`.
    #[error("room must match ^[A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}$")]
    Room,
    /// A user id outside 1–128 characters of `[A-Za-z0-9_.@:|+-]`.
    #[error("user id must be 1-128 characters of A-Z a-z 0-9 _ . @ : | + -")]
    User,
    /// A connection id outside 1–64 characters of `[A-Za-z0-9_.-]`.
    #[error("connection id must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    Conn,
    /// A message id that is empty, too long or holds characters outside `[A-Za-z0-9_.:-]`.
    #[error("message id must be 1-64 characters of A-Z a-z 0-9 _ . : -")]
    Message,
    /// A display name that is empty or invisible, over 32 characters, or
    /// holds control characters.
    #[error("name must be 1-32 visible characters without control characters")]
    Name,
    /// A `ref` that is neither a string of at most 64 characters nor a number.
    #[error("ref must be a string of at most 64 characters or a number")]
    Ref,
    /// A Pusher channel name.
    #[error("channel name must be 1-200 characters of A-Z a-z 0-9 _ - = @ , . ;")]
    Channel,
}

fn charset(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        // By hand: serde's `into = "String"` would clone the text each time.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(&s) { Ok(Self(s)) } else { Err($err) }
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A room name: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`. Safe in a Redis key.
    RoomId,
    |s| s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) && charset(s, 64, b"_.-"),
    IdError::Room
);

string_id!(
    /// A user id, unique in the cluster: a JWT's `sub`, or a random id for a guest.
    /// 1–128 characters of `[A-Za-z0-9_.@:|+-]`, so `auth0|123` or an e-mail fit.
    UserId,
    |s| charset(s, 128, b"_.@:|+-"),
    IdError::User
);

string_id!(
    /// One WebSocket connection, unique in the cluster (random). Presence counts these.
    ConnId,
    |s| charset(s, 64, b"_.-"),
    IdError::Conn
);

string_id!(
    /// A Pusher channel name (the Pusher front door): 1–200 characters of
    /// `[A-Za-z0-9_\-=@,.;]`, as Pusher allows. Safe in a Redis key (no
    /// braces, so a Redis Cluster hash tag around it holds).
    ChannelName,
    |s| charset(s, 200, b"_-=@,.;"),
    IdError::Channel
);

string_id!(
    /// A message id, stamped by the node (later: the room's history position).
    /// Clients send it back in `join.since` and `history.before`.
    MessageId,
    |s| charset(s, 64, b"_.:-"),
    IdError::Message
);

/// A display name: 1–32 characters, no control characters, trimmed, and
/// something visible. Invisible formatting characters that could disguise
/// it (bidi overrides, isolates and marks, zero-width characters, the BOM)
/// are removed first (see [`DisplayName::invisible`]); a name with nothing
/// visible left is refused. It is only ever shown as text; it never builds
/// a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct DisplayName(String);

impl Serialize for DisplayName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl DisplayName {
    /// The validated name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A guest name, `guest-NNNN`, from a number below 10,000.
    pub fn guest(n: u16) -> Self {
        Self(format!("guest-{:04}", n % 10_000))
    }

    /// The characters a name loses: bidi embeddings and overrides
    /// (U+202A–U+202E), isolates (U+2066–U+2069), marks (U+200E, U+200F,
    /// U+061C), zero-width characters (U+200B–U+200D, U+2060–U+2064), the
    /// BOM (U+FEFF), the soft hyphen (U+00AD), U+034F, U+180E and U+115F,
    /// U+1160, U+3164, U+FFA0 (Hangul fillers). They show nothing, but can
    /// reverse or hide what follows, or make two names look alike.
    pub fn invisible(c: char) -> bool {
        matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
        )
    }
}

impl TryFrom<String> for DisplayName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        // Control characters (and line separators) are refused anywhere,
        // even where trimming would hide them.
        if s.chars()
            .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
        {
            return Err(IdError::Name);
        }
        let s = if s.chars().any(DisplayName::invisible) {
            s.chars().filter(|&c| !DisplayName::invisible(c)).collect()
        } else {
            s
        };
        let t = s.trim();
        let chars = t.chars().count();
        if (1..=32).contains(&chars) {
            Ok(Self(if t.len() == s.len() { s } else { t.to_owned() }))
        } else {
            Err(IdError::Name)
        }
    }
}

impl FromStr for DisplayName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::try_from(s.to_owned())
    }
}

impl From<DisplayName> for String {
    fn from(n: DisplayName) -> String {
        n.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who someone is: as shown in `from`, `users` and presence events.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// Unique in the cluster.
    pub id: UserId,
    /// What others see.
    pub name: DisplayName,
}

/// A client's correlation value for `ack`, `error` and `pong`: echoed as given.
/// A string of at most 64 characters or a JSON number, as Socket.IO and
/// Centrifugo clients use either.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Ref(serde_json::Value);

impl TryFrom<serde_json::Value> for Ref {
    type Error = IdError;
    fn try_from(v: serde_json::Value) -> Result<Self, IdError> {
        match &v {
            serde_json::Value::String(s) if s.chars().count() <= 64 => Ok(Self(v)),
            serde_json::Value::Number(_) => Ok(Self(v)),
            _ => Err(IdError::Ref),
        }
    }
}

impl From<Ref> for serde_json::Value {
    fn from(r: Ref) -> serde_json::Value {
        r.0
    }
}

impl From<&str> for Ref {
    /// A string ref; longer than 64 characters is cut to 64.
    fn from(s: &str) -> Self {
        Self(serde_json::Value::String(s.chars().take(64).collect()))
    }
}

impl From<u64> for Ref {
    fn from(n: u64) -> Self {
        Self(serde_json::Value::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        for ok in ["lobby", "a", "A.b-c_d", "0", &"r".repeat(64)] {
            assert!(ok.parse::<RoomId>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "_x",
            "a b",
            "a:b",
            "a/b",
            "é",
            &"r".repeat(65),
            "*",
        ] {
            assert_eq!(bad.parse::<RoomId>(), Err(IdError::Room), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            "  Ann ".parse::<DisplayName>().map(String::from),
            Ok("Ann".into())
        );
        assert!("日本語の名前".parse::<DisplayName>().is_ok());
        assert!("x".repeat(32).parse::<DisplayName>().is_ok());
        for bad in [
            "",
            "   ",
            "a\nb",
            "a\u{7}",
            "\nevil",
            "evil\t",
            &"x".repeat(33),
        ] {
            assert_eq!(bad.parse::<DisplayName>(), Err(IdError::Name), "{bad:?}");
        }
        assert_eq!(DisplayName::guest(7).as_str(), "guest-0007");
    }

    #[test]
    fn names_lose_what_disguises_them() {
        let name = |s: &str| s.parse::<DisplayName>().map(String::from);
        assert_eq!(name("\u{202E}nimda\u{202C}"), Ok("nimda".into()));
        assert_eq!(name("\u{2067}Ann\u{2069} "), Ok("Ann".into()));
        assert_eq!(name("A\u{200B}n\u{200D}n\u{FEFF}"), Ok("Ann".into()));
        assert_eq!(name("\u{200F}\u{200E}\u{061C}Bo"), Ok("Bo".into()));
        assert_eq!(name("\u{200B} Ann"), Ok("Ann".into()), "trimmed after");
        // 32 visible characters and some invisible ones: still 32.
        let padded = format!("{}\u{200B}\u{200B}", "x".repeat(32));
        assert_eq!(name(&padded), Ok("x".repeat(32)));
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}\u{2060}",
            "\u{FEFF}",
            "\u{202E}\u{202C}",
            "\u{2066} \u{2069}",
            "\u{3164}",
            " \u{115F}\u{1160} ",
            "\u{00AD}",
            "a\u{2028}b",
            "a\u{85}b",
        ] {
            assert_eq!(name(invisible), Err(IdError::Name), "{invisible:?}");
        }
        assert_eq!(
            name(&format!("{}\u{200B}y", "x".repeat(32))),
            Err(IdError::Name)
        );
    }

    #[test]
    fn users_and_conns() {
        assert!("auth0|123".parse::<UserId>().is_ok());
        assert!("ann@example.com".parse::<UserId>().is_ok());
        assert!("a b".parse::<UserId>().is_err());
        assert!("a\u{0}".parse::<UserId>().is_err());
        assert!("a:b".parse::<ConnId>().is_err());
    }
}
