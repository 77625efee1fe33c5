//! Start-up recovery and `reindex`: make the index agree with the spool.
//!
//! The spool is the source of truth: every object file carries its UIDs, the
//! calling AE (0002,0016), and the source address and receive time (0002,0102).
//! Recovery (every start) removes temp files and indexes object files the
//! index does not know (crash between link and index flush). `reindex` does
//! the same for every file, into an empty index, and verifies each file's
//! hash on the way. A file whose contents do not match its name, or that
//! cannot be parsed, is moved to `quarantine/` and reported, never deleted.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::identify;
use crate::index::{Hash, Index, InstanceRecord, hash_hex};
use crate::part10;
use crate::spool::{Spool, SpoolError};

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// Temp files removed.
    pub temp_files_removed: usize,
    /// Object files found in the spool.
    pub objects_seen: usize,
    /// Object files that were not indexed and now are.
    pub reindexed: usize,
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
    let (objects, odd) = spool.list_objects()?;
    for p in odd {
        let q = spool.quarantine(&p)?;
        report
            .quarantined
            .push((q, "file name is not a blake3 address".into()));
    }
    report.objects_seen = objects.len();
    for (hash, path) in objects {
        if !verify_all && let Some(obj) = index.object(&hash)? {
            if obj.evicted_at_ms.is_some() {
                // Retention marked it but crashed before removing the file.
                index.unevict(&hash)?;
            }
            continue;
        }
        match record_from_file(&path, &hash) {
            Ok(rec) => {
                index.commit_instance(&rec, &hash, targets, crate::unix_ms())?;
                report.reindexed += 1;
            }
            Err(reason) => {
                tracing::error!(path = %path.display(), %reason, "spool file quarantined");
                let q = spool.quarantine(&path)?;
                report.quarantined.push((q, reason));
            }
        }
    }
    index.flush()?;
    Ok(report)
}

/// Rebuild an index record from a spool file, checking its hash: the
/// same record ingest wrote ([`identify::identify`] on the command's UIDs
/// from the file meta group and one walk of the data set), findings
/// included. Fails when the file does not hash to its name, its meta group
/// cannot be read or does not identify it, or its data set names another
/// SOP instance.
pub fn record_from_file(path: &Path, expected: &Hash) -> Result<InstanceRecord, String> {
    let file = part10::read_identity(path).map_err(|e| e.to_string())?;
    if &file.dataset_blake3 != expected {
        return Err(format!(
            "contents hash to {}, not to the name {}",
            hash_hex(&file.dataset_blake3),
            hash_hex(expected)
        ));
    }
    let meta = file.meta;
    for uid in [&meta.sop_class_uid, &meta.sop_instance_uid] {
        identify::usable_key(uid).map_err(|e| format!("file meta group: {e}"))?;
    }
    let id = identify::identify(&meta.sop_class_uid, &meta.sop_instance_uid, &file.observed)
        .map_err(|e| e.to_string())?;
    let modified_ms = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    Ok(InstanceRecord {
        sop_instance_uid: id.sop_instance_uid,
        sop_class_uid: id.sop_class_uid,
        transfer_syntax_uid: meta.transfer_syntax_uid,
        blake3: hash_hex(&file.dataset_blake3),
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
pub fn hash_dataset(path: &Path, offset: u64) -> std::io::Result<(Hash, u64, u64)> {
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
        *hasher.finalize().as_bytes(),
        file_bytes.saturating_sub(offset),
        file_bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MemKv;
    use crate::part10::{Receipt, file_header};
    use crate::spool::SpoolLimits;
    use crate::testutil::dataset;
    use std::io::Write;
    use std::sync::Arc;

    fn object(sop: &str) -> (Vec<u8>, Hash) {
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
        (file, *blake3::hash(&body).as_bytes())
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

        let report = recover(&spool, &index, &["backup".into()], false).unwrap();
        assert_eq!(report.temp_files_removed, 1);
        assert!(!temp.exists());
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
}
