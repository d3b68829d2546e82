//! Logging: tracing with a level that can change on reload, text or JSON.
//!
//! `RUST_LOG`, when set, overrides `log.level` (and survives reloads). Colours only when stderr
//! is a terminal (and `NO_COLOR` is unset). When stderr is the journal (`JOURNAL_STREAM` names
//! our stderr), text logs drop the timestamp journald adds itself, and every line starts with its
//! syslog priority (`<3>` error … `<7>` debug), which journald strips and stores, so
//! `journalctl -p warning` works. JSON keeps its `timestamp` field: it is data.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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
    let journald = stderr_is_journal();
    let ansi = !journald
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Json => {
            let format = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false);
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .event_format(JournalPriority::new(format, journald))
                        .with_ansi(false)
                        .with_writer(std::io::stderr),
                )
                .try_init()
        }
        LogFormat::Text if journald => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JournalPriority::new(
                        tracing_subscriber::fmt::format().without_time(),
                        true,
                    ))
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
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

/// True when stderr is the journal stream systemd connected: `JOURNAL_STREAM` is `DEVICE:INODE`
/// of that stream, and it must match our stderr (a child whose stderr was redirected inherits the
/// variable but not the stream).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        // No /proc: trust the variable.
        Err(_) => true,
    }
}

/// Prefixes each line with its syslog priority when writing to the journal.
struct JournalPriority<F> {
    inner: F,
    enabled: bool,
}

impl<F> JournalPriority<F> {
    fn new(inner: F, enabled: bool) -> Self {
        Self { inner, enabled }
    }
}

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.enabled {
            let priority = match *event.metadata().level() {
                Level::ERROR => 3,
                Level::WARN => 4,
                Level::INFO => 6,
                _ => 7,
            };
            write!(writer, "<{priority}>")?;
        }
        self.inner.format_event(ctx, writer, event)
    }
}
