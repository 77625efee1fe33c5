//! Start-up recovery and `reindex`: make the index agree with the spool.
//!
//! The spool is the source of truth: every object file carries its UIDs, the
//! calling AE (0002,0016), and the source address and receive time (0002,0102).
//! Recovery (every start), in this order:
//! 1. removes temp files;
//! 2. checks each object with a pending marker (a commit in flight at the
//!    crash, see `crate::commit` and `crate::index::pending`): its file is
//!    re-hashed; a good file keeps the rows (outbox rows written, marker
//!    removed), a missing or torn one has them undone (the torn file is
//!    quarantined). Such an object was never acknowledged unless its file
//!    was durable and good. This costs as many re-hashes as objects were in
//!    flight (at most a few batches), whatever the size of the archive;
//!
//! That is all a start costs: what a crash can have left half-done is
//! exactly the objects with a marker (a marker lives from the first write
//! of an object's rows until its finalize is flushed, about two batches).
//! The last clean point is the last index flush: every row it made durable
//! either is final or carries its marker.
//!
//! Object files the index does not know (a crash between the rename into
//! `objects/` and the first durable write of their rows: never
//! acknowledged) are not looked for here: that would cost a listing of the
//! whole spool at every start. They are harmless meanwhile: the committer
//! replaces such a name when the object is received again
//! ([`crate::spool::Spool::place`]), and `reindex` (every file) adopts
//! them (indexed if good, quarantined if torn). A background scrub that
//! adopts them without a reindex is not in this build yet.
//!
//! `reindex` (`verify_all`) indexes every file, into an empty index, and
//! verifies each file's hash on the way. A file whose contents do not match
//! its name, or that cannot be parsed, is moved to `quarantine/` and
//! reported, never deleted.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::identify;
use crate::index::{Index, InstanceRecord, ObjectId, hash_hex};
use crate::spool::{Spool, SpoolError};
use pacs_mirror_dicom::part10;

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Temp files removed.
    pub temp_files_removed: usize,
    /// Object files found in the spool.
    pub objects_seen: usize,
    /// Object files that were not indexed and now are.
    pub reindexed: usize,
    /// Objects of commits in flight whose file was good: rows kept.
    pub pending_kept: usize,
    /// Objects of commits in flight whose file was missing or torn: rows
    /// undone (never acknowledged).
    pub pending_undone: usize,
    /// `reindex` with the old index: deliveries carried over from it (a
    /// delivered row instead of a queue row).
    pub deliveries_kept: usize,
    /// Files moved to quarantine (path after the move, reason).
    pub quarantined: Vec<(PathBuf, String)>,
}

/// Recovery errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// Spool I/O.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Index failure.
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

/// Start-up recovery. With `verify_all`, every object is re-hashed and
/// re-indexed (used by `reindex` on an empty index).
pub fn recover(
    spool: &Spool,
    index: &Index,
    targets: &[String],
    verify_all: bool,
) -> Result<RecoveryReport, RecoveryError> {
    let mut report = RecoveryReport {
        temp_files_removed: spool.remove_temp_files()?,
        ..Default::default()
    };
    for hash in index.pending_objects()? {
        let path = spool.object_path(&hash);
        let present = std::fs::symlink_metadata(&path).is_ok();
        let verdict = if present {
            record_from_file(&path, &hash).map(|_| ())
        } else {
            Err(Unaccounted::Missing)
        };
        match verdict {
            Ok(()) => {
                index.finalize_pending(&hash)?;
                report.pending_kept += 1;
            }
            Err(reason) => {
                tracing::warn!(
                    object = %hash_hex(&hash),
                    %reason,
                    "a commit in flight at the crash left no good file: its rows are undone (it was never acknowledged)"
                );
                index.undo_pending(&hash)?;
                if present {
                    let q = spool.quarantine(&path)?;
                    report
                        .quarantined
                        .push((q, format!("in flight at a crash: {reason}")));
                }
                report.pending_undone += 1;
            }
        }
    }
    if verify_all {
        index_every_file(spool, index, targets, None, &mut report)?;
    }
    index.flush()?;
    Ok(report)
}

/// `reindex`: [`recover`] into an empty `index`, every file re-hashed and
/// indexed; with `old` (the index being replaced, when it can be read), each
/// object keeps the deliveries `old` recorded: a target that had it gets a
/// delivered row (as it was), not a queue row, so nothing a target holds is
/// sent again.
pub fn reindex(
    spool: &Spool,
    index: &Index,
    targets: &[String],
    old: Option<&Index>,
) -> Result<RecoveryReport, RecoveryError> {
    let mut report = recover(spool, index, targets, false)?;
    index_every_file(spool, index, targets, old, &mut report)?;
    index.flush()?;
    Ok(report)
}

fn index_every_file(
    spool: &Spool,
    index: &Index,
    targets: &[String],
    old: Option<&Index>,
    report: &mut RecoveryReport,
) -> Result<(), RecoveryError> {
    let (objects, odd) = spool.list_objects()?;
    for p in odd {
        let q = spool.quarantine(&p)?;
        report
            .quarantined
            .push((q, "file name is not a blake3 address".into()));
    }
    report.objects_seen = objects.len();
    for (hash, path) in objects {
        match record_from_file(&path, &hash) {
            Ok(rec) => {
                let mut queued = Vec::with_capacity(targets.len());
                let mut delivered = Vec::new();
                for t in targets {
                    match old.map(|o| o.delivery(t, &hash)).transpose()?.flatten() {
                        Some(d) => delivered.push((t, d)),
                        None => queued.push(t.clone()),
                    }
                }
                index.commit_instance(&rec, &hash, &queued, crate::unix_ms())?;
                for (t, d) in delivered {
                    index.record_delivered(t, &hash, &d)?;
                    report.deliveries_kept += 1;
                }
                report.reindexed += 1;
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "spool file quarantined");
                let q = spool.quarantine(&path)?;
                report.quarantined.push((q, reason.to_string()));
            }
        }
    }
    Ok(())
}

/// Why a spool file cannot be accounted for (it is quarantined, or the
/// commit that placed it undone).
#[derive(Debug, thiserror::Error)]
pub enum Unaccounted {
    /// No file under the object's name.
    #[error("missing")]
    Missing,
    /// The header or data set could not be read.
    #[error(transparent)]
    Unreadable(#[from] part10::Part10Error),
    /// The data set does not hash to the file's name.
    #[error("contents hash to {contents}, not to the name {name}")]
    NotItsName {
        /// The hash of what is there.
        contents: String,
        /// The hash the name says.
        name: String,
    },
    /// The meta group's SOP Class or Instance UID cannot be an index key.
    #[error("file meta group: {what}: {source}")]
    UnusableKey {
        /// Which attribute.
        what: &'static str,
        /// Why.
        #[source]
        source: identify::UnusableKey,
    },
    /// The data set names another SOP instance than the meta group.
    #[error(transparent)]
    IdentityConflict(#[from] identify::IdentityConflict),
}

/// Rebuild an index record from a spool file, checking its hash: the
/// same record ingest wrote ([`identify::identify`] on the command's UIDs
/// from the file meta group and one walk of the data set), findings
/// included. Fails when the file does not hash to its name, its meta group
/// cannot be read or does not identify it, or its data set names another
/// SOP instance.
pub fn record_from_file(path: &Path, expected: &ObjectId) -> Result<InstanceRecord, Unaccounted> {
    let file = part10::read_identity(path)?;
    let found = ObjectId(file.dataset_blake3);
    if &found != expected {
        return Err(Unaccounted::NotItsName {
            contents: found.to_string(),
            name: hash_hex(expected),
        });
    }
    let meta = file.meta;
    if let Some((what, source)) = identify::unusable_key([
        ("Media Storage SOP Class UID", meta.sop_class_uid.as_str()),
        (
            "Media Storage SOP Instance UID",
            meta.sop_instance_uid.as_str(),
        ),
    ]) {
        return Err(Unaccounted::UnusableKey { what, source });
    }
    let id = identify::identify(&meta.sop_class_uid, &meta.sop_instance_uid, &file.observed)?;
    let modified_ms = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Ok(InstanceRecord {
        sop_instance_uid: id.sop_instance_uid,
        sop_class_uid: id.sop_class_uid,
        transfer_syntax_uid: meta.transfer_syntax_uid,
        blake3: found.to_string(),
        dataset_bytes: file.dataset_bytes,
        file_bytes: meta.dataset_offset + file.dataset_bytes,
        patient_id: id.patient_id,
        study_instance_uid: id.study_instance_uid,
        series_instance_uid: id.series_instance_uid,
        calling_ae: meta.source_ae,
        source_ip: meta
            .receipt
            .as_ref()
            .map(|r| r.source_ip.clone())
            .unwrap_or_default(),
        received_at_ms: meta.receipt.map_or(modified_ms, |r| r.received_at_ms),
        study_date: id.study_date,
        modality: id.modality,
        findings: id.findings,
    })
}

/// blake3 of the bytes from `offset` to the end, with the lengths.
pub fn hash_dataset(path: &Path, offset: u64) -> std::io::Result<(ObjectId, u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let file_bytes = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((
        ObjectId::from(hasher.finalize()),
        file_bytes.saturating_sub(offset),
        file_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use crate::index::ObjectId;
    use crate::spool::SpoolLimits;
    use pacs_mirror_dicom::part10::{Receipt, file_header};
    use pacs_mirror_dicom::testing::dataset;
    use std::io::Write;
    use std::sync::Arc;

    fn object(sop: &str) -> (Vec<u8>, ObjectId) {
        let body = dataset("1.2.840.10008.5.1.4.1.1.7", sop, "PID");
        let receipt = Receipt {
            source_ip: "192.0.2.7".into(),
            received_at_ms: 1234,
        };
        let mut file = file_header(
            "1.2.840.10008.5.1.4.1.1.7",
            sop,
            "1.2.840.10008.1.2.1",
            "MODALITY",
            &receipt,
        )
        .unwrap();
        file.extend_from_slice(&body);
        (file, ObjectId::of(&body))
    }

    /// The state a crash can leave, and what recovery makes of it.
    #[test]
    fn recovers_what_a_crash_leaves() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap();
        let index = Index::new(Arc::new(MemKv::default()));
        // 1. an object renamed into place whose index rows never became durable
        let (bytes, hash) = object("1.2.3.4");
        std::fs::write(spool.object_path(&hash), &bytes).unwrap();
        // 2. a temp file of an object being received
        let (mut f, temp) = spool.begin().unwrap();
        f.write_all(b"partial").unwrap();
        // 3. a file whose contents do not match its name (torn or tampered)
        let (mut torn, torn_hash) = object("1.2.3.5");
        let n = torn.len();
        torn[n - 1] ^= 0xFF;
        std::fs::write(spool.object_path(&torn_hash), &torn).unwrap();
        // 4. a stray file that is not an object address
        std::fs::write(spool.root().join("objects/00/stray.dcm"), b"?").unwrap();

        // A start removes the temp file and lists nothing else: unindexed
        // names are `reindex`'s (and a re-send replaces them).
        let start = recover(&spool, &index, &["backup".into()], false).unwrap();
        assert_eq!(start.temp_files_removed, 1);
        assert!(!temp.exists());
        assert_eq!((start.objects_seen, start.reindexed), (0, 0));
        assert!(start.quarantined.is_empty());
        assert!(spool.object_path(&torn_hash).exists());
        assert_eq!(index.stats().unwrap().instances, 0);

        // `reindex` (every file) adopts the good one, quarantines the others.
        let report = recover(&spool, &index, &["backup".into()], true).unwrap();
        assert_eq!(report.objects_seen, 2);
        assert_eq!(report.reindexed, 1);
        assert_eq!(report.quarantined.len(), 2, "{:?}", report.quarantined);
        assert!(!spool.object_path(&torn_hash).exists());
        let versions = index.versions("1.2.3.4").unwrap();
        assert_eq!(versions.len(), 1);
        let r = &versions[0];
        assert_eq!(r.blake3, hash_hex(&hash));
        assert_eq!(r.calling_ae, "MODALITY");
        assert_eq!(r.source_ip, "192.0.2.7");
        assert_eq!(r.received_at_ms, 1234);
        assert_eq!(r.file_bytes, bytes.len() as u64);
        assert_eq!(index.stats().unwrap().outbox.get("backup"), Some(&1));
        // A second start finds nothing to do and changes nothing.
        let again = recover(&spool, &index, &["backup".into()], false).unwrap();
        assert_eq!((again.reindexed, again.quarantined.len()), (0, 0));
        assert_eq!(index.stats().unwrap().instances, 1);
    }

    /// A commit in flight at a crash, as the committer leaves it before its
    /// flushes are done: rows and pending marker applied (and possibly
    /// durable), the object file renamed into place, good or not.
    fn in_flight(spool: &Spool, index: &Index, sop: &str) -> (PathBuf, ObjectId, Vec<u8>) {
        let (bytes, hash) = object(sop);
        let path = spool.object_path(&hash);
        std::fs::write(&path, &bytes).unwrap();
        let rec = record_from_file(&path, &hash).unwrap();
        index
            .commit_instance_pending(&rec, &hash, &["backup".into()], 99)
            .unwrap();
        (path, hash, bytes)
    }

    /// Crash states of the concurrent flushes (`crate::commit`): a pending
    /// marker with a good file keeps the rows (and writes the held-back
    /// outbox row); with a missing or torn file the rows are undone, the
    /// object is not reported as stored, and a torn file is quarantined.
    #[test]
    fn checks_commits_in_flight_by_hash() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap();
        let index = Index::new(Arc::new(MemKv::default()));
        // 1. all three flushes done (or at least the file's): good file
        let (good_path, good, good_bytes) = in_flight(&spool, &index, "1.2.3.1");
        // 2. the name never became durable: no file
        let (missing_path, missing, _) = in_flight(&spool, &index, "1.2.3.2");
        std::fs::remove_file(&missing_path).unwrap();
        // 3. the name became durable, the data not: a torn file
        let (torn_path, torn, torn_bytes) = in_flight(&spool, &index, "1.2.3.3");
        std::fs::write(&torn_path, &torn_bytes[..torn_bytes.len() / 2]).unwrap();
        // 4. the data is there but a bit is wrong
        let (flip_path, flip, mut flip_bytes) = in_flight(&spool, &index, "1.2.3.4");
        let n = flip_bytes.len();
        flip_bytes[n - 3] ^= 0x01;
        std::fs::write(&flip_path, &flip_bytes).unwrap();
        // Before recovery: rows of all four, outbox rows held back.
        assert_eq!(index.pending_objects().unwrap().len(), 4);
        assert_eq!(index.stats().unwrap().instances, 4);
        assert_eq!(index.stats().unwrap().outbox.get("backup"), None);

        let report = recover(&spool, &index, &["backup".into()], false).unwrap();
        assert_eq!((report.pending_kept, report.pending_undone), (1, 3));
        assert_eq!(report.reindexed, 0);
        assert_eq!(report.quarantined.len(), 2, "{:?}", report.quarantined);
        assert!(index.pending_objects().unwrap().is_empty());
        // kept: rows, its outbox row, the file byte for byte
        let v = index.versions("1.2.3.1").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].blake3, hash_hex(&good));
        assert!(index.object(&good).unwrap().is_some());
        assert_eq!(std::fs::read(&good_path).unwrap(), good_bytes);
        let s = index.stats().unwrap();
        assert_eq!(s.outbox.get("backup"), Some(&1));
        assert_eq!((s.instances, s.objects, s.studies), (1, 1, 1));
        // undone: no row of any kind, nothing left under objects/
        for (sop, h, path) in [
            ("1.2.3.2", missing, &missing_path),
            ("1.2.3.3", torn, &torn_path),
            ("1.2.3.4", flip, &flip_path),
        ] {
            assert!(index.versions(sop).unwrap().is_empty(), "{sop}");
            assert!(index.object(&h).unwrap().is_none(), "{sop}");
            assert!(index.pending_marker(&h).unwrap().is_none(), "{sop}");
            assert!(!path.exists(), "{sop}");
        }
        let quarantined: Vec<Vec<u8>> = report
            .quarantined
            .iter()
            .map(|(p, _)| std::fs::read(p).unwrap())
            .collect();
        assert!(quarantined.contains(&torn_bytes[..torn_bytes.len() / 2].to_vec()));
        assert!(quarantined.contains(&flip_bytes));
        // Idempotent: a second start changes nothing.
        let again = recover(&spool, &index, &["backup".into()], false).unwrap();
        assert_eq!(
            (again.pending_kept, again.pending_undone, again.reindexed),
            (0, 0, 0)
        );
        assert_eq!(index.stats().unwrap(), s);
    }

    /// An evicted object re-sent: its commit clears the eviction mark. If
    /// the file does not survive the crash, the mark comes back (the rows
    /// were there before and stay); if it does, the object is held again.
    #[test]
    fn a_resend_of_an_evicted_object_in_flight() {
        for file_survives in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let spool = Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap();
            let index = Index::new(Arc::new(MemKv::default()));
            let (bytes, hash) = object("1.2.3.7");
            let path = spool.object_path(&hash);
            std::fs::write(&path, &bytes).unwrap();
            let rec = record_from_file(&path, &hash).unwrap();
            index
                .commit_instance(&rec, &hash, &["backup".into()], 1)
                .unwrap();
            index.mark_evicted(&hash, 5).unwrap();
            std::fs::remove_file(&path).unwrap();
            // the re-send, in flight
            std::fs::write(&path, &bytes).unwrap();
            let outcome = index
                .commit_instance_pending(&rec, &hash, &["backup".into()], 9)
                .unwrap();
            assert_eq!(outcome, crate::index::CommitOutcome::Duplicate);
            assert_eq!(index.object(&hash).unwrap().unwrap().evicted_at_ms, None);
            if !file_survives {
                std::fs::remove_file(&path).unwrap();
            }
            let report = recover(&spool, &index, &["backup".into()], false).unwrap();
            let obj = index.object(&hash).unwrap().unwrap();
            assert_eq!(
                obj.evicted_at_ms,
                (!file_survives).then_some(5),
                "file survives: {file_survives}"
            );
            assert_eq!(
                (report.pending_kept, report.pending_undone),
                if file_survives { (1, 0) } else { (0, 1) }
            );
            assert_eq!(index.versions("1.2.3.7").unwrap().len(), 1);
            assert!(index.pending_objects().unwrap().is_empty());
        }
    }
}
