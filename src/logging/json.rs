//! `--log-format json`: one JSON object per line, for log pipelines (Fluent Bit, Vector, Loki,
//! Azure Monitor) that filter on fields rather than parse text.
//!
//! Every line carries `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, and the two
//! fields that tell mounts apart on a node: `mount` (the mountpoint) and `vault` (the vault's
//! host). An event's own fields follow under their names: the failure lines of the cache carry
//! `kind` (secrets, keys, certificates), `object`, `op`, `errno` and `cause`; the line of a failed
//! request (`kvfs::fuse::failures`) carries `op`, `path`, `errno` and `cause`.
//!
//! Written here rather than with tracing-subscriber's `json` feature because that formatter
//! cannot add process-wide fields (`mount`, `vault`) to every line without a span entered on
//! every thread, and kvfs's lines come from FUSE threads, tokio workers and the supervisor.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What every line of this process says about where it comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LineContext {
    pub mount: String,
    pub vault: String,
}

/// The event formatter of `--log-format json`.
pub(crate) struct JsonLines {
    pub context: LineContext,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldMap(Map::new());
        event.record(&mut fields);
        let line = line(
            &self.context,
            meta.level().as_str(),
            meta.target(),
            fields.0,
        );
        writeln!(writer, "{line}")
    }
}

/// One line: the fixed fields first, then the event's own (which cannot overwrite them).
pub(crate) fn line(
    context: &LineContext,
    level: &str,
    target: &str,
    event_fields: Map<String, Value>,
) -> String {
    let mut object = Map::new();
    object.insert("timestamp".into(), Value::String(now_rfc3339()));
    object.insert("level".into(), Value::String(level.to_owned()));
    object.insert("target".into(), Value::String(target.to_owned()));
    object.insert("mount".into(), Value::String(context.mount.clone()));
    object.insert("vault".into(), Value::String(context.vault.clone()));
    for (name, value) in event_fields {
        object.entry(name).or_insert(value);
    }
    Value::Object(object).to_string()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Collects an event's fields as JSON values: numbers and booleans as themselves, everything
/// else (`%display`, `?debug`, errors) as the string it formats to.
struct FieldMap(Map<String, Value>);

impl Visit for FieldMap {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::capture::json_lines_in;

    #[test]
    fn every_line_is_one_object_with_the_mount_the_vault_and_the_events_fields() {
        let context = LineContext {
            mount: "/var/lib/kvfs/prod".into(),
            vault: "prod.vault.azure.net".into(),
        };
        let lines = json_lines_in(context, || {
            tracing::warn!(
                kind = "secrets",
                object = %"secrets/db",
                op = "get",
                errno = "EIO",
                cause = %"503 \"Service\nUnavailable\"",
                retry_in = 4u64,
                "vault failing"
            );
            // An event field cannot pose as a fixed one.
            tracing::info!(mount = "elsewhere", "second");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let first = &lines[0];
        assert_eq!(first["level"], "WARN");
        assert_eq!(first["mount"], "/var/lib/kvfs/prod");
        assert_eq!(first["vault"], "prod.vault.azure.net");
        assert_eq!(first["message"], "vault failing");
        assert_eq!(first["kind"], "secrets");
        assert_eq!(first["errno"], "EIO");
        assert_eq!(first["cause"], "503 \"Service\nUnavailable\"");
        assert_eq!(first["retry_in"], 4);
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["mount"], "/var/lib/kvfs/prod");
    }
}
