//! The ingest policy: which received objects are kept, which are refused,
//! and what is recorded as wrong with the ones kept. Used by every path that
//! puts an object into the spool (network C-STORE, backfill) and by the
//! paths that index a spool file again (start-up recovery, `reindex`), so
//! that an object gets the same record whichever way it is indexed.
//!
//! # Policy: a faithful copy, not a validator
//! The spool keeps, byte-exact, every object whose transfer completed (the
//! last fragment arrived) and whose C-STORE command identifies it: an
//! Affected SOP Class UID and SOP Instance UID usable as index keys
//! ([`usable_key`]). That includes objects with a missing or empty Study or
//! Series Instance UID, over-long or otherwise non-conformant UIDs (a UID
//! is an index key, never a path), data sets that do not parse (cut short,
//! bytes after a deflate stream, lying lengths, impossible nesting),
//! known deviations of peers (undefined-length items in encapsulated Pixel
//! Data, encapsulated Pixel Data under a native transfer syntax) and
//! unknown private tags. What is wrong is recorded as [`Finding`]s in the
//! object's index record, counted, shown and logged once.
//!
//! Only these are refused, each with its status and a log line saying why:
//! - the transfer was aborted (nothing to answer; the temp file is removed);
//! - a command UID that cannot be an index key: empty, with control
//!   characters (other than the trailing NUL pad), or over
//!   [`MAX_KEY_BYTES`] (C002, checked before any byte is written);
//! - command and data set naming different SOP Instance UIDs: an identity
//!   conflict (C001);
//! - an object over `max_object_bytes` (A701), quota or disk full (A700);
//! - what negotiation excludes (SOP classes the AE does not accept).
//!
//! # How the attributes are read
//! By the structure walker itself ([`Walker::capturing`]), one walk per
//! object as the bytes arrive, never by dicom-object: the walker reads past
//! undefined-length UN (as PS3.5 6.2.2 says its contents are encoded) and
//! keeps at most [`CAPTURE_LIMIT`](pacs_mirror_dicom::structure::CAPTURE_LIMIT) bytes
//! of each value, whatever length it declares. When the walk stops at a
//! flaw, the attributes before it are used and the rest are missing.

use pacs_mirror_dicom::dimse;
pub use pacs_mirror_dicom::identity::{IDENTIFYING, attribute, walker};
use pacs_mirror_dicom::identity::{
    MODALITY, PATIENT_ID, SERIES, SOP_CLASS, SOP_INSTANCE, STUDY, STUDY_DATE, text,
};
use pacs_mirror_dicom::structure::{Flaw, Observed};

use crate::index::records::{Finding, FindingClass};

/// The longest UID (or other key value) used as an index key.
pub const MAX_KEY_BYTES: usize = 1024;
/// What the index records of a kept object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identified {
    /// The command's Affected SOP Class UID.
    pub sop_class_uid: String,
    /// The command's Affected SOP Instance UID (the data set's, when it has
    /// one, is the same).
    pub sop_instance_uid: String,
    /// (0020,000D); empty when missing or unusable as a key.
    pub study_instance_uid: String,
    /// (0020,000E); empty when missing or unusable as a key.
    pub series_instance_uid: String,
    /// (0010,0020), may be empty.
    pub patient_id: String,
    /// (0008,0020) as written, may be empty.
    pub study_date: String,
    /// (0008,0060), may be empty.
    pub modality: String,
    /// What is not conformant, in a stable order.
    pub findings: Vec<Finding>,
}

/// Command and data set name different SOP instances: the object is
/// refused (C001), as keeping it under either UID would misfile it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SOP Instance UID {data_set} in the data set, {command} in the command")]
pub struct IdentityConflict {
    /// The data set's (0008,0018), escaped for logs.
    pub data_set: String,
    /// The command's Affected SOP Instance UID, escaped.
    pub command: String,
}

/// Why a UID cannot be an index key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableKey {
    /// Nothing at all.
    #[error("empty UID")]
    Empty,
    /// Longer than [`MAX_KEY_BYTES`].
    #[error("UID of {0} bytes (more than {MAX_KEY_BYTES} cannot be an index key)")]
    TooLong(usize),
    /// A control character (other than the trimmed trailing NUL pad).
    #[error("UID contains the control character {0:?}")]
    Control(char),
}

/// Whether a UID can be an index key: not empty, no control characters
/// (a trailing NUL pad is not part of it and must already be trimmed), at
/// most [`MAX_KEY_BYTES`]. Nothing else is required: keys are never paths.
pub fn usable_key(uid: &str) -> Result<(), UnusableKey> {
    if uid.is_empty() {
        return Err(UnusableKey::Empty);
    }
    if uid.len() > MAX_KEY_BYTES {
        return Err(UnusableKey::TooLong(uid.len()));
    }
    if let Some(c) = uid.chars().find(|c| c.is_control()) {
        return Err(UnusableKey::Control(c));
    }
    Ok(())
}

/// The first of `uids` (each named for the operator) that cannot be an
/// index key, with why: the one check every path that indexes an object by
/// the UIDs it was sent with makes (network ingest on the command's,
/// backfill and recovery on the file meta group's).
pub fn unusable_key<'a>(
    uids: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Option<(&'static str, UnusableKey)> {
    uids.into_iter()
        .find_map(|(what, uid)| usable_key(uid).err().map(|e| (what, e)))
}

/// What breaks PS3.5 9.1 in a usable UID, if anything: the network UID
/// check ([`dimse::check_uid`]) and a leading zero in a component.
pub fn nonconformance(uid: &str) -> Option<String> {
    match dimse::check_uid(uid) {
        // check_uid quotes the offending character with {:?} (escaped).
        Err(e) => Some(format!("{e} (PS3.5 9.1)")),
        Ok(()) if dimse::uid_has_leading_zero(uid) => {
            Some("has a component with a leading zero (PS3.5 9.1)".into())
        }
        Ok(()) => None,
    }
}

/// Decide what to record of an object the command identifies.
/// `command_sop_class` and `command_sop_instance` have passed
/// [`usable_key`]; `observed` is the walk of the data set as received.
pub fn identify(
    command_sop_class: &str,
    command_sop_instance: &str,
    observed: &Observed,
) -> Result<Identified, IdentityConflict> {
    let mut findings = Vec::new();
    let mut find = |class, detail: String| findings.push(Finding { class, detail });

    // The SOP instance: the command's; the data set's must not differ.
    match text(observed, SOP_INSTANCE) {
        Some((uid, _)) if !uid.is_empty() => {
            if uid != command_sop_instance {
                return Err(IdentityConflict {
                    data_set: uid.escape_debug().to_string(),
                    command: command_sop_instance.escape_debug().to_string(),
                });
            }
        }
        _ => find(
            FindingClass::MissingAttribute,
            "no SOP Instance UID (0008,0018) in the data set (the command's is used)".into(),
        ),
    }
    match text(observed, SOP_CLASS) {
        Some((uid, _)) if !uid.is_empty() => {
            if uid != command_sop_class {
                find(
                    FindingClass::SopClassMismatch,
                    format!(
                        "SOP Class UID {} in the data set, {} in the command (indexed by the command's)",
                        uid.escape_debug(),
                        command_sop_class.escape_debug()
                    ),
                );
            }
        }
        _ => find(
            FindingClass::MissingAttribute,
            "no SOP Class UID (0008,0016) in the data set (the command's is used)".into(),
        ),
    }
    for (what, uid) in [
        ("SOP Instance UID", command_sop_instance),
        ("SOP Class UID", command_sop_class),
    ] {
        if let Some(why) = nonconformance(uid) {
            find(FindingClass::NonconformantUid, format!("{what}: {why}"));
        }
    }
    // Study and series: kept when usable as keys, else the object is
    // indexed without them.
    let mut key = |tag, what: &str| -> String {
        match text(observed, tag) {
            None => {
                find(FindingClass::MissingAttribute, format!("no {what}"));
                String::new()
            }
            Some((uid, _)) if uid.is_empty() => {
                find(FindingClass::MissingAttribute, format!("empty {what}"));
                String::new()
            }
            Some((uid, length)) => {
                if let Err(why) = usable_key(&uid).map_err(|e| e.to_string()).and_then(|()| {
                    if length as usize > MAX_KEY_BYTES + 1 {
                        Err(format!("value of {length} bytes"))
                    } else {
                        Ok(())
                    }
                }) {
                    find(
                        FindingClass::NonconformantUid,
                        format!("{what} unusable as an index key ({why}): not indexed by it"),
                    );
                    String::new()
                } else {
                    if let Some(why) = nonconformance(&uid) {
                        find(FindingClass::NonconformantUid, format!("{what}: {why}"));
                    }
                    uid
                }
            }
        }
    };
    let study_instance_uid = key(STUDY, "Study Instance UID (0020,000D)");
    let series_instance_uid = key(SERIES, "Series Instance UID (0020,000E)");
    // Free text values: kept when they fit a key, else left empty.
    let value = |tag| {
        text(observed, tag)
            .filter(|(v, length)| {
                *length as usize <= MAX_KEY_BYTES && !v.chars().any(char::is_control)
            })
            .map(|(v, _)| v)
            .unwrap_or_default()
    };
    let patient_id = value(PATIENT_ID);
    let study_date = value(STUDY_DATE);
    let modality = value(MODALITY);

    if let Err(e) = &observed.structure {
        let class = match e.flaw {
            Flaw::Truncated | Flaw::Malformed => FindingClass::Structure,
            Flaw::TrailingBytes => FindingClass::TrailingBytes,
            Flaw::UndefinedLengthFragment => FindingClass::UndefinedLengthFragment,
        };
        let kind = if e.flaw == Flaw::Truncated {
            "truncated"
        } else {
            "malformed"
        };
        find(
            class,
            format!("{kind} at byte {} of the data set: {}", e.offset, e.what),
        );
    }
    if observed.encapsulated_on_native {
        find(
            FindingClass::EncapsulatedOnNative,
            "encapsulated (compressed) Pixel Data under a native transfer syntax".into(),
        );
    }
    findings.sort_by_key(|f| f.class);
    Ok(Identified {
        sop_class_uid: command_sop_class.to_string(),
        sop_instance_uid: command_sop_instance.to_string(),
        study_instance_uid,
        series_instance_uid,
        patient_id,
        study_date,
        modality,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_dicom::testing::element::{long, short};

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    fn walk(ts: &str, d: &[u8]) -> Observed {
        let mut w = walker(ts);
        for c in d.chunks(5) {
            let _ = w.feed(c);
        }
        w.finish_observing()
    }

    fn classes(i: &Identified) -> Vec<FindingClass> {
        i.findings.iter().map(|f| f.class).collect()
    }

    fn conformant() -> Vec<u8> {
        let mut d = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0");
        d.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
        d.extend(short(0x0008, 0x0020, b"DA", b"20261207"));
        d.extend(short(0x0008, 0x0060, b"CS", b"CT"));
        d.extend(short(0x0010, 0x0020, b"LO", b"PID 1 "));
        d.extend(short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
        d.extend(short(0x0020, 0x000E, b"UI", b"1.2.3.1\0"));
        d
    }

    #[test]
    fn a_conformant_object_has_no_findings() {
        let i = identify(CT, "1.2.3.4", &walk(EXPLICIT, &conformant())).unwrap();
        assert_eq!(
            i,
            Identified {
                sop_class_uid: CT.into(),
                sop_instance_uid: "1.2.3.4".into(),
                study_instance_uid: "1.2.3".into(),
                series_instance_uid: "1.2.3.1".into(),
                patient_id: "PID 1".into(),
                study_date: "20261207".into(),
                modality: "CT".into(),
                findings: vec![],
            }
        );
    }

    #[test]
    fn another_sop_instance_in_the_data_set_is_a_conflict() {
        let e = identify(CT, "1.2.3.5", &walk(EXPLICIT, &conformant())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SOP Instance UID 1.2.3.4 in the data set, 1.2.3.5 in the command"
        );
    }

    #[test]
    fn missing_and_odd_uids_are_findings() {
        // No study, a 77-character series UID, hex letters in the SOP
        // instance, another SOP class.
        let long_uid = format!("1.2.{}", "7".repeat(73));
        let mut d = short(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\0");
        d.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.a4\0"));
        d.extend(short(0x0020, 0x000E, b"UI", long_uid.as_bytes()));
        let i = identify(CT, "1.2.3.a4", &walk(EXPLICIT, &d)).unwrap();
        assert_eq!(i.study_instance_uid, "");
        assert_eq!(i.series_instance_uid, long_uid);
        assert_eq!(
            classes(&i),
            [
                FindingClass::MissingAttribute,
                FindingClass::NonconformantUid,
                FindingClass::NonconformantUid,
                FindingClass::SopClassMismatch,
            ]
        );
        let text: Vec<String> = i.findings.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"missing_attribute: no Study Instance UID (0020,000D)".to_string()),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("Series Instance UID (0020,000E): UID of 77 characters")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("SOP Instance UID: UID contains 'a'")),
            "{text:?}"
        );
    }

    #[test]
    fn unusable_study_uids_are_not_keys() {
        // A NUL inside, and 2000 bytes: neither may become a key.
        for value in [b"1.2\x003.4\0".to_vec(), vec![b'1'; 2000]] {
            let mut d = short(0x0008, 0x0018, b"UI", b"1.2.3.4\0");
            d.extend(long(0x0020, 0x000D, b"UN", value.len() as u32, &value));
            let i = identify(CT, "1.2.3.4", &walk(EXPLICIT, &d)).unwrap();
            assert_eq!(i.study_instance_uid, "");
            assert!(
                i.findings
                    .iter()
                    .any(|f| f.class == FindingClass::NonconformantUid
                        && f.detail.contains("not indexed by it")),
                "{:?}",
                i.findings
            );
        }
    }

    #[test]
    fn a_truncated_data_set_keeps_what_came_before_the_cut() {
        let mut d = conformant();
        d.extend(long(0x7FE0, 0x0010, b"OW", 1000, &[0; 10]));
        let i = identify(CT, "1.2.3.4", &walk(EXPLICIT, &d)).unwrap();
        assert_eq!(i.study_instance_uid, "1.2.3");
        assert_eq!(classes(&i), [FindingClass::Structure]);
        assert!(
            i.findings[0].detail.starts_with("truncated at byte"),
            "{:?}",
            i.findings
        );
        // Cut inside the Study UID itself: it is missing, not half read.
        let d = conformant();
        // The Study UID element is the last but one (14 bytes, then 16).
        let cut = d.len() - 16 - 3;
        let i = identify(CT, "1.2.3.4", &walk(EXPLICIT, &d[..cut])).unwrap();
        assert_eq!(i.study_instance_uid, "");
        assert!(classes(&i).contains(&FindingClass::Structure));
    }

    #[test]
    fn command_keys() {
        assert!(usable_key("1.2.3").is_ok());
        assert!(usable_key("1.2.3.abc").is_ok());
        assert!(usable_key(&"1".repeat(191)).is_ok());
        assert!(usable_key("").is_err());
        assert!(usable_key("1.2\n3").is_err());
        assert!(usable_key("1.2\0.3").is_err());
        assert!(usable_key(&"1".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert_eq!(nonconformance("1.2.840.10008.1.1"), None);
        assert!(nonconformance("1.02.3").unwrap().contains("leading zero"));
        assert!(nonconformance("1..3").unwrap().contains("empty component"));
    }
}
