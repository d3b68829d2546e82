//! Logging: tracing with a level that can change on reload, text or JSON.
//!
//! `RUST_LOG`, when set, overrides `log.level` (and survives reloads). Colours only when stderr
//! is a terminal (and `NO_COLOR` is unset). When stderr is the journal (`JOURNAL_STREAM` names
//! our stderr), text logs drop the timestamp journald adds itself, and every line starts with its
//! syslog priority (`<3>` error … `<7>` debug), which journald strips and stores, so
//! `journalctl -p warning` works. JSON keeps its `timestamp` field: it is data.
//!
//! Text logs cannot be forged or flooded by what the app writes into a job (a `requestId` with a
//! newline, a megabyte of it): every field, the message included, has its control characters
//! escaped (`\n`, `\u{1b}`) and is cut at [`MAX_FIELD_CHARS`] ([`MAX_MESSAGE_CHARS`] for the
//! message), saying how long it was ([`SafeFields`]). JSON escapes by itself.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
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
                    .fmt_fields(SafeFields)
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
                    .fmt_fields(SafeFields)
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

/// The longest field value a text log line shows, in characters (the message excepted).
pub const MAX_FIELD_CHARS: usize = 512;
/// The longest message a text log line shows, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// `text` with its control characters escaped, cut at `max` characters (saying how long it
/// was): safe to put on one log line.
pub fn clip_field(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 32));
    for (shown, c) in text.chars().enumerate() {
        if shown == max {
            out.push_str(&format!("…[{} bytes in all]", text.len()));
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            // Line and paragraph separators: some viewers break lines on them.
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The text format's fields: `message` first as is, then ` name=value`, every value escaped
/// and clipped by [`clip_field`]. Strings are quoted (like the default format does).
pub struct SafeFields;

impl<'w> FormatFields<'w> for SafeFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = SafeVisitor {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct SafeVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl SafeVisitor<'_, '_> {
    fn write(&mut self, field: &Field, value: &str, quoted: bool) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // `log` records arrive with fields of their own; the default format skips them too.
        if name.starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", clip_field(value, MAX_MESSAGE_CHARS))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let value = clip_field(value, MAX_FIELD_CHARS);
            if quoted {
                write!(
                    self.writer,
                    "{sep}{name}=\"{}\"",
                    value.replace('"', "\\\"")
                )
            } else {
                write!(self.writer, "{sep}{name}={value}")
            }
        };
    }
}

impl Visit for SafeVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, true);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_values_cut() {
        assert_eq!(clip_field("a\nb\r\u{1b}[31m", 100), "a\\nb\\r\\u{1b}[31m");
        let long = "x".repeat(1_000_000);
        let cut = clip_field(&long, 10);
        assert_eq!(cut, format!("{}…[1000000 bytes in all]", "x".repeat(10)));
        assert_eq!(clip_field("héllo", 5), "héllo");
    }
}
