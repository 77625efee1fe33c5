//! Spool scrub: re-read and re-hash every indexed object.

use pacs_mirror_dicom::part10;
use pacs_mirror_store::index::{Index, IndexError, hash_hex};
use pacs_mirror_store::recovery::hash_dataset;
use pacs_mirror_store::spool::Spool;
use serde::Serialize;

/// What is wrong with one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// The index lists it; the spool file is gone.
    Missing,
    /// The file's data set bytes no longer hash to its address.
    Corrupt,
    /// The file's length differs from the index.
    WrongSize,
    /// The file cannot be read.
    Unreadable,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// The object's blake3 (its address).
    pub blake3: String,
    /// The SOP instance it holds.
    pub sop_instance_uid: String,
    /// Details.
    pub detail: String,
    /// What the operator should do.
    pub to_repair: &'static str,
}

/// The result of a scrub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScrubReport {
    /// Objects checked.
    pub checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Problems found.
    pub findings: Vec<Finding>,
}

const RESEND: &str = "re-send the instance from the primary PACS, or restore it from a replication target; the index keeps its record";

/// Re-hash every object the index lists.
pub fn scrub_spool(index: &Index, spool: &Spool) -> Result<ScrubReport, IndexError> {
    let mut report = ScrubReport::default();
    let mut objects = Vec::new();
    // Objects retention removed (delivered everywhere) have no file to check.
    index.for_each_object(&mut |hash, rec| {
        if rec.evicted_at_ms.is_none() {
            objects.push((hash, rec));
        }
    })?;
    for (hash, rec) in objects {
        report.checked += 1;
        let path = spool.object_path(&hash);
        let finding = |kind, detail: String| Finding {
            kind,
            blake3: hash_hex(&hash),
            sop_instance_uid: rec.sop_instance_uid.clone(),
            detail,
            to_repair: RESEND,
        };
        if !path.exists() {
            report
                .findings
                .push(finding(FindingKind::Missing, path.display().to_string()));
            continue;
        }
        let checked = part10::dataset_offset(&path).and_then(|off| hash_dataset(&path, off));
        match checked {
            Err(e) => report.findings.push(finding(
                FindingKind::Unreadable,
                format!("{}: {e}", path.display()),
            )),
            Ok((actual, _, file_bytes)) => {
                report.bytes_read += file_bytes;
                if actual != hash {
                    report.findings.push(finding(
                        FindingKind::Corrupt,
                        format!("{} hashes to {}", path.display(), hash_hex(&actual)),
                    ));
                } else if file_bytes != rec.file_bytes {
                    report.findings.push(finding(
                        FindingKind::WrongSize,
                        format!("{} bytes, index says {}", file_bytes, rec.file_bytes),
                    ));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pacs_mirror_dicom::part10::{Receipt, file_header};
    use pacs_mirror_store::index::{InstanceRecord, MemKv};
    use pacs_mirror_store::spool::SpoolLimits;
    use std::io::Write;
    use std::sync::Arc;

    /// Put three objects in a spool, damage two, scrub.
    #[test]
    fn finds_corrupt_and_missing_objects() {
        let d = tempfile::tempdir().unwrap();
        let spool = Spool::open(&d.path().join("spool"), SpoolLimits::default()).unwrap();
        let index = Index::new(Arc::new(MemKv::default()));
        let mut paths = Vec::new();
        for i in 0..3u8 {
            let body = vec![i; 1000];
            let hash = pacs_mirror_store::index::ObjectId::of(&body);
            let uid = format!("1.2.3.{i}");
            let receipt = Receipt {
                source_ip: "127.0.0.1".into(),
                received_at_ms: 1,
            };
            let mut bytes = file_header(
                "1.2.840.10008.5.1.4.1.1.7",
                &uid,
                "1.2.840.10008.1.2",
                "A",
                &receipt,
            )
            .unwrap();
            bytes.extend_from_slice(&body);
            let (mut f, tmp) = spool.begin().unwrap();
            f.write_all(&bytes).unwrap();
            let placed = spool.place(&tmp, &hash, &mut |_| true).unwrap();
            let rec = InstanceRecord {
                sop_instance_uid: uid,
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2".into(),
                blake3: hash_hex(&hash),
                dataset_bytes: 1000,
                file_bytes: bytes.len() as u64,
                patient_id: String::new(),
                study_instance_uid: "1.2.3".into(),
                series_instance_uid: "1.2.3.1".into(),
                calling_ae: "A".into(),
                source_ip: "127.0.0.1".into(),
                received_at_ms: 1,
                study_date: String::new(),
                modality: String::new(),
                findings: Vec::new(),
            };
            index.commit_instance(&rec, &hash, &[], 1).unwrap();
            paths.push((placed.path, hash));
        }
        let clean = scrub_spool(&index, &spool).unwrap();
        assert_eq!(clean.checked, 3);
        assert!(clean.findings.is_empty(), "{:?}", clean.findings);

        // flip one bit in the data set of object 0, delete object 1
        let mut bytes = std::fs::read(&paths[0].0).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&paths[0].0, bytes).unwrap();
        std::fs::remove_file(&paths[1].0).unwrap();
        let report = scrub_spool(&index, &spool).unwrap();
        let mut kinds: Vec<_> = report
            .findings
            .iter()
            .map(|f| (f.blake3.clone(), f.kind.clone()))
            .collect();
        kinds.sort();
        let mut expected = vec![
            (hash_hex(&paths[0].1), FindingKind::Corrupt),
            (hash_hex(&paths[1].1), FindingKind::Missing),
        ];
        expected.sort();
        assert_eq!(kinds, expected);
    }
}
