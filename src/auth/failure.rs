//! What kind of failure a token source had, and how it is worded: an outage (transport errors,
//! 408, 429, 5xx: cached values keep being served) or a refusal of the identity.

use std::time::Duration;

use azure_core::error::ErrorKind;

/// The innermost error's message ("tcp connect error: Connection refused (os error 111)").
pub(super) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
}

/// A limit as the error messages say it: `2s`, `300ms`.
pub(super) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A transport failure (connection or I/O) anywhere down the chain: no answer at all.
pub(super) fn is_transient(err: &azure_core::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(core) = e.downcast_ref::<azure_core::Error>()
            && matches!(core.kind(), ErrorKind::Io | ErrorKind::Connection)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The token source is down, slow or throttling (rather than refusing the identity): transport
/// failures, and HTTP 408, 429 and 5xx answers.
pub(super) fn token_source_down(err: &azure_core::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(ErrorKind::HttpResponse { status, .. }) =
            e.downcast_ref::<azure_core::Error>().map(|c| c.kind())
        {
            let status = u16::from(*status);
            if status == 408 || status == 429 || status >= 500 {
                return true;
            }
        }
        next = e.source();
    }
    is_transient(err)
}
