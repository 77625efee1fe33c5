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

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries;

use crate::dimse;

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

fn transfer_syntax(uid: &str) -> Result<dicom_encoding::TransferSyntax, String> {
    match uid.trim_end_matches('\0') {
        EXPLICIT_VR_LE => Ok(entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()),
        IMPLICIT_VR_LE => Ok(entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()),
        other => Err(format!(
            "identifiers in transfer syntax {other} are not supported (only Explicit and Implicit VR Little Endian are proposed)"
        )),
    }
}

/// Encode an identifier in `transfer_syntax_uid` (Explicit or Implicit VR LE).
pub fn encode(identifier: &InMemDicomObject, transfer_syntax_uid: &str) -> Result<Vec<u8>, String> {
    let ts = transfer_syntax(transfer_syntax_uid)?;
    let mut out = Vec::new();
    identifier
        .write_dataset_with_ts(&mut out, &ts)
        .map_err(|e| format!("cannot encode the identifier: {e}"))?;
    Ok(out)
}

/// Decode an identifier received in `transfer_syntax_uid`.
pub fn decode(bytes: &[u8], transfer_syntax_uid: &str) -> Result<InMemDicomObject, String> {
    if bytes.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "identifier of {} bytes (at most {MAX_IDENTIFIER_BYTES})",
            bytes.len()
        ));
    }
    let ts = transfer_syntax(transfer_syntax_uid)?;
    let mut walker = crate::structure::Walker::for_dicom_rs(transfer_syntax_uid);
    walker.feed(bytes).map_err(|e| e.to_string())?;
    walker.finish().map_err(|e| e.to_string())?;
    InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Reading values
// ---------------------------------------------------------------------------

fn clean(s: &str) -> String {
    s.trim_matches(|c: char| c == '\0' || c == ' ').to_string()
}

/// A text value: None when absent, the trimmed text otherwise (possibly
/// empty).
pub fn text(obj: &InMemDicomObject, tag: Tag) -> Result<Option<String>, String> {
    match obj.get(tag) {
        None => Ok(None),
        Some(e) => e
            .to_str()
            .map(|s| Some(clean(&s)))
            .map_err(|err| format!("{tag}: {err}")),
    }
}

fn text_or_empty(obj: &InMemDicomObject, tag: Tag) -> Result<String, String> {
    Ok(text(obj, tag)?.unwrap_or_default())
}

/// The values of a multi-valued text element (empty when absent).
pub fn texts(obj: &InMemDicomObject, tag: Tag) -> Result<Vec<String>, String> {
    match obj.get(tag) {
        None => Ok(Vec::new()),
        Some(e) => Ok(e
            .to_multi_str()
            .map_err(|err| format!("{tag}: {err}"))?
            .iter()
            .map(|s| clean(s))
            .filter(|s| !s.is_empty())
            .collect()),
    }
}

/// A unique key that must be present and non-empty.
fn required(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<String, String> {
    match text(obj, tag)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("match without {name} {tag}")),
    }
}

/// An IS count: None when absent or empty; an error when not a number.
fn count(obj: &InMemDicomObject, tag: Tag) -> Result<Option<u32>, String> {
    match text(obj, tag)? {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| format!("{tag} is {v:?}, not a count")),
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
fn put_uids(obj: &mut InMemDicomObject, tag: Tag, uids: &[String]) -> Result<(), String> {
    for u in uids {
        dimse::check_uid(u).map_err(|e| format!("{tag} {u:?}: {e}"))?;
    }
    put(obj, tag, VR::UI, &uids.join("\\"));
    Ok(())
}

fn put_uid(obj: &mut InMemDicomObject, tag: Tag, uid: &Option<String>) -> Result<(), String> {
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
) -> Result<(), String> {
    let v = value.as_deref().unwrap_or("");
    if v.contains('\\') {
        return Err(format!("{tag} {v:?} contains the value separator '\\'"));
    }
    if v.chars().count() > max_len {
        return Err(format!("{tag} {v:?} is longer than {max_len} characters"));
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

fn check_date(d: &str) -> Result<String, String> {
    if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
        Ok(d.to_string())
    } else {
        Err(format!("date {d:?} is not YYYYMMDD"))
    }
}

impl DateRange {
    /// One day.
    pub fn on(date: &str) -> Result<Self, String> {
        let d = check_date(date)?;
        Ok(DateRange {
            from: Some(d.clone()),
            to: Some(d),
        })
    }
    /// From `from` to `to`, inclusive.
    pub fn between(from: &str, to: &str) -> Result<Self, String> {
        Ok(DateRange {
            from: Some(check_date(from)?),
            to: Some(check_date(to)?),
        })
    }
    /// From `from` on.
    pub fn since(from: &str) -> Result<Self, String> {
        Ok(DateRange {
            from: Some(check_date(from)?),
            to: None,
        })
    }
    /// Up to `to`.
    pub fn until(to: &str) -> Result<Self, String> {
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
    fn identifier(&self) -> Result<InMemDicomObject, String>;
    /// Read one pending response's identifier.
    fn parse(identifier: &InMemDicomObject) -> Result<Self::Match, String>;
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

    fn identifier(&self) -> Result<InMemDicomObject, String> {
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

    fn parse(o: &InMemDicomObject) -> Result<StudyMatch, String> {
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

    fn identifier(&self) -> Result<InMemDicomObject, String> {
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

    fn parse(o: &InMemDicomObject) -> Result<SeriesMatch, String> {
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

    fn identifier(&self) -> Result<InMemDicomObject, String> {
        let mut o = base(Level::Image);
        put_uid(&mut o, tags::SOP_CLASS_UID, &self.sop_class_uid)?;
        put_uids(&mut o, tags::SOP_INSTANCE_UID, &self.sop_instance_uids)?;
        put_uid(&mut o, tags::STUDY_INSTANCE_UID, &self.study_instance_uid)?;
        put_uid(&mut o, tags::SERIES_INSTANCE_UID, &self.series_instance_uid)?;
        ask(&mut o, tags::INSTANCE_NUMBER, VR::IS);
        Ok(o)
    }

    fn parse(o: &InMemDicomObject) -> Result<InstanceMatch, String> {
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
    pub fn identifier(&self) -> Result<InMemDicomObject, String> {
        let mut o = base(self.level());
        let non_empty = |v: &[String], what: &str| {
            if v.is_empty() {
                Err(format!("no {what} to retrieve"))
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
pub fn failed_sop_instance_uids(identifier: &InMemDicomObject) -> Result<Vec<String>, String> {
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
        assert!(StudyQuery::parse(&bad).unwrap_err().contains("not a count"));
        let mut no_uid = o.clone();
        no_uid.remove_element(tags::STUDY_INSTANCE_UID);
        assert!(StudyQuery::parse(&no_uid).unwrap_err().contains("without"));
        assert!(SeriesQuery::parse(&o).is_err(), "no series UID");
        assert!(InstanceQuery::parse(&o).is_err(), "no SOP instance UID");
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
