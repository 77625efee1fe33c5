//! The verifier: everything that reads copies back, to prove they are
//! intact and restore, or to bring them home. Built on the DICOM layer
//! (`pacs-mirror-dicom`), the store (`pacs-mirror-store`) and the agent's
//! services (bucket client, alerts, listeners); the agent never depends on
//! the verifier (the binary plugs it in as an `app::Extension`).
//!
//! - [`drill`]: restore drills: retrieve studies back from a target (C-GET
//!   or C-MOVE from a mirror PACS, GET from a bucket), compare every instance with the
//!   index (MATCH, COERCED, MISMATCH, MISSING, EXTRA) and time the recovery.
//! - [`service`]: drills inside the running agent: cron schedules, the
//!   `/drills` report, drill gauges, alerts.
//! - [`scrub`]: the local spool scrub: every object the index lists is read
//!   back from the spool and re-hashed, so a flipped bit, a truncated or a
//!   missing file is found before anyone needs it (like `restic check
//!   --read-data`). Findings are graded data, each with what to do about it.
//! - [`qr`]: the Query/Retrieve SCU: C-FIND, C-GET (sub-operations streamed
//!   to scratch files and hashed), C-MOVE.
//! - [`census`]: study-level census of a remote AE by C-FIND, and what it
//!   lacks (shared by failover and failback).
//! - [`failover`]: `failover check`: is the mirror complete against the
//!   index; `--repair` queues the gaps again.
//! - [`failback`]: after an outage, bring what only the mirror received
//!   back to the primary (C-FIND both, C-GET, C-STORE, verify).
//! - [`restore`]: `restore` into a PACS and `reindex --from`, reading only
//!   a bucket.
//! - [`console`]: the operator's web console on the admin endpoint (it sees
//!   both the agent's status and the drills).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod census;
pub mod console;
pub mod drill;
pub mod failback;
pub mod failover;
pub mod qr;
pub mod restore;
pub mod scrub;
pub mod service;

pub use scrub::{Finding, FindingKind, ScrubReport, scrub_spool};
