//! Versioned encodings of the index records.
//!
//! Every value starts with a one-byte version marker:
//! - `1`: the JSON encoding of the record follows (every row written before
//!   the compact encoding, and every record that has no compact encoding:
//!   conflicts, dead letters, pending markers, drill results…);
//! - `2`: the compact binary encoding of [`InstanceRecord`],
//!   [`ObjectRecord`], [`OutboxRecord`] and
//!   [`DeliveryRecord`](super::outbox::DeliveryRecord), the rows kept per
//!   instance: a kind byte, then its fields ([`compact`]'s header has the
//!   layout). A third of the JSON's size or less: no field names, integers
//!   as LEB128, digests as their 32 bytes, UIDs two digits a byte.
//!
//! Neither marker can start a JSON document (`{`, `[`, `"`, a digit…), and
//! no row was ever written without one.
//!
//! # Migration rule
//! - [`encode`] writes the newest encoding of its type: version 2 for the
//!   four above, version 1 for the rest. [`decode`] reads every version
//!   ever written: a row stays as it was written until its record is
//!   written again (an index is never rewritten to migrate it), so version
//!   1 rows of the four are read for as long as an index may hold them.
//! - A reader that meets a marker (or a compact kind) it does not know
//!   refuses the record (it never guesses): a build older than the rows
//!   cannot read them, and says to upgrade.
//! - When a record changes, its JSON form keeps decoding through
//!   `#[serde(default)]` fields (or the old struct stays here as `...V1`
//!   with a `From<V1>` migration); its compact form gets a new kind and the
//!   old kind's reader stays. Decoding of each old form is kept under test.

use std::any::Any;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

mod compact;

/// Version marker of the JSON record encoding.
pub const RECORD_V1: u8 = 1;
/// Version marker of the compact binary record encoding ([`compact`]).
pub const RECORD_V2: u8 = 2;

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Empty value.
    #[error("empty index record")]
    Empty,
    /// A version marker this build does not know.
    #[error("index record version {0} is newer than this build knows (1, 2); upgrade pacs-mirror")]
    UnknownVersion(u8),
    /// A compact record of a kind this build does not know.
    #[error("compact index record of kind {0}, newer than this build knows; upgrade pacs-mirror")]
    UnknownKind(u8),
    /// The body did not decode.
    #[error("index record does not decode: {0}")]
    Body(String),
}

/// Encode a record in the newest encoding of its type (see the module
/// header).
pub fn encode<T: Serialize + Any>(record: &T) -> Vec<u8> {
    if let Some(out) = compact::encode_any(record) {
        return out;
    }
    let mut out = vec![RECORD_V1];
    // Serializing these plain structs into a Vec cannot fail.
    serde_json::to_writer(&mut out, record).unwrap_or_default();
    out
}

/// Decode a record of any version, checking its version marker.
pub fn decode<T: DeserializeOwned + Any>(bytes: &[u8]) -> Result<T, RecordError> {
    match bytes.split_first() {
        None => Err(RecordError::Empty),
        Some((&RECORD_V1, body)) => {
            serde_json::from_slice(body).map_err(|e| RecordError::Body(e.to_string()))
        }
        Some((&RECORD_V2, body)) => compact::decode_any(body),
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
    use crate::index::outbox::DeliveryRecord;

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
        assert_eq!(bytes[0], RECORD_V2);
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

    fn instance() -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029.320.7.1234".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.4.90".into(),
            blake3: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into(),
            dataset_bytes: 524_288,
            file_bytes: 524_620,
            patient_id: "PID00012345".into(),
            study_instance_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029".into(),
            series_instance_uid: "1.2.840.113619.2.55.3.604688119.969.1268071029.320".into(),
            calling_ae: "CT_SCANNER_01".into(),
            source_ip: "10.20.30.40".into(),
            received_at_ms: 1_765_000_000_123,
            study_date: "20261207".into(),
            modality: "CT".into(),
            findings: Vec::new(),
        }
    }

    /// Every value of the four compact kinds decodes to itself, whatever
    /// its text holds (empty, odd lengths, hex that is not lowercase,
    /// UIDs with letters, non-ASCII, the largest integers).
    #[test]
    fn compact_round_trips() {
        fn back<T: Serialize + DeserializeOwned + Any + PartialEq + std::fmt::Debug>(
            v: T,
        ) -> usize {
            let bytes = encode(&v);
            assert_eq!(bytes[0], RECORD_V2, "{v:?}");
            assert_eq!(decode::<T>(&bytes).unwrap(), v);
            bytes.len()
        }
        let json = |v: &InstanceRecord| serde_json::to_vec(v).unwrap().len();
        let full = instance();
        let compact = back(full.clone());
        assert!(compact * 3 < json(&full), "{compact} vs {}", json(&full));
        back(InstanceRecord {
            sop_instance_uid: "1.2.3a".into(),
            sop_class_uid: String::new(),
            transfer_syntax_uid: ".".into(),
            blake3: "AF13".into(),
            dataset_bytes: u64::MAX,
            file_bytes: 0,
            patient_id: "Müller^Jürgen".into(),
            study_instance_uid: "1.2.9".into(),
            series_instance_uid: "12".into(),
            calling_ae: " ".into(),
            source_ip: "2001:db8::1".into(),
            received_at_ms: 1 << 63,
            study_date: String::new(),
            modality: "0".into(),
            findings: vec![
                Finding {
                    class: FindingClass::NonconformantUid,
                    detail: "letters".into(),
                },
                Finding {
                    class: FindingClass::Other,
                    detail: String::new(),
                },
            ],
        });
        back(InstanceRecord {
            blake3: "abc".into(),
            ..instance()
        });
        for class in FindingClass::ALL {
            back(InstanceRecord {
                findings: vec![Finding {
                    class,
                    detail: "x".into(),
                }],
                ..instance()
            });
        }
        back(ObjectRecord {
            sop_instance_uid: full.sop_instance_uid.clone(),
            dataset_bytes: 1,
            file_bytes: 2,
            sop_class_uid: String::new(),
            transfer_syntax_uid: "1.2.840.10008.1.2".into(),
            evicted_at_ms: Some(u64::MAX),
        });
        back(OutboxRecord {
            enqueued_at_ms: 0,
            attempts: u32::MAX,
            last_error: Some("A700: out of resources".into()),
            file_bytes: None,
        });
        let delivered = DeliveryRecord {
            delivered_at_ms: 1_765_000_000_000,
            attempts: 1,
            enqueued_at_ms: 1_764_999_999_000,
            stored_blake3: Some(full.blake3.clone()),
        };
        assert!(back(delivered.clone()) <= 48);
        // delivered before it was queued (a clock set back): still exact
        back(DeliveryRecord {
            enqueued_at_ms: u64::MAX,
            delivered_at_ms: 0,
            stored_blake3: None,
            ..delivered.clone()
        });
        back(DeliveryRecord {
            enqueued_at_ms: 0,
            delivered_at_ms: u64::MAX,
            ..delivered
        });
    }

    /// Rows of each compact kind as this release writes them: their bytes
    /// must stay readable by every later one.
    #[test]
    fn compact_fixtures_decode() {
        let object = [
            2, 2, // v2, ObjectRecord
            11, 0x1a, 0x2a, 0x30, // "1.2.3" packed
            10,   // dataset_bytes
            0xac, 0x02, // file_bytes 300
            0,    // sop class ""
            0,    // transfer syntax ""
            1, 0x05, // evicted at 5
        ];
        assert_eq!(
            decode::<ObjectRecord>(&object).unwrap(),
            ObjectRecord {
                sop_instance_uid: "1.2.3".into(),
                dataset_bytes: 10,
                file_bytes: 300,
                sop_class_uid: String::new(),
                transfer_syntax_uid: String::new(),
                evicted_at_ms: Some(5),
            }
        );
        let delivery = [
            2, 4,   // v2, DeliveryRecord
            100, // delivered at 100
            1,   // 1 attempt
            39,  // enqueued 20 before (zigzag -20)
            1, 5, 0xab, 0xcd, // stored blake3 "abcd"
        ];
        assert_eq!(
            decode::<DeliveryRecord>(&delivery).unwrap(),
            DeliveryRecord {
                delivered_at_ms: 100,
                attempts: 1,
                enqueued_at_ms: 80,
                stored_blake3: Some("abcd".into()),
            }
        );
        assert_eq!(
            encode(&decode::<DeliveryRecord>(&delivery).unwrap()),
            delivery
        );
        assert_eq!(encode(&decode::<ObjectRecord>(&object).unwrap()), object);
    }

    /// Old JSON rows of each compact kind still decode, as they did.
    #[test]
    fn json_rows_of_compact_kinds_decode() {
        let rec = instance();
        let v1 = [&[RECORD_V1][..], &serde_json::to_vec(&rec).unwrap()].concat();
        assert_eq!(decode::<InstanceRecord>(&v1).unwrap(), rec);
        let delivered = [
            &[RECORD_V1][..],
            br#"{"delivered_at_ms":9,"attempts":2,"enqueued_at_ms":7}"#,
        ]
        .concat();
        assert_eq!(
            decode::<DeliveryRecord>(&delivered).unwrap(),
            DeliveryRecord {
                delivered_at_ms: 9,
                attempts: 2,
                enqueued_at_ms: 7,
                stored_blake3: None,
            }
        );
        // re-written, it is compact
        let again = encode(&decode::<InstanceRecord>(&v1).unwrap());
        assert_eq!(again[0], RECORD_V2);
        assert!(again.len() * 3 < v1.len());
    }

    /// A compact body that is cut, padded, of another kind or of a kind
    /// not known is refused, never guessed at.
    #[test]
    fn bad_compact_bodies_are_refused() {
        let good = encode(&instance());
        for cut in 1..good.len() {
            assert!(
                decode::<InstanceRecord>(&good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode::<InstanceRecord>(&longer).is_err());
        assert!(matches!(
            decode::<ObjectRecord>(&good),
            Err(RecordError::Body(_))
        ));
        assert!(matches!(
            decode::<InstanceRecord>(&[RECORD_V2, 99]),
            Err(RecordError::UnknownKind(99))
        ));
        // an integer of 11 bytes, a packed nibble over 10, text not UTF-8
        let mut long_int = vec![RECORD_V2, 3];
        long_int.extend([0xff; 10]);
        long_int.push(1);
        assert!(decode::<OutboxRecord>(&long_int).is_err());
        assert!(decode::<ObjectRecord>(&[2, 2, 3, 0xb0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode::<ObjectRecord>(&[2, 2, 2, 0xff, 0, 0, 0, 0, 0]).is_err());
        // a huge declared length allocates nothing: it is cut short
        let mut huge = vec![RECORD_V2, 2];
        huge.extend([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(decode::<ObjectRecord>(&huge).is_err());
    }
}
