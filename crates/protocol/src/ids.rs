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
    /// A display name that is empty, over 32 characters, or holds control characters.
    #[error("name must be 1-32 characters without control characters")]
    Name,
    /// A `ref` that is neither a string of at most 64 characters nor a number.
    #[error("ref must be a string of at most 64 characters or a number")]
    Ref,
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
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

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
    /// A message id, stamped by the node (later: the room's history position).
    /// Clients send it back in `join.since` and `history.before`.
    MessageId,
    |s| charset(s, 64, b"_.:-"),
    IdError::Message
);

/// A display name: 1–32 characters, no control characters, trimmed.
/// It is only ever shown as text; it never builds a key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DisplayName(String);

impl DisplayName {
    /// The validated name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A guest name, `guest-NNNN`, from a number below 10,000.
    pub fn guest(n: u16) -> Self {
        Self(format!("guest-{:04}", n % 10_000))
    }
}

impl TryFrom<String> for DisplayName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        // Control characters are refused anywhere, even where trimming would hide them.
        let t = s.trim();
        let chars = t.chars().count();
        if (1..=32).contains(&chars) && !s.chars().any(char::is_control) {
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
    fn users_and_conns() {
        assert!("auth0|123".parse::<UserId>().is_ok());
        assert!("ann@example.com".parse::<UserId>().is_ok());
        assert!("a b".parse::<UserId>().is_err());
        assert!("a\u{0}".parse::<UserId>().is_err());
        assert!("a:b".parse::<ConnId>().is_err());
    }
}
