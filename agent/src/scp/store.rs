//! One incoming C-STORE: each data PDV (at most one PDU, `max_pdu_bytes`) is
//! appended to a spool temp file, hashed and walked as it arrives (the walk
//! checks the structure and reads the identifying attributes: one pass, see
//! [`pacs_mirror_store::identify`]); at the last PDV the group committer
//! (`pacs_mirror_store::commit`) identifies the object, renames it into the spool,
//! indexes it, and flushes file data, directory and index; only once all
//! three are durable is the status decided.
//!
//! Status policy (PS3.4 B.2.3), following the ingest policy of
//! [`pacs_mirror_store::identify`] (a faithful copy, not a validator):
//! - Success (0000): the object (or an identical copy) is durable in spool
//!   and index — conformant or not: what is wrong with it (no Study UID,
//!   odd UIDs, a data set that does not parse…) is recorded as findings,
//!   logged once as a WARN, counted and shown.
//! - A700: no room (quota, free-space watermark, ENOSPC) or any local I/O
//!   failure; A701: larger than `max_object_bytes`.
//! - C001: command and data set name different SOP Instance UIDs.
//! - C002: a command UID unusable as an index key (empty, control
//!   characters, over 1 KiB).
//! - 0122: the SOP class is not accepted by this AE or does not match the
//!   presentation context.
//!
//! On any failure the temp file is removed and nothing is indexed; the
//! association goes on. The receiving itself (checks, header, writing,
//! hashing, walking) is [`super::receive`]'s; this module is the spool's
//! [`StoreSink`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pacs_mirror_dicom::dimse::{CStoreRq, Status};
use pacs_mirror_store::commit::{CommitError, Committer, Pending};
use pacs_mirror_store::index::CommitOutcome;
use pacs_mirror_store::spool::{Reservation, Spool};

use super::receive::{Failure, Origin, Received, StoreSink, check_command_uids};

/// Counters of the ingest path.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Stores answered Success with a new object.
    pub stored: AtomicU64,
    /// Stores answered Success as identical re-sends.
    pub duplicates: AtomicU64,
    /// Stores answered Success as a new version of a held SOP instance.
    pub conflicts: AtomicU64,
    /// Stores answered with a failure status.
    pub failed: AtomicU64,
    /// New objects kept with findings (not conformant).
    pub kept_with_findings: AtomicU64,
    /// Bytes of every object answered Success (re-sends included): what
    /// the senders sent, for the ingest rate.
    pub received_bytes: AtomicU64,
    /// Storage commitment requests answered.
    pub commitment_requests: AtomicU64,
    /// Objects reported committed.
    pub commitment_committed: AtomicU64,
    /// Objects reported failed.
    pub commitment_failed: AtomicU64,
    /// Reports delivered on a new association (those on the request's own
    /// association are not counted here).
    pub commitment_reports_sent: AtomicU64,
    /// Reports that could not be delivered (no configured remote AE, or
    /// every attempt failed).
    pub commitment_reports_undelivered: AtomicU64,
}

/// What the store path shares across associations: the spool's
/// [`StoreSink`].
pub struct Ingest {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The group committer.
    pub committer: Committer,
    /// Counters.
    pub counters: IngestCounters,
    /// Who sent what from where, for the monitors.
    pub activity: Arc<crate::monitor::Activity>,
}

impl StoreSink for Ingest {
    /// The room held in the spool for the object.
    type Ticket = Reservation;
    type Kept = CommitOutcome;

    fn open(
        &self,
        rq: &CStoreRq,
        _origin: &Origin,
    ) -> Result<(Reservation, File, PathBuf), Failure> {
        check_command_uids(rq)?;
        let (file, path) = self.spool.begin()?;
        Ok((self.spool.reservation(), file, path))
    }

    fn scratch(&self) -> bool {
        false
    }

    fn admit(&self, reservation: &mut Reservation, len: u64) -> Result<(), Failure> {
        Ok(reservation.grow(len)?)
    }

    /// Make it durable (the group committer), then decide the status.
    async fn keep(&self, object: Received<Reservation>) -> Result<CommitOutcome, Failure> {
        let Received {
            ticket: reservation,
            writer,
            observed,
            rq,
            transfer_syntax,
            origin,
            received_at_ms,
            started,
            last_byte_at,
            ..
        } = object;
        let pending = Pending {
            writer,
            observed,
            command_sop_class: rq.sop_class_uid.clone(),
            command_sop_instance: rq.sop_instance_uid.clone(),
            transfer_syntax: transfer_syntax.clone(),
            calling_ae: origin.calling_ae.clone(),
            source_ip: origin.peer.ip().to_string(),
            received_at_ms,
        };
        let result = self.committer.commit(pending).await;
        tracing::debug!(
            sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
            receive_us = (last_byte_at - started).as_micros() as u64,
            commit_us = last_byte_at.elapsed().as_micros() as u64,
            "store timings"
        );
        match result {
            Ok(c) => {
                reservation.commit(if c.created { c.file_bytes } else { 0 });
                self.counters
                    .received_bytes
                    .fetch_add(c.file_bytes, Ordering::Relaxed);
                if !c.findings.is_empty() && c.outcome != CommitOutcome::Duplicate {
                    self.counters
                        .kept_with_findings
                        .fetch_add(1, Ordering::Relaxed);
                    let findings: Vec<String> =
                        c.findings.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        calling_ae = %origin.calling_ae.escape_debug(),
                        peer = %origin.peer,
                        sop_instance_uid = %rq.sop_instance_uid.escape_debug(),
                        transfer_syntax = %transfer_syntax.escape_debug(),
                        findings = %findings.join("; ").escape_debug(),
                        "object is not conformant; kept byte-exact as received (pacs-mirror findings list)"
                    );
                }
                Ok(c.outcome)
            }
            // The reservation is released as it drops.
            Err(e) => Err(match e {
                CommitError::IdentityConflict(c) => {
                    Failure::new(Status::UID_MISMATCH, format!("identity conflict: {c}"))
                }
                CommitError::Spool(e) => Failure::from(e),
                e => Failure::local(e.to_string()),
            }),
        }
    }

    fn finished(&self, origin: &Origin, result: Result<&CommitOutcome, &Failure>) {
        if result.is_ok() {
            self.activity.stored(&origin.calling_ae, crate::unix_ms());
        }
        let c = &self.counters;
        match result {
            Ok(CommitOutcome::New) => c.stored.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Duplicate) => c.duplicates.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Conflict { .. }) => c.conflicts.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}
