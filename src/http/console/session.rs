//! Who may use the console: sign-in with the admin token, a signed session cookie, sign-out,
//! the sign-in rate limit and the cross-site request check.
//!
//! The cookie is stateless so that every runner behind one address accepts a session made by
//! any of them: `v1.<random id>.<expiry, unix seconds>.<HMAC-SHA256>`, the MAC keyed with
//! `HMAC(admin token, "outbound-runner console session v1")`. Nothing of the token is in the
//! cookie; a changed token (SIGHUP) changes the key, and every session made with the old one
//! stops verifying at once. Sign-out clears the cookie and keeps its id as revoked in this
//! process's memory until it expires (the other runners only see the cleared cookie).
//!
//! Cross-site requests: the cookie is `SameSite=Strict` (a browser never sends it from another
//! site), and every POST must also carry an `Origin` naming this host (or, without `Origin`,
//! `Sec-Fetch-Site: same-origin`); anything else is 403.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "outbound_console";
/// How long a session lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);
/// Sign-in attempts allowed per client address per [`ATTEMPT_WINDOW`].
pub const ATTEMPTS: usize = 5;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

type HmacSha256 = Hmac<Sha256>;

/// The key sessions are signed with, derived from the admin token.
fn key(token: &SecretString) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(b"outbound-runner console session v1");
    mac.finalize().into_bytes().into()
}

fn sign(key: &[u8; 32], body: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `given` is the admin token (constant time, whatever the lengths).
pub fn token_matches(token: &SecretString, given: &str) -> bool {
    let a = Sha256::digest(token.expose_secret().as_bytes());
    let b = Sha256::digest(given.as_bytes());
    !token.expose_secret().is_empty() && bool::from(a.ct_eq(&b))
}

/// A new session's cookie value.
pub fn issue(token: &SecretString) -> String {
    let id: [u8; 16] = rand::random();
    let body = format!("v1.{}.{}", hex::encode(id), now_unix() + TTL.as_secs());
    let mac = sign(&key(token), &body);
    format!("{body}.{mac}")
}

/// A verified session: its id and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub expires: u64,
}

/// Verifies a cookie value against the current token: signature (constant time) and expiry.
pub fn verify(token: &SecretString, value: &str) -> Option<Session> {
    let (body, mac) = value.rsplit_once('.')?;
    let mut parts = body.split('.');
    let (v, id, expires) = (parts.next()?, parts.next()?, parts.next()?);
    if v != "v1" || parts.next().is_some() || id.len() != 32 {
        return None;
    }
    let expected = sign(&key(token), body);
    if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
        return None;
    }
    let expires: u64 = expires.parse().ok()?;
    (expires > now_unix()).then(|| Session {
        id: id.to_string(),
        expires,
    })
}

/// The session cookie's value in a request, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `console.secure_cookie`-like rule kept simple: `Secure` when the request came over TLS as a
/// proxy in front says (`X-Forwarded-Proto: https`); the daemon itself serves plain HTTP.
fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` of a new session.
pub fn set_cookie(value: &str, headers: &HeaderMap) -> String {
    format!(
        "{COOKIE}={value}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict{}",
        TTL.as_secs(),
        if secure(headers) { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` that clears the session.
pub fn clear_cookie(headers: &HeaderMap) -> String {
    format!(
        "{COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure(headers) { "; Secure" } else { "" }
    )
}

/// Whether a state-changing request comes from the console's own pages: `Origin` names the
/// host the request was sent to, or (no `Origin`) `Sec-Fetch-Site: same-origin`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => {
            let Ok(url) = url::Url::parse(origin) else {
                return false;
            };
            let Some(h) = url.host_str() else {
                return false;
            };
            let origin_host = match url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            }
            .to_ascii_lowercase();
            let forwarded = host(header::HeaderName::from_static("x-forwarded-host"));
            host(header::HOST).as_deref() == Some(origin_host.as_str())
                || forwarded.as_deref() == Some(origin_host.as_str())
        }
        None => headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"same-origin"),
    }
}

/// Sessions signed out on this runner, until they expire.
#[derive(Default)]
pub struct Revoked(Mutex<HashMap<String, u64>>);

impl Revoked {
    pub fn revoke(&self, s: &Session) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_unix();
        m.retain(|_, exp| *exp > now);
        m.insert(s.id.clone(), s.expires);
    }

    pub fn is_revoked(&self, s: &Session) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.contains_key(&s.id)
    }
}

/// Sign-in attempts per client address: at most [`ATTEMPTS`] per [`ATTEMPT_WINDOW`].
#[derive(Default)]
pub struct Limiter(Mutex<HashMap<Option<IpAddr>, Vec<Instant>>>);

impl Limiter {
    /// Counts an attempt; false when over the limit.
    pub fn allow(&self, addr: Option<IpAddr>) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, v| v.iter().any(|t| t.elapsed() < ATTEMPT_WINDOW));
        }
        let v = m.entry(addr).or_default();
        v.retain(|t| t.elapsed() < ATTEMPT_WINDOW);
        if v.len() >= ATTEMPTS {
            return false;
        }
        v.push(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn sessions_verify_with_their_token_only() {
        let t = SecretString::from("admin-token");
        let c = issue(&t);
        assert!(!c.contains("admin-token"));
        let s = verify(&t, &c).expect("valid");
        assert_eq!(s.id.len(), 32);
        assert!(verify(&SecretString::from("other"), &c).is_none());
        let mut tampered = c.clone();
        tampered.replace_range(3..4, if &c[3..4] == "a" { "b" } else { "a" });
        assert!(verify(&t, &tampered).is_none());
        // An expired one, signed correctly.
        let body = format!("v1.{}.{}", "0".repeat(32), now_unix() - 1);
        let old = format!("{body}.{}", sign(&key(&t), &body));
        assert!(verify(&t, &old).is_none());
        assert!(verify(&t, "garbage").is_none());
        let r = Revoked::default();
        assert!(!r.is_revoked(&s));
        r.revoke(&s);
        assert!(r.is_revoked(&s));
    }

    #[test]
    fn token_comparison() {
        let t = SecretString::from("tok");
        assert!(token_matches(&t, "tok"));
        assert!(!token_matches(&t, "tok "));
        assert!(!token_matches(&t, ""));
    }

    #[test]
    fn origin_check() {
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn limiter_counts_per_address() {
        let l = Limiter::default();
        let a = Some("10.0.0.1".parse().unwrap());
        for _ in 0..ATTEMPTS {
            assert!(l.allow(a));
        }
        assert!(!l.allow(a));
        assert!(l.allow(Some("10.0.0.2".parse().unwrap())));
    }

    #[test]
    fn cookies() {
        let h = headers(&[("cookie", "a=b; outbound_console=v1.x.y.z; c=d")]);
        assert_eq!(cookie_value(&h), Some("v1.x.y.z"));
        assert!(set_cookie("v", &headers(&[("x-forwarded-proto", "https")])).ends_with("; Secure"));
        assert!(!set_cookie("v", &HeaderMap::new()).contains("Secure"));
    }
}
