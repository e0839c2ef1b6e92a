//! What tests read back: per-operation counters and a request log. Values never go in here:
//! only method, path, operation, object name and version, status and who called.

use std::collections::BTreeMap;

use serde::Serialize;

/// Keeps at most this many log entries; the oldest go first.
const LOG_LIMIT: usize = 100_000;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub method: String,
    /// URL path without the query (the query never carries values, but keep it short).
    pub path: String,
    /// Operation name, `Unauthorized` is not an operation: `op` stays the routed one and `status` says 401.
    pub op: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub status: u16,
    /// testvault identity that made (or, for token endpoints, received) the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// For token endpoints: client_secret, client_certificate, federated, managed_identity, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The fault that answered instead of the vault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

#[derive(Default, Debug)]
pub struct Observed {
    next_seq: u64,
    /// Authenticated requests per operation (whatever their answer), plus `Unauthorized` for
    /// requests answered with the 401 challenge, and the identity endpoints' operations.
    counters: BTreeMap<String, u64>,
    log: std::collections::VecDeque<LogEntry>,
}

impl Observed {
    pub fn count(&mut self, counter: &str) {
        *self.counters.entry(counter.to_string()).or_default() += 1;
    }

    pub fn record(&mut self, mut entry: LogEntry) {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        if self.log.len() >= LOG_LIMIT {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }

    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.counters.clone()
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.log.iter().cloned().collect()
    }

    pub fn reset(&mut self) {
        self.counters.clear();
        self.log.clear();
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
