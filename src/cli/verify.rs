//! `outbound-runner verify URL`: the user's job-runner guide's `scripts/verify-job-runner.sh` (docs/operations.md "Verify"), as one command.
//! Calls both trigger endpoints with the tokens from the environment (or flags), checks status
//! codes and JSON shapes, checks that a call without a token is refused, checks `/readyz` and
//! `/metrics`, and prints one line per check with a hint from the guide's troubleshooting.

use std::time::Duration;

use serde_json::Value;

/// What to verify against.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The runner's base URL (`http://localhost:8080`); a bare host name means https.
    pub url: String,
    /// The job runner token (default: $JOB_RUNNER_TOKEN).
    #[arg(long, env = "JOB_RUNNER_TOKEN", hide_env_values = true)]
    pub job_runner_token: Option<String>,
    /// The cron secret (default: $CRON_SECRET).
    #[arg(long, env = "CRON_SECRET", hide_env_values = true)]
    pub cron_secret: Option<String>,
    /// Per-request timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<&'static str>,
}

const HINT_TOKEN: &str = "401: the token does not match JOB_RUNNER_TOKEN on the runner (guide: Troubleshooting, 401 Unauthorized); call with ?token=YOUR_JOB_RUNNER_TOKEN";
const HINT_CRON: &str = "401: the secret does not match CRON_SECRET on the runner; use `Authorization: Bearer YOUR_CRON_SECRET` (the x-vercel-cron header alone is never accepted)";
const HINT_DISABLED: &str = "the endpoint is disabled because its token is not set on the runner: set JOB_RUNNER_TOKEN / CRON_SECRET there and reload";
const HINT_OPEN: &str = "the endpoint answered without a token: anyone can trigger it. Upgrade the runner or put it behind authentication";
const HINT_READY: &str = "the runner is up but not ready: database unreachable or LISTEN down (guide: Jobs Not Processing, Check Database Connection); see `journalctl -u outbound-runner`";
const HINT_DOWN: &str = "the runner does not answer: is it running (`systemctl status outbound-runner`), and is http.listen reachable from here?";

/// Runs every check. Never panics on a bad answer: each becomes a failed check.
pub async fn run_checks(args: &VerifyArgs) -> Vec<Outcome> {
    let base = normalize(&args.url);
    let client = match reqwest::Client::builder()
        .timeout(args.timeout)
        .user_agent(concat!(
            "outbound-runner-verify/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return vec![Outcome {
                name: "client",
                ok: false,
                detail: format!("cannot build an HTTP client: {e}"),
                hint: None,
            }];
        }
    };
    let mut out = Vec::new();

    // Liveness and readiness.
    let health = get(&client, &format!("{base}/healthz"), None).await;
    out.push(match &health {
        Ok((200, _)) => ok("healthz", "200"),
        Ok((code, _)) => bad("healthz", format!("HTTP {code}"), HINT_DOWN),
        Err(e) => bad("healthz", e.clone(), HINT_DOWN),
    });
    out.push(match get(&client, &format!("{base}/readyz"), None).await {
        Ok((200, _)) => ok("readyz", "200"),
        Ok((code, body)) => bad(
            "readyz",
            format!("HTTP {code}: {}", short(&body)),
            HINT_READY,
        ),
        Err(e) => bad("readyz", e, HINT_DOWN),
    });

    // The job runner endpoint, the guide's way: ?token=…&max=10.
    let runner_url = format!("{base}/api/jobs/run-outbound");
    out.push(match &args.job_runner_token {
        None => bad(
            "run-outbound",
            "JOB_RUNNER_TOKEN is not set here (env or --job-runner-token)".into(),
            HINT_TOKEN,
        ),
        Some(token) => {
            let url = format!("{runner_url}?token={}&max=10", urlencode(token));
            match get(&client, &url, None).await {
                Ok((200, body)) => match runner_shape(&body) {
                    Ok(summary) => ok("run-outbound", &summary),
                    Err(why) => bad("run-outbound", why, HINT_TOKEN),
                },
                Ok((401, _)) => bad("run-outbound", "HTTP 401".into(), HINT_TOKEN),
                Ok((404 | 503, _)) => {
                    bad("run-outbound", "endpoint disabled".into(), HINT_DISABLED)
                }
                Ok((code, body)) => bad(
                    "run-outbound",
                    format!("HTTP {code}: {}", short(&body)),
                    HINT_DOWN,
                ),
                Err(e) => bad("run-outbound", e, HINT_DOWN),
            }
        }
    });
    out.push(
        refused(
            &client,
            "run-outbound without token",
            &format!("{runner_url}?max=1"),
            None,
        )
        .await,
    );

    // The cron endpoint: Authorization: Bearer CRON_SECRET.
    let cron_url = format!("{base}/api/cron/run-outbound-jobs");
    out.push(match &args.cron_secret {
        None => bad(
            "cron",
            "CRON_SECRET is not set here (env or --cron-secret)".into(),
            HINT_CRON,
        ),
        Some(secret) => match get(&client, &cron_url, Some(secret)).await {
            Ok((200, body)) => match cron_shape(&body) {
                Ok(summary) => ok("cron", &summary),
                Err(why) => bad("cron", why, HINT_CRON),
            },
            Ok((401, _)) => bad("cron", "HTTP 401".into(), HINT_CRON),
            Ok((404 | 503, _)) => bad("cron", "endpoint disabled".into(), HINT_DISABLED),
            Ok((code, body)) => bad("cron", format!("HTTP {code}: {}", short(&body)), HINT_DOWN),
            Err(e) => bad("cron", e, HINT_DOWN),
        },
    });
    out.push(refused(&client, "cron without token", &cron_url, None).await);

    // Metrics.
    out.push(match get(&client, &format!("{base}/metrics"), None).await {
        Ok((200, body)) if body.contains("outbound_runner_build_info") => {
            ok("metrics", "outbound_runner_* metrics present")
        }
        Ok((200, _)) => bad(
            "metrics",
            "200, but no outbound_runner_build_info: another service answers here?".into(),
            HINT_DOWN,
        ),
        Ok((code, _)) => bad(
            "metrics",
            format!("HTTP {code} (metrics.listen may be a separate address)"),
            HINT_DOWN,
        ),
        Err(e) => bad("metrics", e, HINT_DOWN),
    });
    out
}

/// Prints the lines and returns the exit code.
pub fn report(outcomes: &[Outcome]) -> u8 {
    for o in outcomes {
        let mark = if o.ok { "✓" } else { "✗" };
        println!("{mark} {:<26} {}", o.name, o.detail);
        if let (false, Some(hint)) = (o.ok, o.hint) {
            println!("    hint: {hint}");
        }
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if failed == 0 {
        println!("all {} checks passed", outcomes.len());
        crate::exit::OK
    } else {
        println!("{failed} of {} checks failed", outcomes.len());
        crate::exit::CHECK_FAILED
    }
}

fn ok(name: &'static str, detail: &str) -> Outcome {
    Outcome {
        name,
        ok: true,
        detail: detail.to_string(),
        hint: None,
    }
}

fn bad(name: &'static str, detail: String, hint: &'static str) -> Outcome {
    Outcome {
        name,
        ok: false,
        detail,
        hint: Some(hint),
    }
}

/// A call without credentials must be refused (401), or answer "disabled" (404/503).
async fn refused(
    client: &reqwest::Client,
    name: &'static str,
    url: &str,
    bearer: Option<&str>,
) -> Outcome {
    match get(client, url, bearer).await {
        Ok((401, body)) if body.contains("unauthorized") => ok(name, "401 as expected"),
        Ok((401, body)) => bad(
            name,
            format!("401 with an unexpected body: {}", short(&body)),
            HINT_OPEN,
        ),
        Ok((404 | 503, _)) => ok(name, "endpoint disabled (no token set on the runner)"),
        Ok((code, _)) => bad(name, format!("HTTP {code} without a token"), HINT_OPEN),
        Err(e) => bad(name, e, HINT_DOWN),
    }
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), String> {
    let mut req = client.get(url);
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    // Errors from reqwest name the URL; ours may carry a token in its query, so say less.
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "connection refused or unreachable".to_string()
        } else {
            "request failed".to_string()
        }
    })?;
    let code = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Ok((code, body))
}

/// `{"ok":true,"processed":N,"failed":M,"jobIds":{"processed":[…],"failed":[…]}}`
pub fn runner_shape(body: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(body).map_err(|_| format!("not JSON: {}", short(body)))?;
    let processed = v["processed"].as_u64();
    let failed = v["failed"].as_u64();
    let lists = v["jobIds"]["processed"].is_array() && v["jobIds"]["failed"].is_array();
    match (v["ok"].as_bool(), processed, failed, lists) {
        (Some(true), Some(p), Some(f), true) => Ok(format!("200, processed={p} failed={f}")),
        _ => Err(format!("unexpected JSON shape: {}", short(body))),
    }
}

/// `{"ok":true,"message":"Job runner triggered","jobRunnerResult":{"ok":true,"processed":N,"failed":M}}`
pub fn cron_shape(body: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(body).map_err(|_| format!("not JSON: {}", short(body)))?;
    let r = &v["jobRunnerResult"];
    match (
        v["ok"].as_bool(),
        v["message"].as_str(),
        r["ok"].as_bool(),
        r["processed"].as_u64(),
        r["failed"].as_u64(),
    ) {
        (Some(true), Some("Job runner triggered"), Some(true), Some(p), Some(f)) => {
            Ok(format!("200, processed={p} failed={f}"))
        }
        _ => Err(format!("unexpected JSON shape: {}", short(body))),
    }
}

fn normalize(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_string()
    } else {
        format!("https://{url}")
    }
}

fn short(body: &str) -> String {
    let one_line = body.replace(['\n', '\r'], " ");
    if one_line.chars().count() > 120 {
        one_line.chars().take(119).collect::<String>() + "…"
    } else {
        one_line
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(
            runner_shape(
                r#"{"ok":true,"processed":0,"failed":0,"jobIds":{"processed":[],"failed":[]}}"#
            )
            .is_ok()
        );
        assert!(runner_shape(r#"{"ok":true,"processed":0,"failed":0}"#).is_err());
        assert!(cron_shape(r#"{"ok":true,"message":"Job runner triggered","jobRunnerResult":{"ok":true,"processed":1,"failed":0}}"#).is_ok());
        assert!(cron_shape(r#"{"ok":true,"message":"triggered","jobRunnerResult":{"ok":true,"processed":1,"failed":0}}"#).is_err());
        assert!(cron_shape("<html>").is_err());
        assert_eq!(normalize("example.com/"), "https://example.com");
        assert_eq!(normalize("http://localhost:8080"), "http://localhost:8080");
    }
}
