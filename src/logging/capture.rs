//! For tests of what a line says: run code under a JSON subscriber that keeps what it writes.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

use super::json::{JsonLines, LineContext};

/// A sink that keeps every byte written to it.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// The lines `f` logs on this thread (every level), as `--log-format json` writes them with
/// `context`, each parsed.
pub(crate) fn json_lines_in(context: LineContext, f: impl FnOnce()) -> Vec<Value> {
    let out = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .event_format(JsonLines { context })
        .with_writer(out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// [`json_lines_in`] with an empty mount and vault.
pub(crate) fn json_lines(f: impl FnOnce()) -> Vec<Value> {
    json_lines_in(LineContext::default(), f)
}
