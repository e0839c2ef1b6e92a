//! The line a failed request leaves. Every request answered `EIO` or `EACCES` is logged with its
//! operation, the path it was about, the errno and the cause, so that what a reader saw can be
//! tied to why. A reader failing in a loop leaves one line a minute per (operation, path,
//! errno), the next one saying how many were left out (`repeats_suppressed`).
//!
//! Two lines tell of one vault failure, and each says what the other cannot:
//! - the cache's (target `kvfs::fs::cache`): the vault call that failed — `object`, `op` = `get`,
//!   `cause` — once per object and outage, whoever asked (a prefetch or a refresh too), and
//!   nothing more while the outage lasts;
//! - this one (target `kvfs::fuse::failures`): a request of the kernel's that failed because of
//!   it and what it was answered — `op` = `lookup`, `read`, `readdir`…, `path`, `errno`,
//!   `cause`. A request answered from a failure the cache remembers leaves only this line, and
//!   a failure that is not the vault's (material that does not render) only this one too.
//!
//! Other errnos (`ENOENT` of a missing name, `EROFS`, `ENODATA`…) are answers about the tree, not
//! failures: they leave no line.

use std::sync::LazyLock;

use crate::fs::error::FsError;
use crate::logging::RateLimiter;
use crate::metrics::FuseOp;

/// What earns a line a minute: the operation, the path and the errno (a cause that changes
/// within one errno is the cache's to log).
type Key = (&'static str, String, &'static str);

/// The first failure of each key, then one line a minute.
static LIMITER: LazyLock<RateLimiter<Key>> = LazyLock::new(|| RateLimiter::new(1));

/// Log `error`, the answer to a request `op` about the object at `path()`, if it is a failure
/// with a cause. `path` is only worked out then: an `ENOENT` costs nothing here.
pub(super) fn log(op: FuseOp, error: &FsError, path: impl FnOnce() -> String) {
    log_through(&LIMITER, op, error, path);
}

fn log_through(
    limiter: &RateLimiter<Key>,
    op: FuseOp,
    error: &FsError,
    path: impl FnOnce() -> String,
) {
    let Some(cause) = error.cause() else {
        return;
    };
    let (op, errno, path) = (op.as_str(), error.errno_name(), path());
    crate::log_limited!(limiter, (op, path.clone(), errno), warn,
        op,
        path = %path,
        errno,
        cause = %cause,
        "request failed"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fs::error::Cause;
    use crate::logging::capture::json_lines;
    use crate::vault::VaultError;

    fn unavailable() -> FsError {
        FsError::from(VaultError::Unavailable(
            "GetSecret: HTTP 503 ServiceUnavailable".into(),
        ))
    }

    #[test]
    fn a_failure_is_one_line_with_op_path_errno_and_cause_however_often_it_repeats() {
        let limiter = RateLimiter::new(1);
        let lines = json_lines(|| {
            for _ in 0..50 {
                log_through(&limiter, FuseOp::Read, &unavailable(), || {
                    "secrets/db-password".into()
                });
            }
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        let wanted = serde_json::json!({
            "level": "WARN",
            "target": "kvfs::fuse::failures",
            "message": "request failed",
            "op": "read",
            "path": "secrets/db-password",
            "errno": "EIO",
            "cause": "vault unavailable: GetSecret: HTTP 503 ServiceUnavailable",
        });
        for (field, value) in wanted.as_object().unwrap() {
            assert_eq!(&line[field], value, "{field} of {line}");
        }
        assert_eq!(line.get("repeats_suppressed"), None);
    }

    #[test]
    fn each_operation_path_and_errno_has_its_own_line() {
        let limiter = RateLimiter::new(1);
        let refused = FsError::from(VaultError::Forbidden("lacks 'secrets get'".into()));
        let lines = json_lines(|| {
            log_through(&limiter, FuseOp::Lookup, &unavailable(), || {
                "secrets/a".into()
            });
            log_through(&limiter, FuseOp::Read, &unavailable(), || {
                "secrets/a".into()
            });
            log_through(&limiter, FuseOp::Read, &unavailable(), || {
                "secrets/b".into()
            });
            log_through(&limiter, FuseOp::Read, &refused, || "secrets/b".into());
        });
        let seen: Vec<_> = lines
            .iter()
            .map(|l| format!("{} {} {}", l["op"], l["path"], l["errno"]))
            .collect();
        assert_eq!(
            seen,
            [
                r#""lookup" "secrets/a" "EIO""#,
                r#""read" "secrets/a" "EIO""#,
                r#""read" "secrets/b" "EIO""#,
                r#""read" "secrets/b" "EACCES""#,
            ]
        );
        assert_eq!(lines[3]["cause"], "access denied: lacks 'secrets get'");
    }

    #[test]
    fn answers_about_the_tree_leave_no_line_and_cost_no_path() {
        let limiter = RateLimiter::new(1);
        let lines = json_lines(|| {
            for e in [
                FsError::NotFound,
                FsError::ReadOnly,
                FsError::NoAttribute,
                FsError::NameTooLong,
            ] {
                log_through(&limiter, FuseOp::Lookup, &e, || {
                    panic!("no path worked out for {e:?}")
                });
            }
        });
        assert!(lines.is_empty(), "{lines:?}");
    }

    #[test]
    fn a_render_failure_names_what_does_not_parse() {
        let limiter = RateLimiter::new(1);
        let broken = FsError::Io(Cause::Render(Arc::new(
            crate::render::RenderError::Malformed("the PFX does not parse".into()),
        )));
        let lines = json_lines(|| {
            log_through(&limiter, FuseOp::Read, &broken, || {
                "certs/web/cert.pfx".into()
            });
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            lines[0]["cause"],
            "malformed material: the PFX does not parse"
        );
    }
}
