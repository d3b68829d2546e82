//! The checks types alone cannot make: ranges, URLs, what `live` mode requires. Every problem
//! names its key; reasons never quote a secret.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{ConfigError, DEFAULT_MAX_CONNECTIONS, DeliveryMode, Problem, Settings, database_url};

/// The longest `whatsapp.webhook_forward_timeout`: Meta's webhook request waits for the app.
const MAX_FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest `whatsapp.status_retention`: a status that raced its send's answer, or waits
/// for a running job, must outlive that.
const MIN_STATUS_RETENTION: Duration = Duration::from_secs(600);

/// Checks what types alone cannot. Reasons never quote a secret.
pub fn validate(s: &Settings) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, reason: &str| {
        problems.push(Problem {
            key: key.to_string(),
            reason: reason.to_string(),
        })
    };

    for (key, url) in [
        ("database.url", &s.database.url),
        ("database.direct_url", &s.database.direct_url),
        ("database.listen_url", &s.database.listen_url),
    ] {
        if let Some(url) = url {
            if let Err(reason) = check_postgres_url(url.expose_secret()) {
                bad(key, &reason);
            }
        }
    }
    if s.database.connect_timeout.is_zero() {
        bad("database.connect_timeout", "must be more than 0s");
    }

    let r = &s.runner;
    if r.workers > 4096 {
        bad(
            "runner.workers",
            "must be between 0 (sized by the work) and 4096",
        );
    }
    if !(1..=100_000).contains(&r.max_in_flight) {
        bad("runner.max_in_flight", "must be between 1 and 100000");
    }
    if !(1..=10_000).contains(&r.batch) {
        bad("runner.batch", "must be between 1 and 10000");
    }
    for (key, d) in [
        ("runner.poll_interval", r.poll_interval),
        ("runner.pooler_poll_interval", r.pooler_poll_interval),
        ("runner.rescue_interval", r.rescue_interval),
        ("runner.foreign_running_grace", r.foreign_running_grace),
        ("runner.job_timeout", r.job_timeout),
        ("runner.heartbeat", r.heartbeat),
        ("runner.prune_interval", r.prune_interval),
    ] {
        if d.is_zero() {
            bad(key, "must be more than 0s");
        }
    }
    if r.lease < Duration::from_secs(2) {
        bad("runner.lease", "must be at least 2s");
    }
    if s.max_connections() < 2 {
        bad(
            "database.max_connections",
            &format!("must be at least 2 (or 0 for {DEFAULT_MAX_CONNECTIONS})"),
        );
    }

    if s.retry.max_attempts == 0 {
        bad("retry.max_attempts", "must be at least 1");
    }
    if s.retry.base.is_zero() {
        bad("retry.base", "must be more than 0s");
    }
    if s.retry.cap < s.retry.base {
        bad("retry.cap", "must not be less than retry.base");
    }

    if !s.orchestrator.url.is_empty() {
        if let Err(reason) = check_http_url(&s.orchestrator.url) {
            bad("orchestrator.url", &reason);
        }
    }
    if s.orchestrator.timeout.is_zero() {
        bad("orchestrator.timeout", "must be more than 0s");
    }

    let w = &s.whatsapp;
    if let Err(reason) = check_http_url(&w.api_base) {
        bad("whatsapp.api_base", &reason);
    }
    if w.api_version.is_empty() || w.api_version.contains('/') {
        bad("whatsapp.api_version", "must look like v21.0");
    }
    if !w.phone_number_id.chars().all(|c| c.is_ascii_digit()) {
        bad(
            "whatsapp.phone_number_id",
            "must be the numeric id Meta shows for the number",
        );
    }
    if s.delivery.mode == DeliveryMode::Live {
        if w.phone_number_id.is_empty() && w.numbers.is_empty() {
            bad(
                "whatsapp.phone_number_id",
                "is required when delivery.mode = \"live\"",
            );
        }
        if w.access_token.is_none() && (!w.phone_number_id.is_empty() || w.numbers.is_empty()) {
            bad(
                "whatsapp.access_token",
                "is required when delivery.mode = \"live\" (or whatsapp.access_token_file)",
            );
        }
    }
    if w.rate_per_second == 0 {
        bad("whatsapp.rate_per_second", "must be at least 1");
    }
    for (key, reason) in number_problems(s) {
        bad(&key, &reason);
    }
    if w.timeout.is_zero() {
        bad("whatsapp.timeout", "must be more than 0s");
    }
    if w.halt_cooldown.is_zero() {
        bad("whatsapp.halt_cooldown", "must be more than 0s");
    }
    if !w.webhook_forward_url.is_empty() {
        if let Err(reason) = check_http_url(&w.webhook_forward_url) {
            bad("whatsapp.webhook_forward_url", &reason);
        }
    }
    if w.webhook_forward_timeout.is_zero() || w.webhook_forward_timeout > MAX_FORWARD_TIMEOUT {
        bad(
            "whatsapp.webhook_forward_timeout",
            "must be more than 0s and at most 1m (Meta's webhook waits for the app's answer)",
        );
    }
    if w.status_retention < MIN_STATUS_RETENTION || w.status_retention <= s.runner.job_timeout {
        bad(
            "whatsapp.status_retention",
            "must be at least 10m and longer than runner.job_timeout (a status for a running job \
             waits for the job to finish)",
        );
    }

    if !s.http.listen.is_empty() && s.http.listen.parse::<SocketAddr>().is_err() {
        bad(
            "http.listen",
            "must be an address like 127.0.0.1:8080 (or empty for no HTTP server)",
        );
    }
    if !s.metrics.listen.is_empty() && s.metrics.listen.parse::<SocketAddr>().is_err() {
        bad(
            "metrics.listen",
            "must be an address like 127.0.0.1:9090 (or empty)",
        );
    }
    if s.http.max_per_request == 0 {
        bad("http.max_per_request", "must be at least 1");
    }
    if s.http.pass_timeout.is_zero() {
        bad("http.pass_timeout", "must be more than 0s");
    }
    // Unlike the other secrets (src/config/secrets.rs), not a slot of the key table: checked
    // here the same way. A verify token of spaces would verify a subscription sent `%20`.
    if s.whatsapp
        .verify_token
        .as_ref()
        .is_some_and(|v| v.expose_secret().trim().is_empty())
    {
        bad(
            "whatsapp.verify_token",
            "is only whitespace; set a real value or leave it unset",
        );
    }
    if s.http.request_timeout < Duration::from_millis(100)
        || s.http.request_timeout > Duration::from_secs(300)
    {
        bad("http.request_timeout", "must be between 100ms and 5m");
    }
    if !(1..=256).contains(&s.http.max_concurrent_passes) {
        bad("http.max_concurrent_passes", "must be between 1 and 256");
    }

    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&s.log.level) {
        bad("log.level", &format!("not a level or filter: {e}"));
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

fn check_postgres_url(text: &str) -> Result<(), String> {
    // The reason must not echo the URL: it may hold a password.
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "postgres" | "postgresql" => database_url::clean_url(text).map(|_| ()),
        // Never the scheme it has: from a file, it is whatever the file begins with.
        _ => Err("scheme must be postgres:// or postgresql://".into()),
    }
}

fn check_http_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(()),
        "http" | "https" => Err("has no host".into()),
        other => Err(format!("scheme must be http or https, not {other}")),
    }
}

/// What is wrong with `[[whatsapp.numbers]]`: (key, reason). Reasons never quote a secret.
fn number_problems(s: &Settings) -> Vec<(String, String)> {
    let w = &s.whatsapp;
    let live = s.delivery.mode == DeliveryMode::Live;
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    if !w.phone_number_id.is_empty() {
        seen.push(&w.phone_number_id);
    }
    for (i, n) in w.numbers.iter().enumerate() {
        let key = |k: &str| format!("whatsapp.numbers[{i}].{k}");
        let id = n.phone_number_id.as_str();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            out.push((
                key("phone_number_id"),
                "must be the numeric id Meta shows for the number".to_string(),
            ));
        } else if seen.contains(&id) {
            out.push((
                key("phone_number_id"),
                format!(
                    "{id} is configured twice (whatsapp.phone_number_id and every \
                     [[whatsapp.numbers]] table name distinct numbers)"
                ),
            ));
        } else {
            seen.push(id);
        }
        if n.rate_per_second == Some(0) {
            out.push((key("rate_per_second"), "must be at least 1".to_string()));
        }
        if live && n.access_token.is_none() && w.access_token.is_none() {
            out.push((
                key("access_token"),
                format!(
                    "is required when delivery.mode = \"live\" (or access_token_file, the \
                     credential whatsapp_access_token_{id}, or whatsapp.access_token for all \
                     numbers)"
                ),
            ));
        }
    }
    // Meta's limit is the business portfolio's: its numbers must agree on it.
    let mut limits: Vec<(String, u32, String)> = Vec::new();
    for id in w.number_ids() {
        let Some(n) = w.number(Some(id)) else {
            continue;
        };
        if n.business_id.is_empty() {
            continue;
        }
        match limits.iter().find(|(b, _, _)| *b == n.business_id) {
            Some((b, limit, first)) if *limit != n.tier_limit => out.push((
                "whatsapp.numbers".to_string(),
                format!(
                    "numbers {first} and {id} share business_id {b} but not tier_limit ({limit} \
                     and {}): Meta's messaging limit is the business's, give them the same",
                    n.tier_limit
                ),
            )),
            Some(_) => {}
            None => limits.push((n.business_id.clone(), n.tier_limit, id.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::opts;
    use crate::config::*;

    #[test]
    fn bad_url_does_not_echo_it() {
        let e = load(&opts(&[("DATABASE_URL", "mysql://u:hunter2@h/db")])).unwrap_err();
        assert_eq!(e.problems[0].key, "database.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn webhook_forward_timeout_and_status_retention_are_checked() {
        let s = load(&opts(&[])).unwrap();
        assert_eq!(s.whatsapp.webhook_forward_timeout, Duration::from_secs(10));
        assert_eq!(s.whatsapp.status_retention, Duration::from_secs(24 * 3600));
        let s = load(&opts(&[
            ("OUTBOUND_RUNNER__WHATSAPP__WEBHOOK_FORWARD_TIMEOUT", "30s"),
            ("OUTBOUND_RUNNER__WHATSAPP__STATUS_RETENTION", "2h"),
        ]))
        .unwrap();
        assert_eq!(s.whatsapp.webhook_forward_timeout, Duration::from_secs(30));
        assert_eq!(s.whatsapp.status_retention, Duration::from_secs(7200));
        let problem = |env: &[(&str, &str)]| {
            let e = load(&opts(env)).unwrap_err();
            e.problems.iter().map(|p| p.key.clone()).collect::<Vec<_>>()
        };
        for bad in ["0s", "2m"] {
            assert_eq!(
                problem(&[("OUTBOUND_RUNNER__WHATSAPP__WEBHOOK_FORWARD_TIMEOUT", bad)]),
                ["whatsapp.webhook_forward_timeout"],
                "{bad}"
            );
        }
        assert_eq!(
            problem(&[("OUTBOUND_RUNNER__WHATSAPP__STATUS_RETENTION", "5m")]),
            ["whatsapp.status_retention"]
        );
        // Shorter than a job may run: a status waiting for its running job would be dropped.
        assert_eq!(
            problem(&[
                ("OUTBOUND_RUNNER__WHATSAPP__STATUS_RETENTION", "1h"),
                ("OUTBOUND_RUNNER__RUNNER__JOB_TIMEOUT", "2h"),
            ]),
            ["whatsapp.status_retention"]
        );
    }

    #[test]
    fn live_mode_requires_credentials() {
        let e = load(&opts(&[("OUTBOUND_RUNNER__DELIVERY__MODE", "live")])).unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"whatsapp.phone_number_id"), "{e}");
        assert!(keys.contains(&"whatsapp.access_token"), "{e}");
    }
}
