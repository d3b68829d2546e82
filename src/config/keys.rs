//! Every configuration key, once: its name, its default (as `config/default.toml` writes it,
//! without quotes), whether SIGHUP applies it or it needs a restart, one line of doc, where its
//! value lives in [`Settings`], and, for a secret, whether it is masked only or also read from a
//! `*_file` key and a systemd credential.
//!
//! Derived from this table: `check-config`'s listing ([`effective`]), the reload check
//! (`app::needs_restart`: the `Restart` keys whose value changed) and the secret slots
//! (src/config/secrets.rs). Tested against it: `config/default.toml` and the README's
//! configuration table. A new key needs one row here (and its line in those two files: the tests
//! say which is missing).

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::{NumberSettings, Settings, redact_url_or_empty};

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
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `section.key`.
    pub name: &'static str,
    /// The default as text (`""` for none).
    pub default: &'static str,
    pub apply: Apply,
    /// Masked in every output (`check-config` prints `***`).
    pub secret: bool,
    /// A secret also read from its `*_file` key or a systemd credential.
    pub slot: Option<Slot>,
    pub doc: &'static str,
    /// The effective value, from the loaded settings.
    pub value: fn(&Settings) -> Value<'_>,
}

/// Where a secret is read into when it is given as `<key>_file` or as a systemd credential
/// (src/config/secrets.rs; docs/operations.md, "systemd credentials").
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// The credential's name under `$CREDENTIALS_DIRECTORY`.
    pub credential: &'static str,
    pub value: fn(&mut Settings) -> &mut Option<SecretString>,
}

const fn key(
    name: &'static str,
    default: &'static str,
    apply: Apply,
    doc: &'static str,
    value: fn(&Settings) -> Value<'_>,
) -> Key {
    Key {
        name,
        default,
        apply,
        secret: false,
        slot: None,
        doc,
        value,
    }
}

impl Key {
    /// A secret given inline only.
    const fn masked(self) -> Key {
        Key {
            secret: true,
            ..self
        }
    }

    /// A secret also read from `<name>_file` or the systemd credential `credential`.
    const fn secret(
        self,
        credential: &'static str,
        value: fn(&mut Settings) -> &mut Option<SecretString>,
    ) -> Key {
        Key {
            secret: true,
            slot: Some(Slot { credential, value }),
            ..self
        }
    }

    /// This key's value in `s`.
    pub fn value<'a>(&self, s: &'a Settings) -> Value<'a> {
        (self.value)(s)
    }

    /// `(key, value)` lines as `check-config` prints them; a secret (by this table) shows `***`
    /// when set, never its value.
    pub fn lines(&self, s: &Settings) -> Vec<(String, String)> {
        let mut out = self.value(s).lines(self.name);
        if self.secret {
            for (_, v) in &mut out {
                if v != EMPTY {
                    *v = MASK.into();
                }
            }
        }
        out
    }
}

const EMPTY: &str = "\"\"";
/// What `check-config` shows for a secret that is set.
pub const MASK: &str = "***";

/// A key's effective value: what `check-config` prints and the reload check compares.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Printed quoted.
    Text(&'a str),
    /// Printed quoted, its password and query masked ([`redact_url_or_empty`]).
    Url(&'a str),
    Number(u32),
    Bool(bool),
    /// Printed as `config/default.toml` writes it (`"7days"`).
    Duration(Duration),
    /// `None`: not set.
    Path(Option<&'a Path>),
    /// Printed `***` when set; compared in constant time.
    Secret(Option<&'a SecretString>),
    /// `[[whatsapp.numbers]]`: printed one line per key of each table, `[]` when none.
    Numbers(&'a [NumberSettings]),
}

impl Value<'_> {
    /// `(key, value)` lines under `name`: one, except for [`Value::Numbers`].
    pub fn lines(&self, name: &str) -> Vec<(String, String)> {
        let q = |v: &str| format!("{v:?}");
        let one = |v: String| vec![(name.to_string(), v)];
        match *self {
            Value::Text(v) => one(q(v)),
            Value::Url(v) => one(q(&redact_url_or_empty(v))),
            Value::Number(n) => one(n.to_string()),
            Value::Bool(b) => one(b.to_string()),
            Value::Duration(d) => one(format!("\"{}\"", humantime::format_duration(d))),
            Value::Path(p) => one(q(&p.map(|p| p.display().to_string()).unwrap_or_default())),
            Value::Secret(Some(_)) => one(MASK.into()),
            Value::Secret(None) => one(EMPTY.into()),
            Value::Numbers([]) => one("[]".into()),
            Value::Numbers(numbers) => {
                let mut out = Vec::new();
                for (i, n) in numbers.iter().enumerate() {
                    let mut push = |key: &str, v: Value<'_>| {
                        out.extend(v.lines(&format!("{name}[{i}].{key}")));
                    };
                    push("phone_number_id", Value::Text(&n.phone_number_id));
                    push("access_token", Value::Secret(n.access_token.as_ref()));
                    if n.access_token_file.is_some() {
                        push(
                            "access_token_file",
                            Value::Path(n.access_token_file.as_deref()),
                        );
                    }
                    if let Some(rate) = n.rate_per_second {
                        push("rate_per_second", Value::Number(rate));
                    }
                    if let Some(pair) = n.pair_interval {
                        push("pair_interval", Value::Duration(pair));
                    }
                    if let Some(limit) = n.tier_limit {
                        push("tier_limit", Value::Number(limit));
                    }
                    if let Some(b) = &n.business_id {
                        push("business_id", Value::Text(b));
                    }
                }
                out
            }
        }
    }
}

impl PartialEq for Value<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (*self, *other) {
            (Text(a), Text(b)) | (Url(a), Url(b)) => a == b,
            (Number(a), Number(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (Duration(a), Duration(b)) => a == b,
            (Path(a), Path(b)) => a == b,
            (Secret(a), Secret(b)) => same_secret(a, b),
            (Numbers(a), Numbers(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(a, b)| {
                        a.phone_number_id == b.phone_number_id
                            && same_secret(a.access_token.as_ref(), b.access_token.as_ref())
                            && a.access_token_file == b.access_token_file
                            && a.rate_per_second == b.rate_per_second
                            && a.pair_interval == b.pair_interval
                    })
            }
            _ => false,
        }
    }
}

fn same_secret(a: Option<&SecretString>, b: Option<&SecretString>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a
            .expose_secret()
            .as_bytes()
            .ct_eq(b.expose_secret().as_bytes())
            .into(),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// Every key with its effective value, in the table's order, secrets masked: `check-config`'s
/// listing.
pub fn effective(s: &Settings) -> Vec<(String, String)> {
    KEYS.iter().flat_map(|k| k.lines(s)).collect()
}

/// The keys marked `Restart` whose value differs between `old` and `new`. A `*_file` key is left
/// out: what it holds is compared through the key it fills.
pub fn restart_needed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    KEYS.iter()
        .filter(|k| k.apply == Restart && !k.name.ends_with("_file"))
        .filter(|k| k.value(old) != k.value(new))
        .map(|k| k.name)
        .collect()
}

/// Every key, in the order of `config/default.toml`.
pub const KEYS: &[Key] = &[
    key(
        "database.url",
        "",
        Restart,
        "PostgreSQL URL, secret (env `DATABASE_URL`)",
        |s| Value::Secret(s.database.url.as_ref()),
    )
    .secret("database_url", |s| &mut s.database.url),
    key(
        "database.url_file",
        "",
        Restart,
        "file holding `database.url`",
        |s| Value::Path(s.database.url_file.as_deref()),
    ),
    key(
        "database.pooler",
        "auto",
        Restart,
        "`url` goes through a transaction-mode pooler (PgBouncer, Supabase's port 6543, Neon's `-pooler` host)",
        |s| Value::Text(s.database.pooler.name()),
    ),
    key(
        "database.direct_url",
        "",
        Restart,
        "a direct (non-pooler) connection for LISTEN and the migrations' lock, secret (env `DIRECT_URL`, Prisma's `directUrl`)",
        |s| Value::Secret(s.database.direct_url.as_ref()),
    )
    .secret("database_direct_url", |s| &mut s.database.direct_url),
    key(
        "database.direct_url_file",
        "",
        Restart,
        "file holding `database.direct_url`",
        |s| Value::Path(s.database.direct_url_file.as_deref()),
    ),
    key(
        "database.listen_url",
        "",
        Restart,
        "the old name of `database.direct_url`, still accepted",
        |s| Value::Secret(s.database.listen_url.as_ref()),
    )
    .secret("database_listen_url", |s| &mut s.database.listen_url),
    key(
        "database.listen_url_file",
        "",
        Restart,
        "file holding `database.listen_url`",
        |s| Value::Path(s.database.listen_url_file.as_deref()),
    ),
    key(
        "database.max_connections",
        "0",
        Restart,
        "the process's connection budget, LISTEN included (the pool gets one less); 0 means 8",
        |s| Value::Number(s.database.max_connections),
    ),
    key(
        "database.connect_timeout",
        "5s",
        Restart,
        "wait for a connection before a query fails",
        |s| Value::Duration(s.database.connect_timeout),
    ),
    key(
        "database.migrate",
        "true",
        Restart,
        "apply migrations at start",
        |s| Value::Bool(s.database.migrate),
    ),
    key(
        "database.embedded_dir",
        "",
        Restart,
        "the embedded server's data; empty",
        |s| Value::Path(s.database.embedded_dir.as_deref()),
    ),
    key(
        "runner.workers",
        "0",
        Reload,
        "jobs in flight at once; 0",
        |s| Value::Number(s.runner.workers),
    ),
    key(
        "runner.max_in_flight",
        "1000",
        Reload,
        "the most jobs in flight when `runner.workers = 0`",
        |s| Value::Number(s.runner.max_in_flight),
    ),
    key(
        "runner.batch",
        "64",
        Reload,
        "most jobs per claim statement",
        |s| Value::Number(s.runner.batch),
    ),
    key(
        "runner.poll_interval",
        "30s",
        Reload,
        "backstop pass when no notification arrives",
        |s| Value::Duration(s.runner.poll_interval),
    ),
    key(
        "runner.pooler_poll_interval",
        "1s",
        Reload,
        "behind a transaction-mode pooler with no `database.direct_url` (no LISTEN)",
        |s| Value::Duration(s.runner.pooler_poll_interval),
    ),
    key(
        "runner.lease",
        "60s",
        Reload,
        "claim lease, extended while a job runs; expired leases are rescued",
        |s| Value::Duration(s.runner.lease),
    ),
    key(
        "runner.rescue_interval",
        "15s",
        Reload,
        "how often expired leases are looked for",
        |s| Value::Duration(s.runner.rescue_interval),
    ),
    key(
        "runner.foreign_running_grace",
        "15m",
        Reload,
        "a `running` job with no lease of ours (the app's own runner's, during the switch) is rescued only once its `\"updatedAt\"` is older than this",
        |s| Value::Duration(s.runner.foreign_running_grace),
    ),
    key(
        "runner.job_timeout",
        "120s",
        Reload,
        "an attempt running longer is abandoned and retried",
        |s| Value::Duration(s.runner.job_timeout),
    ),
    key(
        "runner.drain_timeout",
        "20s",
        Reload,
        "on SIGTERM, how long in-flight jobs may finish before their claims are released",
        |s| Value::Duration(s.runner.drain_timeout),
    ),
    key(
        "runner.heartbeat",
        "1s",
        Restart,
        "the dispatcher's liveness tick (watchdog)",
        |s| Value::Duration(s.runner.heartbeat),
    ),
    key(
        "runner.retention",
        "7days",
        Reload,
        "finished jobs older than this are deleted (`0s`",
        |s| Value::Duration(s.runner.retention),
    ),
    key(
        "runner.prune_interval",
        "10m",
        Reload,
        "how often the pruner runs",
        |s| Value::Duration(s.runner.prune_interval),
    ),
    key(
        "retry.max_attempts",
        "5",
        Reload,
        "attempts when the row sets no `\"maxAttempts\"`",
        |s| Value::Number(s.retry.max_attempts),
    ),
    key(
        "retry.base",
        "2s",
        Reload,
        "backoff after attempt n",
        |s| Value::Duration(s.retry.base),
    ),
    key(
        "retry.cap",
        "10m",
        Reload,
        "the backoff ceiling",
        |s| Value::Duration(s.retry.cap),
    ),
    key(
        "delivery.mode",
        "sandbox",
        Restart,
        "`live` sends through the Cloud API; `sandbox` logs and records a fake wamid",
        |s| Value::Text(s.delivery.mode.name()),
    ),
    key(
        "delivery.on_unknown",
        "fail",
        Reload,
        "a send with an unknown outcome",
        |s| Value::Text(s.delivery.on_unknown.name()),
    ),
    key(
        "orchestrator.url",
        "",
        Reload,
        "composes replies for payloads with `input`",
        |s| Value::Url(&s.orchestrator.url),
    ),
    key(
        "orchestrator.token",
        "",
        Reload,
        "bearer token for the orchestrator, secret",
        |s| Value::Secret(s.orchestrator.token.as_ref()),
    )
    .secret("orchestrator_token", |s| &mut s.orchestrator.token),
    key(
        "orchestrator.token_file",
        "",
        Reload,
        "file holding `orchestrator.token`",
        |s| Value::Path(s.orchestrator.token_file.as_deref()),
    ),
    key(
        "orchestrator.timeout",
        "20s",
        Reload,
        "per orchestrator call",
        |s| Value::Duration(s.orchestrator.timeout),
    ),
    key(
        "whatsapp.api_base",
        "https://graph.facebook.com",
        Reload,
        "Cloud API base URL",
        |s| Value::Text(&s.whatsapp.api_base),
    ),
    key(
        "whatsapp.api_version",
        "v21.0",
        Reload,
        "Graph API version",
        |s| Value::Text(&s.whatsapp.api_version),
    ),
    key(
        "whatsapp.phone_number_id",
        "",
        Reload,
        "the sending number's id; required in `live` mode",
        |s| Value::Text(&s.whatsapp.phone_number_id),
    ),
    key(
        "whatsapp.access_token",
        "",
        Reload,
        "Cloud API token, secret; required in `live` mode",
        |s| Value::Secret(s.whatsapp.access_token.as_ref()),
    )
    .secret("whatsapp_access_token", |s| &mut s.whatsapp.access_token),
    key(
        "whatsapp.access_token_file",
        "",
        Reload,
        "file holding `whatsapp.access_token`",
        |s| Value::Path(s.whatsapp.access_token_file.as_deref()),
    ),
    key(
        "whatsapp.timeout",
        "15s",
        Reload,
        "per Cloud API request",
        |s| Value::Duration(s.whatsapp.timeout),
    ),
    key(
        "whatsapp.rate_per_second",
        "80",
        Reload,
        "messages per second for the number",
        |s| Value::Number(s.whatsapp.rate_per_second),
    ),
    key(
        "whatsapp.pair_interval",
        "6s",
        Reload,
        "minimum spacing between messages to one recipient",
        |s| Value::Duration(s.whatsapp.pair_interval),
    ),
    key(
        "whatsapp.halt_cooldown",
        "5m",
        Reload,
        "pause after a halt-class error before sending again",
        |s| Value::Duration(s.whatsapp.halt_cooldown),
    ),
    key(
        "whatsapp.app_secret",
        "",
        Reload,
        "the app secret Meta signs status webhooks with, secret (env `WHATSAPP_APP_SECRET`); empty",
        |s| Value::Secret(s.whatsapp.app_secret.as_ref()),
    )
    .secret("whatsapp_app_secret", |s| &mut s.whatsapp.app_secret),
    key(
        "whatsapp.app_secret_file",
        "",
        Reload,
        "file holding `whatsapp.app_secret`",
        |s| Value::Path(s.whatsapp.app_secret_file.as_deref()),
    ),
    key(
        "whatsapp.verify_token",
        "",
        Reload,
        "the token of Meta's webhook verification (env `WHATSAPP_VERIFY_TOKEN`)",
        |s| Value::Secret(s.whatsapp.verify_token.as_ref()),
    )
    .masked(),
    key(
        "whatsapp.webhook_forward_url",
        "",
        Reload,
        "pass every webhook POST on, unchanged, to the app's webhook (docs/http.md)",
        |s| Value::Url(&s.whatsapp.webhook_forward_url),
    ),
    key(
        "whatsapp.webhook_forward_timeout",
        "10s",
        Reload,
        "how long the app behind `webhook_forward_url` has to answer (at most 1m)",
        |s| Value::Duration(s.whatsapp.webhook_forward_timeout),
    ),
    key(
        "whatsapp.status_retention",
        "24h",
        Reload,
        "how long a status that matches no message yet is kept before it is dropped and counted (at least 10m)",
        |s| Value::Duration(s.whatsapp.status_retention),
    ),
    key(
        "whatsapp.tier_limit",
        "0",
        Reload,
        "hold business-initiated (template) sends to new recipients once this many unique recipients got one in 24 h (Meta's messaging limit); 0: none (docs/numbers.md)",
        |s| Value::Number(s.whatsapp.tier_limit),
    ),
    key(
        "whatsapp.business_id",
        "",
        Reload,
        "the business portfolio of the number: numbers naming the same one share one tier count; empty: its own",
        |s| Value::Text(&s.whatsapp.business_id),
    ),
    key(
        "whatsapp.numbers",
        "[]",
        Reload,
        "more sending numbers, `[[whatsapp.numbers]]` tables, each with its own token, rate, pair interval, tier limit and business (docs/numbers.md)",
        |s| Value::Numbers(&s.whatsapp.numbers),
    ),
    key(
        "http.listen",
        "127.0.0.1:8080",
        Restart,
        "trigger, health and metrics endpoints; empty",
        |s| Value::Text(&s.http.listen),
    ),
    key(
        "http.job_runner_token",
        "",
        Reload,
        "secret for `/api/jobs/run-outbound` (env `JOB_RUNNER_TOKEN`); empty disables it",
        |s| Value::Secret(s.http.job_runner_token.as_ref()),
    )
    .secret("job_runner_token", |s| &mut s.http.job_runner_token),
    key(
        "http.job_runner_token_file",
        "",
        Reload,
        "file holding it",
        |s| Value::Path(s.http.job_runner_token_file.as_deref()),
    ),
    key(
        "http.cron_secret",
        "",
        Reload,
        "secret for `/api/cron/run-outbound-jobs` (env `CRON_SECRET`); empty disables it",
        |s| Value::Secret(s.http.cron_secret.as_ref()),
    )
    .secret("cron_secret", |s| &mut s.http.cron_secret),
    key(
        "http.cron_secret_file",
        "",
        Reload,
        "file holding it",
        |s| Value::Path(s.http.cron_secret_file.as_deref()),
    ),
    key(
        "http.admin_token",
        "",
        Reload,
        "secret for the admin API `/api/admin/jobs…` (bearer only) and the web console `/console/` (env `ADMIN_TOKEN`); empty disables both",
        |s| Value::Secret(s.http.admin_token.as_ref()),
    )
    .secret("admin_token", |s| &mut s.http.admin_token),
    key(
        "http.admin_token_file",
        "",
        Reload,
        "file holding it",
        |s| Value::Path(s.http.admin_token_file.as_deref()),
    ),
    key(
        "http.max_per_request",
        "1000",
        Reload,
        "cap on a trigger's `max`",
        |s| Value::Number(s.http.max_per_request),
    ),
    key(
        "http.pass_timeout",
        "60s",
        Reload,
        "how long a trigger request waits for its pass (then 504; the claimed jobs still finish)",
        |s| Value::Duration(s.http.pass_timeout),
    ),
    key(
        "http.max_concurrent_passes",
        "4",
        Reload,
        "trigger passes running at once; one more is answered 429",
        |s| Value::Number(s.http.max_concurrent_passes),
    ),
    key(
        "http.request_timeout",
        "5s",
        Restart,
        "a request's headers must arrive within it, then its body within it of the headers (then 408 and the connection is closed); also how long an idle keep-alive connection stays open",
        |s| Value::Duration(s.http.request_timeout),
    ),
    key(
        "metrics.listen",
        "",
        Restart,
        "a separate address for `/metrics`; empty",
        |s| Value::Text(&s.metrics.listen),
    ),
    key(
        "log.level",
        "info",
        Reload,
        "level or tracing filter; `RUST_LOG` overrides",
        |s| Value::Text(&s.log.level),
    ),
    key(
        "log.format",
        "text",
        Restart,
        "`text` or `json`",
        |s| Value::Text(s.log.format.name()),
    ),
];

/// The key named `name`.
pub fn get(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The built-in defaults, deserialized (no secrets read, nothing validated).
    pub(crate) fn defaults() -> Settings {
        raw(None)
    }

    /// The defaults with only `name` set to another value of its type (written in a config file,
    /// so it goes through the same deserializing as a real one; secrets are not read and nothing
    /// is validated: a `*_file` holds a path, not a file).
    pub(crate) fn with_changed(name: &str) -> Settings {
        let key = get(name).unwrap_or_else(|| panic!("{name}: no such key"));
        let (section, field) = name.split_once('.').unwrap();
        let value = match key.value(&defaults()) {
            Value::Text(_) => match name {
                // Choice keys: another of their values.
                "database.pooler" => "\"none\"",
                "delivery.mode" => "\"live\"",
                "delivery.on_unknown" => "\"retry\"",
                "log.format" => "\"json\"",
                _ => "\"changed\"",
            }
            .to_string(),
            Value::Url(_) => "\"https://changed.example\"".into(),
            Value::Number(n) => (n + 3).to_string(),
            Value::Bool(b) => (!b).to_string(),
            Value::Duration(d) => format!(
                "\"{}\"",
                humantime::format_duration(d + Duration::from_secs(1))
            ),
            Value::Path(_) => "\"/changed\"".into(),
            Value::Secret(_) => "\"changed-secret\"".into(),
            Value::Numbers(_) => "[{ phone_number_id = \"123\" }]".into(),
        };
        raw(Some(format!("[{section}]\n{field} = {value}\n")))
    }

    fn raw(file: Option<String>) -> Settings {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = file.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "or-keys-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            path
        });
        let opts = crate::config::LoadOptions {
            config_path: path.clone(),
            skip_default_path: true,
            env: Default::default(),
        };
        let settings = crate::config::load::layered(&opts)
            .and_then(|raw| {
                raw.try_deserialize()
                    .map_err(|e| crate::config::load::config_crate_error(&e))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(path) = path {
            std::fs::remove_file(path).unwrap();
        }
        settings
    }

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

    /// `check-config` on the built-in defaults prints the table's defaults: each row reads a
    /// setting whose default is its own.
    #[test]
    fn check_config_shows_the_defaults_of_the_table() {
        let s = defaults();
        for key in KEYS {
            let lines = key.lines(&s);
            assert_eq!(lines.len(), 1, "{}", key.name);
            let (name, shown) = &lines[0];
            assert_eq!(name, key.name);
            let shown = shown.trim_matches('"');
            if let Value::Duration(d) = key.value(&s) {
                // Printed in humantime's own units (`60s` shows as `1m`).
                let default = humantime::parse_duration(key.default).unwrap();
                assert_eq!(d, default, "{name}: its value vs its default in keys.rs");
            } else {
                assert_eq!(
                    shown, key.default,
                    "{name}: shown vs its default in keys.rs"
                );
            }
        }
    }

    /// Each row reads its own setting: changing one key in a config file changes that row's
    /// value and no other. A row reading the wrong field (a copy-pasted accessor) fails here.
    #[test]
    fn every_row_reads_its_own_setting() {
        let base = defaults();
        for key in KEYS {
            let changed = with_changed(key.name);
            let differ: Vec<&str> = KEYS
                .iter()
                .filter(|k| k.value(&base) != k.value(&changed))
                .map(|k| k.name)
                .collect();
            assert_eq!(differ, [key.name], "changing {} in a file", key.name);
            // Masked exactly when the table says secret; the value never shown.
            for (name, shown) in key.lines(&changed) {
                assert_eq!(shown == MASK, key.secret, "{name} shown as {shown}");
                assert!(!shown.contains("changed-secret"), "{name} shown as {shown}");
            }
        }
    }

    /// Every secret slot fills the setting its row reads, has a `<key>_file` row holding a path,
    /// and keeps its documented credential name (docs/operations.md).
    #[test]
    fn secret_slots_fill_their_own_rows() {
        let mut credentials = Vec::new();
        for key in KEYS.iter().filter(|k| k.slot.is_some()) {
            let slot = key.slot.unwrap();
            assert!(key.secret, "{}: a slot is a secret", key.name);
            let mut s = defaults();
            *(slot.value)(&mut s) = Some("from-slot".into());
            let differ: Vec<&str> = KEYS
                .iter()
                .filter(|k| k.value(&s) != k.value(&defaults()))
                .map(|k| k.name)
                .collect();
            assert_eq!(
                differ,
                [key.name],
                "the slot of {} fills another row",
                key.name
            );
            let file = format!("{}_file", key.name);
            let changed = with_changed(&file);
            assert!(
                matches!(
                    get(&file).map(|f| f.value(&changed)),
                    Some(Value::Path(Some(_)))
                ),
                "{}: a slot needs a row {file} holding a path",
                key.name
            );
            credentials.push(slot.credential);
        }
        assert_eq!(
            credentials,
            [
                "database_url",
                "database_direct_url",
                "database_listen_url",
                "orchestrator_token",
                "whatsapp_access_token",
                "whatsapp_app_secret",
                "job_runner_token",
                "cron_secret",
                "admin_token",
            ],
            "systemd credential names are documented (docs/operations.md): renaming one breaks \
             installed systems"
        );
    }
}
