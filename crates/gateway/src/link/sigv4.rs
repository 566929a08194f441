//! AWS SigV4 authentication of executors that run a stock `codex
//! exec-server` in its outbound "direct" mode.
//!
//! codex 0.169.0 (`--aws-sigv4`) signs both of its requests with SigV4,
//! service `execute-api`, the region it was given:
//! - the register `POST`, with signed headers `content-type;host;x-amz-date`
//!   and the SHA-256 of its JSON body as payload hash;
//! - every WebSocket upgrade `GET` of the URL that register returned, with
//!   `host;x-amz-date`, the empty payload hash, and the URL's query string as
//!   canonical query. codex re-dials that same URL after every disconnect and
//!   signs each upgrade afresh, so for these executors the URL is not a
//!   credential: the signature of each upgrade is.
//!
//! This module owns checking such a signature. The expected signature is
//! computed by the maintained `aws-sigv4` crate from the request as received
//! (never by hand), then compared in constant time; the `x-amz-date` must be
//! within [`MAX_SKEW`] of the gateway's clock. The access key id is not part
//! of the string to sign, so it is compared with the key's id as well.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;

use crate::secret;

/// The only algorithm codex uses (and the only one accepted).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// codex's default `--aws-service`.
pub const SERVICE: &str = "execute-api";
/// How far a request's `x-amz-date` may be from the gateway's clock, as AWS allows.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Why a SigV4-signed request was refused. Every variant is a 401 to the
/// caller; the text is for the gateway's log and the executor's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("malformed SigV4 Authorization header: {0}")]
    Malformed(String),
    #[error("missing or malformed x-amz-date header")]
    BadDate,
    #[error("x-amz-date is {skew_secs}s away from the gateway's clock (at most 900s allowed)")]
    Skew { skew_secs: u64 },
    #[error("credential scope {0:?} does not match the request (date, or service {SERVICE:?})")]
    Scope(String),
    #[error("signed header {0:?} is not in the request")]
    MissingHeader(String),
    /// `SignedHeaders` must name `host`, as every SigV4 signer does: the
    /// `aws-sigv4` crate panics when asked to sign without one.
    #[error("SignedHeaders must include host")]
    HostNotSigned,
    #[error("this signed request was already used; sign each request afresh")]
    Replayed,
    #[error("unknown access key id")]
    UnknownKey,
    #[error("signature does not match")]
    Mismatch,
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub key_id: String,
    /// `YYYYMMDD` of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// As sent: lowercase names joined by `;`.
    pub signed_headers: String,
    pub signature: String,
}

/// Whether the request carries a SigV4 `Authorization` header (as opposed to
/// a bearer token).
pub fn is_sigv4(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(ALGORITHM))
}

/// The longest `Authorization` value accepted; codex's is about 200 bytes.
/// What is refused here is never echoed whole into an error or the log.
const MAX_AUTHORIZATION_LEN: usize = 2048;
/// The most headers `SignedHeaders` may name (codex signs two or three).
const MAX_SIGNED_HEADERS: usize = 16;

/// Parses `AWS4-HMAC-SHA256 Credential=K/D/R/S/aws4_request, SignedHeaders=…, Signature=…`.
/// Pure (no I/O), so that fuzzing can drive it.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigV4Error> {
    let bad = |m: &str| SigV4Error::Malformed(m.chars().take(64).collect());
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(bad("the Authorization header is too long"));
    }
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("not AWS4-HMAC-SHA256"))?
        .trim_start();
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| bad(part))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(bad(&format!("unknown component {k:?}"))),
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(bad(
            "Credential is not KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    let signed_headers = signed_headers.ok_or_else(|| bad("no SignedHeaders"))?;
    let names: Vec<&str> = signed_headers.split(';').collect();
    if names.len() > MAX_SIGNED_HEADERS {
        return Err(bad("too many SignedHeaders"));
    }
    // Lowercase header names only, as SigV4 writes them: anything else
    // could never match what a signer computes.
    let header_name = |n: &&str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !names.iter().all(header_name) {
        return Err(bad("SignedHeaders is not a list of lowercase header names"));
    }
    Ok(Authorization {
        key_id: key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers.to_string(),
        signature: signature.ok_or_else(|| bad("no Signature"))?.to_string(),
    })
}

/// The SigV4 key of one executor: an access key id and its secret.
#[derive(Debug, Clone)]
pub struct Key<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

/// One HTTP request as the gateway received it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The raw (still percent-encoded) path.
    pub path: &'a str,
    /// The raw query string, without `?`; `""` when there is none.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The `Authorization` header of `req`, parsed. Look the key up by its
/// `key_id`, then call [`verify`].
pub fn authorization(req: &Request<'_>) -> Result<Authorization, SigV4Error> {
    let value = req
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigV4Error::Malformed("no Authorization header".into()))?;
    parse_authorization(value)
}

/// Checks that `req` was signed with `key` within [`MAX_SKEW`] of `now`.
pub fn verify(req: &Request<'_>, key: &Key<'_>, now: SystemTime) -> Result<(), SigV4Error> {
    let auth = authorization(req)?;
    if !secret::constant_time_eq(auth.key_id.as_bytes(), key.key_id.as_bytes()) {
        return Err(SigV4Error::UnknownKey);
    }
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigV4Error::BadDate)?;
    let signed_at = parse_amz_date(amz_date)?;
    let skew = now
        .duration_since(signed_at)
        .or_else(|e| Ok::<_, SigV4Error>(e.duration()))?;
    if skew > MAX_SKEW {
        return Err(SigV4Error::Skew {
            skew_secs: skew.as_secs(),
        });
    }
    if auth.service != SERVICE || !amz_date.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(SigV4Error::Scope(format!(
            "{}/{}/{}",
            auth.date, auth.region, auth.service
        )));
    }

    // The signer always signs `host` (and panics when the request has
    // none): a client that left it out can never match, so refuse it here.
    if !auth.signed_headers.split(';').any(|n| n == "host") {
        return Err(SigV4Error::HostNotSigned);
    }

    // Hand the signer exactly the headers the client says it signed; the
    // signer adds x-amz-date itself from `signed_at`.
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in auth.signed_headers.split(';') {
        if name == "x-amz-date" {
            continue;
        }
        let mut found = false;
        for value in req.headers.get_all(name) {
            let value = value
                .to_str()
                .map_err(|_| SigV4Error::MissingHeader(name.to_string()))?;
            headers.push((name, value));
            found = true;
        }
        if !found {
            return Err(SigV4Error::MissingHeader(name.to_string()));
        }
    }
    let uri = if req.query.is_empty() {
        req.path.to_string()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    // The signer is a library made for trusted input, with `expect`s inside:
    // whatever slipped past the checks above must cost this request a 401,
    // never the handler a panic.
    let expected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        expected_authorization(
            req.method,
            &uri,
            headers,
            req.body,
            key,
            &auth.region,
            signed_at,
        )
    }))
    .map_err(|_| SigV4Error::Malformed("the request cannot be signed".into()))??;
    // A client that signed other headers than the signer would (say, none
    // at all) computes another canonical request: refuse it too.
    let same_headers = expected.signed_headers == auth.signed_headers;
    let same_signature =
        secret::constant_time_eq(expected.signature.as_bytes(), auth.signature.as_bytes());
    if same_headers && same_signature {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

/// The signatures of the SigV4 requests accepted within the skew window, so
/// that a captured request sent again is refused ([`SigV4Error::Replayed`]).
///
/// A signature can verify from `MAX_SKEW` before its `x-amz-date` to
/// `MAX_SKEW` after it, so each is remembered for twice the window. Memory is
/// bounded ([`REPLAY_CAPACITY`] entries of ~150 bytes); only verified
/// requests are recorded, so only holders of a valid key can fill it. The
/// memory is per gateway process: with several replicas behind a load
/// balancer, a request replayed to another replica is not caught here.
pub struct ReplayGuard {
    seen: moka::sync::Cache<String, ()>,
}

/// Most signatures remembered: ~10 MB at most. Past it the oldest are
/// evicted first, and those could be replayed again within their window.
pub const REPLAY_CAPACITY: u64 = 65_536;

impl Default for ReplayGuard {
    fn default() -> Self {
        ReplayGuard {
            seen: moka::sync::Cache::builder()
                .max_capacity(REPLAY_CAPACITY)
                .time_to_live(2 * MAX_SKEW + Duration::from_secs(60))
                .build(),
        }
    }
}

impl ReplayGuard {
    /// Records `signature`; `Err(Replayed)` when it was seen before. Call it
    /// once the request has verified, and only then.
    pub fn first_use(&self, signature: &str) -> Result<(), SigV4Error> {
        let entry = self.seen.entry(signature.to_string()).or_insert(());
        if entry.is_fresh() {
            Ok(())
        } else {
            Err(SigV4Error::Replayed)
        }
    }
}

/// The `Authorization` header the `aws-sigv4` crate computes for this request.
fn expected_authorization(
    method: &str,
    uri: &str,
    headers: Vec<(&str, &str)>,
    body: &[u8],
    key: &Key<'_>,
    region: &str,
    signed_at: SystemTime,
) -> Result<Authorization, SigV4Error> {
    let malformed = |e: &dyn std::fmt::Display| SigV4Error::Malformed(e.to_string());
    let identity = Credentials::new(key.key_id, key.secret, None, None, "execgate").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(signed_at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| malformed(&e))?
        .into();
    let signable =
        SignableRequest::new(method, uri, headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| malformed(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| malformed(&e))?
        .into_parts();
    let value = instructions
        .headers()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string())
        .ok_or_else(|| SigV4Error::Malformed("the signer produced no Authorization".into()))?;
    parse_authorization(&value)
}

/// `YYYYMMDDTHHMMSSZ`, as SigV4 dates are written.
fn parse_amz_date(s: &str) -> Result<SystemTime, SigV4Error> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(s, &format).map_err(|_| SigV4Error::BadDate)?;
    Ok(t.assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const KEY: Key<'static> = Key {
        key_id: "AKEGTEST0000000001",
        secret: "s3cr3t-s3cr3t",
    };

    /// 2026-11-24T03:14:33Z, the time of the FINDINGS capture.
    fn t0() -> SystemTime {
        parse_amz_date("20261124T031433Z").unwrap()
    }

    /// Signs a request as codex does, with the `aws-sigv4` crate, and
    /// returns its headers as the gateway would receive them.
    fn signed(method: &str, uri: &str, extra: &[(&str, &str)], body: &[u8]) -> HeaderMap {
        let identity = Credentials::new(KEY.key_id, KEY.secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name(SERVICE)
            .time(t0())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let req = SignableRequest::new(
            method,
            uri,
            extra.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(req, &params).unwrap().into_parts();
        let mut headers = HeaderMap::new();
        let all = extra.iter().copied().chain(instructions.headers());
        for (k, v) in all {
            let name = axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            headers.insert(name, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    const BODY: &[u8] = br#"{"transport":"direct_jsonrpc_v1"}"#;
    const REGISTER: &str = "/cloud/environment/exe_1/direct/register";

    fn register_headers() -> HeaderMap {
        signed(
            "POST",
            REGISTER,
            &[
                ("content-type", "application/json"),
                ("host", "127.0.0.1:18080"),
            ],
            BODY,
        )
    }

    fn check(headers: &HeaderMap, body: &[u8], now: SystemTime) -> Result<(), SigV4Error> {
        let req = Request {
            method: "POST",
            path: REGISTER,
            query: "",
            headers,
            body,
        };
        verify(&req, &KEY, now)
    }

    fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
        headers.insert(name, HeaderValue::from_str(value).unwrap());
    }

    fn auth_value(headers: &HeaderMap) -> String {
        headers["authorization"].to_str().unwrap().to_string()
    }

    #[test]
    fn a_request_signed_by_aws_sigv4_is_accepted() {
        let h = register_headers();
        assert!(auth_value(&h).contains("SignedHeaders=content-type;host;x-amz-date"));
        assert_eq!(check(&h, BODY, t0()), Ok(()));
        assert_eq!(check(&h, BODY, t0() + Duration::from_secs(14 * 60)), Ok(()));
        assert_eq!(check(&h, BODY, t0() - Duration::from_secs(14 * 60)), Ok(()));
    }

    #[test]
    fn the_upgrade_is_signed_over_its_query_with_an_empty_payload() {
        let h = signed("GET", "/ws?reg=1", &[("host", "127.0.0.1:18081")], b"");
        assert!(auth_value(&h).contains("SignedHeaders=host;x-amz-date"));
        let req = |query| Request {
            method: "GET",
            path: "/ws",
            query,
            headers: &h,
            body: b"",
        };
        assert_eq!(verify(&req("reg=1"), &KEY, t0()), Ok(()));
        assert_eq!(verify(&req("reg=2"), &KEY, t0()), Err(SigV4Error::Mismatch));
        assert_eq!(verify(&req(""), &KEY, t0()), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn codex_s_captured_requests_verify() {
        // The two requests codex 0.169.0 sent (FINDINGS.md), key AKIDTEST /
        // secret "secret", region us-east-1.
        let key = Key {
            key_id: "AKIDTEST",
            secret: "secret",
        };
        let scope = "Credential=AKIDTEST/20261124/us-east-1/execute-api/aws4_request";
        let mut h = HeaderMap::new();
        set(&mut h, "content-type", "application/json");
        set(&mut h, "host", "127.0.0.1:18080");
        set(&mut h, "x-amz-date", "20261124T031433Z");
        set(&mut h, "authorization", &format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders=content-type;host;x-amz-date, Signature=d862b41e132dc21c64ab62d89d1e32c033bb43b2da4914a167a8ec7a107ac903"));
        let register = Request {
            method: "POST",
            path: "/cloud/environment/env-123/direct/register",
            query: "",
            headers: &h,
            body: BODY,
        };
        assert_eq!(verify(&register, &key, t0()), Ok(()));

        let mut h = HeaderMap::new();
        set(&mut h, "host", "127.0.0.1:18081");
        set(&mut h, "x-amz-date", "20261124T031433Z");
        set(&mut h, "authorization", &format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders=host;x-amz-date, Signature=815116ef24d0874e8dd66767275396e3b96ecc5bf86df086efd51af058b35328"));
        let upgrade = Request {
            method: "GET",
            path: "/ws",
            query: "reg=1",
            headers: &h,
            body: b"",
        };
        assert_eq!(verify(&upgrade, &key, t0()), Ok(()));
    }

    #[test]
    fn one_changed_byte_in_the_signature_is_refused() {
        let mut h = register_headers();
        let v = auth_value(&h);
        let last = v.chars().last().unwrap();
        let flipped = format!(
            "{}{}",
            &v[..v.len() - 1],
            if last == '0' { '1' } else { '0' }
        );
        set(&mut h, "authorization", &flipped);
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn a_changed_date_is_refused() {
        let mut h = register_headers();
        set(&mut h, "x-amz-date", "20261124T031434Z");
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::Mismatch));
        set(&mut h, "x-amz-date", "garbage");
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::BadDate));
    }

    #[test]
    fn a_changed_signed_header_or_body_is_refused() {
        let mut h = register_headers();
        set(&mut h, "host", "127.0.0.1:18081");
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::Mismatch));
        let mut h = register_headers();
        set(&mut h, "content-type", "text/plain");
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::Mismatch));
        let h = register_headers();
        assert_eq!(
            check(&h, br#"{"transport":"direct_jsonrpc_v2"}"#, t0()),
            Err(SigV4Error::Mismatch)
        );
        let mut h = register_headers();
        h.remove("content-type");
        assert!(matches!(
            check(&h, BODY, t0()),
            Err(SigV4Error::MissingHeader(_))
        ));
    }

    #[test]
    fn a_changed_key_id_is_refused() {
        let mut h = register_headers();
        let v = auth_value(&h).replace(KEY.key_id, "AKEGTEST0000000002");
        set(&mut h, "authorization", &v);
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::UnknownKey));
        // The right key id with another key's secret is a mismatch.
        let h = register_headers();
        let other = Key {
            key_id: KEY.key_id,
            secret: "another-secret",
        };
        let req = Request {
            method: "POST",
            path: REGISTER,
            query: "",
            headers: &h,
            body: BODY,
        };
        assert_eq!(verify(&req, &other, t0()), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn a_date_outside_the_skew_window_is_refused() {
        let h = register_headers();
        for now in [
            t0() + Duration::from_secs(15 * 60 + 1),
            t0() - Duration::from_secs(15 * 60 + 1),
        ] {
            assert!(matches!(check(&h, BODY, now), Err(SigV4Error::Skew { .. })));
        }
    }

    /// Regression: `SignedHeaders` without `host` made `aws-sigv4` panic
    /// inside the handler ("request uri authority must be set for signing").
    #[test]
    fn signed_headers_without_host_are_refused_without_a_panic() {
        let mut h = register_headers();
        let v = auth_value(&h).replace(
            "SignedHeaders=content-type;host;x-amz-date",
            "SignedHeaders=content-type;x-amz-date",
        );
        set(&mut h, "authorization", &v);
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::HostNotSigned));
        // Even with no Host header at all in the request.
        h.remove("host");
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::HostNotSigned));
        // Only x-amz-date signed.
        let v = auth_value(&h).replace(
            "SignedHeaders=content-type;x-amz-date",
            "SignedHeaders=x-amz-date",
        );
        set(&mut h, "authorization", &v);
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::HostNotSigned));
    }

    /// Odd `SignedHeaders` and huge values are refused, never a panic.
    #[test]
    fn hostile_authorization_values_are_refused() {
        let scope = "Credential=AKEGTEST0000000001/20261124/us-east-1/execute-api/aws4_request";
        for signed in [
            "host;;x-amz-date",
            "Host;x-amz-date",
            "host;x amz",
            "host;x-amz-date;\u{e9}",
            "",
        ] {
            let v = format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders={signed}, Signature=00");
            assert!(
                matches!(parse_authorization(&v), Err(SigV4Error::Malformed(_))),
                "{signed}"
            );
        }
        let many = vec!["host"; 100].join(";");
        let v = format!("AWS4-HMAC-SHA256 {scope}, SignedHeaders={many}, Signature=00");
        assert!(parse_authorization(&v).is_err());
        let huge = format!(
            "AWS4-HMAC-SHA256 {scope}, SignedHeaders=host, Signature={}",
            "a".repeat(1 << 20)
        );
        let Err(SigV4Error::Malformed(m)) = parse_authorization(&huge) else {
            panic!("a 1 MiB header must be refused")
        };
        assert!(m.len() < 100, "the refusal must not echo the value");
        // A signed header the signer would reject, present in the request.
        let mut h = register_headers();
        let v = auth_value(&h).replace(
            "SignedHeaders=content-type;host;x-amz-date",
            "SignedHeaders=content-type;host;x-amz-date;x-odd",
        );
        set(&mut h, "authorization", &v);
        set(&mut h, "x-odd", "  \t ");
        assert!(check(&h, BODY, t0()).is_err());
        // A region the signer has never seen.
        let mut h = register_headers();
        let v = auth_value(&h).replace("us-east-1", &"r".repeat(1000));
        set(&mut h, "authorization", &v);
        assert_eq!(check(&h, BODY, t0()), Err(SigV4Error::Mismatch));
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let guard = ReplayGuard::default();
        assert_eq!(guard.first_use("abc"), Ok(()));
        assert_eq!(guard.first_use("abd"), Ok(()));
        assert_eq!(guard.first_use("abc"), Err(SigV4Error::Replayed));
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert!(parse_authorization("Bearer x").is_err());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=a/b/c").is_err());
        let ok = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AK/20261124/us-east-1/execute-api/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab",
        )
        .unwrap();
        assert_eq!(ok.key_id, "AK");
        assert_eq!(ok.region, "us-east-1");
        assert_eq!(ok.signed_headers, "host;x-amz-date");
        assert_eq!(ok.signature, "ab");
    }
}
