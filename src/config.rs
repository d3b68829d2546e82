//! Configuration: layered loading, secrets, validation.
//!
//! Layers, lowest first: the built-in defaults (`config/default.toml`, compiled in) → the config
//! file (`/etc/outbound-runner/config.toml` or `--config`) → the user's job-runner guide's environment names (README "Configuration")
//! (`DATABASE_URL`, `JOB_RUNNER_TOKEN`, `CRON_SECRET`) → `OUTBOUND_RUNNER__SECTION__KEY`.
//!
//! Every struct denies unknown fields, so a typo in a key is an error that names the key, never a
//! silently ignored setting. Secrets are [`SecretString`]s: their `Debug` prints a mask, and the
//! only way to read one is `expose_secret()`, which keeps every use greppable.

pub mod database_url;
pub mod keys;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

/// The file read when `--config` is not given (absent is fine; unreadable is an error).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outbound-runner/config.toml";
/// The built-in defaults: the documented reference of every key.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");
/// Prefix of the structured environment variables, e.g. `OUTBOUND_RUNNER__RUNNER__WORKERS`.
pub const ENV_PREFIX: &str = "OUTBOUND_RUNNER";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub runner: RunnerSettings,
    pub retry: RetrySettings,
    pub delivery: DeliverySettings,
    pub orchestrator: OrchestratorSettings,
    pub whatsapp: WhatsappSettings,
    pub http: HttpSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `None`: run on the embedded PostgreSQL.
    #[serde(deserialize_with = "secret")]
    pub url: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub url_file: Option<PathBuf>,
    /// Whether `url` goes through a transaction-mode pooler (docs/operations.md, "Poolers").
    pub pooler: PoolerMode,
    /// A direct (non-pooler) connection for what needs a session: LISTEN and the migrations'
    /// lock. Read it through [`Settings::direct_url`], which also honours `listen_url`.
    #[serde(deserialize_with = "secret")]
    pub direct_url: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub direct_url_file: Option<PathBuf>,
    /// The old name of `direct_url`, still accepted.
    #[serde(deserialize_with = "secret")]
    pub listen_url: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub listen_url_file: Option<PathBuf>,
    /// The process's connection budget, the LISTEN connection included: the pool gets one less.
    /// Independent of how many jobs run at once (a job holds no connection while it waits on
    /// HTTP). 0 means the default, [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub migrate: bool,
    #[serde(deserialize_with = "path")]
    pub embedded_dir: Option<PathBuf>,
}

/// `database.pooler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolerMode {
    /// A transaction-mode pooler when the URL says `pgbouncer=true` (as Prisma's do), else none.
    Auto,
    /// A direct connection (or a session-mode pooler).
    None,
    /// A transaction-mode pooler: PgBouncer, Supabase's pooler, Neon's `-pooler` host.
    Transaction,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerSettings {
    /// Jobs in flight at once. 0 (the default): sized by the work, see
    /// `runner::sizing` (docs/operations.md, "Connections"); a number pins it.
    pub workers: u32,
    /// The most jobs in flight when `workers` is 0.
    pub max_in_flight: u32,
    pub batch: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The poll that stands in for LISTEN behind a transaction-mode pooler with no direct URL.
    #[serde(with = "humantime_serde")]
    pub pooler_poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    #[serde(with = "humantime_serde")]
    pub rescue_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Zero keeps finished jobs forever.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    Live,
    Sandbox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknown {
    Fail,
    Retry,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    pub mode: DeliveryMode,
    pub on_unknown: OnUnknown,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrchestratorSettings {
    pub url: String,
    #[serde(deserialize_with = "secret")]
    pub token: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub token_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappSettings {
    pub api_base: String,
    pub api_version: String,
    pub phone_number_id: String,
    #[serde(deserialize_with = "secret")]
    pub access_token: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub access_token_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub rate_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub pair_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub halt_cooldown: Duration,
    /// The app secret Meta signs status webhooks with (`X-Hub-Signature-256`). `None` disables
    /// `/webhooks/whatsapp` (it answers 404).
    #[serde(deserialize_with = "secret")]
    pub app_secret: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub app_secret_file: Option<PathBuf>,
    /// The token of Meta's webhook verification (`hub.verify_token`).
    #[serde(deserialize_with = "secret")]
    pub verify_token: Option<SecretString>,
    /// Empty: none. Else every webhook POST is passed on, unchanged, to this URL (the app's own
    /// webhook), and Meta hears 200 only when the app answered 2xx.
    pub webhook_forward_url: String,
    /// Meta's messaging limit to stay under: business-initiated (template) sends to new
    /// recipients are held once this many unique recipients got one in the rolling 24 h. 0: no
    /// limit (docs/numbers.md, "Tier limit").
    pub tier_limit: u32,
    /// The business portfolio the number belongs to ("": its own). Numbers naming the same
    /// business share one tier count (Meta's limit is per portfolio).
    pub business_id: String,
    /// More sending numbers (`[[whatsapp.numbers]]`); the keys above are the default number.
    /// Read them through [`WhatsappSettings::number`] (docs/numbers.md).
    #[serde(default)]
    pub numbers: Vec<NumberSettings>,
}

/// One `[[whatsapp.numbers]]` table: a sending number with its own token and limits. A key left
/// out takes the `[whatsapp]` value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberSettings {
    pub phone_number_id: String,
    #[serde(default, deserialize_with = "secret")]
    pub access_token: Option<SecretString>,
    #[serde(default, deserialize_with = "path")]
    pub access_token_file: Option<PathBuf>,
    #[serde(default)]
    pub rate_per_second: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    pub pair_interval: Option<Duration>,
    #[serde(default)]
    pub tier_limit: Option<u32>,
    #[serde(default)]
    pub business_id: Option<String>,
}

impl WhatsappSettings {
    /// The id of the number a job without `from` sends from: `phone_number_id`, or the first of
    /// `numbers` when it is empty.
    pub fn default_number_id(&self) -> &str {
        if self.phone_number_id.is_empty() {
            self.numbers
                .first()
                .map_or("", |n| n.phone_number_id.as_str())
        } else {
            &self.phone_number_id
        }
    }

    /// The ids of every configured number, the default first.
    pub fn number_ids(&self) -> Vec<&str> {
        let mut ids = Vec::new();
        if !self.phone_number_id.is_empty() {
            ids.push(self.phone_number_id.as_str());
        }
        ids.extend(self.numbers.iter().map(|n| n.phone_number_id.as_str()));
        ids
    }

    /// The settings one number sends under: these settings with its id, token, rate and pair
    /// interval (and no `numbers`). `None` (the default number) or `Some(id)`; `None` back: no
    /// such number is configured.
    pub fn number(&self, id: Option<&str>) -> Option<WhatsappSettings> {
        let id = id.unwrap_or_else(|| self.default_number_id());
        let mut out = self.clone();
        out.numbers = Vec::new();
        if id == self.phone_number_id && !id.is_empty() {
            return Some(out);
        }
        let n = self.numbers.iter().find(|n| n.phone_number_id == id)?;
        out.phone_number_id = n.phone_number_id.clone();
        if n.access_token.is_some() {
            out.access_token = n.access_token.clone();
        }
        out.access_token_file = None;
        out.rate_per_second = n.rate_per_second.unwrap_or(self.rate_per_second);
        out.pair_interval = n.pair_interval.unwrap_or(self.pair_interval);
        out.tier_limit = n.tier_limit.unwrap_or(self.tier_limit);
        if let Some(b) = &n.business_id {
            out.business_id = b.clone();
        }
        Some(out)
    }

    /// What the number's tier limit counts: its business (`business:ID`) when it names one, else
    /// the number itself (`number:ID`). Call on a number's settings ([`Self::number`]).
    pub fn tier_group(&self) -> String {
        if self.business_id.is_empty() {
            format!("number:{}", self.phone_number_id)
        } else {
            format!("business:{}", self.business_id)
        }
    }

    /// The sum of every number's rate (the in-flight sizing's input).
    pub fn total_rate(&self) -> u32 {
        if self.numbers.is_empty() {
            return self.rate_per_second;
        }
        self.number_ids()
            .into_iter()
            .filter_map(|id| self.number(Some(id)))
            .map(|n| n.rate_per_second)
            .fold(0u32, u32::saturating_add)
            .max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    /// `None` disables `/api/jobs/run-outbound` (it answers 404): an unset token never opens it.
    #[serde(deserialize_with = "secret")]
    pub job_runner_token: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub job_runner_token_file: Option<PathBuf>,
    /// `None` disables `/api/cron/run-outbound-jobs`.
    #[serde(deserialize_with = "secret")]
    pub cron_secret: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub cron_secret_file: Option<PathBuf>,
    /// `None` disables the admin API (`/api/admin/…` answers 404).
    #[serde(deserialize_with = "secret")]
    pub admin_token: Option<SecretString>,
    #[serde(deserialize_with = "path")]
    pub admin_token_file: Option<PathBuf>,
    pub max_per_request: u32,
    #[serde(with = "humantime_serde")]
    pub pass_timeout: Duration,
    /// Trigger passes running at once; a request beyond it answers 429.
    pub max_concurrent_passes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// `database.max_connections` when it is 0: small, whatever the concurrency (docs/operations.md,
/// "Connections").
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;

impl Settings {
    /// The connection budget: `database.max_connections`, or its default.
    pub fn max_connections(&self) -> u32 {
        match self.database.max_connections {
            0 => DEFAULT_MAX_CONNECTIONS,
            n => n,
        }
    }

    /// The pool size: the budget less the LISTEN connection, which is not the pool's.
    pub fn pool_size(&self) -> u32 {
        self.max_connections().saturating_sub(1)
    }

    /// The direct (non-pooler) URL: `database.direct_url`, or its old name `listen_url`.
    pub fn direct_url(&self) -> Option<&SecretString> {
        self.database
            .direct_url
            .as_ref()
            .or(self.database.listen_url.as_ref())
    }

    /// `http.listen` parsed; `None` when the HTTP server is off.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.http.listen.parse().ok()
    }

    /// `metrics.listen` parsed; `None` when metrics share the HTTP listener.
    pub fn metrics_listen(&self) -> Option<SocketAddr> {
        self.metrics.listen.parse().ok()
    }
}

/// Where configuration comes from. `env` is passed in rather than read here so tests can load a
/// configuration without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config`: must exist. `None`: [`DEFAULT_CONFIG_PATH`] if it exists.
    pub config_path: Option<PathBuf>,
    /// Do not look at [`DEFAULT_CONFIG_PATH`] (tests, `--no-default-config`).
    pub skip_default_path: bool,
    pub env: HashMap<String, String>,
}

impl LoadOptions {
    pub fn from_process(config_path: Option<PathBuf>) -> Self {
        Self {
            config_path,
            skip_default_path: false,
            env: std::env::vars().collect(),
        }
    }

    /// The file layer actually read, if any.
    pub fn config_file(&self) -> Option<PathBuf> {
        match &self.config_path {
            Some(p) => Some(p.clone()),
            None if !self.skip_default_path && Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Some(PathBuf::from(DEFAULT_CONFIG_PATH))
            }
            None => None,
        }
    }
}

/// One thing wrong with the configuration: the key and why. Never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// The configuration cannot be used. The program exits with `EX_CONFIG` (78).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.key, p.reason)?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }
}

/// The guide's environment names (and `ADMIN_TOKEN`) and the key each one sets.
const GUIDE_ENV: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("DATABASE_URL_FILE", "database.url_file"),
    // Prisma's name for its `directUrl` (docs/operations.md, "Poolers").
    ("DIRECT_URL", "database.direct_url"),
    ("DIRECT_URL_FILE", "database.direct_url_file"),
    ("JOB_RUNNER_TOKEN", "http.job_runner_token"),
    ("JOB_RUNNER_TOKEN_FILE", "http.job_runner_token_file"),
    ("CRON_SECRET", "http.cron_secret"),
    ("CRON_SECRET_FILE", "http.cron_secret_file"),
    ("ADMIN_TOKEN", "http.admin_token"),
    ("ADMIN_TOKEN_FILE", "http.admin_token_file"),
    ("WHATSAPP_APP_SECRET", "whatsapp.app_secret"),
    ("WHATSAPP_APP_SECRET_FILE", "whatsapp.app_secret_file"),
    ("WHATSAPP_VERIFY_TOKEN", "whatsapp.verify_token"),
];

/// Loads, resolves secrets and validates.
pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigError> {
    let raw = layered(opts)?;
    check_unknown_keys(&raw)?;
    let mut settings: Settings = raw.try_deserialize().map_err(|e| config_crate_error(&e))?;
    resolve_secrets(&mut settings, &opts.env)?;
    validate(&settings)?;
    Ok(settings)
}

/// Which layer each key's effective value came from: `default`, `file` or `env`.
pub fn origins(opts: &LoadOptions) -> Result<HashMap<String, &'static str>, ConfigError> {
    let mut out = HashMap::new();
    for key in flat_keys(&defaults_value()) {
        out.insert(key, "default");
    }
    if let Some(path) = opts.config_file() {
        let file = config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .build()
            .map_err(|e| config_crate_error(&e))?;
        for key in flat_keys(&to_json(file)) {
            out.insert(key, "file");
        }
    }
    let env = config::Config::builder()
        .add_source(guide_env(&opts.env))
        .add_source(structured_env(&opts.env))
        .build()
        .map_err(|e| config_crate_error(&e))?;
    for key in flat_keys(&to_json(env)) {
        out.insert(key, "env");
    }
    Ok(out)
}

fn layered(opts: &LoadOptions) -> Result<config::Config, ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(
        DEFAULTS_TOML,
        config::FileFormat::Toml,
    ));
    if let Some(path) = opts.config_file() {
        if !path.exists() {
            return Err(ConfigError::one(
                "--config",
                format!("{}: no such file", path.display()),
            ));
        }
        builder = builder.add_source(
            config::File::from(path.as_path())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder
        .add_source(guide_env(&opts.env))
        .add_source(structured_env(&opts.env))
        .build()
        .map_err(|e| config_crate_error(&e))
}

fn guide_env(env: &HashMap<String, String>) -> config::Environment {
    let map = GUIDE_ENV
        .iter()
        .filter_map(|(name, key)| {
            let value = env.get(*name)?;
            Some((key.replace('.', "__").to_uppercase(), value.clone()))
        })
        .collect();
    config::Environment::default()
        .separator("__")
        .source(Some(map))
}

fn structured_env(env: &HashMap<String, String>) -> config::Environment {
    let map = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(map))
}

fn defaults_value() -> serde_json::Value {
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ))
        .build()
        .expect("the built-in defaults parse");
    to_json(defaults)
}

fn to_json(c: config::Config) -> serde_json::Value {
    c.try_deserialize::<serde_json::Value>()
        .unwrap_or(serde_json::Value::Null)
}

fn flat_keys(v: &serde_json::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", v, &mut out);
    out
}

/// Every key of the merged layers must be one the defaults know. serde's own message for an
/// unknown field does not say which section it was in; this one names the whole key.
fn check_unknown_keys(raw: &config::Config) -> Result<(), ConfigError> {
    let known: std::collections::HashSet<String> =
        flat_keys(&defaults_value()).into_iter().collect();
    let sections: std::collections::HashSet<&str> =
        known.iter().filter_map(|k| k.split('.').next()).collect();
    let merged = raw
        .clone()
        .try_deserialize::<serde_json::Value>()
        .map_err(|e| config_crate_error(&e))?;
    let mut problems: Vec<Problem> = flat_keys(&merged)
        .into_iter()
        .filter(|k| !known.contains(k))
        .map(|key| {
            let section = key.split('.').next().unwrap_or_default();
            let reason = if sections.contains(section) {
                format!("unknown key (the keys of [{section}] are listed in config/default.toml)")
            } else {
                "unknown key (the sections are database, runner, retry, delivery, orchestrator, whatsapp, http, metrics, log)".to_string()
            };
            Problem { key, reason }
        })
        .collect();
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// The `config` crate says "... for key `runner.workers`"; pull the key out so every error reads
/// `key: reason`.
fn config_crate_error(e: &config::ConfigError) -> ConfigError {
    // A TOML syntax error quotes the offending line, which may hold a password: keep the
    // position and the reason, drop the quoted source (its lines have a `N |` gutter).
    let text: String = e
        .to_string()
        .lines()
        .filter(|line| {
            !line
                .trim_start()
                .split_once('|')
                .is_some_and(|(gutter, _)| gutter.trim().chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(start) = text.find(" for key `") {
        let rest = &text[start + " for key `".len()..];
        if let Some(end) = rest.find('`') {
            let key = &rest[..end];
            let mut reason = text[..start].to_string();
            if let Some(origin) = rest[end..].strip_prefix("` in ") {
                reason.push_str(&format!(" (in {origin})"));
            }
            return ConfigError::one(key, reason);
        }
    }
    ConfigError::one("configuration", text)
}

/// A secret given inline, as `*_file`, or as a systemd credential (in that order of preference;
/// inline and file together are an error because one of them would be silently ignored).
struct SecretSlot<'a> {
    key: &'static str,
    credential: &'static str,
    value: &'a mut Option<SecretString>,
    file: &'a Option<PathBuf>,
}

fn resolve_secrets(s: &mut Settings, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let credentials = env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let slots = [
        SecretSlot {
            key: "database.url",
            credential: "database_url",
            value: &mut s.database.url,
            file: &s.database.url_file,
        },
        SecretSlot {
            key: "database.direct_url",
            credential: "database_direct_url",
            value: &mut s.database.direct_url,
            file: &s.database.direct_url_file,
        },
        SecretSlot {
            key: "database.listen_url",
            credential: "database_listen_url",
            value: &mut s.database.listen_url,
            file: &s.database.listen_url_file,
        },
        SecretSlot {
            key: "http.job_runner_token",
            credential: "job_runner_token",
            value: &mut s.http.job_runner_token,
            file: &s.http.job_runner_token_file,
        },
        SecretSlot {
            key: "http.cron_secret",
            credential: "cron_secret",
            value: &mut s.http.cron_secret,
            file: &s.http.cron_secret_file,
        },
        SecretSlot {
            key: "http.admin_token",
            credential: "admin_token",
            value: &mut s.http.admin_token,
            file: &s.http.admin_token_file,
        },
        SecretSlot {
            key: "orchestrator.token",
            credential: "orchestrator_token",
            value: &mut s.orchestrator.token,
            file: &s.orchestrator.token_file,
        },
        SecretSlot {
            key: "whatsapp.access_token",
            credential: "whatsapp_access_token",
            value: &mut s.whatsapp.access_token,
            file: &s.whatsapp.access_token_file,
        },
        SecretSlot {
            key: "whatsapp.app_secret",
            credential: "whatsapp_app_secret",
            value: &mut s.whatsapp.app_secret,
            file: &s.whatsapp.app_secret_file,
        },
    ];
    let mut problems = Vec::new();
    for slot in slots {
        // A token of spaces enables an endpoint with a credential no client can send (clients
        // and this runner trim it): refused like an empty file.
        if slot
            .value
            .as_ref()
            .is_some_and(|v| v.expose_secret().trim().is_empty())
        {
            problems.push(Problem {
                key: slot.key.to_string(),
                reason: "is only whitespace; set a real value or leave it unset".into(),
            });
            continue;
        }
        match (slot.value.is_some(), slot.file) {
            (true, Some(_)) => problems.push(Problem {
                key: format!("{}_file", slot.key),
                reason: format!("set together with {}; set only one of them", slot.key),
            }),
            (false, Some(path)) => match read_secret_file(path) {
                Ok(v) => *slot.value = v,
                Err(reason) => problems.push(Problem {
                    key: format!("{}_file", slot.key),
                    reason,
                }),
            },
            (false, None) => {
                if let Some(dir) = &credentials {
                    let path = dir.join(slot.credential);
                    if path.exists() {
                        match read_secret_file(&path) {
                            Ok(v) => *slot.value = v,
                            Err(reason) => problems.push(Problem {
                                key: slot.key.to_string(),
                                reason: format!("credential {}: {reason}", slot.credential),
                            }),
                        }
                    }
                }
            }
            (true, None) => {}
        }
    }
    resolve_number_secrets(s, credentials.as_deref(), &mut problems);
    if let (Some(direct), Some(listen)) = (&s.database.direct_url, &s.database.listen_url) {
        if direct.expose_secret() != listen.expose_secret() {
            problems.push(Problem {
                key: "database.listen_url".into(),
                reason: "is the old name of database.direct_url, and both are set to different \
                         URLs; set only database.direct_url"
                    .into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError { problems })
    }
}

/// `whatsapp.numbers[i].access_token`: inline, `_file`, or the credential
/// `whatsapp_access_token_<phone_number_id>`; none of them: the `[whatsapp]` token.
fn resolve_number_secrets(
    s: &mut Settings,
    credentials: Option<&Path>,
    problems: &mut Vec<Problem>,
) {
    for (i, n) in s.whatsapp.numbers.iter_mut().enumerate() {
        let key = format!("whatsapp.numbers[{i}].access_token");
        match (n.access_token.is_some(), &n.access_token_file) {
            (true, Some(_)) => problems.push(Problem {
                key: format!("{key}_file"),
                reason: format!("set together with {key}; set only one of them"),
            }),
            (false, Some(path)) => match read_secret_file(path) {
                Ok(v) => n.access_token = v,
                Err(reason) => problems.push(Problem {
                    key: format!("{key}_file"),
                    reason,
                }),
            },
            (false, None) => {
                let Some(dir) = credentials else { continue };
                if n.phone_number_id.is_empty()
                    || !n.phone_number_id.chars().all(|c| c.is_ascii_digit())
                {
                    continue;
                }
                let name = format!("whatsapp_access_token_{}", n.phone_number_id);
                let path = dir.join(&name);
                if path.exists() {
                    match read_secret_file(&path) {
                        Ok(v) => n.access_token = v,
                        Err(reason) => problems.push(Problem {
                            key,
                            reason: format!("credential {name}: {reason}"),
                        }),
                    }
                }
            }
            (true, None) => {}
        }
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

fn read_secret_file(path: &Path) -> Result<Option<SecretString>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if trimmed.trim().is_empty() {
        return Err(format!("{} holds only whitespace", path.display()));
    }
    Ok(Some(SecretString::from(trimmed.to_string())))
}

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
        other => Err(format!(
            "scheme must be postgres:// or postgresql://, not {other}://"
        )),
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

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| SecretString::from(s)))
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// [`redact_url`], keeping an empty string empty.
pub fn redact_url_or_empty(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        redact_url(text)
    }
}

/// A URL with its password (and any query string, which may carry tokens) replaced, for logs.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                let kept: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "host" || k == "port" || k == "dbname" {
                            v.into_owned()
                        } else {
                            "***".to_string()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
            url.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(env: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            config_path: None,
            skip_default_path: true,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn defaults_load() {
        let s = load(&opts(&[])).unwrap();
        assert_eq!(s.runner.workers, 0, "sized by the work");
        assert_eq!(s.max_connections(), DEFAULT_MAX_CONNECTIONS);
        assert!(s.max_connections() <= 10);
        assert_eq!(s.runner.poll_interval, Duration::from_secs(30));
        assert_eq!(s.delivery.mode, DeliveryMode::Sandbox);
        assert!(s.database.url.is_none());
        assert!(s.http.job_runner_token.is_none());
    }

    #[test]
    fn structured_env_overrides() {
        let s = load(&opts(&[
            ("OUTBOUND_RUNNER__RUNNER__WORKERS", "3"),
            ("OUTBOUND_RUNNER__RUNNER__POLL_INTERVAL", "5s"),
        ]))
        .unwrap();
        assert_eq!(s.runner.workers, 3);
        assert_eq!(s.runner.poll_interval, Duration::from_secs(5));
    }

    #[test]
    fn guide_names_set_secrets() {
        let s = load(&opts(&[
            ("DATABASE_URL", "postgres://u:p@localhost/db"),
            ("JOB_RUNNER_TOKEN", "12345"),
            ("CRON_SECRET", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(s.http.job_runner_token.unwrap().expose_secret(), "12345");
        assert_eq!(s.http.cron_secret.unwrap().expose_secret(), "s3cret");
        assert!(s.database.url.is_some());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load(&opts(&[("OUTBOUND_RUNNER__RUNNER__WOKERS", "3")])).unwrap_err();
        assert_eq!(e.problems[0].key, "runner.wokers");
    }

    #[test]
    fn bad_type_is_named() {
        let e = load(&opts(&[("OUTBOUND_RUNNER__RUNNER__WORKERS", "-2")])).unwrap_err();
        assert_eq!(e.problems[0].key, "runner.workers", "{e}");
    }

    #[test]
    fn bad_url_does_not_echo_it() {
        let e = load(&opts(&[("DATABASE_URL", "mysql://u:hunter2@h/db")])).unwrap_err();
        assert_eq!(e.problems[0].key, "database.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn live_mode_requires_credentials() {
        let e = load(&opts(&[("OUTBOUND_RUNNER__DELIVERY__MODE", "live")])).unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"whatsapp.phone_number_id"), "{e}");
        assert!(keys.contains(&"whatsapp.access_token"), "{e}");
    }

    /// `[[whatsapp.numbers]]`: inherited keys, the per-number credential, and the checks.
    #[test]
    fn several_numbers() {
        let dir = std::env::temp_dir().join(format!("or-numbers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("whatsapp_access_token_222"), "tok-222\n").unwrap();
        let file = dir.join("config.toml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        let load_it = || {
            load(&LoadOptions {
                config_path: Some(file.clone()),
                skip_default_path: true,
                env: [
                    (
                        "CREDENTIALS_DIRECTORY".to_string(),
                        dir.display().to_string(),
                    ),
                    (
                        "OUTBOUND_RUNNER__DELIVERY__MODE".to_string(),
                        "live".to_string(),
                    ),
                ]
                .into(),
            })
        };
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             rate_per_second = 80\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\nrate_per_second = 20\n\
             [[whatsapp.numbers]]\nphone_number_id = \"333\"\npair_interval = \"1s\"\n",
        );
        let s = load_it().unwrap();
        let w = &s.whatsapp;
        assert_eq!(w.number_ids(), ["111", "222", "333"]);
        assert_eq!(w.default_number_id(), "111");
        let n = w.number(Some("222")).unwrap();
        assert_eq!(n.access_token.unwrap().expose_secret(), "tok-222");
        assert_eq!((n.rate_per_second, n.pair_interval), (20, w.pair_interval));
        let n = w.number(Some("333")).unwrap();
        assert_eq!(
            n.access_token.unwrap().expose_secret(),
            "tok-111",
            "inherited"
        );
        assert_eq!(
            (n.rate_per_second, n.pair_interval),
            (80, Duration::from_secs(1))
        );
        assert_eq!(w.number(None).unwrap().phone_number_id, "111");
        assert!(w.number(Some("444")).is_none());
        assert_eq!(w.total_rate(), 180);

        // A duplicate id, a zero rate, and a number with no token anywhere.
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"111\"\nrate_per_second = 0\n",
        );
        let e = load_it().unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "whatsapp.numbers[0].phone_number_id",
                "whatsapp.numbers[0].rate_per_second"
            ],
            "{e}"
        );
        assert!(e.to_string().contains("configured twice"), "{e}");
        write("[[whatsapp.numbers]]\nphone_number_id = \"555\"\n");
        let e = load_it().unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["whatsapp.numbers[0].access_token"], "{e}");
        assert!(!e.to_string().contains("tok-"), "{e}");

        // Tier limits: inherited, per number, grouped by business; one business, one limit.
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             tier_limit = 250\nbusiness_id = \"acme\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"333\"\ntier_limit = 2000\nbusiness_id = \"\"\n",
        );
        let w = load_it().unwrap().whatsapp;
        let n = |id| w.number(Some(id)).unwrap();
        assert_eq!(
            (n("222").tier_limit, n("222").tier_group()),
            (250, "business:acme".into())
        );
        assert_eq!(
            (n("333").tier_limit, n("333").tier_group()),
            (2000, "number:333".into())
        );
        write(
            "[whatsapp]\nphone_number_id = \"111\"\naccess_token = \"tok-111\"\n\
             tier_limit = 250\nbusiness_id = \"acme\"\n\
             [[whatsapp.numbers]]\nphone_number_id = \"222\"\ntier_limit = 2000\n",
        );
        let e = load_it().unwrap_err();
        assert!(
            e.to_string()
                .contains("share business_id acme but not tier_limit"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_file_and_credentials() {
        let dir = std::env::temp_dir().join(format!("or-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "from-file\n").unwrap();
        std::fs::write(dir.join("cron_secret"), "from-credential\n").unwrap();
        let tok = dir.join("tok");
        let s = load(&opts(&[
            ("JOB_RUNNER_TOKEN_FILE", tok.to_str().unwrap()),
            ("CREDENTIALS_DIRECTORY", dir.to_str().unwrap()),
        ]))
        .unwrap();
        assert_eq!(
            s.http.job_runner_token.unwrap().expose_secret(),
            "from-file"
        );
        assert_eq!(
            s.http.cron_secret.unwrap().expose_secret(),
            "from-credential"
        );

        let e = load(&opts(&[
            ("JOB_RUNNER_TOKEN", "x"),
            ("JOB_RUNNER_TOKEN_FILE", tok.to_str().unwrap()),
        ]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "http.job_runner_token_file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn direct_url_and_its_old_name() {
        let s = load(&opts(&[
            (
                "DATABASE_URL",
                "postgres://u:p@pooler:6543/db?pgbouncer=true",
            ),
            ("DIRECT_URL", "postgres://u:p@db:5432/db"),
        ]))
        .unwrap();
        assert_eq!(s.database.pooler, PoolerMode::Auto);
        assert!(crate::db::pooler_mode(
            &s,
            s.database.url.as_ref().unwrap().expose_secret()
        ));
        assert_eq!(
            s.direct_url().unwrap().expose_secret(),
            "postgres://u:p@db:5432/db"
        );

        // The old name alone still works; both, differing, is an error naming the old one.
        let s = load(&opts(&[(
            "OUTBOUND_RUNNER__DATABASE__LISTEN_URL",
            "postgres://u:p@db/db",
        )]))
        .unwrap();
        assert_eq!(
            s.direct_url().unwrap().expose_secret(),
            "postgres://u:p@db/db"
        );
        let e = load(&opts(&[
            ("DIRECT_URL", "postgres://u:p@db/db"),
            (
                "OUTBOUND_RUNNER__DATABASE__LISTEN_URL",
                "postgres://u:p@other/db",
            ),
        ]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "database.listen_url", "{e}");

        // Explicit modes win over the URL.
        let s = load(&opts(&[
            ("DATABASE_URL", "postgres://u@pooler/db?pgbouncer=true"),
            ("OUTBOUND_RUNNER__DATABASE__POOLER", "none"),
        ]))
        .unwrap();
        assert!(!crate::db::pooler_mode(
            &s,
            "postgres://u@pooler/db?pgbouncer=true"
        ));
        let s = load(&opts(&[(
            "OUTBOUND_RUNNER__DATABASE__POOLER",
            "transaction",
        )]))
        .unwrap();
        assert!(crate::db::pooler_mode(&s, "postgres://u@pooler/db"));

        // Prisma's schema parameter for another schema is refused, without the password.
        let e = load(&opts(&[(
            "DATABASE_URL",
            "postgres://u:hunter2@h/db?schema=app",
        )]))
        .unwrap_err();
        assert_eq!(e.problems[0].key, "database.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db?sslmode=require&host=/run"),
            "postgres://u:***@h:5432/db?sslmode=***&host=%2Frun"
        );
        assert_eq!(redact_url("x"), "<unparseable URL>");
    }
}
