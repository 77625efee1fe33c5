//! The group committer: makes received objects durable — spool file, its
//! name, and index rows — many at a time, so that concurrent associations
//! share device flushes; and with the three flushes of a batch (files,
//! directories, index) issued at the same time instead of one after the
//! other, so that a store waits for about one flush, not three.
//!
//! # What one batch does, in this order
//! 1. identify each object by its C-STORE command and the attributes its
//!    walk captured ([`crate::identify`]): an identity conflict is refused,
//!    anything else non-conformant is kept with its findings; and rename
//!    its temp file into `objects/` with `RENAME_NOREPLACE` (never
//!    replacing an existing object: identical contents leave the temp file
//!    to be removed). Nothing is durable yet; the writeback of the file data
//!    was started as the chunks arrived;
//! 2. apply each object's index rows, together with its pending marker
//!    (`p/<blake3>`, see `crate::index::pending`), as one atomic batch, one
//!    object after the other (so duplicate and conflict detection sees every
//!    earlier object, even within the batch). The outbox rows are held back
//!    in the marker. The first of these writes also carries the previous
//!    batch's finalize operations (step 5);
//! 3. flush, at the same time on three threads, each started after steps
//!    1–2 are done for the whole batch: the data of each object file
//!    (`fdatasync`, by the descriptor that wrote it, or by its path when the
//!    name existed already), each distinct `objects/<hh>` directory
//!    (`fsync`), and the index (sled flush + `fdatasync` of its log). Their
//!    order is free for correctness: rows durable before their file are
//!    covered by their markers. (Measured on ext4, 12 KB objects, 1 and 4
//!    associations: concurrent 1.6–3× the stores/s of file → directory →
//!    index one after the other; index first, then the others in turn, was
//!    no faster than that.);
//! 4. once all three are done, answer every job: Success needs its file's
//!    data flush, its directory flush and the index flush, each started
//!    after its rename and its rows;
//! 5. then, in memory: finalize each durable object (outbox rows written,
//!    marker removed; these operations ride along with the next batch's
//!    first index write, or are applied alone after [`FINALIZE_IDLE`]), or,
//!    at once, undo the rows of one whose file or directory flush failed
//!    (rows reverted, marker removed, the file it placed removed). Both
//!    become durable with a later index flush.
//!
//! # Invariants
//! - A job is answered `Ok` only after its file data, its name, and its
//!   index rows are all durable (step 4). No Success ever precedes any of
//!   the three flushes.
//! - Index rows may become durable before their file is (the flushes run
//!   at once, and sled may write its log at any time): every such row is
//!   covered by a pending marker made durable with it (same atomic batch),
//!   so start-up recovery knows which objects to check. A marker lives
//!   until its finalize or undo is flushed, i.e. about two batches:
//!   recovery checks the objects of the last batches, never the archive.
//! - Nothing is replicated before it is durable here: outbox rows are
//!   written by the finalize of step 5 only.
//! - A failed step fails only the jobs it concerns: a file or directory
//!   flush fails the jobs of that file (all of them: a job whose name
//!   existed shares the fate of the job that placed it), the index flush
//!   fails every job of the batch. Rows of a failed index flush whose files
//!   are durable are finalized anyway (as before: harmless, nothing
//!   acknowledged, and a re-send finds them).
//!
//! # A failed flush latches the store unhealthy
//! A file `fdatasync` or directory `fsync` that fails with anything but
//! ENOSPC, or an index flush or index write that fails in the engine (sled
//! keeps an I/O error and returns it for every later operation: ENOSPC or
//! EIO under the index, whichever operation met it first), is never
//! retried and trusted:
//! after an EIO Linux may have dropped the dirty pages, and a second fsync
//! then "succeeds" on data that is gone (PostgreSQL's "fsyncgate"). The
//! jobs it concerns fail (A700) as above, and the committer **latches**
//! ([`Latched`]): every later job is refused at once ([`CommitError::Unhealthy`],
//! A700), until the process restarts and start-up recovery re-verifies the
//! spool and the index. `status`, `/status` and the `storage_unhealthy`
//! alert say what failed and what to do. ENOSPC from a flush (delayed
//! allocation on a full disk) fails its jobs without latching: the data is
//! still in the page cache, and freeing space is the fix.
//!
//! # Crash behaviour
//! During step 1: temp files (removed at start-up) and names under
//! `objects/` whose data may not be durable, without index rows (the
//! start-up scan of `objects/` re-hashes unindexed files: indexed if good,
//! quarantined if torn). Steps 2–5 and until the finalize is flushed:
//! besides those, rows with their pending marker, durable or not; at
//! start-up recovery checks each marked object by hash: a good file keeps
//! its rows (finalized), a missing or torn one has them undone (and a torn
//! file is quarantined). An object that was answered Success always has a
//! good file then, so nothing acknowledged is lost, and nothing is kept that
//! a crash left half-done.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::identify;
use crate::index::{
    CommitOutcome, Finding, Index, IndexError, InstanceRecord, ObjectId, Op, hash_hex,
};
use crate::spool::{ObjectWriter, Spool, SpoolError, sync_dir};
use pacs_mirror_dicom::structure::Observed;

/// Largest number of objects committed by one flush.
const MAX_BATCH: usize = 256;

/// A received object waiting to be made durable.
#[derive(Debug)]
pub struct Pending {
    /// The temp file, complete but not yet flushed.
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
    /// The object's index rows could not be written.
    #[error("index: {0}")]
    Index(#[source] IndexError),
    /// The batch's index flush failed (every job of the batch shares it).
    #[error("index: flush: {0}")]
    IndexFlush(#[source] Arc<IndexError>),
    /// A flush of the batch did not run (its thread panicked): nothing of
    /// the batch is acknowledged.
    #[error("index: flush: a flush did not run")]
    FlushNotRun,
    /// The committer is gone.
    #[error("index committer stopped")]
    Stopped,
    /// A flush failed earlier: nothing is stored until a restart
    /// re-verifies (see the module header).
    #[error("{0}")]
    Unhealthy(Latched),
}

/// Why the store refuses every object: a flush that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Latched {
    /// What failed: `spool file fdatasync`, `spool directory fsync`,
    /// `index flush` or `index write`.
    pub what: String,
    /// The error, as the system gave it.
    pub error: String,
    /// When (Unix ms).
    pub at_ms: u64,
}

impl std::fmt::Display for Latched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "storage unhealthy: a {} failed ({}); nothing is stored until the agent restarts and re-verifies the spool",
            self.what, self.error
        )
    }
}

/// The latch shared by the committer thread and its handles.
type Latch = Arc<Mutex<Option<Latched>>>;

fn latch_once(latch: &Latch, what: &str, error: &str) {
    let mut l = latch.lock().unwrap_or_else(|p| p.into_inner());
    if l.is_none() {
        tracing::error!(
            what,
            error,
            "storage latched unhealthy: every store is refused (A700) until the agent restarts and re-verifies the spool and the index"
        );
        *l = Some(Latched {
            what: what.to_string(),
            error: error.to_string(),
            at_ms: crate::unix_ms(),
        });
    }
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
    latch: Latch,
}

impl Committer {
    /// Start the committer thread; new objects get an outbox row for each of
    /// `targets`.
    pub fn start(spool: Arc<Spool>, index: Index, targets: Vec<String>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let latch: Latch = Arc::default();
        let thread_latch = latch.clone();
        let spawned = std::thread::Builder::new()
            .name("pacs-mirror-commit".into())
            .spawn(move || run(&spool, &index, &targets, &rx, &thread_latch));
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
            latch,
        }
    }

    /// Whether a failed flush latched the store unhealthy, and why.
    pub fn unhealthy(&self) -> Option<Latched> {
        self.health().unhealthy()
    }

    /// A handle on the latch alone (it does not keep the committer running,
    /// as a `Committer` clone would).
    pub fn health(&self) -> StorageHealth {
        StorageHealth(self.latch.clone())
    }

    /// Drop this handle and, if it is the last one, wait for the committer
    /// thread to end (it ends once every handle is gone), so that its index
    /// handle is closed when this returns. Every submitted job has had its
    /// answer by then.
    pub fn finish(self) {
        let Committer { tx, thread, .. } = self;
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

/// Reads the committer's latch ([`Committer::health`]).
#[derive(Clone, Default)]
pub struct StorageHealth(Latch);

impl StorageHealth {
    /// Whether a failed flush latched the store unhealthy, and why.
    pub fn unhealthy(&self) -> Option<Latched> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

/// How long finalize operations wait for a next batch to ride along with
/// before they are applied on their own.
const FINALIZE_IDLE: std::time::Duration = std::time::Duration::from_millis(20);

fn run(spool: &Spool, index: &Index, targets: &[String], rx: &mpsc::Receiver<Job>, latch: &Latch) {
    // Finalize operations of the last batch (step 5), applied with the next
    // batch's first index write, or alone after FINALIZE_IDLE.
    let mut carry: Vec<Op> = Vec::new();
    loop {
        let first = if carry.is_empty() {
            match rx.recv() {
                Ok(j) => j,
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(FINALIZE_IDLE) {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    apply_carry(index, &mut carry);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        commit_batch(spool, index, targets, jobs, &mut carry, latch);
        tracing::trace!(objects = n, "group commit");
    }
    // Every handle is gone: make the last batch's finalize and undo durable,
    // so that a clean stop leaves no pending marker behind.
    apply_carry(index, &mut carry);
    if let Err(e) = index.flush() {
        tracing::warn!(error = %e, "index flush at committer stop failed");
    }
}

/// Apply carried finalize operations on their own. On error the markers
/// stay, and start-up recovery finalizes their objects.
fn apply_carry(index: &Index, carry: &mut Vec<Op>) {
    if let Err(e) = index.apply_ops(std::mem::take(carry)) {
        tracing::error!(error = %e, "pending markers not cleared");
    }
}

/// One object of a batch, named in `objects/` (step 1).
struct Placed {
    record: InstanceRecord,
    hash: ObjectId,
    installed: crate::spool::Installed,
    /// The descriptor that wrote the file, when this job placed it.
    file: Option<File>,
    reply: oneshot::Sender<Result<Committed, CommitError>>,
}

/// How a file's data is flushed (step 3).
enum FileSync {
    /// By the descriptor that wrote it (it sees any writeback error).
    Own(File),
    /// By its path: the name existed already.
    ByPath,
}

/// One of the three flushes of step 3.
enum Flush {
    /// The index: sled flush + fdatasync of its log.
    Index,
    /// Each distinct `objects/<hh>` directory.
    Dirs(BTreeSet<PathBuf>),
    /// The data of each object file.
    Files(BTreeMap<PathBuf, FileSync>),
}

/// What a [`Flush`] found: the error of the index flush, or the
/// directories or files whose flush failed.
enum Flushed {
    Index(Option<IndexError>),
    Dirs(BTreeMap<PathBuf, FlushFailure>),
    Files(BTreeMap<PathBuf, FlushFailure>),
}

/// A failed file or directory flush, kept to be given to each job it
/// concerns (an `io::Error` cannot be cloned; its kind and text can).
#[derive(Debug, Clone)]
struct FlushFailure(std::io::ErrorKind, String);

impl FlushFailure {
    fn of(e: &std::io::Error) -> Self {
        Self(e.kind(), e.to_string())
    }

    fn to_io(&self) -> std::io::Error {
        std::io::Error::new(self.0, self.1.clone())
    }
}

impl Flush {
    fn run(self, index: &Index) -> Flushed {
        match self {
            Flush::Index => Flushed::Index(index.flush().err()),
            Flush::Dirs(dirs) => {
                let mut failed = BTreeMap::new();
                for d in dirs {
                    if let Err(e) = sync_dir(&d) {
                        tracing::error!(error = %e, "spool directory fsync failed");
                        let kind = match &e {
                            SpoolError::Io { source, .. } => source.kind(),
                            _ => std::io::ErrorKind::Other,
                        };
                        failed.insert(d, FlushFailure(kind, e.to_string()));
                    }
                }
                Flushed::Dirs(failed)
            }
            Flush::Files(files) => {
                let mut failed = BTreeMap::new();
                for (path, sync) in files {
                    let r = match sync {
                        FileSync::Own(file) => file.sync_data(),
                        FileSync::ByPath => File::open(&path).and_then(|file| file.sync_data()),
                    };
                    if let Err(e) = r {
                        tracing::error!(path = %path.display(), error = %e, "spool file fdatasync failed");
                        failed.insert(path, FlushFailure::of(&e));
                    }
                }
                Flushed::Files(failed)
            }
        }
    }
}

/// Run `tasks` at once, one thread each (the caller's thread takes one),
/// from the end of the list. A thread that cannot be started leaves its
/// task to the others; a task that did not run gives `None`.
fn run_parallel<T: Send, R: Send>(tasks: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<Option<R>> {
    let n = tasks.len();
    let queue = Mutex::new(tasks.into_iter().enumerate().collect::<Vec<_>>());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    let work = || {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some((i, task)) = next else { break };
            let out = f(task);
            if let Some(slot) = results.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
                *slot = Some(out);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..n {
            if std::thread::Builder::new()
                .name("pacs-mirror-flush".into())
                .spawn_scoped(s, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

fn commit_batch(
    spool: &Spool,
    index: &Index,
    targets: &[String],
    jobs: Vec<Job>,
    carry: &mut Vec<Op>,
    latch: &Latch,
) {
    // Latched: refuse at once (each temp file goes with its job).
    let latched = latch.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(l) = latched {
        for Job { reply, .. } in jobs {
            let _ = reply.send(Err(CommitError::Unhealthy(l.clone())));
        }
        apply_carry(index, carry);
        return;
    }
    // Step 1, per object: identify and name (not yet durable). A name that
    // exists is an object the index holds, or one this batch placed;
    // otherwise it is a crash's leftover, and replaced.
    let mut placed = Vec::with_capacity(jobs.len());
    let mut named: BTreeSet<ObjectId> = BTreeSet::new();
    for Job { pending, reply } in jobs {
        // Unsure (the index failed): the name is kept, as before.
        let mut vouched_for =
            |hash: &ObjectId| named.contains(hash) || !matches!(index.object(hash), Ok(None));
        match durable_file(spool, pending, &mut vouched_for) {
            Ok((record, hash, installed, file)) => placed.push({
                named.insert(hash);
                Placed {
                    record,
                    hash,
                    installed,
                    file,
                    reply,
                }
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
    if placed.is_empty() {
        apply_carry(index, carry);
        return;
    }
    // Step 2: index rows and pending markers, one object at a time; the
    // last batch's finalize operations ride along with the first write.
    let now = crate::unix_ms();
    let mut results: Vec<Result<Committed, CommitError>> = placed
        .iter()
        .map(|p| {
            let before = std::mem::take(carry);
            let kept = before.clone();
            index
                .commit_instance_pending_after(&p.record, &p.hash, targets, now, before)
                .inspect_err(|_| *carry = kept)
                .map(|outcome| Committed {
                    outcome,
                    created: p.installed.created,
                    file_bytes: p.record.file_bytes,
                    sop_instance_uid: p.record.sop_instance_uid.clone(),
                    findings: p.record.findings.clone(),
                })
                .map_err(CommitError::Index)
        })
        .collect();
    // An engine failure writing rows (sled's I/O error, which it then
    // returns for every later operation) latches as a failed flush does.
    if let Some(Err(CommitError::Index(e))) = results
        .iter()
        .find(|r| matches!(r, Err(CommitError::Index(IndexError::Kv(_)))))
    {
        tracing::error!(error = %e, "index write failed");
        latch_once(latch, "index write", &e.to_string());
    }
    // Step 3: the flushes, index first (see the module doc for why). A
    // file is flushed by the descriptor that wrote it if a job of this
    // batch placed it (whether or not that job's rows could be written),
    // else by its path.
    let mut files: BTreeMap<PathBuf, FileSync> = BTreeMap::new();
    for (p, r) in placed.iter().zip(&results) {
        if r.is_ok() {
            files
                .entry(p.installed.path.clone())
                .or_insert(FileSync::ByPath);
        }
    }
    for p in &mut placed {
        if let (Some(sync), Some(f)) = (files.get_mut(&p.installed.path), p.file.take())
            && matches!(sync, FileSync::ByPath)
        {
            *sync = FileSync::Own(f);
        }
    }
    let dirs: BTreeSet<PathBuf> = placed
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| p.installed.dir.clone())
        .collect();
    let any_rows = !files.is_empty();
    let mut tasks = vec![Flush::Files(files), Flush::Dirs(dirs)];
    if any_rows {
        tasks.push(Flush::Index);
    }
    let mut index_failed: Option<CommitError> = None;
    let mut failed_dirs = BTreeMap::new();
    let mut failed_files = BTreeMap::new();
    for done in run_parallel(tasks, |t| t.run(index)) {
        match done {
            Some(Flushed::Index(e)) => {
                index_failed = e.map(|e| CommitError::IndexFlush(Arc::new(e)));
            }
            Some(Flushed::Dirs(f)) => failed_dirs = f,
            Some(Flushed::Files(f)) => failed_files = f,
            // Only if a flush thread panicked (the scope then panics too):
            // nothing is acknowledged.
            None => index_failed = Some(CommitError::FlushNotRun),
        }
    }
    if let Some(e) = &index_failed {
        tracing::error!(error = %e, "index flush failed");
        latch_once(latch, "index flush", &e.to_string());
    }
    for (what, failed) in [
        ("spool file fdatasync", &failed_files),
        ("spool directory fsync", &failed_dirs),
    ] {
        if let Some((path, e)) = failed
            .iter()
            .find(|(_, e)| e.0 != std::io::ErrorKind::StorageFull)
        {
            latch_once(latch, what, &format!("{}: {}", path.display(), e.1));
        }
    }
    // Step 4: answer.
    let mut fate: BTreeMap<ObjectId, (bool, Option<PathBuf>)> = BTreeMap::new();
    for (p, r) in placed.iter().zip(results.iter_mut()) {
        let file_error = failed_files
            .get(&p.installed.path)
            .map(|e| ("fdatasync", &p.installed.path, e))
            .or_else(|| {
                failed_dirs
                    .get(&p.installed.dir)
                    .map(|e| ("fsync dir", &p.installed.dir, e))
            });
        // Per object: durable (finalize) unless its file or directory flush
        // failed (undo; and the file goes if this batch placed it).
        let entry = fate.entry(p.hash).or_insert((true, None));
        if file_error.is_some() {
            entry.0 = false;
        }
        if p.installed.created {
            entry.1 = Some(p.installed.path.clone());
        }
        if r.is_err() {
            continue;
        }
        if let Some((op, path, e)) = file_error {
            *r = Err(CommitError::Spool(SpoolError::Io {
                op,
                path: path.clone(),
                source: e.to_io(),
            }));
        } else if let Some(e) = &index_failed {
            *r = Err(match e {
                CommitError::IndexFlush(e) => CommitError::IndexFlush(e.clone()),
                _ => CommitError::FlushNotRun,
            });
        }
    }
    for (p, r) in placed.into_iter().zip(results) {
        let _ = p.reply.send(r);
    }
    // Step 5: finalize (carried into the next batch's first write) or undo
    // (at once: the next batch must not see undone rows), in memory.
    for (hash, (durable, placed_here)) in fate {
        let done = if durable {
            index.finalize_ops(&hash).map(|ops| carry.extend(ops))
        } else {
            index.undo_pending(&hash)
        };
        if let Err(e) = done {
            // The marker stays: start-up recovery finishes the job.
            tracing::error!(object = %hash_hex(&hash), error = %e, "pending marker not cleared");
        }
        if !durable && let Some(path) = placed_here {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Step 1 for one object: identify it, rename into place. Nothing is
/// flushed here: the descriptor that wrote the file is returned, when this
/// call placed it, for step 3 to flush it.
fn durable_file(
    spool: &Spool,
    p: Pending,
    vouched_for: &mut dyn FnMut(&ObjectId) -> bool,
) -> Result<
    (
        InstanceRecord,
        crate::index::ObjectId,
        crate::spool::Installed,
        Option<File>,
    ),
    CommitError,
> {
    let id = identify::identify(&p.command_sop_class, &p.command_sop_instance, &p.observed)?;
    let (written, file) = p.writer.finish_unsynced()?;
    let installed = spool.place(written.temp.path(), &written.hash, vouched_for)?;
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
    let file = installed.created.then_some(file);
    Ok((record, hash, installed, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use crate::index::ObjectId;
    use crate::spool::SpoolLimits;
    use pacs_mirror_dicom::part10::Receipt;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const TS: &str = "1.2.840.10008.1.2.1";

    fn dataset(sop: &str, patient: &str) -> Vec<u8> {
        pacs_mirror_dicom::testing::dataset(CT, sop, patient)
    }

    fn pending(spool: &Spool, command_sop: &str, body: &[u8]) -> Pending {
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 7,
        };
        let header =
            pacs_mirror_dicom::part10::file_header(CT, command_sop, TS, "SCU", &receipt).unwrap();
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
        // finalized once the committer is idle or stops: the outbox row is
        // written and no pending marker is left
        tokio::task::spawn_blocking(move || c.finish())
            .await
            .unwrap();
        assert_eq!(index.stats().unwrap().outbox.get("t"), Some(&1));
        assert!(index.pending_objects().unwrap().is_empty());
        let (objects, _) = spool.list_objects().unwrap();
        assert_eq!(objects.len(), 1);
        let stored = std::fs::read(&objects[0].1).unwrap();
        assert!(stored.ends_with(&body));
        assert_eq!(std::fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
    }

    /// A name a crash left without rows (its data torn) is not taken for
    /// the object: the object received again replaces it, and the file
    /// acknowledged is whole.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_crash_leftover_under_the_name_is_replaced() {
        let (_d, spool, index, c) = setup();
        let body = dataset("1.2.3.7", "P");
        let hash = ObjectId::of(&body);
        let path = spool.object_path(&hash);
        std::fs::write(&path, b"torn: the power went off").unwrap();
        let r = c.commit(pending(&spool, "1.2.3.7", &body)).await.unwrap();
        assert!(r.created, "placed as a new name");
        assert_eq!(r.outcome, CommitOutcome::New);
        let stored = std::fs::read(&path).unwrap();
        assert!(stored.ends_with(&body));
        assert_eq!(ObjectId::of(&stored[stored.len() - body.len()..]), hash);
        // Indexed now: a second copy leaves the file as it is.
        let again = c.commit(pending(&spool, "1.2.3.7", &body)).await.unwrap();
        assert!(!again.created);
        assert_eq!(again.outcome, CommitOutcome::Duplicate);
        assert_eq!(
            index.object(&hash).unwrap().unwrap().file_bytes,
            stored.len() as u64
        );
    }

    /// Outbox rows wait in the pending marker until the object is durable;
    /// its finalize rides along with the next batch's first index write (or
    /// is applied alone once the committer is idle).
    #[tokio::test(flavor = "multi_thread")]
    async fn outbox_rows_follow_durability() {
        let (_d, spool, index, c) = setup();
        let first = dataset("1.2.3.1", "P");
        let h1 = ObjectId::of(&first);
        c.commit(pending(&spool, "1.2.3.1", &first)).await.unwrap();
        let second = dataset("1.2.3.2", "P");
        let h2 = ObjectId::of(&second);
        c.commit(pending(&spool, "1.2.3.2", &second)).await.unwrap();
        assert!(index.pending_marker(&h1).unwrap().is_none());
        assert!(index.object(&h1).unwrap().is_some());
        assert!(index.object(&h2).unwrap().is_some());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while index.pending_marker(&h2).unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "never finalized");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(index.stats().unwrap().outbox.get("t"), Some(&2));
    }

    /// An index whose flush fails, and its writes too when `writes_fail`
    /// (as sled's do once it met an I/O error).
    #[derive(Default)]
    struct FlushFails {
        kv: MemKv,
        writes_fail: bool,
    }

    impl crate::index::Kv for FlushFails {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::index::KvError> {
            self.kv.get(key)
        }
        fn for_each_prefix_after(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), crate::index::KvError> {
            self.kv.for_each_prefix_after(prefix, after, f)
        }
        fn apply(&self, ops: Vec<crate::index::Op>) -> Result<(), crate::index::KvError> {
            if self.writes_fail {
                return Err(crate::index::KvError::Engine("no space left".into()));
            }
            self.kv.apply(ops)
        }
        fn flush(&self) -> Result<(), crate::index::KvError> {
            Err(crate::index::KvError::Engine("device gone".into()))
        }
    }

    /// A row write that fails in the engine latches too: the store is
    /// refused and so is the next, nothing indexed, no temp file left.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_index_write_latches_the_store() {
        let d = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap());
        let kv = FlushFails {
            writes_fail: true,
            ..Default::default()
        };
        let index = Index::new(Arc::new(kv));
        let c = Committer::start(spool.clone(), index.clone(), vec!["t".into()]);
        let body = dataset("1.2.3.9", "P");
        let r = c.commit(pending(&spool, "1.2.3.9", &body)).await;
        assert!(matches!(&r, Err(CommitError::Index(_))), "{r:?}");
        let latched = c.unhealthy().expect("latched after a failed write");
        assert_eq!(latched.what, "index write");
        assert!(latched.error.contains("no space left"), "{latched:?}");
        let other = dataset("1.2.3.10", "P");
        let r = c.commit(pending(&spool, "1.2.3.10", &other)).await;
        assert!(matches!(&r, Err(CommitError::Unhealthy(_))), "{r:?}");
        assert!(index.versions("1.2.3.10").unwrap().is_empty());
        tokio::task::spawn_blocking(move || c.finish())
            .await
            .unwrap();
        assert_eq!(std::fs::read_dir(spool.tmp_dir()).unwrap().count(), 0);
    }

    /// No Success without the index flush: every job of the batch fails.
    /// Its file was flushed, so its rows are finalized in memory (as
    /// before: a re-send is a duplicate) and no marker is left.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_index_flush_fails_the_store() {
        let d = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap());
        let index = Index::new(Arc::new(FlushFails::default()));
        let c = Committer::start(spool.clone(), index.clone(), vec!["t".into()]);
        let body = dataset("1.2.3.9", "P");
        let r = c.commit(pending(&spool, "1.2.3.9", &body)).await;
        assert!(
            matches!(&r, Err(CommitError::IndexFlush(e)) if e.to_string().contains("device gone")),
            "{r:?}"
        );
        // Latched: the next store is refused at once, its temp file gone,
        // nothing indexed, and the handle says why.
        let latched = c.unhealthy().expect("latched after a failed flush");
        assert_eq!(latched.what, "index flush");
        assert!(latched.error.contains("device gone"), "{latched:?}");
        let other = dataset("1.2.3.10", "P");
        let r = c.commit(pending(&spool, "1.2.3.10", &other)).await;
        assert!(
            matches!(&r, Err(CommitError::Unhealthy(l)) if *l == latched),
            "{r:?}"
        );
        assert!(r.unwrap_err().to_string().contains("restarts"));
        assert!(index.versions("1.2.3.10").unwrap().is_empty());
        tokio::task::spawn_blocking(move || c.finish())
            .await
            .unwrap();
        assert!(index.pending_objects().unwrap().is_empty());
        assert_eq!(index.versions("1.2.3.9").unwrap().len(), 1);
        let (objects, _) = spool.list_objects().unwrap();
        assert_eq!(objects.len(), 1);
        assert!(std::fs::read(&objects[0].1).unwrap().ends_with(&body));
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
