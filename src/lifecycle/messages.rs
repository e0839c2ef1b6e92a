//! What kvfs processes say to each other (JSON over [`crate::ipc`] channels). Secrets never pass
//! here: only the connection's negotiation record, file descriptors, names and reasons.

use serde::{Deserialize, Serialize};

use crate::metrics::WorkerStarts;

/// What an earlier worker of the same mount chose, so a restarted one starts at once: the auth
/// method `auto` settled on (no second round of probing), the tenant learned from the vault.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hints {
    pub auth: Option<String>,
    pub tenant_id: Option<String>,
}

/// How to serve a connection. The file descriptors travel with the message, in this order:
/// `/dev/fuse`, the inode journal, then `readers` clones of `/dev/fuse` that the supervisor keeps
/// open, one per session thread, then the metrics listener when `metrics` says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Serve {
    /// The INIT request the kernel sent when the mount was made.
    pub init: Vec<u8>,
    /// Whether a worker already answered it (every worker but the first).
    pub init_answered: bool,
    /// Replay requests a dead worker had read (`FUSE_NOTIFY_RESEND`); when false, the worker
    /// reads through a clone of its own, so that its death fails those requests instead.
    pub resend: bool,
    /// Numbers this worker's handles, so they never collide with a predecessor's.
    pub generation: u32,
    pub readers: u32,
    /// A listening TCP socket for `--metrics-addr` comes last.
    #[serde(default)]
    pub metrics: bool,
    /// How many workers the mount has had to start, for the metrics.
    #[serde(default)]
    pub starts: WorkerStarts,
}

/// Whether a preparing worker gets its first token before it says it is prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FirstToken {
    /// A new mount fetches nothing before it is used.
    Later,
    /// Replacing a dead worker: readers are waiting, so try (bounded), but serve either way: a
    /// worker that cannot authenticate still answers them, with errors.
    Try,
    /// Taking a mount over from a running kvfs: a worker that cannot get a token must not
    /// replace one that works, so failing to get one fails the preparation.
    Require,
}

/// Supervisor to worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// Build the credential, the vault client and the cache; answer `Prepared` or `Failed`.
    Prepare {
        hints: Hints,
        first_token: FirstToken,
    },
    /// Serve the connection; answer `Serving`.
    Serve(Serve),
    /// Stop taking requests, answer those in flight, say `Drained` and exit.
    Stop,
}

/// Worker to supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub(crate) enum FromWorker {
    Prepared {
        hints: Hints,
    },
    /// Cannot serve (bad credentials, say): the reason, in one line, for the user.
    Failed {
        reason: String,
    },
    Serving,
    Drained,
    /// The connection ended under the worker (an external unmount).
    Ended,
}

/// Between a running supervisor (the incumbent) and a new `kvfs mount` for the same mountpoint
/// (the successor), over the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub(crate) enum Handoff {
    /// Successor: who I am and what I would serve.
    Hello {
        version: String,
        vault_url: String,
        /// My network namespace (`net:[4026531840]`): only a successor in the incumbent's own
        /// can serve on the incumbent's metrics socket. Absent from older versions.
        #[serde(default)]
        netns: Option<String>,
    },
    /// Incumbent: no (another vault, say).
    Refused { reason: String },
    /// Incumbent: the connection (fds: `/dev/fuse`, the journal, then the metrics listener
    /// when `metrics` says so); my worker still serves.
    Offer {
        init: Vec<u8>,
        resend: bool,
        generation: u32,
        hints: Hints,
        /// Absent from older kvfs versions, which have no metrics listener to pass on.
        #[serde(default)]
        metrics: bool,
        #[serde(default)]
        starts: WorkerStarts,
    },
    /// Successor: my worker is prepared; stop yours.
    Ready,
    /// Successor: I cannot take over after all; carry on.
    Abort { reason: String },
    /// Incumbent: my worker has stopped; the connection is yours to serve.
    Stopped,
    /// Successor: my worker serves.
    Done,
    /// Incumbent: I have let go of everything (the control socket is free).
    Bye,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let m = ToWorker::Prepare {
            hints: Hints {
                auth: Some("managed-identity".into()),
                tenant_id: None,
            },
            first_token: FirstToken::Try,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"msg":"prepare""#), "{text}");
        assert_eq!(serde_json::from_str::<ToWorker>(&text).unwrap(), m);
        let h: Handoff = serde_json::from_str(r#"{"msg":"bye"}"#).unwrap();
        assert_eq!(h, Handoff::Bye);
    }
}
