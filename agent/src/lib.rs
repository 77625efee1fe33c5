//! pacs-mirror agent: the services beside the primary PACS, built on the
//! DICOM layer (`pacs-mirror-dicom`) and the store (`pacs-mirror-store`).
//! See ARCHITECTURE.md at the repository root for the whole map.
//!
//! # Layout
//! - [`scp`]: listeners, access control, the association loop, the C-STORE
//!   path into the store's group committer.
//! - [`replicate`]: workers that drain each target's queue (C-STORE to a
//!   mirror, uploads to a bucket).
//! - [`bucket`]: object-storage targets: the bucket layout, create-only
//!   uploads, study manifests, reads for `restore`.
//! - [`backfill`]: import a folder of Part-10 files through the same durable
//!   path as network ingest.
//! - [`monitor`]: lag, silence and disk monitors that raise alerts.
//! - [`retention`]: the worker that runs the store's retention sweep.
//! - [`worker`]: the runner of the background workers (replication,
//!   retention, monitors): woken by queue writes or their next due time,
//!   never polling; their state in `/status`.
//! - [`alert`]: alerts to the log and a webhook, retried, never blocking.
//! - [`app`]: wiring from the validated configuration; run and shutdown.
//! - [`admin`]: `/status` and `/metrics` on a loopback HTTP endpoint.
//!
//! # Delivery invariant
//! A C-STORE is answered Success (0x0000) only after its file data, its name
//! in the spool and its index rows are durable (the store's `commit`).
//! Every failure is answered with a failure status; nothing already
//! acknowledged is ever removed or overwritten by ingest.
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
#[doc(hidden)]
pub mod fuzzing;
pub mod monitor;
pub mod replicate;
pub mod retention;
pub mod scp;
pub mod tls;
pub mod worker;

/// Unix time in milliseconds.
pub use pacs_mirror_store::unix_ms;

/// A Unix time in ms as ISO 8601 UTC, to the second
/// (`2026-12-07T09:36:07Z`).
pub fn iso_utc(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = utc_datetime(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
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
