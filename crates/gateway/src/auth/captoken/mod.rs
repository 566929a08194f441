//! Capability tokens: short-lived, workspace-scoped bearer tokens that let
//! their holder speak the executor protocol through `/bridge/{exe_id}`
//! (the seed's CapTokenSecret). This module is the pure format: mint and
//! verify, no I/O. [`keyfile`] loads the HMAC secret; `ops::captoken` mints and
//! revokes against the store (the CLI and the admin routes).
//!
//! Format, JWT-like: `b64url(header).b64url(payload).b64url(sig)`, base64url
//! without padding, where
//! - the header is exactly the bytes `{"alg":"HS256","typ":"CXG"}`
//!   (anything else, even an equivalent JSON, is refused: there is one
//!   algorithm, so nothing in the token may choose another);
//! - the payload is `{turn_id, workspace_id, user_id?, iat, exp, skip_audit?}`
//!   with `iat`/`exp` in Unix seconds;
//! - `sig` is HMAC-SHA256 over `b64url(header) "." b64url(payload)`.
//!
//! Verification checks the shape and the header, then the signature (in
//! constant time, hmac's `verify_slice`), and only then decodes the
//! payload: bytes an attacker made up never reach the JSON parser.

pub mod keyfile;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header, byte for byte.
pub const HEADER: &[u8] = br#"{"alg":"HS256","typ":"CXG"}"#;

/// Lifetime bounds, in seconds. The reference minted 10 min to 24 h; the
/// lower bound here is 1 s so that a caller (or a test) can ask for a
/// token that lives just long enough for one short job.
pub const MIN_TTL_S: u64 = 1;
/// A day, as the reference's longest lifetime.
pub const MAX_TTL_S: u64 = 24 * 3600;
/// An hour, when the caller does not say.
pub const DEFAULT_TTL_S: u64 = 3600;

/// A turn id given by a caller: 1–128 printable ASCII characters.
pub const MAX_TURN_ID_LEN: usize = 128;

/// How far `iat` may lie in the future (clock skew between the minter and
/// this gateway) before the token counts as not yet valid.
pub const IAT_SKEW_S: i64 = 60;

/// What a capability token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub turn_id: String,
    pub workspace_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds: the token is refused from this second on.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_audit: Option<bool>,
}

/// The HMAC key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CapTokenSecret(Vec<u8>);

impl CapTokenSecret {
    /// Shortest key accepted: HMAC-SHA256 with fewer than 32 bytes of key
    /// is weaker than its output.
    pub const MIN_LEN: usize = 32;

    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self, CapTokenError> {
        let key = key.into();
        if key.len() < Self::MIN_LEN {
            return Err(CapTokenError::WeakSecret { len: key.len() });
        }
        Ok(CapTokenSecret(key))
    }

    /// A fresh random key (64 hex characters from 32 random bytes): what
    /// the data dir's generated secret holds, and what a gateway without
    /// one uses in tests.
    pub fn random() -> Self {
        CapTokenSecret(crate::secret::random_id("", 32).into_bytes())
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; `new` only bounds it below.
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

impl std::fmt::Debug for CapTokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CapTokenSecret(<redacted>)")
    }
}

/// Why a token was refused (or a secret or claim could not be used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapTokenError {
    #[error("malformed capability token: {0}")]
    Malformed(&'static str),
    #[error("the capability token's header must be exactly {expected}; got {got}")]
    BadHeader { expected: &'static str, got: String },
    #[error(
        "the capability token's signature does not match (minted with another secret, or altered)"
    )]
    BadSignature,
    #[error("the capability token's payload is not valid: {0}")]
    BadPayload(String),
    #[error("the capability token expired at {exp} (Unix seconds; now {now}); mint a new one")]
    Expired { exp: i64, now: i64 },
    #[error("the capability token is not valid before {iat} (Unix seconds; now {now}); check the minter's clock")]
    NotYetValid { iat: i64, now: i64 },
    #[error("the capability token secret is {len} bytes long; use at least 32")]
    WeakSecret { len: usize },
}

/// `b64url(header).b64url(payload)` signed: the token.
pub fn mint(secret: &CapTokenSecret, claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    sign_parts(secret, HEADER, &payload)
}

/// Signs any header and payload bytes. [`mint`] is this with [`HEADER`];
/// exposed so that tests can make tokens with a valid signature over a
/// header this module must refuse.
pub fn sign_parts(secret: &CapTokenSecret, header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = secret.mac();
    mac.update(input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Checks `token` and returns its claims, given the current time `now`
/// (Unix seconds).
pub fn verify(secret: &CapTokenSecret, token: &str, now: i64) -> Result<Claims, CapTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(CapTokenError::Malformed(
            "expected three base64url parts separated by '.'",
        ));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(CapTokenError::Malformed("a part is empty"));
    }
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| CapTokenError::Malformed("the header is not base64url without padding"))?;
    if header != HEADER {
        return Err(CapTokenError::BadHeader {
            expected: r#"{"alg":"HS256","typ":"CXG"}"#,
            got: String::from_utf8_lossy(&header).chars().take(80).collect(),
        });
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| CapTokenError::Malformed("the signature is not base64url without padding"))?;
    // The signature covers the parts exactly as sent, so a re-encoding of
    // the same bytes is a different (and refused) token.
    let signed = &token[..h.len() + 1 + p.len()];
    let mut mac = secret.mac();
    mac.update(signed.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| CapTokenError::BadSignature)?;

    // Only now, with the signature checked, is the payload looked at.
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| CapTokenError::BadPayload("not base64url without padding".into()))?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| CapTokenError::BadPayload(e.to_string()))?;
    if claims.turn_id.is_empty() || claims.workspace_id.is_empty() {
        return Err(CapTokenError::BadPayload(
            "turn_id and workspace_id must not be empty".into(),
        ));
    }
    if now >= claims.exp {
        return Err(CapTokenError::Expired {
            exp: claims.exp,
            now,
        });
    }
    // The longest lifetime is what bounds how long a revocation must be
    // remembered (`admin::REVOKED_TURN_RETENTION`): a token living longer
    // (minted elsewhere with the secret) would outlive its revocation.
    if claims.exp.saturating_sub(claims.iat) > MAX_TTL_S as i64 {
        return Err(CapTokenError::BadPayload(format!(
            "exp - iat is {} s, longer than the longest lifetime of {MAX_TTL_S} s",
            claims.exp.saturating_sub(claims.iat)
        )));
    }
    if claims.iat > now.saturating_add(IAT_SKEW_S) {
        return Err(CapTokenError::NotYetValid {
            iat: claims.iat,
            now,
        });
    }
    Ok(claims)
}

/// A new turn id: `turn_` and 16 random hex characters.
pub fn new_turn_id() -> String {
    crate::secret::random_id("turn_", 8)
}

/// Checks a caller-chosen turn id (see [`MAX_TURN_ID_LEN`]).
pub fn validate_turn_id(turn_id: &str) -> Result<(), String> {
    let ok = !turn_id.is_empty()
        && turn_id.len() <= MAX_TURN_ID_LEN
        && turn_id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid turn_id {turn_id:?}: use 1-{MAX_TURN_ID_LEN} printable ASCII characters without spaces"
        ))
    }
}

/// Checks a requested lifetime against [`MIN_TTL_S`]..=[`MAX_TTL_S`].
pub fn validate_ttl(ttl_s: u64) -> Result<(), String> {
    if (MIN_TTL_S..=MAX_TTL_S).contains(&ttl_s) {
        Ok(())
    } else {
        Err(format!(
            "ttl_s must be between {MIN_TTL_S} and {MAX_TTL_S} seconds (24 h); got {ttl_s}"
        ))
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> i64 {
    crate::store::now_ms().div_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> CapTokenSecret {
        CapTokenSecret::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            turn_id: "turn_1".into(),
            workspace_id: "w1".into(),
            user_id: Some("alice".into()),
            iat: 1_000,
            exp: 2_000,
            skip_audit: None,
        }
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trip_and_exact_wire_shape() {
        let t = mint(&secret(), &claims());
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"alg":"HS256","typ":"CXG"}"#
        );
        assert_eq!(parts[0], "eyJhbGciOiJIUzI1NiIsInR5cCI6IkNYRyJ9");
        let payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"turn_id":"turn_1","workspace_id":"w1","user_id":"alice","iat":1000,"exp":2000})
        );
        assert!(!t.contains('='), "no padding: {t}");
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 32);
        assert_eq!(verify(&secret(), &t, 1_500).unwrap(), claims());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_first_two_parts() {
        // Independent of `mint`: HMAC computed here from the definition.
        let key = b"0123456789abcdef0123456789abcdef";
        let input = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"CXG"}"#), b64("{}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(input.as_bytes());
        let expected = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(sign_parts(&secret(), HEADER, b"{}"), expected);
    }

    #[test]
    fn a_lifetime_past_the_longest_is_refused() {
        let mut c = claims();
        c.exp = c.iat + MAX_TTL_S as i64;
        assert!(verify(&secret(), &mint(&secret(), &c), c.iat).is_ok());
        c.exp += 1;
        let e = verify(&secret(), &mint(&secret(), &c), c.iat).unwrap_err();
        assert!(matches!(e, CapTokenError::BadPayload(_)), "{e}");
        // Extremes do not overflow.
        c.iat = i64::MIN;
        c.exp = i64::MAX;
        assert!(verify(&secret(), &mint(&secret(), &c), 0).is_err());
        c.iat = i64::MAX;
        c.exp = i64::MAX;
        let _ = verify(&secret(), &mint(&secret(), &c), i64::MAX - 1);
    }

    #[test]
    fn every_rejection() {
        let s = secret();
        let good = mint(&s, &claims());
        let (hp, sig) = good.rsplit_once('.').unwrap();
        let other = CapTokenSecret::new(vec![b'x'; 32]).unwrap();
        // A different character early in the signature keeps it valid base64.
        let mut flipped = sig.to_string();
        let c = if flipped.starts_with('A') { "B" } else { "A" };
        flipped.replace_range(0..1, c);
        let payload = serde_json::to_vec(&claims()).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "Malformed"),
            ("a.b".into(), "Malformed"),
            ("a.b.c.d".into(), "Malformed"),
            ("..".into(), "Malformed"),
            ("!!!.b.c".into(), "Malformed"),
            (format!("{hp}.***"), "Malformed"),
            (format!("{hp}.{flipped}"), "BadSignature"),
            (mint(&other, &claims()), "BadSignature"),
            // A valid signature over another header is still refused.
            (
                sign_parts(&s, br#"{"alg":"none","typ":"CXG"}"#, &payload),
                "BadHeader",
            ),
            (
                sign_parts(&s, br#"{"alg":"HS256","typ":"JWT"}"#, &payload),
                "BadHeader",
            ),
            (
                sign_parts(&s, br#"{"typ":"CXG","alg":"HS256"}"#, &payload),
                "BadHeader",
            ),
            (
                sign_parts(&s, br#"{"alg":"HS256", "typ":"CXG"}"#, &payload),
                "BadHeader",
            ),
            // Signed, but not the payload's shape.
            (sign_parts(&s, HEADER, b"[1,2]"), "BadPayload"),
            (
                sign_parts(
                    &s,
                    HEADER,
                    br#"{"turn_id":"","workspace_id":"w","iat":1,"exp":9999}"#,
                ),
                "BadPayload",
            ),
        ];
        for (token, want) in cases {
            let err = verify(&s, &token, 1_500).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{token:?}: want {want}, got {got}");
        }
        assert_eq!(
            verify(&s, &good, 2_000).unwrap_err(),
            CapTokenError::Expired {
                exp: 2_000,
                now: 2_000
            }
        );
        assert!(verify(&s, &good, 1_999).is_ok());
        let future = Claims {
            iat: 1_500 + IAT_SKEW_S + 1,
            exp: 9_999,
            ..claims()
        };
        assert!(matches!(
            verify(&s, &mint(&s, &future), 1_500),
            Err(CapTokenError::NotYetValid { .. })
        ));
    }

    #[test]
    fn the_payload_is_not_parsed_before_the_signature_checks() {
        // Garbage payload under a wrong signature: the signature error wins,
        // which shows the payload was never decoded.
        let t = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256","typ":"CXG"}"#),
            b64("not json"),
            b64(&"x".repeat(32))
        );
        assert_eq!(
            verify(&secret(), &t, 0).unwrap_err(),
            CapTokenError::BadSignature
        );
    }

    #[test]
    fn secrets_turn_ids_and_ttls() {
        assert!(matches!(
            CapTokenSecret::new(vec![1; 31]),
            Err(CapTokenError::WeakSecret { len: 31 })
        ));
        assert!(!format!("{:?}", secret()).contains("0123"));
        assert_ne!(CapTokenSecret::random(), CapTokenSecret::random());
        let t = new_turn_id();
        assert!(
            t.starts_with("turn_") && validate_turn_id(&t).is_ok(),
            "{t}"
        );
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            assert!(validate_turn_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ttl(1).is_ok() && validate_ttl(86_400).is_ok());
        for bad in [0, 86_401] {
            assert!(validate_ttl(bad).unwrap_err().contains("86400"), "{bad}");
        }
    }
}
