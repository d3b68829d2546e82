//! Every configuration key, once: its name, its default (as `config/default.toml` writes it,
//! without quotes), whether SIGHUP applies it or it needs a restart, whether it is a secret, and
//! one line of doc. Tests check that `config/default.toml`, the README's configuration table,
//! `check-config`'s listing and the reload check (`app::needs_restart`) agree with it. A new key
//! needs one row here (and its place in those files: the tests say which is missing).

/// When a changed value takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// On SIGHUP (the README's reload column: `yes`).
    Reload,
    /// Only after a restart (the README's reload column: `restart`).
    Restart,
}
use Apply::{Reload, Restart};

/// One configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// `section.key`.
    pub name: &'static str,
    /// The default as text (`""` for none).
    pub default: &'static str,
    pub apply: Apply,
    /// Masked in every output (`check-config` prints `***`).
    pub secret: bool,
    pub doc: &'static str,
}

const fn key(
    name: &'static str,
    default: &'static str,
    apply: Apply,
    secret: bool,
    doc: &'static str,
) -> Key {
    Key {
        name,
        default,
        apply,
        secret,
        doc,
    }
}

/// Every key, in the order of `config/default.toml`.
pub const KEYS: &[Key] = &[
    key(
        "database.url",
        "",
        Restart,
        true,
        "PostgreSQL URL, secret (env `DATABASE_URL`)",
    ),
    key(
        "database.url_file",
        "",
        Restart,
        false,
        "file holding `database.url`",
    ),
    key(
        "database.pooler",
        "auto",
        Restart,
        false,
        "`url` goes through a transaction-mode pooler (PgBouncer, Supabase's port 6543, Neon's `-pooler` host)",
    ),
    key(
        "database.direct_url",
        "",
        Restart,
        true,
        "a direct (non-pooler) connection for LISTEN and the migrations' lock, secret (env `DIRECT_URL`, Prisma's `directUrl`)",
    ),
    key(
        "database.direct_url_file",
        "",
        Restart,
        false,
        "file holding `database.direct_url`",
    ),
    key(
        "database.listen_url",
        "",
        Restart,
        true,
        "the old name of `database.direct_url`, still accepted",
    ),
    key(
        "database.listen_url_file",
        "",
        Restart,
        false,
        "file holding `database.listen_url`",
    ),
    key(
        "database.max_connections",
        "0",
        Restart,
        false,
        "the process's connection budget, LISTEN included (the pool gets one less); 0 means 8",
    ),
    key(
        "database.connect_timeout",
        "5s",
        Restart,
        false,
        "wait for a connection before a query fails",
    ),
    key(
        "database.migrate",
        "true",
        Restart,
        false,
        "apply migrations at start",
    ),
    key(
        "database.embedded_dir",
        "",
        Restart,
        false,
        "the embedded server's data; empty",
    ),
    key(
        "runner.workers",
        "0",
        Reload,
        false,
        "jobs in flight at once; 0",
    ),
    key(
        "runner.max_in_flight",
        "1000",
        Reload,
        false,
        "the most jobs in flight when `runner.workers = 0`",
    ),
    key(
        "runner.batch",
        "64",
        Reload,
        false,
        "most jobs per claim statement",
    ),
    key(
        "runner.poll_interval",
        "30s",
        Reload,
        false,
        "backstop pass when no notification arrives",
    ),
    key(
        "runner.pooler_poll_interval",
        "1s",
        Reload,
        false,
        "behind a transaction-mode pooler with no `database.direct_url` (no LISTEN)",
    ),
    key(
        "runner.lease",
        "60s",
        Reload,
        false,
        "claim lease, extended while a job runs; expired leases are rescued",
    ),
    key(
        "runner.rescue_interval",
        "15s",
        Reload,
        false,
        "how often expired leases are looked for",
    ),
    key(
        "runner.job_timeout",
        "120s",
        Reload,
        false,
        "an attempt running longer is abandoned and retried",
    ),
    key(
        "runner.drain_timeout",
        "20s",
        Reload,
        false,
        "on SIGTERM, how long in-flight jobs may finish before their claims are released",
    ),
    key(
        "runner.heartbeat",
        "1s",
        Restart,
        false,
        "the dispatcher's liveness tick (watchdog)",
    ),
    key(
        "runner.retention",
        "7days",
        Reload,
        false,
        "finished jobs older than this are deleted (`0s`",
    ),
    key(
        "runner.prune_interval",
        "10m",
        Reload,
        false,
        "how often the pruner runs",
    ),
    key(
        "retry.max_attempts",
        "5",
        Reload,
        false,
        "attempts when the row sets no `\"maxAttempts\"`",
    ),
    key("retry.base", "2s", Reload, false, "backoff after attempt n"),
    key("retry.cap", "10m", Reload, false, "the backoff ceiling"),
    key(
        "delivery.mode",
        "sandbox",
        Restart,
        false,
        "`live` sends through the Cloud API; `sandbox` logs and records a fake wamid",
    ),
    key(
        "delivery.on_unknown",
        "fail",
        Reload,
        false,
        "a send with an unknown outcome",
    ),
    key(
        "orchestrator.url",
        "",
        Reload,
        false,
        "composes replies for payloads with `input`",
    ),
    key(
        "orchestrator.token",
        "",
        Reload,
        true,
        "bearer token for the orchestrator, secret",
    ),
    key(
        "orchestrator.token_file",
        "",
        Reload,
        false,
        "file holding `orchestrator.token`",
    ),
    key(
        "orchestrator.timeout",
        "20s",
        Reload,
        false,
        "per orchestrator call",
    ),
    key(
        "whatsapp.api_base",
        "https://graph.facebook.com",
        Reload,
        false,
        "Cloud API base URL",
    ),
    key(
        "whatsapp.api_version",
        "v21.0",
        Reload,
        false,
        "Graph API version",
    ),
    key(
        "whatsapp.phone_number_id",
        "",
        Reload,
        false,
        "the sending number's id; required in `live` mode",
    ),
    key(
        "whatsapp.access_token",
        "",
        Reload,
        true,
        "Cloud API token, secret; required in `live` mode",
    ),
    key(
        "whatsapp.access_token_file",
        "",
        Reload,
        false,
        "file holding `whatsapp.access_token`",
    ),
    key(
        "whatsapp.timeout",
        "15s",
        Reload,
        false,
        "per Cloud API request",
    ),
    key(
        "whatsapp.rate_per_second",
        "80",
        Reload,
        false,
        "messages per second for the number",
    ),
    key(
        "whatsapp.pair_interval",
        "6s",
        Reload,
        false,
        "minimum spacing between messages to one recipient",
    ),
    key(
        "whatsapp.halt_cooldown",
        "5m",
        Reload,
        false,
        "pause after a halt-class error before sending again",
    ),
    key(
        "whatsapp.app_secret",
        "",
        Reload,
        true,
        "the app secret Meta signs status webhooks with, secret (env `WHATSAPP_APP_SECRET`); empty",
    ),
    key(
        "whatsapp.app_secret_file",
        "",
        Reload,
        false,
        "file holding `whatsapp.app_secret`",
    ),
    key(
        "whatsapp.verify_token",
        "",
        Reload,
        true,
        "the token of Meta's webhook verification (env `WHATSAPP_VERIFY_TOKEN`)",
    ),
    key(
        "whatsapp.webhook_forward_url",
        "",
        Reload,
        false,
        "pass every webhook POST on, unchanged, to the app's webhook (docs/http.md)",
    ),
    key(
        "whatsapp.tier_limit",
        "0",
        Reload,
        false,
        "hold business-initiated (template) sends to new recipients once this many unique recipients got one in 24 h (Meta's messaging limit); 0: none (docs/numbers.md)",
    ),
    key(
        "whatsapp.business_id",
        "",
        Reload,
        false,
        "the business portfolio of the number: numbers naming the same one share one tier count; empty: its own",
    ),
    key(
        "whatsapp.numbers",
        "[]",
        Reload,
        false,
        "more sending numbers, `[[whatsapp.numbers]]` tables, each with its own token, rate, pair interval, tier limit and business (docs/numbers.md)",
    ),
    key(
        "http.listen",
        "127.0.0.1:8080",
        Restart,
        false,
        "trigger, health and metrics endpoints; empty",
    ),
    key(
        "http.job_runner_token",
        "",
        Reload,
        true,
        "secret for `/api/jobs/run-outbound` (env `JOB_RUNNER_TOKEN`); empty disables it",
    ),
    key(
        "http.job_runner_token_file",
        "",
        Reload,
        false,
        "file holding it",
    ),
    key(
        "http.cron_secret",
        "",
        Reload,
        true,
        "secret for `/api/cron/run-outbound-jobs` (env `CRON_SECRET`); empty disables it",
    ),
    key(
        "http.cron_secret_file",
        "",
        Reload,
        false,
        "file holding it",
    ),
    key(
        "http.admin_token",
        "",
        Reload,
        true,
        "secret for the admin API `/api/admin/jobs…` (env `ADMIN_TOKEN`), bearer only; empty disables it",
    ),
    key(
        "http.admin_token_file",
        "",
        Reload,
        false,
        "file holding it",
    ),
    key(
        "http.max_per_request",
        "1000",
        Reload,
        false,
        "cap on a trigger's `max`",
    ),
    key(
        "http.pass_timeout",
        "60s",
        Reload,
        false,
        "how long a trigger request waits for its pass (then 504; the claimed jobs still finish)",
    ),
    key(
        "http.max_concurrent_passes",
        "4",
        Reload,
        false,
        "trigger passes running at once; one more is answered 429",
    ),
    key(
        "metrics.listen",
        "",
        Restart,
        false,
        "a separate address for `/metrics`; empty",
    ),
    key(
        "log.level",
        "info",
        Reload,
        false,
        "level or tracing filter; `RUST_LOG` overrides",
    ),
    key("log.format", "text", Restart, false, "`text` or `json`"),
];

/// The key named `name`.
pub fn get(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW_KEY: &str = "a key was added or removed: it needs one row in src/config/keys.rs \
                           (name, default, reload or restart, secret, doc), one line in \
                           config/default.toml and one row in the README's configuration table";

    /// `section.key = value` of config/default.toml, the value without its quotes.
    fn default_toml() -> Vec<(String, String)> {
        let mut section = String::new();
        let mut out = Vec::new();
        for line in super::super::DEFAULTS_TOML.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if !line.starts_with('#') && line.contains(" = ") {
                let (k, v) = line.split_once(" = ").unwrap();
                let v = v.split(" #").next().unwrap().trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                out.push((format!("{section}.{k}"), v.to_string()));
            }
        }
        out
    }

    /// (key, default, reload column) of the README's configuration table.
    fn readme_table() -> Vec<(String, String, String)> {
        let readme = include_str!("../../README.md");
        let mut rows = Vec::new();
        let mut on = false;
        for line in readme.lines() {
            if line.starts_with("| key | default | reload | meaning |") {
                on = true;
            } else if on && line.starts_with("|---") {
            } else if on && line.starts_with("| `") {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                let default = match cells[1] {
                    "(empty)" => "",
                    d => d,
                };
                rows.push((
                    cells[0].trim_matches('`').to_string(),
                    default.replace('`', ""),
                    cells[2].to_string(),
                ));
            } else if on {
                break;
            }
        }
        rows
    }

    #[test]
    fn default_toml_lists_exactly_the_table_with_its_defaults() {
        let toml = default_toml();
        let names: Vec<&str> = toml.iter().map(|(k, _)| k.as_str()).collect();
        let table: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(
            names, table,
            "config/default.toml vs src/config/keys.rs: {NEW_KEY}"
        );
        for (k, v) in &toml {
            assert_eq!(
                v.as_str(),
                get(k).unwrap().default,
                "the default of {k}: config/default.toml vs src/config/keys.rs"
            );
        }
    }

    #[test]
    fn the_readme_table_lists_exactly_the_table_with_its_defaults_and_reload_column() {
        let rows = readme_table();
        let names: Vec<&str> = rows.iter().map(|(k, _, _)| k.as_str()).collect();
        let table: Vec<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(
            names, table,
            "the README's table vs src/config/keys.rs: {NEW_KEY}"
        );
        for (k, default, reload) in &rows {
            let key = get(k).unwrap();
            assert_eq!(
                default, key.default,
                "the default of {k}: README vs src/config/keys.rs"
            );
            let apply = match reload.as_str() {
                "yes" => Apply::Reload,
                "restart" => Apply::Restart,
                other => panic!("{k}: reload column {other:?} is neither yes nor restart"),
            };
            assert_eq!(
                apply, key.apply,
                "the reload column of {k}: README vs src/config/keys.rs"
            );
        }
    }
}
