//! Part-10 files: the file meta header we write in front of the data set
//! bytes, and reading the identifying attributes back from a received object.
//!
//! The data set bytes are never decoded into memory and re-encoded: they go to
//! disk exactly as they arrived. Only the attributes up to Pixel Data are
//! parsed, from the file, to check and index the object.
//!
//! dicom-object is only ever given bytes that [`crate::structure::Walker`]
//! accepted: it allocates each value's declared length before reading it
//! (a 1 KiB data set declaring a 4 GiB value would make it allocate 4 GiB)
//! and recurses into nested sequences (thousands of levels overflow the
//! stack and abort the process). [`read_header_prefix`] cuts the prefix
//! before the first incomplete element; [`read_header`] first walks the
//! file up to Pixel Data.

use std::path::Path;

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};
use serde::{Deserialize, Serialize};

use crate::structure::Walker;

/// Implementation Class UID of pacs-mirror (a UUID-derived 2.25 UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.10786319485681046702925272269099423959";
/// Implementation Version Name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!(
    "PACS_MIRROR_",
    env!("CARGO_PKG_VERSION_MAJOR"),
    env!("CARGO_PKG_VERSION_MINOR")
);
/// Private Information Creator UID of the receipt record in (0002,0102).
pub const RECEIPT_CREATOR_UID: &str = "2.25.10786319485681046702925272269099423959.1";

/// Where an object came from, kept in the file meta group as Private
/// Information (0002,0102) so that the index can be rebuilt from the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The peer's IP address.
    pub source_ip: String,
    /// Unix time of receipt, milliseconds.
    pub received_at_ms: u64,
}

/// Errors reading or writing Part-10 structures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Part10Error {
    /// The meta group could not be built (bad UID…).
    #[error("cannot build the file meta group: {0}")]
    Meta(String),
    /// The data set could not be parsed far enough.
    #[error("data set cannot be parsed: {0}")]
    Parse(String),
    /// A required attribute is missing or empty.
    #[error("data set has no {0}")]
    Missing(&'static str),
}

/// Build `preamble + "DICM" + file meta group` for a received object.
pub fn file_header(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
    calling_ae: &str,
    receipt: &Receipt,
) -> Result<Vec<u8>, Part10Error> {
    let mut ae: String = calling_ae.trim().chars().take(16).collect();
    if ae.is_empty() {
        ae = "UNKNOWN".into();
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax_uid)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(ae)
        .private_information_creator_uid(RECEIPT_CREATOR_UID)
        .private_information(receipt_bytes(receipt))
        .build()
        .map_err(|e| Part10Error::Meta(e.to_string()))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| Part10Error::Meta(e.to_string()))?;
    Ok(out)
}

/// JSON of the receipt, padded with a space to even length (OB values are
/// even; trailing white space is valid JSON).
fn receipt_bytes(receipt: &Receipt) -> Vec<u8> {
    let mut v = serde_json::to_vec(receipt).unwrap_or_default();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

/// The identifying attributes of an object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectHeader {
    /// From the file meta group.
    pub transfer_syntax_uid: String,
    /// (0002,0016), the calling AE that sent it.
    pub source_ae: String,
    /// (0002,0102) decoded, when written by pacs-mirror.
    pub receipt: Option<Receipt>,
    /// (0008,0016)
    pub sop_class_uid: String,
    /// (0008,0018)
    pub sop_instance_uid: String,
    /// (0020,000D)
    pub study_instance_uid: String,
    /// (0020,000E)
    pub series_instance_uid: String,
    /// (0010,0020), may be empty.
    pub patient_id: String,
    /// (0008,0020) as written (YYYYMMDD), may be empty.
    pub study_date: String,
    /// Bytes of preamble + DICM + meta group (where the data set starts).
    pub dataset_offset: u64,
}

fn trimmed(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).trim_start().to_string()
}

/// Where the data set starts in a Part-10 file: 128 + "DICM" + the (0002,0000)
/// element + the group length it states. Reads 144 bytes.
pub fn dataset_offset(path: &Path) -> std::io::Result<u64> {
    dataset_offset_in(&mut std::fs::File::open(path)?)
}

/// [`dataset_offset`] of a file already open, read from its current
/// position (its start): consumes the first 144 bytes.
pub fn dataset_offset_in(file: &mut impl std::io::Read) -> std::io::Result<u64> {
    let mut head = [0u8; 144];
    file.read_exact(&mut head)?;
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    if &head[128..132] != b"DICM" {
        return Err(invalid("no DICM prefix"));
    }
    // (0002,0000) UL, explicit VR: tag(4) "UL" len(2) value(4)
    if head[132..138] != [2, 0, 0, 0, b'U', b'L'] {
        return Err(invalid("file meta does not start with (0002,0000) UL"));
    }
    let len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    Ok(144 + u64::from(len))
}

/// Largest file meta group read (a real one is a few hundred bytes).
const MAX_META_BYTES: u64 = 1 << 20;

/// Walk a Part-10 file's data set from its start up to Pixel Data (or its
/// end): nesting, lengths and delimiters must be sound there before
/// dicom-object may parse it (see the module doc).
pub fn check_until_pixel_data(path: &Path) -> Result<(), Part10Error> {
    check_data_set(path, true)
}

/// Walk a Part-10 file's whole data set ([`check_until_pixel_data`] for
/// a parse that reads Pixel Data too, e.g. `dicom_object::open_file`).
pub fn check_whole_data_set(path: &Path) -> Result<(), Part10Error> {
    check_data_set(path, false)
}

fn check_data_set(path: &Path, until_pixel_data: bool) -> Result<(), Part10Error> {
    use std::io::{Read, Seek};
    let io = |e: std::io::Error| Part10Error::Parse(e.to_string());
    let mut f = std::fs::File::open(path).map_err(io)?;
    let offset = dataset_offset_in(&mut f).map_err(io)?;
    if offset > MAX_META_BYTES {
        return Err(Part10Error::Parse(format!(
            "file meta group of {offset} bytes"
        )));
    }
    // Read from the start again: the preamble, DICM and the whole meta group.
    let mut meta = vec![0u8; offset as usize];
    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    f.read_exact(&mut meta).map_err(io)?;
    let table = dicom_object::meta::FileMetaTable::from_reader(&meta[128..])
        .map_err(|e| Part10Error::Parse(e.to_string()))?;
    let mut walker = if until_pixel_data {
        Walker::until_pixel_data(table.transfer_syntax())
    } else {
        Walker::new(table.transfer_syntax())
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        walker
            .feed(&buf[..n])
            .map_err(|e| Part10Error::Parse(e.to_string()))?;
        if walker.reached_pixel_data() {
            break;
        }
    }
    walker
        .finish()
        .map_err(|e| Part10Error::Parse(e.to_string()))
}

/// Parse a Part-10 file up to (not including) Pixel Data (after
/// [`check_until_pixel_data`]).
pub fn read_header(path: &Path) -> Result<ObjectHeader, Part10Error> {
    check_until_pixel_data(path)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| Part10Error::Parse(e.to_string()))?;
    header_of(&obj)
}

/// Parse the header from the first bytes of an object still being received:
/// `header` is what [`file_header`] returned, `data` the data set bytes so
/// far. Fails (and the caller parses the whole file later) when the
/// attributes needed are not all within `data`. Because data set elements are
/// in tag order and every attribute read here precedes Pixel Data, a success
/// on a prefix gives the same result as on the whole object.
///
/// Only the complete elements of `data` are parsed ([`Walker::complete_len`]):
/// an element whose declared length goes past `data` is never read, so a
/// lying length cannot make the parser allocate it. Deflated data sets are
/// never parsed from a prefix (the caller parses the whole file).
pub fn read_header_prefix(header: &[u8], data: &[u8]) -> Result<ObjectHeader, Part10Error> {
    let without_preamble = header.get(128..).ok_or(Part10Error::Missing("file meta"))?;
    let table = dicom_object::meta::FileMetaTable::from_reader(without_preamble)
        .map_err(|e| Part10Error::Parse(e.to_string()))?;
    let mut walker = Walker::until_pixel_data(table.transfer_syntax());
    walker
        .feed(data)
        .map_err(|e| Part10Error::Parse(e.to_string()))?;
    let complete = walker
        .complete_len()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Part10Error::Parse("not parsed from a prefix".into()))?;
    let data = data.get(..complete).unwrap_or(data);
    let reader = std::io::Read::chain(without_preamble, data);
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .read_preamble(dicom_object::file::ReadPreamble::Never)
        .from_reader(reader)
        .map_err(|e| Part10Error::Parse(e.to_string()))?;
    header_of(&obj)
}

fn header_of(obj: &dicom_object::DefaultDicomObject) -> Result<ObjectHeader, Part10Error> {
    let meta = obj.meta();
    let get = |tag, name: &'static str| -> Result<String, Part10Error> {
        let v = obj
            .get(tag)
            .map(|e| e.to_str().map(|s| trimmed(&s)))
            .transpose()
            .map_err(|e| Part10Error::Parse(format!("{name}: {e}")))?
            .unwrap_or_default();
        Ok(v)
    };
    let required = |tag, name: &'static str| -> Result<String, Part10Error> {
        let v = get(tag, name)?;
        if v.is_empty() {
            Err(Part10Error::Missing(name))
        } else {
            Ok(v)
        }
    };
    let receipt = meta
        .private_information
        .as_deref()
        .filter(|_| {
            meta.private_information_creator_uid()
                .map(|u| u.trim_end_matches(['\0', ' ']))
                == Some(RECEIPT_CREATOR_UID)
        })
        .and_then(|b| {
            let b = b.trim_ascii_end();
            serde_json::from_slice(b.strip_suffix(b"\0").unwrap_or(b)).ok()
        });
    Ok(ObjectHeader {
        transfer_syntax_uid: trimmed(meta.transfer_syntax()),
        source_ae: meta
            .source_application_entity_title()
            .map(trimmed)
            .unwrap_or_default(),
        receipt,
        sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID (0008,0016)")?,
        sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?,
        study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?,
        series_instance_uid: required(
            tags::SERIES_INSTANCE_UID,
            "Series Instance UID (0020,000E)",
        )?,
        patient_id: get(tags::PATIENT_ID, "Patient ID (0010,0020)")?,
        // A malformed date is not a reason to refuse an object.
        study_date: get(tags::STUDY_DATE, "Study Date (0008,0020)").unwrap_or_default(),
        dataset_offset: 132 + 12 + u64::from(meta.information_group_length),
    })
}

/// Hashes a Part-10 byte stream fed in pieces: the blake3 of the whole file
/// and the blake3 of its data set (what follows the file meta group), which
/// is the spool's content address. Used where a file arrives as a stream
/// (an object store download) and must be checked without a second pass.
#[derive(Default)]
pub struct StreamHasher {
    head: Vec<u8>,
    dataset_offset: Option<u64>,
    seen: u64,
    file: blake3::Hasher,
    dataset: blake3::Hasher,
}

/// What [`StreamHasher::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHashes {
    /// blake3 of every byte.
    pub file: [u8; 32],
    /// blake3 of the data set bytes.
    pub dataset: [u8; 32],
    /// Bytes seen.
    pub file_bytes: u64,
    /// Where the data set starts.
    pub dataset_offset: u64,
}

/// The fixed part of a Part-10 file before the meta group's elements:
/// preamble, "DICM" and the (0002,0000) element.
const META_HEAD: usize = 144;

impl StreamHasher {
    /// Feed the next bytes.
    pub fn update(&mut self, mut data: &[u8]) -> Result<(), Part10Error> {
        self.file.update(data);
        if self.dataset_offset.is_none() {
            let want = META_HEAD - self.head.len();
            let take = want.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            self.seen += take as u64;
            data = &data[take..];
            if self.head.len() < META_HEAD {
                return Ok(());
            }
            if &self.head[128..132] != b"DICM" {
                return Err(Part10Error::Missing("DICM prefix"));
            }
            if self.head[132..138] != [2, 0, 0, 0, b'U', b'L'] {
                return Err(Part10Error::Missing("(0002,0000) group length"));
            }
            let len = u32::from_le_bytes([
                self.head[140],
                self.head[141],
                self.head[142],
                self.head[143],
            ]);
            self.dataset_offset = Some(META_HEAD as u64 + u64::from(len));
        }
        let Some(offset) = self.dataset_offset else {
            return Ok(());
        };
        let end = self.seen + data.len() as u64;
        if end > offset {
            let skip = offset.saturating_sub(self.seen) as usize;
            self.dataset.update(&data[skip..]);
        }
        self.seen = end;
        Ok(())
    }

    /// The hashes; fails when the stream ended inside the file meta.
    pub fn finish(self) -> Result<StreamHashes, Part10Error> {
        let offset = self
            .dataset_offset
            .filter(|o| *o <= self.seen)
            .ok_or(Part10Error::Missing("complete file meta group"))?;
        Ok(StreamHashes {
            file: *self.file.finalize().as_bytes(),
            dataset: *self.dataset.finalize().as_bytes(),
            file_bytes: self.seen,
            dataset_offset: offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any split of a file into pieces gives the same two hashes.
    #[test]
    fn stream_hasher_matches_whole_file_hashes() {
        let body = crate::testutil::dataset("1.2.840.10008.5.1.4.1.1.7", "1.2.3.9", "P");
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
        };
        let mut file =
            file_header("1.2.3", "1.2.3.9", "1.2.840.10008.1.2.1", "A", &receipt).unwrap();
        let offset = file.len();
        file.extend_from_slice(&body);
        for piece in [1, 7, 143, 144, 145, 1000, file.len()] {
            let mut h = StreamHasher::default();
            for chunk in file.chunks(piece) {
                h.update(chunk).unwrap();
            }
            let got = h.finish().unwrap();
            assert_eq!(
                got.dataset,
                *blake3::hash(&body).as_bytes(),
                "piece {piece}"
            );
            assert_eq!(got.file, *blake3::hash(&file).as_bytes());
            assert_eq!(got.dataset_offset, offset as u64);
            assert_eq!(got.file_bytes, file.len() as u64);
        }
        let mut h = StreamHasher::default();
        h.update(&file[..100]).unwrap();
        assert!(h.finish().is_err(), "ends inside the meta group");
        let mut h = StreamHasher::default();
        assert!(h.update(&[0u8; 200]).is_err(), "no DICM");
    }

    /// Write our header + an explicit-VR-LE data set, read it back.
    #[test]
    fn header_round_trip_and_dataset_offset() {
        let ts = "1.2.840.10008.1.2.1";
        let body = crate::testutil::dataset("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", "PID1");
        let receipt = Receipt {
            source_ip: "127.0.0.1".into(),
            received_at_ms: 42,
        };
        let mut file = file_header(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.3.4",
            ts,
            "SENDER",
            &receipt,
        )
        .unwrap();
        let header_len = file.len() as u64;
        file.extend_from_slice(&body);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.dcm");
        std::fs::write(&p, &file).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.dataset_offset, header_len);
        assert_eq!(dataset_offset(&p).unwrap(), header_len);
        assert_eq!(h.sop_instance_uid, "1.2.3.4");
        assert_eq!(h.study_instance_uid, "1.2.3");
        assert_eq!(h.patient_id, "PID1");
        assert_eq!(h.transfer_syntax_uid, ts);
        assert_eq!(h.source_ae, "SENDER");
        assert_eq!(h.receipt, Some(receipt));
        let header = &file[..header_len as usize];
        let from_prefix = read_header_prefix(header, &body).unwrap();
        assert_eq!(from_prefix, h);
        assert!(read_header_prefix(header, &body[..20]).is_err());
    }

    /// Explicit VR LE element.
    fn el(tag: (u16, u16), vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut v = [tag.0.to_le_bytes(), tag.1.to_le_bytes()].concat();
        v.extend_from_slice(vr);
        if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            v.extend_from_slice(&[0, 0]);
            v.extend_from_slice(&len.to_le_bytes());
        } else {
            v.extend_from_slice(&(len as u16).to_le_bytes());
        }
        v.extend_from_slice(value);
        v
    }

    /// Our file meta header and a data set with the four UIDs.
    fn uids() -> (Vec<u8>, Vec<u8>) {
        let receipt = Receipt {
            source_ip: "::1".into(),
            received_at_ms: 1,
        };
        let sc = "1.2.840.10008.5.1.4.1.1.7";
        let header = file_header(sc, "1.2.3.4", "1.2.840.10008.1.2.1", "A", &receipt).unwrap();
        let mut d = el((0x0008, 0x0016), b"UI", 26, b"1.2.840.10008.5.1.4.1.1.7\0");
        d.extend(el((0x0008, 0x0018), b"UI", 8, b"1.2.3.4\0"));
        d.extend(el((0x0020, 0x000D), b"UI", 6, b"1.2.3\0"));
        d.extend(el((0x0020, 0x000E), b"UI", 8, b"1.2.3.1\0"));
        (header, d)
    }

    /// A value declaring 0xFFFFFFF0 bytes with 1 KiB behind it: the header
    /// parser never sees it (dicom-object would allocate the declared 4 GiB
    /// before reading: with the cut missing, the parse fails after that
    /// allocation instead of returning the UIDs before it).
    #[test]
    fn a_lying_length_is_never_handed_to_the_parser() {
        let (header, mut d) = uids();
        d.extend(el((0x0040, 0xA160), b"UT", 0xFFFF_FFF0, &[b'x'; 1024]));
        let h = read_header_prefix(&header, &d).unwrap();
        assert_eq!(h.sop_instance_uid, "1.2.3.4");
        assert_eq!(h.series_instance_uid, "1.2.3.1");
        // The whole file: refused by the walk, before dicom-object.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lying.dcm");
        std::fs::write(&p, [header.as_slice(), &d].concat()).unwrap();
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("short"), "{e}");
    }

    /// Sequences nested 5000 deep with defined lengths (100 KB): refused by
    /// the walk; dicom-object recursing into them overflows the stack and
    /// aborts the whole process (this test binary, or the agent).
    #[test]
    fn deep_nesting_is_refused_before_the_parser_recurses() {
        let (header, mut d) = uids();
        d.extend(crate::structure::tests::nested_defined(5000, false));
        let e = read_header_prefix(&header, &d).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deep.dcm");
        std::fs::write(&p, [header.as_slice(), &d].concat()).unwrap();
        let e = read_header(&p).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        // Nested within the limit, the header is read.
        let (header, mut d) = uids();
        d.extend(crate::structure::tests::nested_defined(20, false));
        assert_eq!(read_header_prefix(&header, &d).unwrap().patient_id, "");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        let receipt = Receipt {
            source_ip: "::1".into(),
            received_at_ms: 1,
        };
        let mut file = file_header("1.2.3", "1.2.3.4", "1.2.840.10008.1.2", "A", &receipt).unwrap();
        file.extend_from_slice(&[0xFF; 7]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.dcm");
        std::fs::write(&p, &file).unwrap();
        assert!(read_header(&p).is_err());
    }
}
