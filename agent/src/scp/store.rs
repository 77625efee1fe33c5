//! One incoming C-STORE: data PDVs stream into a spool temp file on a blocking
//! thread while the association keeps reading the network; at the last PDV the
//! header is parsed and checked against the command, the file is fsynced and
//! linked into the spool, the group committer makes it durable in the index,
//! and only then is the status decided.
//!
//! Status policy (PS3.4 B.2.3):
//! - Success (0000): the object (or an identical copy) is durable in spool and index.
//! - A700: no room (quota, free-space watermark, ENOSPC) or any local I/O
//!   failure; A701: larger than `max_object_bytes`.
//! - C000: the data set cannot be parsed far enough to read its UIDs;
//!   C001: command and data set UIDs disagree; C002: unusable UID.
//! - 0122: the SOP class is not accepted by this AE or does not match the
//!   presentation context.
//!
//! On any failure the temp file is removed and nothing is indexed; the
//! association goes on.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commit::Committer;
use crate::dimse::{self, CStoreRq, Status};
use crate::index::{CommitOutcome, InstanceRecord, hash_hex};
use crate::part10::{self, ObjectHeader, Receipt};
use crate::spool::{ObjectWriter, Spool, SpoolError};

/// Chunks in flight between the network task and the writer thread (each at
/// most one PDU): bounds memory per association.
const CHANNEL_DEPTH: usize = 4;

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
}

/// What the store path shares across associations.
pub struct Ingest {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The group committer.
    pub committer: Committer,
    /// Counters.
    pub counters: IngestCounters,
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
            SpoolError::ObjectTooLarge { .. } => Failure::new(Status::OBJECT_TOO_LARGE, e.to_string()),
            e => Failure::new(Status::OUT_OF_RESOURCES, e.to_string()),
        }
    }
}

enum Msg {
    Chunk(Vec<u8>),
    End,
}

struct Received {
    header: ObjectHeader,
    hash: crate::index::Hash,
    dataset_bytes: u64,
    file_bytes: u64,
    /// The spool directory holding the file. It is fsynced before indexing
    /// even when the file already existed: another association may have
    /// linked it an instant ago and not be committed yet.
    dir: std::path::PathBuf,
    /// Whether this store linked the file (false: identical bytes were there).
    created: bool,
}

enum State {
    Writing {
        tx: mpsc::Sender<Msg>,
        task: JoinHandle<Result<Received, Failure>>,
    },
    Refusing(Failure),
}

/// Identity of the association a store arrives on.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Calling AE title.
    pub calling_ae: String,
    /// Peer address.
    pub peer_ip: IpAddr,
}

/// A C-STORE in progress.
pub struct IncomingStore {
    /// The request.
    pub rq: CStoreRq,
    /// Its presentation context.
    pub pc_id: u8,
    ingest: Arc<Ingest>,
    origin: Origin,
    transfer_syntax: String,
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
        let state = match refusal.map_or_else(
            || Self::start_writer(&ingest, &rq, transfer_syntax, &origin),
            Err,
        ) {
            Ok(s) => s,
            Err(f) => State::Refusing(f),
        };
        IncomingStore {
            rq,
            pc_id,
            ingest,
            origin,
            transfer_syntax: transfer_syntax.to_string(),
            state,
            reserved: 0,
        }
    }

    fn start_writer(
        ingest: &Arc<Ingest>,
        rq: &CStoreRq,
        transfer_syntax: &str,
        origin: &Origin,
    ) -> Result<State, Failure> {
        for (what, uid) in [
            ("Affected SOP Instance UID", &rq.sop_instance_uid),
            ("Affected SOP Class UID", &rq.sop_class_uid),
        ] {
            dimse::check_uid(uid)
                .map_err(|e| Failure::new(Status::INVALID_UID, format!("{what}: {e}")))?;
        }
        let receipt = Receipt {
            source_ip: origin.peer_ip.to_string(),
            received_at_ms: crate::unix_ms(),
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
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let spool = ingest.spool.clone();
        let expect = (rq.sop_class_uid.clone(), rq.sop_instance_uid.clone());
        let task = tokio::task::spawn_blocking(move || {
            write_object(rx, file, path, &header, &expect, &spool)
        });
        Ok(State::Writing { tx, task })
    }

    /// Take one data PDV's bytes.
    pub async fn data(&mut self, chunk: Vec<u8>) {
        let State::Writing { tx, .. } = &self.state else {
            return;
        };
        let len = chunk.len() as u64;
        if let Err(e) = self.ingest.spool.reserve(self.reserved, len) {
            self.refuse(Failure::from(e)).await;
            return;
        }
        self.reserved += len;
        if tx.send(Msg::Chunk(chunk)).await.is_err() {
            // The writer stopped on an error: collect it now.
            let failure = self.collect_writer_error().await;
            self.refuse(failure).await;
        }
    }

    async fn collect_writer_error(&mut self) -> Failure {
        let state = std::mem::replace(
            &mut self.state,
            State::Refusing(Failure::new(Status::OUT_OF_RESOURCES, "writer stopped")),
        );
        match state {
            State::Writing { task, .. } => match task.await {
                Ok(Err(f)) => f,
                Ok(Ok(_)) => Failure::new(Status::OUT_OF_RESOURCES, "writer ended early"),
                Err(e) => Failure::new(Status::OUT_OF_RESOURCES, format!("writer failed: {e}")),
            },
            State::Refusing(f) => f,
        }
    }

    /// Switch to refusing: the writer is told to stop (it removes its temp
    /// file) and later data PDVs are drained and dropped.
    async fn refuse(&mut self, failure: Failure) {
        if let State::Writing { tx, task } =
            std::mem::replace(&mut self.state, State::Refusing(failure))
        {
            drop(tx); // closed without End: the writer aborts and removes the temp file
            let _ = task.await;
        }
        self.ingest.spool.release(self.reserved);
        self.reserved = 0;
    }

    /// The last PDV arrived: finish, make durable, decide the status.
    pub async fn finish(mut self) -> (CStoreRq, u8, Result<CommitOutcome, Failure>) {
        let result = self.finish_inner().await;
        let counters = &self.ingest.counters;
        match &result {
            Ok(CommitOutcome::New) => counters.stored.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Duplicate) => counters.duplicates.fetch_add(1, Ordering::Relaxed),
            Ok(CommitOutcome::Conflict { .. }) => counters.conflicts.fetch_add(1, Ordering::Relaxed),
            Err(_) => counters.failed.fetch_add(1, Ordering::Relaxed),
        };
        (self.rq.clone(), self.pc_id, result)
    }

    async fn finish_inner(&mut self) -> Result<CommitOutcome, Failure> {
        let state = std::mem::replace(
            &mut self.state,
            State::Refusing(Failure::new(Status::OUT_OF_RESOURCES, "finished")),
        );
        let (tx, task) = match state {
            State::Writing { tx, task } => (tx, task),
            State::Refusing(f) => {
                self.ingest.spool.release(self.reserved);
                self.reserved = 0;
                return Err(f);
            }
        };
        let _ = tx.send(Msg::End).await;
        drop(tx);
        let joined = task.await;
        let reserved = std::mem::take(&mut self.reserved);
        let received = match joined {
            Ok(Ok(r)) => r,
            Ok(Err(f)) => {
                self.ingest.spool.release(reserved);
                return Err(f);
            }
            Err(e) => {
                self.ingest.spool.release(reserved);
                return Err(Failure::new(Status::OUT_OF_RESOURCES, format!("writer failed: {e}")));
            }
        };
        let h = &received.header;
        let record = InstanceRecord {
            sop_instance_uid: h.sop_instance_uid.clone(),
            sop_class_uid: h.sop_class_uid.clone(),
            transfer_syntax_uid: self.transfer_syntax.clone(),
            blake3: hash_hex(&received.hash),
            dataset_bytes: received.dataset_bytes,
            file_bytes: received.file_bytes,
            patient_id: h.patient_id.clone(),
            study_instance_uid: h.study_instance_uid.clone(),
            series_instance_uid: h.series_instance_uid.clone(),
            calling_ae: self.origin.calling_ae.clone(),
            source_ip: self.origin.peer_ip.to_string(),
            received_at_ms: h.receipt.as_ref().map_or_else(crate::unix_ms, |r| r.received_at_ms),
        };
        let created = received.created;
        let outcome = self
            .ingest
            .committer
            .commit(record, received.hash, Some(received.dir))
            .await;
        // The file is durable in the spool whatever the index said; count it.
        self.ingest
            .spool
            .commit_reservation(reserved, if created { received.file_bytes } else { 0 });
        outcome.map_err(|e| Failure::new(Status::OUT_OF_RESOURCES, e.to_string()))
    }

    /// The association ended mid-object: drop everything (temp file removed).
    pub async fn abandon(mut self) {
        self.refuse(Failure::new(Status::OUT_OF_RESOURCES, "abandoned"))
            .await;
    }
}

/// The writer thread: temp file, parse, check, fsync, link.
fn write_object(
    mut rx: mpsc::Receiver<Msg>,
    file: std::fs::File,
    path: std::path::PathBuf,
    header: &[u8],
    expect: &(String, String),
    spool: &Spool,
) -> Result<Received, Failure> {
    let mut writer = ObjectWriter::new(file, path, header)?;
    loop {
        match rx.blocking_recv() {
            Some(Msg::Chunk(c)) => writer.write_chunk(&c)?,
            Some(Msg::End) => break,
            // Sender dropped without End: abandoned; the writer's Drop removes the file.
            None => return Err(Failure::new(Status::OUT_OF_RESOURCES, "abandoned")),
        }
    }
    let parsed = part10::read_header(writer.path())
        .map_err(|e| Failure::new(Status::UNPARSEABLE_DATA_SET, e.to_string()))?;
    let (class, instance) = expect;
    if parsed.sop_instance_uid != *instance {
        return Err(Failure::new(
            Status::UID_MISMATCH,
            format!(
                "SOP Instance UID {} in data set, {instance} in command",
                parsed.sop_instance_uid
            ),
        ));
    }
    if parsed.sop_class_uid != *class {
        return Err(Failure::new(
            Status::UID_MISMATCH,
            format!("SOP Class UID {} in data set, {class} in command", parsed.sop_class_uid),
        ));
    }
    for (what, uid) in [
        ("Study Instance UID", &parsed.study_instance_uid),
        ("Series Instance UID", &parsed.series_instance_uid),
    ] {
        dimse::check_uid(uid).map_err(|e| Failure::new(Status::INVALID_UID, format!("{what}: {e}")))?;
    }
    let written = writer.finish()?;
    let installed = spool.install(written.temp.path(), &written.hash)?;
    let file_bytes = written.file_bytes();
    let (hash, dataset_bytes) = (written.hash, written.dataset_bytes);
    written.temp.keep();
    Ok(Received {
        header: parsed,
        hash,
        dataset_bytes,
        file_bytes,
        dir: installed.dir,
        created: installed.created,
    })
}
