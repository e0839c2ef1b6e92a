//! Error text for log lines and mount errors: an error's whole `source()` chain on one line,
//! clipped so that a proxy's HTML error page cannot flood a log.

use azure_core::error::ErrorKind;

/// Error strings are for log lines; a proxy's HTML error page should not flood them.
const MAX_MESSAGE_LEN: usize = 1500;

/// What the SDK's retry policy says around an error it passes through.
const NOT_RETRIED: &str = "non-transport error occurred which will not be retried";

/// Every message down an error's `source()` chain on one line, each said once: the SDK's top
/// message is generic ("non-transport error occurred which will not be retried") and the reason
/// (e.g. `AADSTS7000215: Invalid client secret provided.`) sits further down.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // The retry policy's wrapper around an error it passes through says nothing about the
        // cause, and reads as if nothing had been retried even when the cause was a 503.
        if !text.is_empty() && text != NOT_RETRIED && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        // An HTTP error's message can be empty (a token endpoint answering 503 with a body that
        // is not Entra's error format): the status is then the only clue.
        if let Some(ErrorKind::HttpResponse {
            status, error_code, ..
        }) = e.downcast_ref::<azure_core::Error>().map(|c| c.kind())
        {
            let code = error_code
                .as_deref()
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            let http = format!("HTTP {}{code}", u16::from(*status));
            if !parts.iter().any(|p| p.contains(&http)) {
                parts.push(http);
            }
        }
        next = e.source();
    }
    clip(parts.join(": "))
}

/// `text` cut to `MAX_MESSAGE_LEN` bytes (on a character boundary), marked with `…` when cut.
pub(crate) fn clip(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}
