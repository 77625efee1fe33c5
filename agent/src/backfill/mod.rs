//! `pacs-mirror backfill DIR`: import a folder of existing DICOM Part-10
//! files (recursively) into the spool and index, as if each had been
//! received by C-STORE.
//!
//! # One durable path, not two
//! Each file's data set bytes are streamed into a spool temp file by
//! [`ObjectWriter`] (hashed on the way), checked by the streaming structural
//! walker ([`pacs_mirror_dicom::structure`]), and handed to the group committer
//! ([`pacs_mirror_store::commit`]), exactly like a network store. So a file is reported
//! imported only after its spool file is fsynced, renamed into `objects/`
//! (never replacing anything), the directory fsynced, and its index rows and
//! one outbox row per configured target flushed.
//!
//! # What is stored
//! The spool file is pacs-mirror's own preamble and file meta group followed
//! by the source's data set bytes untouched: everything after the source's
//! file meta group, to the end of the file. Its transfer syntax is the one
//! the source's meta group names. Provenance, in the meta group and the
//! index: Source AE Title (0002,0016) and the index's `calling_ae` are the
//! `--source-ae` title, `BACKFILL` by default (not the source file's own
//! (0002,0016): the spool must say how an object came in, and an operator
//! must be able to tell backfilled objects from received ones); the source
//! address is empty (not received over the network); the receive time is the
//! time of import.
//!
//! # Checks: a file that fails one is skipped with the reason; the run goes on
//! - it is a Part-10 file: 128-byte preamble, `DICM`, a file meta group that
//!   starts with its group length and parses ([`source::read_meta`]);
//! - the meta group's SOP class, SOP instance and transfer syntax UIDs are
//!   usable, the transfer syntax is one the agent knows, and the file is not a
//!   DICOMDIR (the checks network ingest makes on the C-STORE command);
//! - the data set passes the structural walk (not cut short anywhere, not
//!   nested too deep), its UIDs can be read and equal the meta group's
//!   (the committer's checks, as for a C-STORE);
//! - it is not larger than `spool.max_object_bytes`.
//!
//! A local failure (spool quota, free-space watermark, disk or index error)
//! is not the file's fault: it stops the run (what was imported stays
//! imported), the report says why, and a later run carries on.
//!
//! # Duplicates and conflicts
//! As in network ingest: the same SOP instance with the same data set bytes is
//! a duplicate (no second copy); with other bytes, a conflict (both kept).
//! Re-runs are cheap: a file whose SOP Instance UID the index already holds is
//! hashed first, and if that exact version is indexed and its spool file is
//! present it is counted as a duplicate without being written again. A
//! duplicate found this way is as durable as its held copy: rows present when
//! the index was opened were flushed by recovery, and rows of this run are
//! flushed by the committer, whose failure stops the run.
//!
//! # Pipeline and memory
//! A walker thread lists the folder (sorted, one directory at a time) into a
//! bounded channel; `readers` threads each import one file at a time through a
//! fixed 256 KiB buffer, fsync its temp file on the reader thread
//! ([`ObjectWriter::sync_early`]: the file pages are written back in parallel
//! instead of one after the other in the committer, whose own fsync then has
//! almost nothing left to do but still happens) and submit it to the
//! committer without waiting; the calling thread waits for the outcomes in
//! submission order (about 64 in flight, so one committer batch covers many
//! files and shares its directory fsyncs and index flush) and reports
//! progress. Nothing holds a whole file: a 1 GiB file costs the same memory
//! as a small one.
//!
//! # Exclusivity
//! The sled index is single-process. [`run`] opens it before anything else
//! touches the data directory; if a running agent holds it, [`run`] fails at
//! once with [`BackfillError::AgentRunning`], without waiting and without
//! running recovery (which would remove the agent's in-flight temp files).
//!
//! # Crash behaviour
//! Backfill opens the store like the agent does, so start-up recovery runs
//! first. A crash or `kill -9` mid-run leaves what a crashed agent leaves:
//! temp files (removed by the next run or agent start) and objects renamed
//! into `objects/` but not indexed (indexed by that recovery). Running the
//! same backfill again then imports what is missing, and counts what is
//! already held as duplicates: every file ends up imported exactly once.
//! Interrupting a run (Ctrl-C) is the same as a crash, and as safe.

pub mod source;
pub mod walk;

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pacs_mirror_config::{AeTitleError, Config, validate_ae_title};
use serde::Serialize;

use crate::app::{self, AppError};
use pacs_mirror_dicom::part10::{self, Receipt};
use pacs_mirror_store::commit::{CommitError, Committer, Pending, Ticket};
use pacs_mirror_store::index::{CommitOutcome, Index, IndexError, KvError, hash_hex};
use pacs_mirror_store::recovery::{self, RecoveryReport};
use pacs_mirror_store::spool::{ObjectWriter, Reservation, Spool, SpoolError};
use source::SourceMeta;
use walk::Entry;

/// Default `--source-ae`: the calling AE recorded for backfilled objects.
pub const DEFAULT_SOURCE_AE: &str = "BACKFILL";
/// Default number of reader threads.
pub const DEFAULT_READERS: usize = 4;
/// Bytes read from a source file at a time (one buffer per reader).
const CHUNK_BYTES: usize = 256 * 1024;
/// Most files submitted to the committer and not yet reported.
const IN_FLIGHT: usize = 64;

/// What to import, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The folder to import, recursively.
    pub source_dir: PathBuf,
    /// The calling AE title recorded for every imported object.
    pub source_ae: String,
    /// Reader threads (at least 1).
    pub readers: usize,
}

/// Why a backfill could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    /// A running agent holds the index.
    #[error(
        "the agent is running on this data dir ({}): its index is locked. Stop the agent and run backfill again, or send the folder to the running agent over DICOM instead (e.g. storescu +sd +r -aec <its AE title> <host> <port> DIR)",
        data_dir.display()
    )]
    AgentRunning {
        /// The configured data directory.
        data_dir: PathBuf,
    },
    /// The source is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The `--source-ae` title is not a valid AE title. (Shown in the
    /// message, so not also a `source()`: the binary prints error chains.)
    #[error("source AE title: {0}")]
    SourceAe(AeTitleError),
    /// The spool or index could not be opened, or recovery failed.
    #[error("opening the spool and index: {0}")]
    Open(#[source] AppError),
}

/// Running totals, for progress and the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Files dealt with so far.
    pub files_done: u64,
    /// Their bytes (as listed).
    pub bytes_done: u64,
    /// New objects stored and indexed.
    pub imported: u64,
    /// Files whose contents were already held for their SOP instance.
    pub duplicates: u64,
    /// Files stored as another version of a SOP instance already held.
    pub conflicts: u64,
    /// Files (and other entries) skipped, with a reason in the report.
    pub skipped: u64,
}

/// Told about progress; implemented by the command line.
pub trait Progress: Sync {
    /// Before the first file: what the source folder holds.
    fn start(&self, files: u64, bytes: u64);
    /// After each file, with the totals so far.
    fn update(&self, totals: &Totals);
}

/// A file that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The source path.
    pub path: PathBuf,
    /// Why, for the operator.
    pub reason: String,
}

/// A file stored beside another version of its SOP instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The source path.
    pub path: PathBuf,
    /// The SOP Instance UID now held in several versions.
    pub sop_instance_uid: String,
}

/// What a backfill did.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    /// The folder imported.
    pub source_dir: PathBuf,
    /// The calling AE title recorded.
    pub source_ae: String,
    /// Files listed under the folder at the start.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// What happened to them.
    pub totals: Totals,
    /// Files stored as a further version of a SOP instance.
    pub conflicts: Vec<Conflict>,
    /// Files and entries not imported, with the reason.
    pub skipped: Vec<Skipped>,
    /// Set when a local failure stopped the run before the end.
    pub stopped: Option<String>,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
    /// What start-up recovery found.
    pub recovery: RecoveryReport,
}

impl BackfillReport {
    /// Files per second over the run.
    pub fn files_per_sec(&self) -> f64 {
        self.totals.files_done as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }
}

/// Import `options.source_dir` into the data directory of `config`.
/// Returns the report (check [`BackfillReport::stopped`]), or an error when
/// the run could not start.
pub fn run(
    config: &Config,
    options: &Options,
    progress: &dyn Progress,
) -> Result<BackfillReport, BackfillError> {
    validate_ae_title(&options.source_ae).map_err(BackfillError::SourceAe)?;
    if !options.source_dir.is_dir() {
        return Err(BackfillError::NotADirectory {
            path: options.source_dir.clone(),
        });
    }
    let started = Instant::now();
    let (spool, index, recovery) = app::open_store(config, false).map_err(|e| match e {
        AppError::Index(IndexError::Kv(KvError::Locked { .. })) => BackfillError::AgentRunning {
            data_dir: config.device.data_dir.clone(),
        },
        e => BackfillError::Open(e),
    })?;
    let committer = Committer::start(spool.clone(), index.clone(), app::target_names(config));
    let exclude: Vec<PathBuf> = std::fs::canonicalize(&config.device.data_dir)
        .into_iter()
        .collect();
    let (files, bytes) = walk::count(&options.source_dir, &exclude);
    progress.start(files, bytes);

    let stop = AtomicBool::new(false);
    let reader = Reader {
        spool: &spool,
        index: &index,
        committer: &committer,
        source_ae: options.source_ae.trim(),
        stop: &stop,
    };
    let mut report = BackfillReport {
        source_dir: options.source_dir.clone(),
        source_ae: options.source_ae.trim().to_string(),
        files,
        bytes,
        totals: Totals::default(),
        conflicts: Vec::new(),
        skipped: Vec::new(),
        stopped: None,
        elapsed_ms: 0,
        recovery,
    };
    let readers = options.readers.max(1);
    let (entry_tx, entry_rx) = sync_channel::<Entry>(readers * 4);
    let entry_rx = Mutex::new(entry_rx);
    let (done_tx, done_rx) = sync_channel::<Done>(IN_FLIGHT);
    std::thread::scope(|s| {
        let (stop, exclude, source_dir) = (&stop, &exclude, &options.source_dir);
        s.spawn(move || {
            walk::walk(source_dir, exclude, &mut |e| {
                !stop.load(Ordering::Relaxed) && entry_tx.send(e).is_ok()
            });
        });
        for _ in 0..readers {
            let done_tx = done_tx.clone();
            let (reader, entry_rx) = (&reader, &entry_rx);
            s.spawn(move || reader.run(entry_rx, &done_tx));
        }
        drop(done_tx);
        for done in done_rx {
            report.record(done, stop);
            progress.update(&report.totals);
        }
    });
    // Close the index (the committer thread holds a handle) before returning.
    committer.finish();
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// One file's result, from a reader to the reporting thread.
struct Done {
    path: PathBuf,
    /// Its listed bytes (0 for entries that are not files).
    bytes: u64,
    /// False for directories and links that were reported, not read.
    is_file: bool,
    step: Step,
}

enum Step {
    /// Not imported, with the reason.
    Skipped(String),
    /// Already held, found by the pre-check.
    Held,
    /// Handed to the committer, with the spool room it holds.
    Submitted {
        ticket: Ticket,
        reservation: Reservation,
    },
    /// A local failure: stop the run.
    Fatal(String),
}

impl BackfillReport {
    fn record(&mut self, done: Done, stop: &AtomicBool) {
        let Done {
            path,
            bytes,
            is_file,
            step,
        } = done;
        if is_file {
            self.totals.files_done += 1;
            self.totals.bytes_done += bytes;
        }
        let outcome = match step {
            Step::Skipped(reason) => Err(Some(reason)),
            Step::Held => Ok(CommitOutcome::Duplicate),
            Step::Fatal(reason) => {
                self.stop_with(&path, reason, stop);
                return;
            }
            Step::Submitted {
                ticket,
                reservation,
            } => match ticket.wait_blocking() {
                Ok(c) => {
                    reservation.commit(if c.created { c.file_bytes } else { 0 });
                    if matches!(c.outcome, CommitOutcome::Conflict { .. }) {
                        self.conflicts.push(Conflict {
                            path: path.clone(),
                            sop_instance_uid: c.sop_instance_uid,
                        });
                    }
                    Ok(c.outcome)
                }
                // The reservation is released as it drops.
                Err(e) => match e {
                    CommitError::IdentityConflict(m) => {
                        Err(Some(format!("file meta group and data set disagree: {m}")))
                    }
                    e => {
                        self.stop_with(&path, e.to_string(), stop);
                        return;
                    }
                },
            },
        };
        match outcome {
            Ok(CommitOutcome::New) => self.totals.imported += 1,
            Ok(CommitOutcome::Duplicate) => self.totals.duplicates += 1,
            Ok(CommitOutcome::Conflict { .. }) => self.totals.conflicts += 1,
            Err(reason) => {
                self.totals.skipped += 1;
                self.skipped.push(Skipped {
                    path,
                    reason: reason.unwrap_or_default(),
                });
            }
        }
    }

    fn stop_with(&mut self, path: &Path, reason: String, stop: &AtomicBool) {
        stop.store(true, Ordering::Relaxed);
        tracing::error!(path = %path.display(), %reason, "backfill stopped by a local failure");
        if self.stopped.is_none() {
            self.stopped = Some(format!("{}: {reason}", path.display()));
        }
    }
}

/// What the reader threads share.
struct Reader<'a> {
    spool: &'a Arc<Spool>,
    index: &'a Index,
    committer: &'a Committer,
    source_ae: &'a str,
    stop: &'a AtomicBool,
}

impl Reader<'_> {
    /// Import entries until the walker is done. After a stop, entries are
    /// drained unread so that the walker can finish.
    fn run(&self, entries: &Mutex<Receiver<Entry>>, done: &SyncSender<Done>) {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let next = match entries.lock() {
                Ok(rx) => rx.recv(),
                Err(_) => return,
            };
            let Ok(entry) = next else { return };
            if self.stop.load(Ordering::Relaxed) {
                continue;
            }
            let d = match entry {
                Entry::File { path, bytes } => Done {
                    step: self.import(&path, &mut buf),
                    path,
                    bytes,
                    is_file: true,
                },
                Entry::Unusable { path, reason } => Done {
                    path,
                    bytes: 0,
                    is_file: false,
                    step: Step::Skipped(reason),
                },
            };
            if done.send(d).is_err() {
                return;
            }
        }
    }

    /// One file: checks, pre-check, stream into a temp file, submit.
    fn import(&self, path: &Path, buf: &mut [u8]) -> Step {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return Step::Skipped(format!("cannot open: {e}")),
        };
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Step::Skipped(format!("cannot read its metadata: {e}")),
        };
        let meta = match source::read_meta(&mut file, len) {
            Ok(m) => m,
            Err(reason) => return Step::Skipped(reason.to_string()),
        };
        match self.already_held(path, &meta) {
            Ok(true) => return Step::Held,
            Ok(false) => {}
            Err(step) => return step,
        }
        let received_at_ms = crate::unix_ms();
        let receipt = Receipt {
            source_ip: String::new(),
            received_at_ms,
        };
        let header = match part10::file_header(
            &meta.sop_class_uid,
            &meta.sop_instance_uid,
            &meta.transfer_syntax_uid,
            self.source_ae,
            &receipt,
        ) {
            Ok(h) => h,
            Err(e) => return Step::Skipped(e.to_string()),
        };
        let writer = self
            .spool
            .begin()
            .and_then(|(tmp, tmp_path)| ObjectWriter::new(tmp, tmp_path, &header));
        let mut writer = match writer {
            Ok(w) => w,
            Err(e) => return Step::Fatal(e.to_string()),
        };
        // The walk checks the structure and reads the identifying
        // attributes; a flaw becomes a finding, the file is kept.
        let mut structure = pacs_mirror_store::identify::walker(&meta.transfer_syntax_uid);
        // On every early return below, dropping `writer` removes the temp
        // file and dropping `reservation` releases its room.
        let mut reservation = self.spool.reservation();
        loop {
            let n = match file.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Step::Skipped(format!("cannot read: {e}")),
            };
            let chunk = &buf[..n];
            let _ = structure.feed(chunk);
            if let Err(e) = reservation.grow(n as u64) {
                return match e {
                    SpoolError::ObjectTooLarge { .. } => Step::Skipped(e.to_string()),
                    e => Step::Fatal(e.to_string()),
                };
            }
            if let Err(e) = writer.write_chunk(chunk) {
                return Step::Fatal(e.to_string());
            }
        }
        let observed = structure.finish_observing();
        if let Err(e) = writer.sync_early() {
            return Step::Fatal(e.to_string());
        }
        let pending = Pending {
            writer,
            observed,
            command_sop_class: meta.sop_class_uid,
            command_sop_instance: meta.sop_instance_uid,
            transfer_syntax: meta.transfer_syntax_uid,
            calling_ae: self.source_ae.to_string(),
            source_ip: String::new(),
            received_at_ms,
        };
        match self.committer.submit(pending) {
            Ok(ticket) => Step::Submitted {
                ticket,
                reservation,
            },
            Err(e) => Step::Fatal(e.to_string()),
        }
    }

    /// Is this exact data set already held for its SOP instance, indexed,
    /// and its spool file present (not removed by retention)? Only files
    /// whose SOP Instance UID the index holds are hashed for this.
    fn already_held(&self, path: &Path, meta: &SourceMeta) -> Result<bool, Step> {
        let index_failed = |e: IndexError| Step::Fatal(format!("index: {e}"));
        let versions = self
            .index
            .versions(&meta.sop_instance_uid)
            .map_err(index_failed)?;
        if versions.is_empty() {
            return Ok(false);
        }
        let (hash, _, _) = recovery::hash_dataset(path, meta.dataset_offset)
            .map_err(|e| Step::Skipped(format!("cannot read: {e}")))?;
        let hex = hash_hex(&hash);
        if !versions.iter().any(|v| v.blake3 == hex) {
            return Ok(false);
        }
        let object = self.index.object(&hash).map_err(index_failed)?;
        Ok(object.is_some_and(|o| o.evicted_at_ms.is_none())
            && self.spool.object_path(&hash).is_file())
    }
}

#[cfg(test)]
mod tests;
