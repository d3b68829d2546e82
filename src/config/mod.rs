//! Configuration: layered loading, secrets, validation.
//!
//! Layers, lowest first: the built-in defaults (`config/default.toml`, compiled in) → the config
//! file (`/etc/outbound-runner/config.toml` or `--config`) → the user's job-runner guide's environment names (README "Configuration")
//! (`DATABASE_URL`, `JOB_RUNNER_TOKEN`, `CRON_SECRET`) → `OUTBOUND_RUNNER__SECTION__KEY`.
//!
//! Every struct denies unknown fields, so a typo in a key is an error that names the key, never a
//! silently ignored setting. Secrets are [`SecretString`](secrecy::SecretString)s: their `Debug`
//! prints a mask, and the only way to read one is `expose_secret()`, which keeps every use
//! greppable.
//!
//! The folder, by concern: `settings.rs` the types; `load.rs` the layers and where each value
//! came from; `secrets.rs` `*_file` keys and systemd credentials; `validate.rs` what types alone
//! cannot check; `redact.rs` URLs for logs; [`keys`] the table of every key, from which
//! `check-config`'s listing, the reload check and the secret slots are derived.

pub mod database_url;
pub mod keys;
mod load;
mod redact;
mod secrets;
mod settings;
mod validate;

use std::fmt;

pub use load::{LoadOptions, origins};
pub use redact::{redact_url, redact_url_or_empty};
pub use secrets::{MAX_SECRET_FILE, readable_secrets_warning};
pub use settings::*;
pub use validate::validate;

/// The file read when `--config` is not given (absent is fine; unreadable is an error).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outbound-runner/config.toml";
/// The built-in defaults: the documented reference of every key.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");
/// Prefix of the structured environment variables, e.g. `OUTBOUND_RUNNER__RUNNER__WORKERS`.
pub const ENV_PREFIX: &str = "OUTBOUND_RUNNER";

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

/// Loads, resolves secrets and validates.
pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigError> {
    let raw = load::layered(opts)?;
    load::check_unknown_keys(&raw)?;
    let mut settings: Settings = raw
        .try_deserialize()
        .map_err(|e| load::config_crate_error(&e))?;
    secrets::resolve_secrets(&mut settings, &opts.env)?;
    validate(&settings)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use secrecy::ExposeSecret;

    use super::*;

    /// Options reading no file, with this environment.
    pub(super) fn opts(env: &[(&str, &str)]) -> LoadOptions {
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
}
