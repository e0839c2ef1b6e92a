//! How a mount outlives the processes that serve it: a supervisor that holds the FUSE connection
//! and restarts workers on it ([`supervisor`]), workers that take a live connection up without a
//! new INIT ([`adopt`], [`worker`]) and stop without failing a request ([`gate`]), and the
//! handover of a live mount to a new binary ([`handoff`]). doc/DESIGN-restarts.md explains the
//! choices; doc/SEMANTICS.md says what survives what.

pub(crate) mod adopt;
pub(crate) mod handoff;
pub(crate) mod messages;
pub(crate) mod paths;
pub(crate) mod sd_notify;
pub(crate) mod supervisor;
pub(crate) mod worker;
