//! pacs-mirror agent: the Storage SCP, the durable spool and the index.
//!
//! # Layout
//! - [`dimse`]: typed DIMSE command sets and statuses (dicom-ul has none).
//! - [`scp`]: listeners, access control, the association loop, the C-STORE path.
//! - [`spool`]: content-addressed Part-10 files; durability by fsync + link + dir fsync.
//! - [`index`]: the sled index behind a small KV trait; versioned records.
//! - [`commit`]: the group committer (one index flush for many stores).
//! - [`part10`]: the file meta header we write; parsing received headers.
//! - [`structure`]: streaming structural check of each data set as it arrives.
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
pub mod commit;
pub mod dimse;
pub mod index;
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
