//! Identifiers of C-FIND, C-GET and C-MOVE: the typed queries and matches,
//! and their encoding with dicom-object in the negotiated transfer syntax.
//!
//! Decoding never trusts the peer: an identifier is at most
//! [`MAX_IDENTIFIER_BYTES`], only the two uncompressed little-endian transfer
//! syntaxes we propose are accepted, and the bytes are walked structurally
//! ([`crate::structure::Walker::for_dicom_rs`], nested sequences and items
//! included) before dicom-object sees them, so no declared length can exceed
//! the bytes actually present (dicom-object zero-fills a value buffer of the
//! declared length before reading it).
//!
//! Values put into a query are checked: UIDs with [`dimse::check_uid`], other
//! keys for the value separator `\` and their VR's length, dates as
//! `YYYYMMDD`. A match that lacks its level's unique key, or carries a count
//! that is not a number, is malformed: the caller gets an error rather than a
//! silently shorter list.

use dicom_core::value::{CastValueError, ConvertValueError};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, ReadError, WriteError};
use dicom_transfer_syntax_registry::entries;

use crate::dimse::{self, UidError};
use crate::structure::StructureError;

/// Largest identifier accepted from a peer (a real one is well under 4 KiB).
pub const MAX_IDENTIFIER_BYTES: usize = 1 << 20;

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// The Query/Retrieve Level (0008,0052).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// PATIENT (Patient Root only).
    Patient,
    /// STUDY.
    Study,
    /// SERIES.
    Series,
    /// IMAGE (instances of any kind).
    Image,
}

impl Level {
    /// The code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Patient => "PATIENT",
            Level::Study => "STUDY",
            Level::Series => "SERIES",
            Level::Image => "IMAGE",
        }
    }
}

/// Why an identifier could not be built, encoded, decoded or read.
///
/// Building a query or retrieve identifier fails on a value we would not
/// send ([`QueryError::InvalidUid`], [`QueryError::ValueSeparator`],
/// [`QueryError::TooLong`], [`QueryError::BadDate`],
/// [`QueryError::NothingToRetrieve`]); decoding and reading fail on what a
/// peer sent ([`QueryError::TooLarge`], [`QueryError::Structure`],
/// [`QueryError::Decode`], [`QueryError::BadValue`],
/// [`QueryError::MissingKey`], [`QueryError::NotACount`]…).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The identifier is larger than [`MAX_IDENTIFIER_BYTES`].
    #[error("identifier of {len} bytes (at most {MAX_IDENTIFIER_BYTES})")]
    TooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// Not one of the two transfer syntaxes identifiers are proposed in.
    #[error(
        "identifiers in transfer syntax {uid} are not supported (only Explicit and Implicit VR Little Endian are proposed)"
    )]
    UnsupportedTransferSyntax {
        /// The transfer syntax UID.
        uid: String,
    },
    /// dicom-object could not write the identifier.
    #[error("cannot encode the identifier: {source}")]
    Encode {
        /// Why.
        #[source]
        source: Box<WriteError>,
    },
    /// The bytes are not a well-formed data set (found by the structure
    /// walker before dicom-object reads them).
    #[error(transparent)]
    Structure(#[from] StructureError),
    /// dicom-object could not read the data set.
    #[error(transparent)]
    Decode(Box<ReadError>),
    /// An element whose value cannot be read as text.
    #[error("{tag}: {source}")]
    BadValue {
        /// The element.
        tag: Tag,
        /// Why.
        #[source]
        source: ConvertValueError,
    },
    /// A multi-valued element whose values cannot be read as text.
    #[error("{tag}: {source}")]
    BadValues {
        /// The element.
        tag: Tag,
        /// Why.
        #[source]
        source: CastValueError,
    },
    /// A match without its level's unique key.
    #[error("match without {name} {tag}")]
    MissingKey {
        /// The key's name, e.g. `Study Instance UID`.
        name: &'static str,
        /// The key.
        tag: Tag,
    },
    /// A count (IS) that is not a number.
    #[error("{tag} is {value:?}, not a count")]
    NotACount {
        /// The element.
        tag: Tag,
        /// Its (trimmed) text.
        value: String,
    },
    /// A UID that breaks PS3.5 9.1 ([`dimse::check_uid`]).
    #[error("{tag} {uid:?}: {source}")]
    InvalidUid {
        /// The key.
        tag: Tag,
        /// The UID.
        uid: String,
        /// What is wrong with it.
        #[source]
        source: UidError,
    },
    /// A single-valued key containing the value separator `\`.
    #[error("{tag} {value:?} contains the value separator '\\'")]
    ValueSeparator {
        /// The key.
        tag: Tag,
        /// The value.
        value: String,
    },
    /// A key longer than its VR allows.
    #[error("{tag} {value:?} is longer than {max_len} characters")]
    TooLong {
        /// The key.
        tag: Tag,
        /// The value.
        value: String,
        /// The most characters allowed.
        max_len: usize,
    },
    /// A date that is not `YYYYMMDD`.
    #[error("date {date:?} is not YYYYMMDD")]
    BadDate {
        /// The date as given.
        date: String,
    },
    /// A retrieve target with an empty list of UIDs.
    #[error("no {what} to retrieve")]
    NothingToRetrieve {
        /// The key whose list is empty, e.g. `Study Instance UID`.
        what: &'static str,
    },
}

fn transfer_syntax(uid: &str) -> Result<dicom_encoding::TransferSyntax, QueryError> {
    match uid.trim_end_matches('\0') {
        EXPLICIT_VR_LE => Ok(entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()),
        IMPLICIT_VR_LE => Ok(entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()),
        other => Err(QueryError::UnsupportedTransferSyntax {
            uid: other.to_string(),
        }),
    }
}

/// Encode an identifier in `transfer_syntax_uid` (Explicit or Implicit VR LE).
pub fn encode(
    identifier: &InMemDicomObject,
    transfer_syntax_uid: &str,
) -> Result<Vec<u8>, QueryError> {
    let ts = transfer_syntax(transfer_syntax_uid)?;
    let mut out = Vec::new();
    identifier
        .write_dataset_with_ts(&mut out, &ts)
        .map_err(|e| QueryError::Encode {
            source: Box::new(e),
        })?;
    Ok(out)
}

/// Decode an identifier received in `transfer_syntax_uid`.
pub fn decode(bytes: &[u8], transfer_syntax_uid: &str) -> Result<InMemDicomObject, QueryError> {
    decode_bounded(bytes, transfer_syntax_uid, MAX_IDENTIFIER_BYTES)
}

/// [`decode`] with another bound than [`MAX_IDENTIFIER_BYTES`] (the
/// storage commitment data sets, which list many references).
pub fn decode_bounded(
    bytes: &[u8],
    transfer_syntax_uid: &str,
    max_bytes: usize,
) -> Result<InMemDicomObject, QueryError> {
    if bytes.len() > max_bytes {
        return Err(QueryError::TooLarge { len: bytes.len() });
    }
    let ts = transfer_syntax(transfer_syntax_uid)?;
    let mut walker = crate::structure::Walker::for_dicom_rs(transfer_syntax_uid);
    walker.feed(bytes)?;
    walker.finish()?;
    InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| QueryError::Decode(Box::new(e)))
}

// ---------------------------------------------------------------------------
// Reading values
// ---------------------------------------------------------------------------

fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c == ' ').to_string()
}

/// A text value: None when absent, the trimmed text otherwise (possibly
/// empty).
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Result<Option<String>, QueryError> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_str()
            .map(|s| Some(clean(&s)))
            .map_err(|source| QueryError::BadValue { tag, source }),
    }
}

fn text_or_empty(obj: &InMemDicomObject, tag: Tag) -> Result<String, QueryError> {
    Ok(text(obj, tag)?.unwrap_or_default())
}

/// The values of a multi-valued text element (empty when absent).
pub fn texts(obj: &InMemDicomObject, tag: Tag) -> Result<Vec<String>, QueryError> {
    match obj.get(tag) {
        None => Ok(Vec::new()),
        Some(e) => Ok(e
            .to_multi_str()
            .map_err(|source| QueryError::BadValues { tag, source })?
            .iter()
            .map(|s| clean(s))
            .filter(|s| !s.is_empty())
            .collect()),
    }
}

/// A unique key that must be present and non-empty.
fn required(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<String, QueryError> {
    match text(obj, tag)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(QueryError::MissingKey { name, tag }),
    }
}

/// An IS count: None when absent or empty; an error when not a number.
fn count(obj: &InMemDicomObject, tag: Tag) -> Result<Option<u32>, QueryError> {
    match text(obj, tag)? {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(QueryError::NotACount { tag, value: v }),
        },
    }
}

/// An IS number that is informative only: None when absent, empty or not a
/// number.
fn number(obj: &InMemDicomObject, tag: Tag) -> Option<i32> {
    text(obj, tag).ok().flatten().and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------
// Building queries
// ---------------------------------------------------------------------------

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    let value = if value.is_empty() {
        PrimitiveValue::Empty
    } else {
        PrimitiveValue::from(value)
    };
    obj.put(DataElement::new(tag, vr, value));
}

/// A return key: asked for, matching anything.
fn ask(obj: &mut InMemDicomObject, tag: Tag, vr: VR) {
    put(obj, tag, vr, "");
}

/// A list of UIDs (list matching), each checked.
fn put_uids(obj: &mut InMemDicomObject, tag: Tag, uids: &[String]) -> Result<(), QueryError> {
    for u in uids {
        dimse::check_uid(u).map_err(|source| QueryError::InvalidUid {
            tag,
            uid: u.clone(),
            source,
        })?;
    }
    put(obj, tag, VR::UI, &uids.join("\\"));
    Ok(())
}

fn put_uid(obj: &mut InMemDicomObject, tag: Tag, uid: &Option<String>) -> Result<(), QueryError> {
    match uid {
        Some(u) => put_uids(obj, tag, std::slice::from_ref(u)),
        None => {
            ask(obj, tag, VR::UI);
            Ok(())
        }
    }
}

/// A single-valued text key (wildcards `*` and `?` allowed), at most
/// `max_len` characters.
fn put_text(
    obj: &mut InMemDicomObject,
    tag: Tag,
    vr: VR,
    value: &Option<String>,
    max_len: usize,
) -> Result<(), QueryError> {
    let v = value.as_deref().unwrap_or("");
    if v.contains('\\') {
        return Err(QueryError::ValueSeparator {
            tag,
            value: v.to_string(),
        });
    }
    if v.chars().count() > max_len {
        return Err(QueryError::TooLong {
            tag,
            value: v.to_string(),
            max_len,
        });
    }
    put(obj, tag, vr, v);
    Ok(())
}

fn base(level: Level) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::QUERY_RETRIEVE_LEVEL, VR::CS, level.as_str());
    obj
}

/// A Study Date range (`YYYYMMDD`, both ends inclusive, either open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRange {
    from: Option<String>,
    to: Option<String>,
}

fn check_date(d: &str) -> Result<String, QueryError> {
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        Ok(d.to_string())
    } else {
        Err(QueryError::BadDate {
            date: d.to_string(),
        })
    }
}

impl DateRange {
    /// One day.
    pub fn on(date: &str) -> Result<Self, QueryError> {
        let d = check_date(date)?;
        Ok(DateRange {
            from: Some(d.clone()),
            to: Some(d),
        })
    }
    /// From `from` to `to`, inclusive.
    pub fn between(from: &str, to: &str) -> Result<Self, QueryError> {
        Ok(DateRange {
            from: Some(check_date(from)?),
            to: Some(check_date(to)?),
        })
    }
    /// From `from` on.
    pub fn since(from: &str) -> Result<Self, QueryError> {
        Ok(DateRange {
            from: Some(check_date(from)?),
            to: None,
        })
    }
    /// Up to `to`.
    pub fn until(to: &str) -> Result<Self, QueryError> {
        Ok(DateRange {
            from: None,
            to: Some(check_date(to)?),
        })
    }
    /// The DA matching value: `A`, `A-B`, `A-` or `-B`.
    pub fn value(&self) -> String {
        match (&self.from, &self.to) {
            (Some(a), Some(b)) if a == b => a.clone(),
            (a, b) => format!(
                "{}-{}",
                a.as_deref().unwrap_or(""),
                b.as_deref().unwrap_or("")
            ),
        }
    }
}

/// A typed C-FIND query: its level, its identifier, and how to read a match.
pub trait FindQuery {
    /// What one match is read into.
    type Match;
    /// The Query/Retrieve Level.
    const LEVEL: Level;
    /// The identifier to send (matching keys and return keys).
    fn identifier(&self) -> Result<InMemDicomObject, QueryError>;
    /// Read one pending response's identifier.
    fn parse(identifier: &InMemDicomObject) -> Result<Self::Match, QueryError>;
}

/// STUDY level. Empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyQuery {
    /// Patient ID (0010,0020); wildcards allowed. Required as a unique key
    /// with the Patient Root model.
    pub patient_id: Option<String>,
    /// Study Instance UIDs (list matching); empty = any.
    pub study_instance_uids: Vec<String>,
    /// Study Date (0008,0020).
    pub study_date: Option<DateRange>,
    /// Accession Number (0008,0050); wildcards allowed.
    pub accession_number: Option<String>,
}

/// One study.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyMatch {
    pub study_instance_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub study_date: String,
    pub study_time: String,
    pub accession_number: String,
    pub study_description: String,
    /// Modalities in Study (0008,0061).
    pub modalities_in_study: Vec<String>,
    /// Number of Study Related Series (0020,1206), if the peer answered it.
    pub number_of_study_related_series: Option<u32>,
    /// Number of Study Related Instances (0020,1208), if the peer answered it.
    pub number_of_study_related_instances: Option<u32>,
}

impl FindQuery for StudyQuery {
    type Match = StudyMatch;
    const LEVEL: Level = Level::Study;

    fn identifier(&self) -> Result<InMemDicomObject, QueryError> {
        let mut o = base(Level::Study);
        put_text(&mut o, tags::PATIENT_ID, VR::LO, &self.patient_id, 64)?;
        ask(&mut o, tags::PATIENT_NAME, VR::PN);
        put_uids(&mut o, tags::STUDY_INSTANCE_UID, &self.study_instance_uids)?;
        let date = self.study_date.as_ref().map(DateRange::value);
        put(
            &mut o,
            tags::STUDY_DATE,
            VR::DA,
            date.as_deref().unwrap_or(""),
        );
        ask(&mut o, tags::STUDY_TIME, VR::TM);
        put_text(
            &mut o,
            tags::ACCESSION_NUMBER,
            VR::SH,
            &self.accession_number,
            16,
        )?;
        ask(&mut o, tags::STUDY_DESCRIPTION, VR::LO);
        ask(&mut o, tags::MODALITIES_IN_STUDY, VR::CS);
        ask(&mut o, tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS);
        ask(&mut o, tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS);
        Ok(o)
    }

    fn parse(o: &InMemDicomObject) -> Result<StudyMatch, QueryError> {
        Ok(StudyMatch {
            study_instance_uid: required(o, tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            patient_id: text_or_empty(o, tags::PATIENT_ID)?,
            patient_name: text_or_empty(o, tags::PATIENT_NAME)?,
            study_date: text_or_empty(o, tags::STUDY_DATE)?,
            study_time: text_or_empty(o, tags::STUDY_TIME)?,
            accession_number: text_or_empty(o, tags::ACCESSION_NUMBER)?,
            study_description: text_or_empty(o, tags::STUDY_DESCRIPTION)?,
            modalities_in_study: texts(o, tags::MODALITIES_IN_STUDY)?,
            number_of_study_related_series: count(o, tags::NUMBER_OF_STUDY_RELATED_SERIES)?,
            number_of_study_related_instances: count(o, tags::NUMBER_OF_STUDY_RELATED_INSTANCES)?,
        })
    }
}

/// SERIES level. The Study Root model expects the study's UID (hierarchical
/// query); some SCPs also answer without it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesQuery {
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: Option<String>,
    /// Series Instance UIDs (list matching); empty = any.
    pub series_instance_uids: Vec<String>,
    /// Modality (0008,0060).
    pub modality: Option<String>,
}

/// One series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesMatch {
    /// Empty if the peer did not return it.
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    /// Series Number (0020,0011), when a number.
    pub series_number: Option<i32>,
    pub series_description: String,
    /// Number of Series Related Instances (0020,1209), if the peer answered it.
    pub number_of_series_related_instances: Option<u32>,
}

impl FindQuery for SeriesQuery {
    type Match = SeriesMatch;
    const LEVEL: Level = Level::Series;

    fn identifier(&self) -> Result<InMemDicomObject, QueryError> {
        let mut o = base(Level::Series);
        put_uid(&mut o, tags::STUDY_INSTANCE_UID, &self.study_instance_uid)?;
        put_uids(
            &mut o,
            tags::SERIES_INSTANCE_UID,
            &self.series_instance_uids,
        )?;
        put_text(&mut o, tags::MODALITY, VR::CS, &self.modality, 16)?;
        ask(&mut o, tags::SERIES_NUMBER, VR::IS);
        ask(&mut o, tags::SERIES_DESCRIPTION, VR::LO);
        ask(&mut o, tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS);
        Ok(o)
    }

    fn parse(o: &InMemDicomObject) -> Result<SeriesMatch, QueryError> {
        Ok(SeriesMatch {
            study_instance_uid: text_or_empty(o, tags::STUDY_INSTANCE_UID)?,
            series_instance_uid: required(o, tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            modality: text_or_empty(o, tags::MODALITY)?,
            series_number: number(o, tags::SERIES_NUMBER),
            series_description: text_or_empty(o, tags::SERIES_DESCRIPTION)?,
            number_of_series_related_instances: count(o, tags::NUMBER_OF_SERIES_RELATED_INSTANCES)?,
        })
    }
}

/// IMAGE level (any instance).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: Option<String>,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: Option<String>,
    /// SOP Instance UIDs (list matching); empty = any.
    pub sop_instance_uids: Vec<String>,
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: Option<String>,
}

/// One instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceMatch {
    /// Empty if the peer did not return it.
    pub study_instance_uid: String,
    /// Empty if the peer did not return it.
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    /// Empty if the peer did not return it.
    pub sop_class_uid: String,
    /// Instance Number (0020,0013), when a number.
    pub instance_number: Option<i32>,
}

impl FindQuery for InstanceQuery {
    type Match = InstanceMatch;
    const LEVEL: Level = Level::Image;

    fn identifier(&self) -> Result<InMemDicomObject, QueryError> {
        let mut o = base(Level::Image);
        put_uid(&mut o, tags::SOP_CLASS_UID, &self.sop_class_uid)?;
        put_uids(&mut o, tags::SOP_INSTANCE_UID, &self.sop_instance_uids)?;
        put_uid(&mut o, tags::STUDY_INSTANCE_UID, &self.study_instance_uid)?;
        put_uid(&mut o, tags::SERIES_INSTANCE_UID, &self.series_instance_uid)?;
        ask(&mut o, tags::INSTANCE_NUMBER, VR::IS);
        Ok(o)
    }

    fn parse(o: &InMemDicomObject) -> Result<InstanceMatch, QueryError> {
        Ok(InstanceMatch {
            study_instance_uid: text_or_empty(o, tags::STUDY_INSTANCE_UID)?,
            series_instance_uid: text_or_empty(o, tags::SERIES_INSTANCE_UID)?,
            sop_instance_uid: required(o, tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            sop_class_uid: text_or_empty(o, tags::SOP_CLASS_UID)?,
            instance_number: number(o, tags::INSTANCE_NUMBER),
        })
    }
}

/// What a C-GET or C-MOVE retrieves (Study Root: the unique keys of every
/// level above the one retrieved are included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrieveTarget {
    /// Whole studies.
    Studies(Vec<String>),
    /// Series of one study.
    Series {
        study_instance_uid: String,
        series_instance_uids: Vec<String>,
    },
    /// Instances of one series.
    Instances {
        study_instance_uid: String,
        series_instance_uid: String,
        sop_instance_uids: Vec<String>,
    },
}

impl RetrieveTarget {
    /// One study.
    pub fn study(study_instance_uid: &str) -> Self {
        RetrieveTarget::Studies(vec![study_instance_uid.to_string()])
    }
    /// One series.
    pub fn series(study_instance_uid: &str, series_instance_uid: &str) -> Self {
        RetrieveTarget::Series {
            study_instance_uid: study_instance_uid.to_string(),
            series_instance_uids: vec![series_instance_uid.to_string()],
        }
    }
    /// One instance.
    pub fn instance(
        study_instance_uid: &str,
        series_instance_uid: &str,
        sop_instance_uid: &str,
    ) -> Self {
        RetrieveTarget::Instances {
            study_instance_uid: study_instance_uid.to_string(),
            series_instance_uid: series_instance_uid.to_string(),
            sop_instance_uids: vec![sop_instance_uid.to_string()],
        }
    }

    /// The level retrieved.
    pub fn level(&self) -> Level {
        match self {
            RetrieveTarget::Studies(_) => Level::Study,
            RetrieveTarget::Series { .. } => Level::Series,
            RetrieveTarget::Instances { .. } => Level::Image,
        }
    }

    /// The identifier (unique keys only).
    pub fn identifier(&self) -> Result<InMemDicomObject, QueryError> {
        let mut o = base(self.level());
        let non_empty = |v: &[String], what: &'static str| {
            if v.is_empty() {
                Err(QueryError::NothingToRetrieve { what })
            } else {
                Ok(())
            }
        };
        match self {
            RetrieveTarget::Studies(studies) => {
                non_empty(studies, "Study Instance UID")?;
                put_uids(&mut o, tags::STUDY_INSTANCE_UID, studies)?;
            }
            RetrieveTarget::Series {
                study_instance_uid,
                series_instance_uids,
            } => {
                non_empty(series_instance_uids, "Series Instance UID")?;
                put_uids(
                    &mut o,
                    tags::STUDY_INSTANCE_UID,
                    std::slice::from_ref(study_instance_uid),
                )?;
                put_uids(&mut o, tags::SERIES_INSTANCE_UID, series_instance_uids)?;
            }
            RetrieveTarget::Instances {
                study_instance_uid,
                series_instance_uid,
                sop_instance_uids,
            } => {
                non_empty(sop_instance_uids, "SOP Instance UID")?;
                put_uids(
                    &mut o,
                    tags::STUDY_INSTANCE_UID,
                    std::slice::from_ref(study_instance_uid),
                )?;
                put_uids(
                    &mut o,
                    tags::SERIES_INSTANCE_UID,
                    std::slice::from_ref(series_instance_uid),
                )?;
                put_uids(&mut o, tags::SOP_INSTANCE_UID, sop_instance_uids)?;
            }
        }
        Ok(o)
    }
}

/// The Failed SOP Instance UID List (0008,0058) of a final C-GET/C-MOVE
/// response identifier.
pub fn failed_sop_instance_uids(identifier: &InMemDicomObject) -> Result<Vec<String>, QueryError> {
    texts(identifier, tags::FAILED_SOP_INSTANCE_UID_LIST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(o: &InMemDicomObject, ts: &str) -> InMemDicomObject {
        decode(&encode(o, ts).unwrap(), ts).unwrap()
    }

    #[test]
    fn study_query_identifier_in_both_transfer_syntaxes() {
        let q = StudyQuery {
            patient_id: Some("SYNTH*".into()),
            study_instance_uids: vec!["1.2.3".into(), "1.2.4".into()],
            study_date: Some(DateRange::between("20240101", "20241231").unwrap()),
            accession_number: None,
        };
        for ts in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
            let o = round_trip(&q.identifier().unwrap(), ts);
            assert_eq!(
                text(&o, tags::QUERY_RETRIEVE_LEVEL).unwrap().unwrap(),
                "STUDY"
            );
            assert_eq!(text(&o, tags::PATIENT_ID).unwrap().unwrap(), "SYNTH*");
            assert_eq!(
                texts(&o, tags::STUDY_INSTANCE_UID).unwrap(),
                ["1.2.3", "1.2.4"]
            );
            assert_eq!(
                text(&o, tags::STUDY_DATE).unwrap().unwrap(),
                "20240101-20241231"
            );
            // return keys are present and empty
            for tag in [
                tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
                tags::NUMBER_OF_STUDY_RELATED_SERIES,
                tags::ACCESSION_NUMBER,
                tags::MODALITIES_IN_STUDY,
            ] {
                assert_eq!(text(&o, tag).unwrap().as_deref(), Some(""), "{tag}");
            }
        }
    }

    #[test]
    fn explicit_encoding_is_byte_exact() {
        let q = InstanceQuery {
            sop_instance_uids: vec!["1.2.3.4".into()],
            ..InstanceQuery::default()
        };
        let bytes = encode(&q.identifier().unwrap(), EXPLICIT_VR_LE).unwrap();
        // (0008,0016) UI empty first, then (0008,0018) UI "1.2.3.4\0"
        assert_eq!(&bytes[..8], &[0x08, 0, 0x16, 0, b'U', b'I', 0, 0]);
        assert_eq!(&bytes[8..16], &[0x08, 0, 0x18, 0, b'U', b'I', 8, 0]);
        assert_eq!(&bytes[16..24], b"1.2.3.4\0");
        // (0008,0052) CS "IMAGE " next
        assert_eq!(&bytes[24..32], &[0x08, 0, 0x52, 0, b'C', b'S', 6, 0]);
        assert_eq!(&bytes[32..38], b"IMAGE ");
    }

    #[test]
    fn date_ranges() {
        assert_eq!(DateRange::on("20240102").unwrap().value(), "20240102");
        assert_eq!(DateRange::since("20240102").unwrap().value(), "20240102-");
        assert_eq!(DateRange::until("20240102").unwrap().value(), "-20240102");
        assert!(DateRange::on("2024-01-02").is_err());
        assert!(DateRange::between("20240102", "x").is_err());
    }

    #[test]
    fn bad_query_values_are_refused() {
        let q = StudyQuery {
            study_instance_uids: vec!["1.2\\3".into()],
            ..StudyQuery::default()
        };
        assert!(q.identifier().is_err());
        let q = StudyQuery {
            patient_id: Some("A\\B".into()),
            ..StudyQuery::default()
        };
        assert!(q.identifier().is_err());
        let q = SeriesQuery {
            study_instance_uid: Some("../x".into()),
            ..SeriesQuery::default()
        };
        assert!(q.identifier().is_err());
        assert!(RetrieveTarget::Studies(vec![]).identifier().is_err());
    }

    #[test]
    fn retrieve_identifiers_carry_the_keys_above() {
        let o = round_trip(
            &RetrieveTarget::instance("1.2", "1.2.3", "1.2.3.4")
                .identifier()
                .unwrap(),
            IMPLICIT_VR_LE,
        );
        assert_eq!(
            text(&o, tags::QUERY_RETRIEVE_LEVEL).unwrap().unwrap(),
            "IMAGE"
        );
        assert_eq!(text(&o, tags::STUDY_INSTANCE_UID).unwrap().unwrap(), "1.2");
        assert_eq!(
            text(&o, tags::SERIES_INSTANCE_UID).unwrap().unwrap(),
            "1.2.3"
        );
        assert_eq!(
            text(&o, tags::SOP_INSTANCE_UID).unwrap().unwrap(),
            "1.2.3.4"
        );
        let o = RetrieveTarget::series("1.2", "1.2.3").identifier().unwrap();
        assert_eq!(
            text(&o, tags::QUERY_RETRIEVE_LEVEL).unwrap().unwrap(),
            "SERIES"
        );
        assert!(o.get(tags::SOP_INSTANCE_UID).is_none());
    }

    #[test]
    fn parses_matches_and_refuses_malformed_ones() {
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3");
        put(&mut o, tags::MODALITIES_IN_STUDY, VR::CS, "CT\\SR");
        put(
            &mut o,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            VR::IS,
            "12 ",
        );
        put(&mut o, tags::PATIENT_ID, VR::LO, "P1");
        let o = round_trip(&o, EXPLICIT_VR_LE);
        let m = StudyQuery::parse(&o).unwrap();
        assert_eq!(m.study_instance_uid, "1.2.3");
        assert_eq!(m.modalities_in_study, ["CT", "SR"]);
        assert_eq!(m.number_of_study_related_instances, Some(12));
        assert_eq!(m.number_of_study_related_series, None);
        assert_eq!(m.patient_id, "P1");

        let mut bad = o.clone();
        put(
            &mut bad,
            tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            VR::IS,
            "x",
        );
        assert!(
            StudyQuery::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("not a count")
        );
        let mut no_uid = o.clone();
        no_uid.remove_element(tags::STUDY_INSTANCE_UID);
        assert!(
            StudyQuery::parse(&no_uid)
                .unwrap_err()
                .to_string()
                .contains("without")
        );
        assert!(SeriesQuery::parse(&o).is_err(), "no series UID");
        assert!(InstanceQuery::parse(&o).is_err(), "no SOP instance UID");
    }

    #[test]
    fn error_texts() {
        let study_uids = |uids: &[&str]| StudyQuery {
            study_instance_uids: uids.iter().map(|u| u.to_string()).collect(),
            ..StudyQuery::default()
        };
        let e = study_uids(&["1..2"]).identifier().unwrap_err();
        assert!(matches!(e, QueryError::InvalidUid { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "(0020,000D) \"1..2\": UID has an empty component"
        );
        let e = StudyQuery {
            patient_id: Some("A\\B".into()),
            ..StudyQuery::default()
        }
        .identifier()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "(0010,0020) \"A\\\\B\" contains the value separator '\\'"
        );
        let e = SeriesQuery {
            modality: Some("X".repeat(17)),
            ..SeriesQuery::default()
        }
        .identifier()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "(0008,0060) \"{}\" is longer than 16 characters",
                "X".repeat(17)
            )
        );
        assert_eq!(
            DateRange::on("2024").unwrap_err().to_string(),
            "date \"2024\" is not YYYYMMDD"
        );
        assert_eq!(
            RetrieveTarget::Studies(vec![])
                .identifier()
                .unwrap_err()
                .to_string(),
            "no Study Instance UID to retrieve"
        );
        let mut o = InMemDicomObject::new_empty();
        put(
            &mut o,
            tags::NUMBER_OF_SERIES_RELATED_INSTANCES,
            VR::IS,
            "x",
        );
        assert_eq!(
            SeriesQuery::parse(&o).unwrap_err().to_string(),
            "match without Series Instance UID (0020,000E)"
        );
        put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, "1.2");
        assert_eq!(
            SeriesQuery::parse(&o).unwrap_err().to_string(),
            "(0020,1209) is \"x\", not a count"
        );
        assert_eq!(
            decode(&vec![0; MAX_IDENTIFIER_BYTES + 1], IMPLICIT_VR_LE)
                .unwrap_err()
                .to_string(),
            "identifier of 1048577 bytes (at most 1048576)"
        );
    }

    #[test]
    fn truncated_and_hostile_identifiers_are_errors() {
        let bytes = encode(&StudyQuery::default().identifier().unwrap(), EXPLICIT_VR_LE).unwrap();
        for cut in [1, 5, 9, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], EXPLICIT_VR_LE).is_err(), "cut {cut}");
        }
        // a declared length of ~4 GiB in 12 bytes: refused before dicom-object
        // would allocate it
        let evil = [0x10, 0, 0x10, 0, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF];
        assert!(decode(&evil, EXPLICIT_VR_LE).is_err());
        let evil_implicit = [0x10, 0, 0x10, 0, 0xF0, 0xFF, 0xFF, 0xFF];
        assert!(decode(&evil_implicit, IMPLICIT_VR_LE).is_err());
        assert!(decode(&vec![0; MAX_IDENTIFIER_BYTES + 2], EXPLICIT_VR_LE).is_err());
        assert!(
            decode(&bytes, "1.2.840.10008.1.2.4.50")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for ts in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
                if let Ok(o) = decode(&bytes, ts) {
                    let _ = StudyQuery::parse(&o);
                    let _ = SeriesQuery::parse(&o);
                    let _ = InstanceQuery::parse(&o);
                    let _ = failed_sop_instance_uids(&o);
                }
            }
        }
    }
}
