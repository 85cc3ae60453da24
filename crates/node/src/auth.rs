//! Who a connection is: HS256 JWTs (`?token=` or the `auth` first frame)
//! checked with `auth.jwt_secret`, or a guest.
//!
//! A token is accepted only if its signature is good and, with
//! `auth.leeway_ms` of clock skew either way: it has not expired (`exp`,
//! required unless `auth.require_exp = false`), is already valid (`nbf`),
//! was not issued in the future (`iat`); its `aud` names `auth.audience`
//! and its `iss` is `auth.issuer` when those are set; it has no `crit`
//! header (no extension is understood here); and its `sub` is not one of
//! the ids the node gives out itself (see [`reserved`]).

use crate::config::AuthConfig;
use banter_protocol::{DisplayName, User, UserId};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

/// The id of messages from the publish API.
pub(crate) const SYSTEM_ID: &str = "system";

/// Guest ids start with this (and tokens' ids never do).
const GUEST_PREFIX: &str = "g-";

/// Why a token was refused. Deliberately vague toward clients.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `auth.jwt_secret`: this node accepts no token at all.
    #[error("tokens are not accepted here")]
    Disabled,
    /// Bad signature, wrong algorithm, malformed.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// A header this node does not accept (`crit`), or one it cannot read.
    #[error("invalid token: {0}")]
    Header(&'static str),
    /// A time claim (`exp`, `nbf`, `iat`) that is missing or out of range.
    #[error("invalid token: {0}")]
    Time(&'static str),
    /// An `aud` or `iss` other than the configured one.
    #[error("invalid token: {0}")]
    Claim(&'static str),
    /// A `sub` that cannot be a user id, or one the node reserves.
    #[error("invalid token: bad sub")]
    BadSubject,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    /// NumericDate: seconds since the epoch, fractions allowed.
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    aud: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
}

/// Checks tokens against the configured secret. Only HS256 is accepted:
/// `alg: none` and every other algorithm fail before the signature is read.
pub(crate) struct Verifier {
    key: Option<DecodingKey>,
    validation: Validation,
    require_exp: bool,
    leeway_ms: f64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `auth`; an empty `auth.jwt_secret` accepts nothing.
    pub fn new(auth: &AuthConfig) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        // The signature and `sub` are jsonwebtoken's; the claims are checked
        // below, in milliseconds, with `auth.leeway_ms`.
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let secret = &auth.jwt_secret;
        let set = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Verifier {
            key: (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes())),
            validation,
            require_exp: auth.require_exp,
            leeway_ms: auth.leeway_ms as f64,
            audience: set(&auth.audience),
            issuer: set(&auth.issuer),
        }
    }

    /// The user a token names: `sub` is the id, the `name` claim the display
    /// name (a guest name when it is missing or not a valid name).
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        self.verify_at(token, crate::clock::now_ms() as f64)
    }

    fn verify_at(&self, token: &str, now_ms: f64) -> Result<User, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::Disabled)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)?;
        // Read after the signature: only the issuer's headers are looked at.
        if header_has_crit(token)? {
            return Err(AuthError::Header("crit header"));
        }
        let claims = data.claims;
        self.check_times(&claims, now_ms)?;
        if let Some(audience) = &self.audience
            && !names(claims.aud.as_ref(), audience)
        {
            return Err(AuthError::Claim("aud"));
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_ref().and_then(Value::as_str) != Some(issuer.as_str())
        {
            return Err(AuthError::Claim("iss"));
        }
        if reserved(&claims.sub) {
            return Err(AuthError::BadSubject);
        }
        let id = UserId::try_from(claims.sub).map_err(|_| AuthError::BadSubject)?;
        let name = claims
            .name
            .and_then(|n| DisplayName::try_from(n).ok())
            .unwrap_or_else(guest_name);
        Ok(User { id, name })
    }

    /// `exp`, `nbf` and `iat` against `now_ms`, each with the leeway.
    fn check_times(&self, claims: &Claims, now_ms: f64) -> Result<(), AuthError> {
        let ms = |seconds: f64| seconds * 1000.0;
        match claims.exp {
            None if self.require_exp => return Err(AuthError::Time("no exp")),
            Some(exp) if ms(exp) + self.leeway_ms < now_ms => {
                return Err(AuthError::Time("expired"));
            }
            _ => {}
        }
        if claims
            .nbf
            .is_some_and(|nbf| ms(nbf) - self.leeway_ms > now_ms)
        {
            return Err(AuthError::Time("not valid yet (nbf)"));
        }
        if claims
            .iat
            .is_some_and(|iat| ms(iat) - self.leeway_ms > now_ms)
        {
            return Err(AuthError::Time("issued in the future (iat)"));
        }
        Ok(())
    }
}

/// Whether the token's protected header has a `crit` member: it names
/// extensions the recipient must understand, and this node understands none.
fn header_has_crit(token: &str) -> Result<bool, AuthError> {
    let unreadable = AuthError::Header("unreadable header");
    let encoded = token
        .split('.')
        .next()
        .ok_or(AuthError::Header("no header"))?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| AuthError::Header("unreadable header"))?;
    match serde_json::from_slice::<Value>(&json) {
        Ok(Value::Object(header)) => Ok(header.contains_key("crit")),
        _ => Err(unreadable),
    }
}

/// Whether an `aud` claim (a string or an array of strings) names `audience`.
fn names(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(one)) => one == audience,
        Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// The ids a token may not claim, because the node gives them out itself:
/// `system` (the publish API's messages) and anything starting with `g-`
/// (guests), in any case. So a token cannot post as the server or take a
/// guest's direct messages.
pub(crate) fn reserved(sub: &str) -> bool {
    sub.eq_ignore_ascii_case(SYSTEM_ID)
        || sub
            .get(..GUEST_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(GUEST_PREFIX))
}

/// Random characters in a guest's id (`g-` and these): 36^12, so ids do not
/// collide in a cluster.
const GUEST_ID_LEN: usize = 12;

/// `guest-NNNN`.
pub(crate) fn guest_name() -> DisplayName {
    use rand::RngExt;
    DisplayName::guest(rand::rng().random_range(0..10_000))
}

/// A guest: a random cluster-unique id, the wanted name if it is valid,
/// `guest-NNNN` otherwise.
pub(crate) fn guest(wanted: Option<&str>) -> User {
    let name = wanted
        .and_then(|n| n.parse::<DisplayName>().ok())
        .unwrap_or_else(guest_name);
    let id = UserId::try_from(format!(
        "{GUEST_PREFIX}{}",
        crate::clock::random_id(GUEST_ID_LEN)
    ))
    .unwrap_or_else(|_| unreachable!("random ids are alphanumeric"));
    User { id, name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const NOW_MS: f64 = 1_800_000_000_000.0;
    const NOW: i64 = 1_800_000_000;

    fn verifier(f: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let mut auth = AuthConfig {
            jwt_secret: "s".into(),
            ..AuthConfig::default()
        };
        f(&mut auth);
        Verifier::new(&auth)
    }

    fn token(claims: Value) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s")).unwrap()
    }

    fn ok(v: &Verifier, claims: Value) -> bool {
        v.verify_at(&token(claims), NOW_MS).is_ok()
    }

    #[test]
    fn times_with_the_leeway() {
        let v = verifier(|_| {});
        assert!(!ok(&v, json!({"sub":"u"})), "exp required by default");
        assert!(ok(&v, json!({"sub":"u","exp": NOW + 1})));
        assert!(ok(&v, json!({"sub":"u","exp": NOW - 59})));
        assert!(!ok(&v, json!({"sub":"u","exp": NOW - 61})));
        assert!(ok(&v, json!({"sub":"u","exp": NOW + 9, "nbf": NOW + 59})));
        assert!(!ok(&v, json!({"sub":"u","exp": NOW + 99, "nbf": NOW + 61})));
        assert!(ok(&v, json!({"sub":"u","exp": NOW + 9, "iat": NOW + 59})));
        assert!(!ok(&v, json!({"sub":"u","exp": NOW + 99, "iat": NOW + 61})));
        assert!(ok(&v, json!({"sub":"u","exp": NOW as f64 + 0.5})));

        let lax = verifier(|a| a.require_exp = false);
        assert!(ok(&lax, json!({"sub":"u"})));
        assert!(!ok(&lax, json!({"sub":"u","nbf": NOW + 61})));

        let strict = verifier(|a| a.leeway_ms = 1_000);
        assert!(ok(&strict, json!({"sub":"u","exp": NOW})));
        assert!(!ok(&strict, json!({"sub":"u","exp": NOW - 2})));
        assert!(!ok(
            &strict,
            json!({"sub":"u","exp": NOW + 9, "nbf": NOW + 2})
        ));
        assert!(!ok(
            &strict,
            json!({"sub":"u","exp": NOW + 9, "iat": NOW + 2})
        ));
    }

    #[test]
    fn audience_and_issuer_when_set() {
        let exp = NOW + 60;
        let open = verifier(|_| {});
        assert!(ok(&open, json!({"sub":"u","exp":exp,"aud":"x","iss":"y"})));
        let v = verifier(|a| {
            a.audience = "chat".into();
            a.issuer = "https://id.example".into();
        });
        let iss = "https://id.example";
        assert!(ok(&v, json!({"sub":"u","exp":exp,"aud":"chat","iss":iss})));
        assert!(ok(
            &v,
            json!({"sub":"u","exp":exp,"aud":["x","chat"],"iss":iss})
        ));
        for bad in [
            json!({"sub":"u","exp":exp,"iss":iss}),
            json!({"sub":"u","exp":exp,"aud":"other","iss":iss}),
            json!({"sub":"u","exp":exp,"aud":["x"],"iss":iss}),
            json!({"sub":"u","exp":exp,"aud":"chat"}),
            json!({"sub":"u","exp":exp,"aud":"chat","iss":"https://evil.example"}),
            json!({"sub":"u","exp":exp,"aud":"chat","iss":[iss]}),
        ] {
            assert!(!ok(&v, bad.clone()), "{bad}");
        }
    }

    #[test]
    fn reserved_ids() {
        for r in ["system", "SYSTEM", "g-abc", "G-", "g-"] {
            assert!(reserved(r), "{r}");
        }
        for free in ["systems", "g", "gus", "ag-x", "é"] {
            assert!(!reserved(free), "{free}");
        }
        assert!(reserved(guest(None).id.as_str()));
    }
}
