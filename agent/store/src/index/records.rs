//! Versioned encodings of the index records.
//!
//! Every value starts with a one-byte version marker, followed by the JSON
//! encoding of the record of that version. A reader that meets a marker it
//! does not know refuses the record (it never guesses); when a record changes,
//! the old struct stays here as `...V1` with a `From<V1>` migration and its
//! decoding is kept under test.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Version marker of the current record encodings.
pub const RECORD_V1: u8 = 1;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Empty value.
    #[error("empty index record")]
    Empty,
    /// A version marker this build does not know.
    #[error("index record version {0} is newer than this build knows (1); upgrade pacs-mirror")]
    UnknownVersion(u8),
    /// The JSON body did not decode.
    #[error("index record does not decode: {0}")]
    Body(String),
}

/// Encode a record with the current version marker.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![RECORD_V1];
    // Serializing these plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut out, record).unwrap_or_default();
    out
}

/// Decode a record, checking its version marker.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&RECORD_V1, body)) => {
            serde_json::from_slice(body).map_err(|e| RecordError::Body(e.to_string()))
        }
        Some((&v, _)) => Err(RecordError::UnknownVersion(v)),
    }
}

/// One received version of a SOP instance: what `index dump` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// SOP Instance UID (0008,0018), equal to the C-STORE's Affected SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// The transfer syntax the object was received (and is stored) in.
    pub transfer_syntax_uid: String,
    /// blake3 of the data set bytes as received (hex): the spool address.
    pub blake3: String,
    /// Length of the data set bytes.
    pub dataset_bytes: u64,
    /// Length of the spool file (preamble + file meta + data set).
    pub file_bytes: u64,
    /// Patient ID (0010,0020), may be empty.
    pub patient_id: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// The calling AE title of the association that sent it.
    pub calling_ae: String,
    /// The peer's IP address.
    pub source_ip: String,
    /// When it was received (Unix time, milliseconds).
    pub received_at_ms: u64,
    /// Study Date (0008,0020) as written (YYYYMMDD), may be empty (absent
    /// in records written before it was kept: empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub study_date: String,
    /// Modality (0008,0060), may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modality: String,
    /// What is not conformant about the object as received (kept
    /// byte-exact all the same; see [`crate::identify`]). Empty for a
    /// conformant object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// Something not conformant about a kept object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Its class, for counting and filtering.
    pub class: FindingClass,
    /// What exactly, for the operator (e.g. "Study Instance UID of 77
    /// characters (PS3.5 9.1: at most 64)").
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class.name(), self.detail)
    }
}

/// The classes of [`Finding`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingClass {
    /// A Study, Series, SOP Instance or SOP Class UID missing or empty in
    /// the data set.
    MissingAttribute,
    /// A UID that breaks PS3.5 9.1 (over 64 characters, letters, empty or
    /// leading-zero components), or one that cannot be an index key at all
    /// (then the object is not indexed by it).
    NonconformantUid,
    /// The data set's SOP Class UID is not the command's.
    SopClassMismatch,
    /// The data set does not parse: cut short, lengths that lie, impossible
    /// nesting or delimiters.
    Structure,
    /// Bytes after the end of the deflate stream.
    TrailingBytes,
    /// An undefined-length item inside encapsulated Pixel Data (a known
    /// deviation of some Storage SCUs).
    UndefinedLengthFragment,
    /// Encapsulated (compressed) Pixel Data under a native transfer syntax
    /// (a known deviation of some Storage SCUs).
    EncapsulatedOnNative,
    /// A class this build does not know (written by a newer one).
    #[serde(other)]
    Other,
}

impl FindingClass {
    /// Every class, in order.
    pub const ALL: [FindingClass; 7] = [
        FindingClass::MissingAttribute,
        FindingClass::NonconformantUid,
        FindingClass::SopClassMismatch,
        FindingClass::Structure,
        FindingClass::TrailingBytes,
        FindingClass::UndefinedLengthFragment,
        FindingClass::EncapsulatedOnNative,
    ];

    /// The class's name, as serialized and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            FindingClass::MissingAttribute => "missing_attribute",
            FindingClass::NonconformantUid => "nonconformant_uid",
            FindingClass::SopClassMismatch => "sop_class_mismatch",
            FindingClass::Structure => "structure",
            FindingClass::TrailingBytes => "trailing_bytes",
            FindingClass::UndefinedLengthFragment => "undefined_length_fragment",
            FindingClass::EncapsulatedOnNative => "encapsulated_on_native",
            FindingClass::Other => "other",
        }
    }
}

/// Object-level record, keyed by blake3: which instance a spool file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The SOP Instance UID inside the object.
    pub sop_instance_uid: String,
    /// Length of the data set bytes.
    pub dataset_bytes: u64,
    /// Length of the spool file.
    pub file_bytes: u64,
    /// SOP Class UID (empty in records written before it was kept).
    #[serde(default)]
    pub sop_class_uid: String,
    /// The transfer syntax it is stored in (empty in older records).
    #[serde(default)]
    pub transfer_syntax_uid: String,
    /// When retention removed its spool file, after every target had it
    /// (None: the file is in the spool).
    #[serde(default)]
    pub evicted_at_ms: Option<u64>,
}

/// A pending delivery of one object to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// When the row was first written (Unix ms).
    pub enqueued_at_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last error, if any attempt failed.
    pub last_error: Option<String>,
    /// The spool file's length, for the lag figures (absent in rows written
    /// before it was recorded: then read from the object row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

/// A SOP Instance UID received with different contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// The SOP Instance UID.
    pub sop_instance_uid: String,
    /// The blake3 of the version that caused the conflict.
    pub blake3: String,
    /// The other versions already held (blake3 hex).
    pub other_versions: Vec<String>,
    /// When it was detected (Unix ms).
    pub detected_at_ms: u64,
    /// Calling AE of the new version.
    pub calling_ae: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_marker() {
        let r = OutboxRecord {
            enqueued_at_ms: 5,
            attempts: 0,
            last_error: None,
            file_bytes: Some(7),
        };
        // a row written before `file_bytes` existed still decodes
        let old = [
            &[RECORD_V1][..],
            br#"{"enqueued_at_ms":5,"attempts":0,"last_error":null}"#,
        ]
        .concat();
        assert_eq!(
            decode::<OutboxRecord>(&old).unwrap(),
            OutboxRecord {
                file_bytes: None,
                ..r.clone()
            }
        );
        let bytes = encode(&r);
        assert_eq!(bytes[0], RECORD_V1);
        assert_eq!(decode::<OutboxRecord>(&bytes).unwrap(), r);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<OutboxRecord>(&future),
            Err(RecordError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<OutboxRecord>(&[]),
            Err(RecordError::Empty)
        ));
    }

    /// A v1 record as written by the first release must stay decodable.
    #[test]
    fn v1_fixture_decodes() {
        let fixture =
            b"\x01{\"sop_instance_uid\":\"1.2.3\",\"dataset_bytes\":10,\"file_bytes\":300}";
        let r: ObjectRecord = decode(fixture).unwrap();
        assert_eq!(r.sop_instance_uid, "1.2.3");
        assert_eq!(r.file_bytes, 300);
    }
}
