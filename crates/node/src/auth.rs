//! Who a connection is: HS256 JWTs (`?token=` or the `auth` first frame)
//! checked with `auth.jwt_secret`, or a guest.

use banter_protocol::{DisplayName, User, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Why a token was refused. Deliberately vague toward clients.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `auth.jwt_secret`: this node accepts no token at all.
    #[error("tokens are not accepted here")]
    Disabled,
    /// Bad signature, expired, wrong algorithm, malformed.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// A `sub` that cannot be a user id.
    #[error("invalid token: bad sub")]
    BadSubject,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
}

/// Checks tokens against the configured secret. Only HS256 is accepted:
/// `alg: none` and every other algorithm fail before the signature is read.
pub(crate) struct Verifier {
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("enabled", &self.key.is_some())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `secret`; an empty secret accepts nothing.
    pub fn new(secret: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked when present (with a minute of leeway for clock
        // skew) but not required: long-lived service tokens are the issuer's call.
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_aud = false;
        Verifier {
            key: (!secret.is_empty()).then(|| DecodingKey::from_secret(secret.as_bytes())),
            validation,
        }
    }

    /// The user a token names: `sub` is the id, the `name` claim the display
    /// name (a guest name when it is missing or not a valid name).
    pub fn verify(&self, token: &str) -> Result<User, AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::Disabled)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)?;
        let id = UserId::try_from(data.claims.sub).map_err(|_| AuthError::BadSubject)?;
        let name = data
            .claims
            .name
            .and_then(|n| DisplayName::try_from(n).ok())
            .unwrap_or_else(guest_name);
        Ok(User { id, name })
    }
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
    let id = UserId::try_from(format!("g-{}", crate::clock::random_id(GUEST_ID_LEN)))
        .unwrap_or_else(|_| unreachable!("random ids are alphanumeric"));
    User { id, name }
}
