//! The verifier: proving that the copies are intact and restore.
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

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod drill;
pub mod scrub;
pub mod service;

pub use scrub::{Finding, FindingKind, ScrubReport, scrub_spool};
