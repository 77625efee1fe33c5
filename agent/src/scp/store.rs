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
//! association goes on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pacs_mirror_dicom::dimse::{CStoreRq, Status};
use pacs_mirror_dicom::part10::{self, Receipt};
use pacs_mirror_dicom::structure::Walker;
use pacs_mirror_store::commit::{CommitError, Committer, Pending};
use pacs_mirror_store::identify;
use pacs_mirror_store::index::CommitOutcome;
use pacs_mirror_store::spool::{ObjectWriter, Spool, SpoolError};

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
}

/// What the store path shares across associations.
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

/// A refusal: the status and a comment for the Error Comment element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status to answer.
    pub status: Status,
    /// Why (also logged).
    pub comment: String,
}

impl Failure {
    fn new(status: Status, comment: impl Into<String>) -> Self {
        Failure {
            status,
            comment: comment.into(),
        }
    }
}

impl From<SpoolError> for Failure {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::ObjectTooLarge { .. } => {
                Failure::new(Status::OBJECT_TOO_LARGE, e.to_string())
            }
            e => Failure::new(Status::OUT_OF_RESOURCES, e.to_string()),
        }
    }
}

/// Page-cache writes of one PDU (≤ 16 MiB by configuration, 128 KiB from
/// DCMTK) and its hashing are done inline on the runtime: they take tens of
/// microseconds, and each writeback is started at once (see
/// [`ObjectWriter::write_chunk`]) so dirty pages do not pile up. Handing every
/// chunk to a blocking thread measured ~20 context switches per object on a
/// 2-core machine. Everything that can wait on the disk (fsync, rename,
/// directory fsync, a full-file parse) runs on a blocking thread.
enum State {
    Writing(Box<Writing>),
    Refusing(Failure),
}

struct Writing {
    writer: ObjectWriter,
    /// Walks the data set as it arrives: structure and identifying
    /// attributes. A flaw stops the walk, never the store.
    structure: Walker,
}

/// Identity of the association a store arrives on: the (calling AE title,
/// address) pair that every log event about the store carries as the fields
/// `calling_ae` and `peer`.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Calling AE title.
    pub calling_ae: String,
    /// Peer address and port.
    pub peer: SocketAddr,
}

/// A C-STORE in progress.
pub struct IncomingStore {
    /// When the command arrived.
    started: std::time::Instant,
    /// The request.
    pub rq: CStoreRq,
    /// Its presentation context.
    pub pc_id: u8,
    ingest: Arc<Ingest>,
    origin: Origin,
    transfer_syntax: String,
    received_at_ms: u64,
    state: State,
    reserved: u64,
}

impl IncomingStore {
    /// Start receiving. `refusal` is set by the caller when the request is
    /// refused before any byte is written (SOP class not accepted…).
    pub fn begin(
        ingest: Arc<Ingest>,
        rq: CStoreRq,
        pc_id: u8,
        transfer_syntax: &str,
        origin: Origin,
        refusal: Option<Failure>,
    ) -> Self {
        let received_at_ms = crate::unix_ms();
        let state = match refusal.map_or_else(
            || Self::start_writer(&ingest, &rq, transfer_syntax, &origin, received_at_ms),
            Err,
        ) {
            Ok(s) => s,
            Err(f) => State::Refusing(f),
        };
        IncomingStore {
            started: std::time::Instant::now(),
            rq,
            pc_id,
            ingest,
            origin,
            transfer_syntax: transfer_syntax.to_string(),
            received_at_ms,
            state,
            reserved: 0,
        }
    }

    fn start_writer(
        ingest: &Arc<Ingest>,
        rq: &CStoreRq,
        transfer_syntax: &str,
        origin: &Origin,
        received_at_ms: u64,
    ) -> Result<State, Failure> {
        for (what, uid) in [
            ("Affected SOP Instance UID", &rq.sop_instance_uid),
            ("Affected SOP Class UID", &rq.sop_class_uid),
        ] {
            identify::usable_key(uid).map_err(|e| {
                Failure::new(
                    Status::INVALID_UID,
                    format!("{what} cannot identify the object: {e}"),
                )
            })?;
        }
        let receipt = Receipt {
            source_ip: origin.peer.ip().to_string(),
            received_at_ms,
        };
        let header = part10::file_header(
            &rq.sop_class_uid,
            &rq.sop_instance_uid,
            transfer_syntax,
            &origin.calling_ae,
            &receipt,
        )
        .map_err(|e| Failure::new(Status::INVALID_UID, e.to_string()))?;
        let (file, path) = ingest.spool.begin()?;
        let writer = ObjectWriter::new(file, path, &header)?;
        Ok(State::Writing(Box::new(Writing {
            writer,
            structure: identify::walker(transfer_syntax),
        })))
    }

    /// Take one data PDV's bytes (page-cache write and hash, inline: see
    /// [`State`]; nothing here waits on the disk).
    pub fn data(&mut self, chunk: Vec<u8>) {
        let State::Writing(w) = &mut self.state else {
            return;
        };
        let Writing { writer, structure } = w.as_mut();
        // A flaw is recorded by the walker and becomes a finding at commit;
        // the bytes are kept all the same.
        let _ = structure.feed(&chunk);
        let len = chunk.len() as u64;
        if let Err(e) = self.ingest.spool.reserve(self.reserved, len) {
            self.refuse(Failure::from(e));
            return;
        }
        self.reserved += len;
        if let Err(e) = writer.write_chunk(&chunk) {
            self.refuse(Failure::from(e));
        }
    }

    /// Switch to refusing: the temp file is removed (dropping the writer) and
    /// later data PDVs are drained and dropped.
    fn refuse(&mut self, failure: Failure) {
        self.state = State::Refusing(failure);
        self.ingest.spool.release(self.reserved);
        self.reserved = 0;
    }

    /// The last PDV arrived: finish, make durable, decide the status.
    pub async fn finish(mut self) -> (CStoreRq, u8, Result<CommitOutcome, Failure>) {
        let result = self.finish_inner().await;
        let counters = &self.ingest.counters;
        if result.is_ok() {
            self.ingest
                .activity
                .stored(&self.origin.calling_ae, crate::unix_ms());
        }
        match &result {
            Ok(CommitOutcome::New) => counters.stored.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Duplicate) => counters.duplicates.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Conflict { .. }) => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
        (self.rq.clone(), self.pc_id, result)
    }

    async fn finish_inner(&mut self) -> Result<CommitOutcome, Failure> {
        let state = std::mem::replace(
            &mut self.state,
            State::Refusing(Failure::new(Status::OUT_OF_RESOURCES, "finished")),
        );
        let (writer, observed) = match state {
            State::Writing(w) => {
                let Writing { writer, structure } = *w;
                (writer, structure.finish_observing())
            }
            State::Refusing(f) => {
                self.ingest.spool.release(self.reserved);
                self.reserved = 0;
                return Err(f);
            }
        };
        let received_at = std::time::Instant::now();
        let pending = Pending {
            writer,
            observed,
            command_sop_class: self.rq.sop_class_uid.clone(),
            command_sop_instance: self.rq.sop_instance_uid.clone(),
            transfer_syntax: self.transfer_syntax.clone(),
            calling_ae: self.origin.calling_ae.clone(),
            source_ip: self.origin.peer.ip().to_string(),
            received_at_ms: self.received_at_ms,
        };
        let result = self.ingest.committer.commit(pending).await;
        let reserved = std::mem::take(&mut self.reserved);
        tracing::debug!(
            sop_instance_uid = %self.rq.sop_instance_uid.escape_debug(),
            receive_us = (received_at - self.started).as_micros() as u64,
            commit_us = received_at.elapsed().as_micros() as u64,
            "store timings"
        );
        match result {
            Ok(c) => {
                self.ingest
                    .spool
                    .commit_reservation(reserved, if c.created { c.file_bytes } else { 0 });
                if !c.findings.is_empty() && c.outcome != CommitOutcome::Duplicate {
                    self.ingest
                        .counters
                        .kept_with_findings
                        .fetch_add(1, Ordering::Relaxed);
                    let findings: Vec<String> =
                        c.findings.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        calling_ae = %self.origin.calling_ae.escape_debug(),
                        peer = %self.origin.peer,
                        sop_instance_uid = %self.rq.sop_instance_uid.escape_debug(),
                        transfer_syntax = %self.transfer_syntax.escape_debug(),
                        findings = %findings.join("; ").escape_debug(),
                        "object is not conformant; kept byte-exact as received (pacs-mirror findings list)"
                    );
                }
                Ok(c.outcome)
            }
            Err(e) => {
                self.ingest.spool.release(reserved);
                Err(match e {
                    CommitError::IdentityConflict(c) => {
                        Failure::new(Status::UID_MISMATCH, format!("identity conflict: {c}"))
                    }
                    CommitError::Spool(e) => Failure::from(e),
                    e => Failure::new(Status::OUT_OF_RESOURCES, e.to_string()),
                })
            }
        }
    }

    /// The association ended mid-object: drop everything (temp file removed).
    pub fn abandon(mut self) {
        self.refuse(Failure::new(Status::OUT_OF_RESOURCES, "abandoned"));
    }
}
