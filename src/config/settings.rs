//! The settings' types: one struct per section of `config/default.toml`, each denying unknown
//! fields, and the derived values the rest of the program reads (`Settings::max_connections`,
//! `WhatsappSettings::number`, …).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

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
    /// A running row with no lease of ours (the app's own runner's) is left alone this long
    /// after its last update (docs/prisma.md, "The switch").
    #[serde(with = "humantime_serde")]
    pub foreign_running_grace: Duration,
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
    /// How long the app behind `webhook_forward_url` has to answer a forwarded webhook.
    #[serde(with = "humantime_serde")]
    pub webhook_forward_timeout: Duration,
    /// How long a status no message could take yet is kept in `"OutboundEarlyStatus"` before it
    /// is dropped (and counted).
    #[serde(with = "humantime_serde")]
    pub status_retention: Duration,
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
    /// A request's headers, then its body, must each arrive within it (src/http/server.rs).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
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

pub(super) fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| SecretString::from(s)))
}

pub(super) fn path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// The name `config/default.toml` writes for each value of a choice key (serde's lowercase).
macro_rules! names {
    ($($ty:ident { $($variant:ident => $name:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The value as the configuration writes it.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }
    )+};
}

names! {
    PoolerMode { Auto => "auto", None => "none", Transaction => "transaction" }
    DeliveryMode { Live => "live", Sandbox => "sandbox" }
    OnUnknown { Fail => "fail", Retry => "retry" }
    LogFormat { Text => "text", Json => "json" }
}
