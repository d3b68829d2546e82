//! Logging: tracing with a level that can change on reload, text or JSON.
//!
//! `RUST_LOG`, when set, overrides `log.level` (and survives reloads). Under systemd
//! (`JOURNAL_STREAM` set) text logs drop colours and timestamps: journald adds its own.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogFormat, LogSettings};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl LogHandle {
    /// Applies `level` unless `RUST_LOG` pins the filter.
    pub fn set_level(&self, level: &str) -> anyhow::Result<()> {
        if self.env_override {
            return Ok(());
        }
        let filter = EnvFilter::builder().parse(level)?;
        self.reload.reload(filter)?;
        Ok(())
    }
}

/// Installs the global subscriber. Call once, after the configuration loaded.
pub fn init(settings: &LogSettings) -> LogHandle {
    let env_filter = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let filter = env_filter
        .as_deref()
        .and_then(|f| EnvFilter::builder().parse(f).ok())
        .unwrap_or_else(|| {
            EnvFilter::builder()
                .parse(&settings.level)
                .unwrap_or_else(|_| EnvFilter::new("info"))
        });
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text if journald => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if result.is_err() {
        eprintln!("outbound-runner: a log subscriber was already installed");
    }
    LogHandle {
        reload: handle,
        env_override: env_filter.is_some(),
    }
}
