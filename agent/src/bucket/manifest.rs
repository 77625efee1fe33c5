//! The JSON documents of the bucket layout: the bucket descriptor and the
//! per-study manifests (see the layout in [`super`]).

use serde::{Deserialize, Serialize};

use pacs_mirror_store::index::records::InstanceRecord;

/// `format` of a study manifest.
pub const MANIFEST_FORMAT: &str = "pacs-mirror/study-manifest/1";
/// `format` of the bucket descriptor.
pub const DESCRIPTOR_FORMAT: &str = "pacs-mirror/bucket/1";
/// What the `format` of every version of the descriptor starts with.
pub const DESCRIPTOR_FORMAT_FAMILY: &str = "pacs-mirror/bucket/";

/// `pacs-mirror-bucket.json`: what this bucket is, for a person or a program
/// that finds it with nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// [`DESCRIPTOR_FORMAT`].
    pub format: String,
    /// The layout in words.
    pub layout: Vec<String>,
    /// The device name of the agent that created it.
    pub created_by: String,
    /// When (Unix ms).
    pub created_at_ms: u64,
}

impl Descriptor {
    /// A descriptor for a new bucket.
    pub fn new(created_by: &str, now_ms: u64) -> Self {
        Descriptor {
            format: DESCRIPTOR_FORMAT.into(),
            layout: vec![
                "objects/<hh>/<blake3>.dcm: a DICOM Part-10 file exactly as the agent received it; <blake3> is the blake3 hash (hex) of its data set bytes (everything after the file meta group), <hh> its first two hex digits. Written once, never overwritten.".into(),
                "studies/<blake3 of the Study Instance UID>/manifest.json: every instance of one study held here: its SOP, series, patient and transfer syntax UIDs, the object key, the data set and file hashes and sizes, who sent it and when. Rewritten as the study grows.".into(),
                "unfiled/<blake3 of the SOP Instance UID>/manifest.json: the same for one instance kept without a Study Instance UID (study UID empty; its findings say why).".into(),
                "staging/: multipart uploads in progress (copied to objects/ when complete, then removed); safe to delete when no agent is running.".into(),
                "Restore with: pacs-mirror restore --from <url> --to AE@host:port".into(),
            ],
            created_by: created_by.into(),
            created_at_ms: now_ms,
        }
    }
}

/// One instance in a study manifest: the agent's index record plus where its
/// bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The index record (identity, hashes, sizes, provenance).
    #[serde(flatten)]
    pub record: InstanceRecord,
    /// The object's key, relative to the bucket root of the target.
    pub key: String,
    /// blake3 (hex) of the whole Part-10 file stored under `key`.
    /// (The Study Date, YYYYMMDD, is the record's `study_date`: the same
    /// JSON key that manifests written before it was indexed carry.)
    pub file_blake3: String,
}

/// `studies/<k>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyManifest {
    /// [`MANIFEST_FORMAT`].
    pub format: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Patient ID (0010,0020) of the first instance.
    pub patient_id: String,
    /// Study Date (0008,0020) of the first instance that has one.
    pub study_date: String,
    /// When the manifest was last written (Unix ms).
    pub updated_at_ms: u64,
    /// Every instance, ordered by series, SOP Instance UID and data set hash.
    pub instances: Vec<ManifestEntry>,
}

impl StudyManifest {
    /// An empty manifest of a study.
    pub fn new(study_instance_uid: &str) -> Self {
        StudyManifest {
            format: MANIFEST_FORMAT.into(),
            study_instance_uid: study_instance_uid.into(),
            patient_id: String::new(),
            study_date: String::new(),
            updated_at_ms: 0,
            instances: Vec::new(),
        }
    }

    /// Add the entries not already listed (same data set hash); returns how
    /// many were added. An entry already listed is kept as it is: its
    /// provenance is that of the bytes the bucket holds (the first writer's).
    pub fn merge(&mut self, entries: &[ManifestEntry]) -> usize {
        let mut added = 0;
        for e in entries {
            if self
                .instances
                .iter()
                .any(|have| have.record.blake3 == e.record.blake3)
            {
                continue;
            }
            self.instances.push(e.clone());
            added += 1;
        }
        if added > 0 {
            self.instances.sort_by(|a, b| {
                (
                    &a.record.series_instance_uid,
                    &a.record.sop_instance_uid,
                    &a.record.blake3,
                )
                    .cmp(&(
                        &b.record.series_instance_uid,
                        &b.record.sop_instance_uid,
                        &b.record.blake3,
                    ))
            });
            if self.patient_id.is_empty() {
                self.patient_id = self
                    .instances
                    .iter()
                    .map(|e| e.record.patient_id.clone())
                    .find(|p| !p.is_empty())
                    .unwrap_or_default();
            }
            if self.study_date.is_empty() {
                self.study_date = self
                    .instances
                    .iter()
                    .map(|e| e.record.study_date.clone())
                    .find(|d| !d.is_empty())
                    .unwrap_or_default();
            }
        }
        added
    }
}

/// A manifest entry with made-up values, for tests (here and in the
/// verifier's).
#[doc(hidden)]
pub fn entry(sop: &str, series: &str, hash: &str) -> ManifestEntry {
    ManifestEntry {
        record: InstanceRecord {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: hash.into(),
            dataset_bytes: 10,
            file_bytes: 300,
            patient_id: "PID".into(),
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: series.into(),
            calling_ae: "CT".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: 5,
            study_date: "20260101".into(),
            modality: String::new(),
            findings: Vec::new(),
        },
        key: format!("objects/{}/{hash}.dcm", &hash[..2]),
        file_blake3: "ff".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_once_sorts_and_keeps_the_first_provenance() {
        let mut m = StudyManifest::new("1.2.3");
        assert_eq!(
            m.merge(&[entry("1.9", "1.2", "bb"), entry("1.8", "1.1", "aa")]),
            2
        );
        let mut again = entry("1.9", "1.2", "bb");
        again.record.calling_ae = "OTHER_AGENT".into();
        assert_eq!(m.merge(&[again]), 0);
        let order: Vec<&str> = m
            .instances
            .iter()
            .map(|e| e.record.blake3.as_str())
            .collect();
        assert_eq!(order, ["aa", "bb"]);
        assert_eq!(m.instances[1].record.calling_ae, "CT");
        assert_eq!(m.patient_id, "PID");
        assert_eq!(m.study_date, "20260101");
        // A second version of one SOP instance is listed beside the first.
        assert_eq!(m.merge(&[entry("1.9", "1.2", "cc")]), 1);
        assert_eq!(m.instances.len(), 3);
    }

    #[test]
    fn manifest_json_round_trip_is_flat() {
        let mut m = StudyManifest::new("1.2.3");
        m.merge(&[entry("1.9", "1.2", "bb")]);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["instances"][0]["sop_instance_uid"], "1.9");
        assert_eq!(json["instances"][0]["key"], "objects/bb/bb.dcm");
        let back: StudyManifest = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
    }
}
