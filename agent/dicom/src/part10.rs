//! Part-10 files: the file meta header we write in front of the data set
//! bytes, and reading the identifying attributes back from a stored object.
//!
//! The data set bytes are never decoded into memory and re-encoded: they go to
//! disk exactly as they arrived. The identifying attributes are read by the
//! structure walker ([`crate::identity::walker`]), never by dicom-object, so
//! that an object that does not parse still gives what it has.

use std::path::Path;

use std::io::Read;

use dicom_object::FileMetaTableBuilder;
use serde::{Deserialize, Serialize};

use crate::identity;
use crate::structure::{Observed, StructureError, Walker};

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
    /// Where the walk stopped at a flaw before reaching Pixel Data (the
    /// attributes after it are missing), if it did.
    pub flaw: Option<StructureError>,
}

/// The file meta group of a Part-10 file, as pacs-mirror wrote it from the
/// C-STORE command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// (0002,0002): the command's Affected SOP Class UID.
    pub sop_class_uid: String,
    /// (0002,0003): the command's Affected SOP Instance UID.
    pub sop_instance_uid: String,
    /// (0002,0010).
    pub transfer_syntax_uid: String,
    /// (0002,0016), the calling AE that sent it.
    pub source_ae: String,
    /// (0002,0102) decoded, when written by pacs-mirror.
    pub receipt: Option<Receipt>,
    /// Where the data set starts.
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

/// Largest file meta group read (its group length value). Real ones are a
/// few hundred bytes; this only stops a corrupt length from being trusted.
pub const MAX_META_GROUP_BYTES: u32 = 64 * 1024;

/// The elements of a file meta group that pacs-mirror reads, as written
/// (values trimmed of their padding). Read by [`parse_meta`] itself, not by
/// dicom-object, which refuses a UID that breaks PS3.5 9.1 — and a kept
/// object's UIDs may (see the store's `identify`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaGroup {
    /// (0002,0002).
    pub media_storage_sop_class_uid: String,
    /// (0002,0003).
    pub media_storage_sop_instance_uid: String,
    /// (0002,0010).
    pub transfer_syntax: String,
    /// (0002,0016), if present.
    pub source_application_entity_title: Option<String>,
    /// (0002,0100), if present.
    pub private_information_creator_uid: Option<String>,
    /// (0002,0102), if present.
    pub private_information: Option<Vec<u8>>,
}

/// Parse a file meta group: `meta` is `DICM`, the (0002,0000) group length
/// element, then exactly the group's elements (Explicit VR Little Endian).
/// The elements are walked ([`Walker`]) first, so every value read lies
/// within the bytes.
pub fn parse_meta(meta: &[u8]) -> Result<MetaGroup, Part10Error> {
    let parse = |m: &str| Part10Error::Parse(format!("file meta group: {m}"));
    if meta.get(..4) != Some(b"DICM".as_slice())
        || meta.get(4..12) != Some([2, 0, 0, 0, b'U', b'L', 4, 0].as_slice())
    {
        return Err(parse("no DICM and (0002,0000) UL group length"));
    }
    let declared = u32::from_le_bytes([meta[12], meta[13], meta[14], meta[15]]);
    let elements = &meta[16..];
    if u64::from(declared) != elements.len() as u64 {
        return Err(parse(&format!(
            "group length {declared}, but {} bytes of elements",
            elements.len()
        )));
    }
    let mut walker = Walker::for_dicom_rs("1.2.840.10008.1.2.1");
    walker
        .feed(elements)
        .and_then(|()| walker.finish())
        .map_err(|e| parse(&e.to_string()))?;
    let mut out = MetaGroup::default();
    let mut at = 0usize;
    let text = |v: &[u8]| trimmed(&String::from_utf8_lossy(v));
    while at + 8 <= elements.len() {
        let e = &elements[at..];
        let tag = (
            u16::from_le_bytes([e[0], e[1]]),
            u16::from_le_bytes([e[2], e[3]]),
        );
        let (len, head): (usize, usize) = match &e[4..6] {
            b"OB" | b"OW" | b"OF" | b"OD" | b"OL" | b"OV" | b"SQ" | b"UC" | b"UR" | b"UT"
            | b"UN" | b"SV" | b"UV" => match e.get(8..12) {
                Some(l) => (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12),
                None => return Err(parse("element header cut short")),
            },
            _ => (usize::from(u16::from_le_bytes([e[6], e[7]])), 8),
        };
        let Some(value) = e.get(head..head.saturating_add(len)) else {
            return Err(parse("element value runs past the group"));
        };
        if tag.0 != 0x0002 {
            return Err(parse(&format!(
                "element ({:04X},{:04X}) in the file meta group",
                tag.0, tag.1
            )));
        }
        match tag.1 {
            0x0002 => out.media_storage_sop_class_uid = text(value),
            0x0003 => out.media_storage_sop_instance_uid = text(value),
            0x0010 => out.transfer_syntax = text(value),
            0x0016 => out.source_application_entity_title = Some(text(value)),
            0x0100 => out.private_information_creator_uid = Some(text(value)),
            0x0102 => out.private_information = Some(value.to_vec()),
            _ => {}
        }
        at += head + len;
    }
    if out.transfer_syntax.is_empty() {
        return Err(parse("no Transfer Syntax UID (0002,0010)"));
    }
    Ok(out)
}

/// Read a Part-10 file's identifying attributes, up to Pixel Data.
/// Fails only when the preamble or file meta group cannot be read; a data
/// set that does not parse gives the attributes before its flaw.
pub fn read_header(path: &Path) -> Result<ObjectHeader, Part10Error> {
    let file = std::fs::File::open(path).map_err(|e| Part10Error::Parse(e.to_string()))?;
    read_header_from(std::io::BufReader::with_capacity(64 * 1024, file))
}

/// [`read_header`] of a Part-10 byte stream (preamble, `DICM`, file meta
/// group, data set).
pub fn read_header_from(mut reader: impl Read) -> Result<ObjectHeader, Part10Error> {
    let (meta, table) = read_meta(&mut reader)?;
    let mut walker = identity::walker(&meta.transfer_syntax_uid);
    walk(&mut reader, &mut walker, true, &mut |_| ())?;
    let reached = walker.reached_pixel_data();
    let mut observed = walker.finish_observing();
    if reached {
        observed.structure = Ok(());
    }
    Ok(header_of(&meta, &table, &observed))
}

/// What [`read_identity`] read of a spool file: its meta group, one walk of
/// its whole data set, and the data set's hash.
#[derive(Debug, Clone)]
pub struct FileIdentity {
    /// The file meta group.
    pub meta: FileMeta,
    /// The walk of the whole data set.
    pub observed: Observed,
    /// blake3 of the data set bytes (the spool address).
    pub dataset_blake3: [u8; 32],
    /// Length of the data set bytes.
    pub dataset_bytes: u64,
}

/// Read a spool file as ingest saw it: the file meta group (the command's
/// UIDs), and in one pass over the data set its walk (structure and
/// identifying attributes, for the store's `identify::identify`) and its hash. For
/// start-up recovery and `reindex`, so a file indexed again gets the same
/// record, findings included.
pub fn read_identity(path: &Path) -> Result<FileIdentity, Part10Error> {
    let io = |e: std::io::Error| Part10Error::Parse(e.to_string());
    read_identity_from(std::io::BufReader::with_capacity(
        256 * 1024,
        std::fs::File::open(path).map_err(io)?,
    ))
}

/// [`read_identity`] of a Part-10 byte stream.
pub fn read_identity_from(mut reader: impl Read) -> Result<FileIdentity, Part10Error> {
    let (meta, _) = read_meta(&mut reader)?;
    let mut walker = identity::walker(&meta.transfer_syntax_uid);
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0u64;
    walk(&mut reader, &mut walker, false, &mut |chunk| {
        hasher.update(chunk);
        bytes += chunk.len() as u64;
    })?;
    Ok(FileIdentity {
        meta,
        observed: walker.finish_observing(),
        dataset_blake3: *hasher.finalize().as_bytes(),
        dataset_bytes: bytes,
    })
}

/// Read only a Part-10 file's preamble and file meta group.
pub fn read_file_meta(path: &Path) -> Result<FileMeta, Part10Error> {
    let file = std::fs::File::open(path).map_err(|e| Part10Error::Parse(e.to_string()))?;
    read_meta(&mut std::io::BufReader::with_capacity(4096, file)).map(|(m, _)| m)
}

/// Read the preamble and file meta group ([`parse_meta`]) off `reader`,
/// leaving it at the data set.
fn read_meta(reader: &mut impl Read) -> Result<(FileMeta, MetaGroup), Part10Error> {
    let io = |e: std::io::Error| Part10Error::Parse(e.to_string());
    let mut head = [0u8; 144];
    reader.read_exact(&mut head).map_err(io)?;
    let declared = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    if declared > MAX_META_GROUP_BYTES {
        return Err(Part10Error::Parse(format!(
            "file meta group length {declared} is implausible (over {MAX_META_GROUP_BYTES} bytes)"
        )));
    }
    let mut raw = head[128..].to_vec();
    raw.resize(16 + declared as usize, 0);
    reader.read_exact(&mut raw[16..]).map_err(io)?;
    let table = parse_meta(&raw)?;
    let (source_ae, receipt) = origin_of(&table);
    let meta = FileMeta {
        sop_class_uid: table.media_storage_sop_class_uid.clone(),
        sop_instance_uid: table.media_storage_sop_instance_uid.clone(),
        transfer_syntax_uid: table.transfer_syntax.clone(),
        source_ae,
        receipt,
        dataset_offset: 144 + u64::from(declared),
    };
    Ok((meta, table))
}

/// Walk a Part-10 file's whole data set ([`Walker::for_dicom_rs`]): every
/// declared length must fit and nesting stay within the limit before a
/// parse that reads the whole object (e.g. `dicom_object::open_file`) may
/// see it. For copies that come back from a target (drills).
pub fn check_whole_data_set(path: &Path) -> Result<(), Part10Error> {
    let io = |e: std::io::Error| Part10Error::Parse(e.to_string());
    let mut reader =
        std::io::BufReader::with_capacity(64 * 1024, std::fs::File::open(path).map_err(io)?);
    let (meta, _) = read_meta(&mut reader)?;
    let mut walker = Walker::for_dicom_rs(&meta.transfer_syntax_uid);
    walk(&mut reader, &mut walker, false, &mut |_| ())?;
    walker.finish().map_err(unparseable)
}

/// Feed the rest of `reader` to `walker` (and to `also`); with
/// `until_pixel_data`, stop where Pixel Data starts. A flaw stops the
/// feeding, not the reading (`also` sees every byte); only I/O fails.
fn walk(
    reader: &mut impl Read,
    walker: &mut Walker,
    until_pixel_data: bool,
    also: &mut dyn FnMut(&[u8]),
) -> Result<(), Part10Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sound = true;
    loop {
        if until_pixel_data && (walker.reached_pixel_data() || !sound) {
            return Ok(());
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Part10Error::Parse(e.to_string())),
        };
        if sound {
            sound = walker.feed(&buf[..n]).is_ok();
        }
        also(&buf[..n]);
    }
}

fn unparseable(e: crate::structure::StructureError) -> Part10Error {
    Part10Error::Parse(e.to_string())
}

/// Who sent an object, from its file meta group: (0002,0016) and the
/// receipt pacs-mirror keeps in (0002,0102).
fn origin_of(meta: &MetaGroup) -> (String, Option<Receipt>) {
    let receipt = meta
        .private_information
        .as_deref()
        .filter(|_| meta.private_information_creator_uid.as_deref() == Some(RECEIPT_CREATOR_UID))
        .and_then(|b| {
            let b = b.trim_ascii_end();
            serde_json::from_slice(b.strip_suffix(b"\0").unwrap_or(b)).ok()
        });
    let source_ae = meta
        .source_application_entity_title
        .clone()
        .unwrap_or_default();
    (source_ae, receipt)
}

/// The source AE title and receipt of a Part-10 file from its first bytes:
/// preamble, `DICM` and the whole file meta group (the data set is not read).
pub fn read_origin(header: &[u8]) -> Result<(String, Option<Receipt>), Part10Error> {
    let meta = header.get(128..).ok_or(Part10Error::Missing("file meta"))?;
    Ok(origin_of(&parse_meta(meta)?))
}

fn header_of(meta: &FileMeta, table: &MetaGroup, observed: &Observed) -> ObjectHeader {
    let (source_ae, receipt) = origin_of(table);
    let get = |tag| identity::attribute(observed, tag);
    ObjectHeader {
        transfer_syntax_uid: meta.transfer_syntax_uid.clone(),
        source_ae,
        receipt,
        sop_class_uid: get((0x0008, 0x0016)),
        sop_instance_uid: get((0x0008, 0x0018)),
        study_instance_uid: get((0x0020, 0x000D)),
        series_instance_uid: get((0x0020, 0x000E)),
        patient_id: get((0x0010, 0x0020)),
        study_date: get((0x0008, 0x0020)),
        dataset_offset: meta.dataset_offset,
        flaw: observed.structure.clone().err(),
    }
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
        let body = crate::testing::dataset("1.2.840.10008.5.1.4.1.1.7", "1.2.3.9", "P");
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
        let body = crate::testing::dataset("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", "PID1");
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
    }

    /// A data set in tag order up to a second SOP Instance UID: a first PDV
    /// ending before the duplicate parsed "1.2.3.4" while the whole file
    /// reads "9.9.9.9" (the later element wins), so the index recorded a UID
    /// the stored file does not have. Caught by the oracle of the
    /// `store_ingest` fuzz target; the attributes are now read by the one
    /// walk of the whole data set, fed PDV by PDV.
    #[test]
    fn pdvs_split_anywhere_read_what_the_whole_file_holds() {
        let receipt = Receipt {
            source_ip: "::1".into(),
            received_at_ms: 1,
        };
        let ts = "1.2.840.10008.1.2.1";
        let header =
            file_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", ts, "A", &receipt).unwrap();
        let mut body = crate::testing::dataset("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", "P");
        let first_pdv = body.len();
        body.extend_from_slice(&[0x08, 0, 0x18, 0, b'U', b'I', 8, 0]);
        body.extend_from_slice(b"9.9.9.9\0");
        let mut file = header.clone();
        file.extend_from_slice(&body);
        let whole = read_header_from(std::io::Cursor::new(&file)).unwrap();
        assert_eq!(whole.sop_instance_uid, "9.9.9.9");
        let mut walk = identity::walker(ts);
        let _ = walk.feed(&body[..first_pdv]);
        let _ = walk.feed(&body[first_pdv..]);
        let walked = walk.finish_observing();
        assert_eq!(
            identity::attribute(&walked, identity::SOP_INSTANCE),
            "9.9.9.9"
        );
    }

    /// A 12-byte element declaring 0xFFFFFFF0 bytes (T13 a): dicom-object
    /// allocated and zero-filled 4 GiB before finding the bytes missing
    /// ("memory allocation of 4294967280 bytes failed" under a 3 GB limit),
    /// on the first PDV of a C-STORE, and on a C-FIND match whose lie was
    /// nested in a defined-length sequence. Found by the fuzz corpus
    /// (`dataset_structure`); the walker now refuses both first.
    #[test]
    fn lying_lengths_never_reach_dicom_object() {
        let receipt = Receipt {
            source_ip: "::1".into(),
            received_at_ms: 1,
        };
        for (ts, data) in [
            // Implicit VR: SOP Instance UID declaring 0xFFFFFFF0 bytes.
            (
                "1.2.840.10008.1.2",
                [
                    &[0x08, 0, 0x18, 0, 0xF0, 0xFF, 0xFF, 0xFF][..],
                    b"1.2.3.4\0",
                ]
                .concat(),
            ),
            // Explicit VR: a UT inside a defined-length sequence whose own
            // length is honest.
            (
                "1.2.840.10008.1.2.1",
                [
                    &[0x40, 0, 0x30, 0xA7, b'S', b'Q', 0, 0, 24, 0, 0, 0][..],
                    &[0xFE, 0xFF, 0, 0xE0, 16, 0, 0, 0],
                    &[
                        0x18, 0, 0x30, 0x10, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
                    ],
                    b"abcd",
                    &[0xE0, 0x7F, 0x10, 0, b'O', b'W', 0, 0, 2, 0, 0, 0, 0, 0],
                ]
                .concat(),
            ),
        ] {
            let header = file_header("1.2.3", "1.2.3.4", ts, "A", &receipt).unwrap();
            let file = [header, data].concat();
            // Read whole: the attributes before the lie, and the flaw;
            // nothing is allocated by the declared length.
            let h = read_header_from(std::io::Cursor::new(&file)).unwrap();
            assert!(h.flaw.is_some(), "{ts}");
            assert_eq!(h.sop_instance_uid, "", "{ts}: the lying value is not read");
        }
    }

    /// Explicit VR LE element.
    fn el(tag: (u16, u16), vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        crate::testing::element::by_vr(tag.0, tag.1, vr, len, value)
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

    /// Sequences nested 5000 deep with defined lengths (100 KB): refused by
    /// the walk; dicom-object recursing into them overflows the stack and
    /// aborts the whole process (this test binary, or the agent).
    #[test]
    fn deep_nesting_is_refused_before_the_parser_recurses() {
        let (header, mut d) = uids();
        d.extend(crate::structure::tests::nested_defined(5000, false));
        let file = [header.as_slice(), &d].concat();
        let h = read_header_from(std::io::Cursor::new(&file)).unwrap();
        let e = h.flaw.unwrap().to_string();
        assert!(e.contains("nested deeper"), "{e}");
        assert_eq!(h.study_instance_uid, "1.2.3", "read before the flaw");
        // Nested within the limit, the header is read.
        let (header, mut d) = uids();
        d.extend(crate::structure::tests::nested_defined(20, false));
        d.extend(el((0x7FE0, 0x0010), b"OW", 2, &[0, 0]));
        let file = [header.as_slice(), &d].concat();
        let h = read_header_from(std::io::Cursor::new(&file)).unwrap();
        assert_eq!(h.flaw, None);
        assert_eq!(
            (h.sop_instance_uid.as_str(), h.study_instance_uid.as_str()),
            ("1.2.3.4", "1.2.3")
        );
    }

    #[test]
    fn garbage_gives_a_flaw_and_no_attributes() {
        let receipt = Receipt {
            source_ip: "::1".into(),
            received_at_ms: 1,
        };
        let mut file = file_header("1.2.3", "1.2.3.4", "1.2.840.10008.1.2", "A", &receipt).unwrap();
        file.extend_from_slice(&[0xFF; 7]);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.dcm");
        std::fs::write(&p, &file).unwrap();
        let h = read_header(&p).unwrap();
        assert!(h.flaw.is_some());
        assert_eq!(h.sop_instance_uid, "");
        std::fs::write(&p, &file[..100]).unwrap();
        assert!(read_header(&p).is_err(), "no file meta group");
    }
}
