//! The group committer: makes received objects durable — spool file and index
//! rows — many at a time, so that concurrent associations share device
//! flushes instead of paying three each.
//!
//! # What one batch does, in this order
//! 1. fsync the data of every temp file of the batch (their writeback was
//!    started as the chunks arrived, so these mostly wait on one journal
//!    commit);
//! 2. identify each object by its C-STORE command and the attributes its
//!    walk captured ([`crate::identify`]): an identity conflict is refused,
//!    anything else non-conformant is kept with its findings;
//! 3. rename each into `objects/` with `RENAME_NOREPLACE` (never replacing a
//!    durable object: identical contents leave the temp file to be removed);
//! 4. fsync each distinct `objects/<hh>` directory once;
//! 5. apply each object's index rows as one atomic batch, one object after the
//!    other (so duplicate and conflict detection sees every earlier object,
//!    even within the batch);
//! 6. flush the index (one fsync), then answer every job.
//!
//! # Invariants
//! - A job is answered `Ok` only after steps 1–6 all succeeded for it: its file
//!   data, its name, and its index rows are durable. No name appears under
//!   `objects/` before its data is durable; no index row is written before its
//!   file's name is durable.
//! - A failed step fails only the jobs it concerns (their temp files are
//!   removed), except the index flush, which fails every job of the batch.
//!   Rows applied but not flushed may become durable later: harmless, their
//!   files are durable, and nothing was acknowledged.
//!
//! # Crash behaviour
//! Before step 3: only temp files exist (removed at start-up). Between 3 and 6:
//! files under `objects/` without index rows (indexed at start-up by recovery,
//! after re-hashing). Nothing acknowledged is lost in any case.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::identify;
use crate::index::{CommitOutcome, Finding, Index, InstanceRecord, hash_hex};
use crate::spool::{ObjectWriter, Spool, SpoolError, sync_dir};
use crate::structure::Observed;

/// Largest number of objects committed by one flush.
const MAX_BATCH: usize = 256;

/// A received object waiting to be made durable.
#[derive(Debug)]
pub struct Pending {
    /// The temp file, complete but not yet fsynced.
    pub writer: ObjectWriter,
    /// The walk of the data set as it arrived: its verdict and the
    /// identifying attributes it captured ([`identify::walker`]).
    pub observed: Observed,
    /// The C-STORE's Affected SOP Class UID.
    pub command_sop_class: String,
    /// The C-STORE's Affected SOP Instance UID.
    pub command_sop_instance: String,
    /// The negotiated transfer syntax.
    pub transfer_syntax: String,
    /// Calling AE title.
    pub calling_ae: String,
    /// Peer address.
    pub source_ip: String,
    /// Receive time (Unix ms), as written in the file meta.
    pub received_at_ms: u64,
}

/// A committed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// What the index did.
    pub outcome: CommitOutcome,
    /// False when identical contents were already in the spool.
    pub created: bool,
    /// The spool file's length.
    pub file_bytes: u64,
    /// The SOP Instance UID.
    pub sop_instance_uid: String,
    /// What is not conformant about it (kept all the same).
    pub findings: Vec<Finding>,
}

/// Why an object was not committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Command and data set name different SOP instances.
    #[error(transparent)]
    IdentityConflict(#[from] identify::IdentityConflict),
    /// Spool I/O (fsync, rename…).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The index failed.
    #[error("index: {0}")]
    Index(String),
    /// The committer is gone.
    #[error("index committer stopped")]
    Stopped,
}

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Result<Committed, CommitError>>,
}

/// Handle to the committer thread. Cloning shares the thread; it stops when
/// every handle is dropped.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Committer {
    /// Start the committer thread; new objects get an outbox row for each of
    /// `targets`.
    pub fn start(spool: Arc<Spool>, index: Index, targets: Vec<String>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("pacs-mirror-commit".into())
            .spawn(move || run(&spool, &index, &targets, &rx));
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                // Without the thread every commit fails with Stopped: stores
                // are refused, never falsely acknowledged.
                tracing::error!(error = %e, "cannot start the committer thread");
                None
            }
        };
        Committer {
            tx,
            thread: Arc::new(std::sync::Mutex::new(thread)),
        }
    }

    /// Drop this handle and, if it is the last one, wait for the committer
    /// thread to end (it ends once every handle is gone), so that its index
    /// handle is closed when this returns. Every submitted job has had its
    /// answer by then.
    pub fn finish(self) {
        let Committer { tx, thread } = self;
        drop(tx);
        if Arc::strong_count(&thread) == 1
            && let Ok(mut slot) = thread.lock()
            && let Some(handle) = slot.take()
        {
            let _ = handle.join();
        }
    }

    /// Make one received object durable. Returns once file and index rows are
    /// durable, or with the reason it was not stored (its temp file removed).
    pub async fn commit(&self, pending: Pending) -> Result<Committed, CommitError> {
        self.submit(pending)?.wait().await
    }

    /// Hand one object to the committer and return at once; the [`Ticket`]
    /// gives the outcome (the same as [`Committer::commit`]'s) once file and
    /// index rows are durable. Used by `backfill`, whose reader threads keep
    /// several objects in flight so that one batch covers many of them.
    pub fn submit(&self, pending: Pending) -> Result<Ticket, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { pending, reply })
            .map_err(|_| CommitError::Stopped)?;
        Ok(Ticket { rx })
    }
}

/// The outcome of a submitted object, to come.
#[derive(Debug)]
pub struct Ticket {
    rx: oneshot::Receiver<Result<Committed, CommitError>>,
}

impl Ticket {
    /// Wait for the outcome (async).
    pub async fn wait(self) -> Result<Committed, CommitError> {
        self.rx.await.map_err(|_| CommitError::Stopped)?
    }

    /// Wait for the outcome, blocking the calling thread. Call it from a
    /// plain thread, never from inside an async runtime (tokio panics there).
    pub fn wait_blocking(self) -> Result<Committed, CommitError> {
        self.rx.blocking_recv().map_err(|_| CommitError::Stopped)?
    }
}

fn run(spool: &Spool, index: &Index, targets: &[String], rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        commit_batch(spool, index, targets, jobs);
        tracing::trace!(objects = n, "group commit");
    }
}

fn commit_batch(spool: &Spool, index: &Index, targets: &[String], jobs: Vec<Job>) {
    // Steps 1–3, per object.
    let mut placed = Vec::with_capacity(jobs.len());
    for Job { pending, reply } in jobs {
        match durable_file(spool, pending) {
            Ok((record, hash, installed)) => placed.push((record, hash, installed, reply)),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    // Step 4: each directory once.
    let dirs: BTreeSet<PathBuf> = placed.iter().map(|(_, _, i, _)| i.dir.clone()).collect();
    let mut failed_dirs = BTreeSet::new();
    for d in dirs {
        if let Err(e) = sync_dir(&d) {
            tracing::error!(error = %e, "spool directory fsync failed");
            failed_dirs.insert(d);
        }
    }
    // Step 5: index rows, one object at a time.
    let now = crate::unix_ms();
    let mut results = Vec::with_capacity(placed.len());
    for (record, hash, installed, reply) in placed {
        let result = if failed_dirs.contains(&installed.dir) {
            Err(CommitError::Spool(SpoolError::Io {
                op: "fsync dir",
                path: installed.dir.clone(),
                source: std::io::Error::other("directory fsync failed"),
            }))
        } else {
            index
                .commit_instance(&record, &hash, targets, now)
                .map(|outcome| Committed {
                    outcome,
                    created: installed.created,
                    file_bytes: record.file_bytes,
                    sop_instance_uid: record.sop_instance_uid.clone(),
                    findings: record.findings.clone(),
                })
                .map_err(|e| CommitError::Index(e.to_string()))
        };
        results.push((result, reply));
    }
    // Step 6: one flush for the batch.
    if results.iter().any(|(r, _)| r.is_ok())
        && let Err(e) = index.flush()
    {
        tracing::error!(error = %e, "index flush failed");
        for (r, _) in &mut results {
            if r.is_ok() {
                *r = Err(CommitError::Index(format!("flush: {e}")));
            }
        }
    }
    for (result, reply) in results {
        let _ = reply.send(result);
    }
}

/// Steps 1–3 for one object: fsync data, identify, rename into place.
fn durable_file(
    spool: &Spool,
    p: Pending,
) -> Result<(InstanceRecord, crate::index::Hash, crate::spool::Installed), CommitError> {
    let id = identify::identify(&p.command_sop_class, &p.command_sop_instance, &p.observed)?;
    let written = p.writer.finish()?;
    let installed = spool.place(written.temp.path(), &written.hash)?;
    let record = InstanceRecord {
        sop_instance_uid: id.sop_instance_uid,
        sop_class_uid: id.sop_class_uid,
        transfer_syntax_uid: p.transfer_syntax,
        blake3: hash_hex(&written.hash),
        dataset_bytes: written.dataset_bytes,
        file_bytes: written.file_bytes(),
        patient_id: id.patient_id,
        study_instance_uid: id.study_instance_uid,
        series_instance_uid: id.series_instance_uid,
        calling_ae: p.calling_ae,
        source_ip: p.source_ip,
        received_at_ms: p.received_at_ms,
        study_date: id.study_date,
        modality: id.modality,
        findings: id.findings,
    };
    let hash = written.hash;
    written.temp.keep();
    Ok((record, hash, installed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use crate::part10::Receipt;
    use crate::spool::SpoolLimits;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const TS: &str = "1.2.840.10008.1.2.1";

    fn dataset(sop: &str, patient: &str) -> Vec<u8> {
        crate::testutil::dataset(CT, sop, patient)
    }

    fn pending(spool: &Spool, command_sop: &str, body: &[u8]) -> Pending {
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 7,
        };
        let header = crate::part10::file_header(CT, command_sop, TS, "SCU", &receipt).unwrap();
        let (file, path) = spool.begin().unwrap();
        let mut writer = ObjectWriter::new(file, path, &header).unwrap();
        writer.write_chunk(body).unwrap();
        let mut walker = identify::walker(TS);
        let _ = walker.feed(body);
        Pending {
            observed: walker.finish_observing(),
            writer,
            command_sop_class: CT.into(),
            command_sop_instance: command_sop.into(),
            transfer_syntax: TS.into(),
            calling_ae: "SCU".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: 7,
        }
    }

    fn setup() -> (tempfile::TempDir, Arc<Spool>, Index, Committer) {
        let d = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap());
        let index = Index::new(Arc::new(MemKv::default()));
        let c = Committer::start(spool.clone(), index.clone(), vec!["t".into()]);
        (d, spool, index, c)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_identical_stores_make_one_object() {
        let (_d, spool, index, c) = setup();
        let body = dataset("1.2.3.9", "P");
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let p = pending(&spool, "1.2.3.9", &body);
            tasks.push(tokio::spawn(async move { c.commit(p).await }));
        }
        let mut created = 0;
        let mut new = 0;
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            created += usize::from(r.created);
            new += usize::from(r.outcome == CommitOutcome::New);
            assert!(!matches!(r.outcome, CommitOutcome::Conflict { .. }));
        }
        assert_eq!((created, new), (1, 1));
        assert_eq!(index.stats().unwrap().outbox.get("t"), Some(&1));
        let (objects, _) = spool.list_objects().unwrap();
        assert_eq!(objects.len(), 1);
        let stored = std::fs::read(&objects[0].1).unwrap();
        assert!(stored.ends_with(&body));
        assert_eq!(std::fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conflicts_are_refused_and_garbage_is_kept_with_findings() {
        let (_d, spool, index, c) = setup();
        let body = dataset("1.2.3.9", "P");
        let r = c.commit(pending(&spool, "1.2.3.8", &body)).await;
        assert!(matches!(r, Err(CommitError::IdentityConflict(_))), "{r:?}");
        assert_eq!(index.stats().unwrap().instances, 0);
        assert_eq!(spool.list_objects().unwrap().0.len(), 0);
        assert_eq!(std::fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
        // Bytes that are no data set at all, under a command that names
        // them: kept byte-exact, with what is wrong.
        let r = c
            .commit(pending(&spool, "1.2.3.8", &[0xFF; 9]))
            .await
            .unwrap();
        assert_eq!(r.outcome, CommitOutcome::New);
        let classes: Vec<_> = r.findings.iter().map(|f| f.class).collect();
        use crate::index::FindingClass as F;
        assert_eq!(
            classes,
            [
                F::MissingAttribute,
                F::MissingAttribute,
                F::MissingAttribute,
                F::MissingAttribute,
                F::Structure
            ]
        );
        let (objects, _) = spool.list_objects().unwrap();
        assert_eq!(objects.len(), 1);
        assert!(std::fs::read(&objects[0].1).unwrap().ends_with(&[0xFF; 9]));
        let v = index.versions("1.2.3.8").unwrap();
        assert_eq!(v[0].findings, r.findings);
        assert_eq!(v[0].study_instance_uid, "");
        // a conflicting second version is kept beside the first
        c.commit(pending(&spool, "1.2.3.9", &body)).await.unwrap();
        let other = dataset("1.2.3.9", "Q");
        let r = c.commit(pending(&spool, "1.2.3.9", &other)).await.unwrap();
        assert!(matches!(r.outcome, CommitOutcome::Conflict { .. }));
        assert_eq!(spool.list_objects().unwrap().0.len(), 3);
        assert_eq!(index.versions("1.2.3.9").unwrap().len(), 2);
    }
}
