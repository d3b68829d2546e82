//! Who may trigger a pass. The one place that decides; the handlers only ask.
//!
//! - `/api/jobs/run-outbound`: `JOB_RUNNER_TOKEN` (`http.job_runner_token`), given as the
//!   guide's `?token=` query parameter or as `Authorization: Bearer`.
//! - `/api/cron/run-outbound-jobs`: `CRON_SECRET` (`http.cron_secret`) as `Authorization: Bearer`.
//! - `/api/admin/…`: `ADMIN_TOKEN` (`http.admin_token`) as `Authorization: Bearer` only (the
//!   admin routes refuse a token in the query string before asking, see `super::admin`).
//!
//! An unset secret disables its endpoint (404): an empty configuration never opens anything.
//! Comparison is constant-time in the presented value. `x-vercel-cron` and a Vercel user agent
//! are logged when seen and grant nothing: anyone can send a header. A refusal is always the
//! same 401 body, whichever part was missing or wrong; the log (never the client) says which.
//! Secrets and query strings are never logged.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use subtle::{Choice, ConstantTimeEq};

use crate::config::HttpSettings;

/// The endpoints that need a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/jobs/run-outbound`: bearer or `?token=`.
    JobRunner,
    /// `/api/cron/run-outbound-jobs`: bearer only.
    Cron,
    /// `/api/admin/…`: bearer only.
    Admin,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::JobRunner => "/api/jobs/run-outbound",
            Endpoint::Cron => "/api/cron/run-outbound-jobs",
            Endpoint::Admin => "/api/admin",
        }
    }

    fn secret(self, http: &HttpSettings) -> Option<&SecretString> {
        match self {
            Endpoint::JobRunner => http.job_runner_token.as_ref(),
            Endpoint::Cron => http.cron_secret.as_ref(),
            Endpoint::Admin => http.admin_token.as_ref(),
        }
    }

    fn env_name(self) -> &'static str {
        match self {
            Endpoint::JobRunner => "JOB_RUNNER_TOKEN",
            Endpoint::Cron => "CRON_SECRET",
            Endpoint::Admin => "ADMIN_TOKEN",
        }
    }
}

/// Why a request may not trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No secret is configured: the endpoint does not exist (404).
    Disabled,
    /// No credential, or a wrong one (401, the same answer for both).
    Unauthorized,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            Denied::Disabled => (StatusCode::NOT_FOUND, "disabled"),
            Denied::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
        };
        let mut response = super::reply::error(status, error);
        if self == Denied::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("a valid header"),
            );
        }
        response
    }
}

/// Decides whether this request may trigger `endpoint`. `http` is read per request, so a
/// reloaded token applies to the next request. `query` is the raw query string.
pub fn authorize(
    endpoint: Endpoint,
    http: &HttpSettings,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), Denied> {
    note_vercel_cron(endpoint, headers);
    let Some(secret) = endpoint.secret(http) else {
        tracing::info!(
            path = endpoint.path(),
            "trigger refused: the endpoint is disabled ({} is not set)",
            endpoint.env_name()
        );
        return Err(Denied::Disabled);
    };
    let expected = secret.expose_secret().as_bytes();

    // Exactly one credential of each kind: several `Authorization` headers (or `token`
    // parameters) are refused, not each tried (a client cannot test many guesses at once).
    let authorizations = headers.get_all(header::AUTHORIZATION).iter().count();
    let tokens = query.map_or(0, |q| {
        url::form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "token")
            .count()
    });
    // And one in all where the query can carry one too: a header beside `?token=` would be
    // two guesses in one request.
    let both = endpoint == Endpoint::JobRunner && authorizations > 0 && tokens > 0;
    if authorizations > 1 || tokens > 1 || both {
        refused(
            endpoint,
            "several credentials: Authorization headers or token parameters".into(),
        );
        return Err(Denied::Unauthorized);
    }

    let bearers = bearer_tokens(headers);
    let query_token = match endpoint {
        Endpoint::JobRunner => query.and_then(query_token),
        Endpoint::Cron | Endpoint::Admin => None,
    };
    // Every candidate is compared, so the time taken does not tell which one matched.
    let mut ok = Choice::from(0);
    for candidate in bearers
        .iter()
        .map(String::as_bytes)
        .chain(query_token.as_deref().map(str::as_bytes))
    {
        ok |= constant_time_eq(expected, candidate);
    }
    if bool::from(ok) {
        return Ok(());
    }
    let presented = match (bearers.is_empty(), query_token.is_none()) {
        (true, true) => "none",
        (false, true) => "bearer",
        (true, false) => "query",
        (false, false) => "bearer and query",
    };
    refused(
        endpoint,
        if presented == "none" {
            format!("no {} given", endpoint.env_name())
        } else {
            format!(
                "the {} given does not match (presented: {presented})",
                endpoint.env_name()
            )
        },
    );
    Err(Denied::Unauthorized)
}

/// Logs a refusal, at most one line a second for the process (a client guessing tokens cannot
/// flood the log); the next line says how many were held back.
fn refused(endpoint: Endpoint, why: String) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static LAST: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let held_back = {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if last.0.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            last.1 += 1;
            return;
        }
        last.0 = Some(Instant::now());
        std::mem::take(&mut last.1)
    };
    tracing::info!(
        path = endpoint.path(),
        held_back,
        "trigger refused: unauthorized ({why})"
    );
}

/// `x-vercel-cron` or a Vercel cron user agent: worth a log line (the user's job-runner guide's troubleshooting, docs/operations.md "Verify";
/// looks for it), never a credential.
fn note_vercel_cron(endpoint: Endpoint, headers: &HeaderMap) {
    let header = headers.contains_key("x-vercel-cron");
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.to_ascii_lowercase().contains("vercel-cron"));
    if header || user_agent {
        tracing::info!(
            path = endpoint.path(),
            x_vercel_cron = header,
            vercel_user_agent = user_agent,
            "Vercel-style cron request: these headers grant nothing; the token decides"
        );
    }
}

/// The tokens of every `Authorization: Bearer …` header (scheme case-insensitive). Other schemes
/// are ignored.
fn bearer_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .take(4)
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// The first `token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|t| !t.is_empty())
}

/// Compares in time that depends only on the lengths, never on where the first difference is.
/// The loop runs over `expected` (the secret's length, fixed for the process), whatever the
/// candidate's length.
fn constant_time_eq(expected: &[u8], candidate: &[u8]) -> Choice {
    let same_len = (expected.len() as u64).ct_eq(&(candidate.len() as u64));
    let mut same = Choice::from(1);
    for (i, e) in expected.iter().enumerate() {
        let c = candidate.get(i).copied().unwrap_or(!*e);
        same &= e.ct_eq(&c);
    }
    same & same_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(token: Option<&str>, cron: Option<&str>) -> HttpSettings {
        let mut s = crate::config::load(&crate::config::LoadOptions {
            skip_default_path: true,
            ..Default::default()
        })
        .unwrap()
        .http;
        s.job_runner_token = token.map(|t| SecretString::from(t.to_string()));
        s.cron_secret = cron.map(|t| SecretString::from(t.to_string()));
        s
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn constant_time_eq_is_equality() {
        let t = |a: &[u8], b: &[u8]| bool::from(constant_time_eq(a, b));
        assert!(t(b"secret", b"secret"));
        assert!(!t(b"secret", b"secreT"));
        assert!(!t(b"secret", b"secret "));
        assert!(!t(b"secret", b"secre"));
        assert!(!t(b"secret", b""));
        assert!(!t(b"s", b"ss"));
        // A shorter candidate padded with what would match must still fail.
        assert!(!t(b"ab\0", b"ab"));
    }

    #[test]
    fn job_runner_takes_query_or_bearer() {
        let h = http(Some("tok"), Some("cron"));
        let ep = Endpoint::JobRunner;
        assert_eq!(
            authorize(ep, &h, &headers(&[]), Some("token=tok&max=3")),
            Ok(())
        );
        assert_eq!(
            authorize(ep, &h, &headers(&[("authorization", "Bearer tok")]), None),
            Ok(())
        );
        assert_eq!(
            authorize(ep, &h, &headers(&[("authorization", "bearer  tok ")]), None),
            Ok(())
        );
        // Percent-encoded tokens decode.
        let h2 = http(Some("a+b/c=d"), None);
        assert_eq!(
            authorize(ep, &h2, &headers(&[]), Some("token=a%2Bb%2Fc%3Dd")),
            Ok(())
        );
        for (hd, q) in [
            (headers(&[]), None),
            (headers(&[]), Some("token=")),
            (headers(&[]), Some("token=tok2")),
            (headers(&[]), Some("Token=tok")),
            (headers(&[("authorization", "Bearer ")]), None),
            (headers(&[("authorization", "Basic tok")]), None),
            (headers(&[("authorization", "tok")]), None),
            (headers(&[("authorization", "Bearer cron")]), None),
            (headers(&[("x-vercel-cron", "1")]), None),
            (headers(&[("user-agent", "vercel-cron/1.0")]), None),
            // One credential per request, across header and query: two guesses are refused
            // even when one of them is right.
            (
                headers(&[("authorization", "Bearer tok")]),
                Some("token=wrong"),
            ),
            (
                headers(&[("authorization", "Bearer wrong")]),
                Some("token=tok"),
            ),
            (headers(&[("authorization", "Basic x")]), Some("token=tok")),
        ] {
            assert_eq!(
                authorize(ep, &h, &hd, q),
                Err(Denied::Unauthorized),
                "{hd:?} {q:?}"
            );
        }
    }

    #[test]
    fn cron_takes_bearer_only() {
        let h = http(Some("tok"), Some("cron"));
        let ep = Endpoint::Cron;
        assert_eq!(
            authorize(ep, &h, &headers(&[("authorization", "Bearer cron")]), None),
            Ok(())
        );
        assert_eq!(
            authorize(ep, &h, &headers(&[]), Some("token=cron")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            authorize(ep, &h, &headers(&[("authorization", "Bearer tok")]), None),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn unset_secret_disables() {
        let h = http(None, None);
        for ep in [Endpoint::JobRunner, Endpoint::Cron] {
            for (hd, q) in [
                (headers(&[]), None),
                (headers(&[]), Some("token=")),
                (headers(&[("authorization", "Bearer ")]), None),
                (headers(&[("authorization", "Bearer x")]), Some("token=x")),
                (headers(&[("x-vercel-cron", "1")]), None),
            ] {
                assert_eq!(authorize(ep, &h, &hd, q), Err(Denied::Disabled));
            }
        }
    }
}
