//! pacs-mirror agent: the Storage SCP, the durable spool and the index.
//!
//! # Layout
//! - [`dimse`]: typed DIMSE command sets and statuses (dicom-ul has none).
//! - [`scp`]: listeners, access control, the association loop, the C-STORE path.
//! - [`spool`]: content-addressed Part-10 files; durability by fsync + link + dir fsync.
//! - [`index`]: the sled index behind a small KV trait; versioned records.
//! - [`commit`]: the group committer (one index flush for many stores).
//! - [`part10`]: the file meta header we write; parsing received headers.
//! - [`structure`]: streaming structural check of each data set as it arrives,
//!   and the reader of its identifying attributes.
//! - [`identify`]: the ingest policy: what is kept, refused, and recorded as
//!   not conformant.
//! - [`recovery`]: start-up recovery and `reindex` from the spool.
//! - [`replicate`]: workers that drain each DICOM target's queue by C-STORE.
//! - [`bucket`]: object-storage targets: the bucket layout, create-only
//!   uploads, study manifests, reads for `restore`.
//! - [`restore`]: `restore` into a PACS and `reindex --from`, reading only
//!   a bucket.
//! - [`retention`]: removes spool files every target has had long enough (opt-in).
//! - [`scu`]: associations to remote AEs: C-ECHO with an operator-facing
//!   diagnosis, C-STORE of spooled objects streamed from their files.
//! - [`qr`]: the Query/Retrieve SCU: C-FIND, C-GET (sub-operations streamed
//!   to scratch files and hashed), C-MOVE.
//! - [`census`]: study-level census of a remote AE by C-FIND, and what it
//!   lacks (shared by failover and failback).
//! - [`failover`]: `failover check`: is the mirror complete against the
//!   index; `--repair` queues the gaps again.
//! - [`failback`]: after an outage, bring what only the mirror received
//!   back to the primary (C-FIND both, C-GET, C-STORE, verify).
//! - [`backfill`]: import a folder of Part-10 files through the same durable
//!   path as network ingest.
//! - [`alert`]: alerts to the log and a webhook, retried, never blocking.
//! - [`app`]: wiring from the validated configuration; run and shutdown.
//! - [`admin`]: `/status` and `/metrics` on a loopback HTTP endpoint.
//!
//! # Delivery invariant
//! A C-STORE is answered Success (0x0000) only after its file is fsynced and
//! linked into the spool, the spool directory is fsynced, and its index rows
//! are flushed. Every failure is answered with a failure status; nothing
//! already acknowledged is ever removed or overwritten by ingest.
//!
//! # Error policy
//! Library code returns typed `thiserror` enums, one per module, carrying the
//! context an operator needs (path, UID, peer). Only the binary's `main` uses
//! `anyhow`. Errors on the C-STORE path become DIMSE statuses (see
//! [`scp::store`]); they never panic and never end the association unless the
//! peer broke the protocol.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod alert;
pub mod app;
pub mod backfill;
pub mod bucket;
pub mod census;
pub mod commit;
pub mod dimse;
pub mod failback;
pub mod failover;
#[doc(hidden)]
pub mod fuzzing;
pub mod identify;
pub mod index;
pub mod monitor;
pub mod part10;
pub mod qr;
pub mod recovery;
pub mod replicate;
pub mod restore;
pub mod retention;
pub mod scp;
pub mod scu;
pub mod spool;
pub mod structure;
#[cfg(test)]
mod testutil;

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The UTC calendar date and time of a Unix time in ms:
/// (year, month, day, hour, minute, second). Civil-from-days (H. Hinnant).
pub fn utc_datetime(ms: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}
