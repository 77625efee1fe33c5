//! The store of pacs-mirror: where a received object becomes durable and
//! how it is found again. No network code.
//!
//! - [`identify`]: the ingest policy (what is kept, refused, recorded as
//!   findings);
//! - [`spool`]: content-addressed object files, written and renamed safely;
//! - [`index`]: the sled index (instances, hierarchy, per-target queues,
//!   findings, drill history);
//! - [`commit`]: the group committer (Success only after file, name and
//!   index rows are durable);
//! - [`recovery`]: start-up repair and `reindex`;
//! - [`retention`]: removing files every target holds.
//!
//! Built on the DICOM layer (`pacs-mirror-dicom`); the agent and the
//! verifier are built on it.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod clock;
pub mod commit;
pub mod durable_dir;
pub mod identify;
pub mod index;
pub mod recovery;
pub mod retention;
pub mod spool;

/// Milliseconds since the Unix epoch on the agent's clock ([`clock`]):
/// anchored on the wall clock, then monotonic while the process runs, so
/// that due times and retries survive the wall clock jumping.
pub fn unix_ms() -> u64 {
    clock::now_ms()
}
