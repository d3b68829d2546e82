//! Layering: the built-in defaults, the file, the guide's environment names and the structured
//! environment, merged by the `config` crate; which layer each key came from (`origins`); and
//! the errors of that stage, each naming its key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, DEFAULT_CONFIG_PATH, DEFAULTS_TOML, ENV_PREFIX, Problem};

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

pub(super) fn layered(opts: &LoadOptions) -> Result<config::Config, ConfigError> {
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
pub(super) fn check_unknown_keys(raw: &config::Config) -> Result<(), ConfigError> {
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
pub(super) fn config_crate_error(e: &config::ConfigError) -> ConfigError {
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
