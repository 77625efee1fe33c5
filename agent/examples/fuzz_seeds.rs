//! Writes the seed inputs of the fuzz targets (`tests/fuzz/corpus/<target>/`):
//! real inputs made by our own encoders, plus the hostile cases of the test
//! catalogue (T13 lying lengths and cut-off data, T14 deep nesting and
//! misplaced delimiters).
//!
//! ```text
//! cargo run --example fuzz_seeds -- tests/fuzz/corpus
//! ```
//! Each file is named `seed-<what>`; the input layout of each target (its
//! leading parameter bytes) is documented in `pacs_mirror_agent::fuzzing`.
//! Run `scripts/fuzz cmin` afterwards to keep only inputs that add coverage.

use pacs_mirror_agent::fuzzing::element::{long, short};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries;
use pacs_mirror_agent::bucket::manifest::{Descriptor, ManifestEntry, StudyManifest};
use pacs_mirror_dicom::dimse::{
    self, CStoreRq, CommandField, QueryRetrieveRq, QueryRetrieveRsp, Status, priority,
};
use pacs_mirror_dicom::part10::{self, Receipt};
use pacs_mirror_dicom::query as identifier;
use pacs_mirror_dicom::query::{DateRange, FindQuery, InstanceQuery, RetrieveTarget, StudyQuery};
use pacs_mirror_store::index::records::{self, InstanceRecord, ObjectRecord, OutboxRecord};

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Selector bytes of `fuzzing::TRANSFER_SYNTAXES`.
const IMPLICIT: u8 = 0;
const EXPLICIT: u8 = 1;
const BIG: u8 = 2;
const DEFLATED: u8 = 3;
const JPEG: u8 = 4;

struct Out(PathBuf);

impl Out {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) -> Result<(), Box<dyn Error>> {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_seeds CORPUS_DIR")?;
    let out = Out(PathBuf::from(dir));
    commands(&out)?;
    uids(&out)?;
    datasets(&out)?;
    identifiers(&out)?;
    part10_files(&out)?;
    bucket(&out)?;
    configs(&out)?;
    Ok(())
}

// --- DIMSE -----------------------------------------------------------------

fn commands(out: &Out) -> Result<(), Box<dyn Error>> {
    let store = CStoreRq {
        message_id: 7,
        sop_class_uid: CT.into(),
        sop_instance_uid: "1.2.826.0.1.3680043.2.1125.1.1234".into(),
        priority: priority::MEDIUM,
        move_originator_ae: None,
        move_originator_message_id: None,
    };
    let moved = CStoreRq {
        move_originator_ae: Some("AGENT".into()),
        move_originator_message_id: Some(3),
        ..store.clone()
    };
    let find = QueryRetrieveRq {
        field: CommandField::CFindRq,
        message_id: 1,
        sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.1".into(),
        priority: priority::MEDIUM,
        move_destination: None,
    };
    let mv = QueryRetrieveRq {
        field: CommandField::CMoveRq,
        sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.2".into(),
        move_destination: Some("DRILL_RX".into()),
        ..find.clone()
    };
    let get_rsp = QueryRetrieveRsp {
        field: CommandField::CGetRsp,
        message_id_being_responded_to: 5,
        sop_class_uid: Some("1.2.840.10008.5.1.4.1.2.2.3".into()),
        status: Status::Pending(0xFF00),
        has_data_set: false,
        remaining: Some(7),
        completed: Some(2),
        failed: Some(1),
        warning: Some(0),
        error_comment: None,
    };
    let failed_rsp = QueryRetrieveRsp {
        status: Status::Warning(0xB000),
        has_data_set: true,
        error_comment: Some("one sub-operation failed".into()),
        ..get_rsp.clone()
    };
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("echo-rq", dimse::c_echo_rq(1).encode()),
        ("store-rq", store.to_command().encode()),
        ("store-rq-moved", moved.to_command().encode()),
        (
            "store-rsp",
            dimse::c_store_rsp(&store, Status::UID_MISMATCH, Some("UIDs differ")).encode(),
        ),
        ("find-rq", find.to_command().encode()),
        ("move-rq", mv.to_command().encode()),
        ("get-rsp-pending", get_rsp.to_command().encode()),
        ("get-rsp-final", failed_rsp.to_command().encode()),
        ("cancel-rq", dimse::c_cancel_rq(9).encode()),
    ];
    // What Orthanc 1.10 sends for a failed C-GET: (0008,0058) after the
    // command set in the same PDV.
    let mut trailer = failed_rsp.to_command().encode();
    trailer.extend_from_slice(&[0x08, 0, 0x58, 0, 4, 0, 0, 0, b'1', b'.', b'2', 0]);
    seeds.push(("get-rsp-with-trailer", trailer));
    // A C-STORE-RQ without the group length element (as some SCUs send).
    seeds.push((
        "store-rq-no-group-length",
        store.to_command().encode()[12..].to_vec(),
    ));
    // Hostile: a declared length of 4 GiB in a 10-byte command.
    seeds.push((
        "huge-length",
        vec![0, 0, 2, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2],
    ));
    // A US element of the wrong length (Command Field of 3 bytes).
    seeds.push(("bad-us-length", vec![0, 0, 0, 1, 3, 0, 0, 0, 1, 0, 0]));
    for (name, bytes) in seeds {
        out.put("dimse_command", name, &bytes)?;
    }
    Ok(())
}

fn uids(out: &Out) -> Result<(), Box<dyn Error>> {
    for (name, s) in [
        ("verification", "1.2.840.10008.1.1"),
        ("leading-zero", "1.02.3"),
        ("traversal", "../../etc/cron.d/x"),
        ("nul", "1.2.3\0/x"),
        ("backslash", "1.2\\3"),
        ("long", &"1.2".repeat(22)),
        ("empty-component", "1..2"),
        ("trailing-dot", "1.2."),
        ("ae-title", " STORESCU  "),
        ("ae-non-ascii", "ÄE"),
    ] {
        out.put("uid", name, s.as_bytes())?;
    }
    Ok(())
}

// --- Data sets -------------------------------------------------------------

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

/// Implicit VR LE element, or an item / delimiter.
fn tag_len(g: u16, e: u16, len: u32, value: &[u8]) -> Vec<u8> {
    let mut v = [le16(g), le16(e)].concat();
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// A small image data set made by dicom-object in `ts`, with the attributes
/// the agent reads, a sequence and (native) pixel data.
fn image(ts: &dicom_encoding::TransferSyntax) -> Result<Vec<u8>, Box<dyn Error>> {
    let mut o = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        (tags::SOP_CLASS_UID, VR::UI, CT),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
        (tags::STUDY_DATE, VR::DA, "20260101"),
        (tags::MODALITY, VR::CS, "CT"),
        (tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
        (tags::PATIENT_ID, VR::LO, "PID-1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
    ] {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from("1.2.3.9"),
    ));
    o.put(DataElement::new(
        tags::REFERENCED_IMAGE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![item]),
    ));
    o.put(DataElement::new(
        tags::ROWS,
        VR::US,
        PrimitiveValue::from(2u16),
    ));
    o.put(DataElement::new(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(2u16),
    ));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(vec![1, 2, 3, 4].into()),
    ));
    let mut out = Vec::new();
    o.write_dataset_with_ts(&mut out, ts)?;
    Ok(out)
}

/// The identifying attributes, by hand, in Explicit VR LE.
fn header_attrs() -> Vec<u8> {
    let mut d = short(0x0008, 0x0016, b"UI", format!("{CT}\0").as_bytes());
    d.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
    d.extend(short(0x0010, 0x0020, b"LO", b"PID1"));
    d.extend(short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
    d.extend(short(0x0020, 0x000E, b"UI", b"1.2.3.1\0"));
    d
}

/// A named data set and the selector of its transfer syntax.
type DatasetSeed = (String, u8, Vec<u8>);

/// Data set seeds, each with the selector of its transfer syntax.
fn dataset_seeds() -> Result<Vec<DatasetSeed>, Box<dyn Error>> {
    let mut seeds = vec![
        (
            "image-implicit".to_string(),
            IMPLICIT,
            image(&entries::IMPLICIT_VR_LITTLE_ENDIAN.erased())?,
        ),
        (
            "image-explicit".into(),
            EXPLICIT,
            image(&entries::EXPLICIT_VR_LITTLE_ENDIAN.erased())?,
        ),
        (
            "image-big-endian".into(),
            BIG,
            image(&entries::EXPLICIT_VR_BIG_ENDIAN.erased())?,
        ),
    ];
    let explicit = image(&entries::EXPLICIT_VR_LITTLE_ENDIAN.erased())?;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&explicit)?;
    seeds.push(("image-deflated".into(), DEFLATED, z.finish()?));

    // Encapsulated pixel data: empty offset table, two fragments.
    let mut d = header_attrs();
    d.extend(long(0x7FE0, 0x0010, b"OB", UNDEFINED, &[]));
    d.extend(tag_len(0xFFFE, 0xE000, 0, &[]));
    d.extend(tag_len(0xFFFE, 0xE000, 4, &[0xFF, 0xD8, 0xFF, 0xD9]));
    d.extend(tag_len(0xFFFE, 0xE000, 2, &[1, 2]));
    d.extend(tag_len(0xFFFE, 0xE0DD, 0, &[]));
    seeds.push(("encapsulated".into(), JPEG, d));

    // Undefined-length sequence with an undefined and a defined-length item,
    // and a private undefined-length UN (Implicit VR LE contents).
    let mut d = short(0x0008, 0x0016, b"UI", format!("{CT}\0").as_bytes());
    d.extend(short(0x0008, 0x0018, b"UI", b"1.2.3.4\0"));
    d.extend(long(0x0008, 0x1140, b"SQ", UNDEFINED, &[]));
    d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED, &[]));
    d.extend(short(0x0008, 0x1155, b"UI", b"1.2\0"));
    d.extend(tag_len(0xFFFE, 0xE00D, 0, &[]));
    let inner = short(0x0008, 0x1155, b"UI", b"1.3\0");
    d.extend(tag_len(0xFFFE, 0xE000, inner.len() as u32, &inner));
    d.extend(tag_len(0xFFFE, 0xE0DD, 0, &[]));
    d.extend(short(0x0009, 0x0010, b"LO", b"PRIVATE "));
    d.extend(long(0x0009, 0x1010, b"UN", UNDEFINED, &[]));
    d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED, &[]));
    d.extend(tag_len(0x0009, 0x1011, 4, b"1.2\0"));
    d.extend(tag_len(0xFFFE, 0xE00D, 0, &[]));
    d.extend(tag_len(0xFFFE, 0xE0DD, 0, &[]));
    d.extend(short(0x0010, 0x0020, b"LO", b"PID1"));
    d.extend(short(0x0020, 0x000D, b"UI", b"1.2.3\0"));
    d.extend(short(0x0020, 0x000E, b"UI", b"1.2.3.1\0"));
    seeds.push(("sequences-and-un".into(), EXPLICIT, d));

    // A defined-length sequence holding a defined-length item.
    let item = short(0x0008, 0x1155, b"UI", b"1.3\0");
    let seq_body = tag_len(0xFFFE, 0xE000, item.len() as u32, &item);
    let mut d = header_attrs();
    d.extend(long(
        0x0040,
        0xA730,
        b"SQ",
        seq_body.len() as u32,
        &seq_body,
    ));
    seeds.push(("defined-length-sequence".into(), EXPLICIT, d));

    // Implicit VR: a sequence by the dictionary (defined length).
    let item = tag_len(0x0008, 0x1155, 4, b"1.3\0");
    let seq_body = tag_len(0xFFFE, 0xE000, item.len() as u32, &item);
    let mut d = tag_len(0x0008, 0x0018, 8, b"1.2.3.4\0");
    d.extend(tag_len(0x0008, 0x1140, seq_body.len() as u32, &seq_body));
    d.extend(tag_len(0x0020, 0x000D, 6, b"1.2.3\0"));
    seeds.push(("implicit-defined-sequence".into(), IMPLICIT, d));

    // T13 (a): a declared length of 0xFFFFFFF0 with a few bytes of data.
    let mut d = header_attrs();
    d.extend(long(
        0x0018,
        0x1030,
        b"UT",
        0xFFFF_FFF0,
        b"only a few bytes",
    ));
    seeds.push(("lying-length-explicit".into(), EXPLICIT, d));
    let mut d = tag_len(0x0008, 0x0018, 0xFFFF_FFF0, b"1.2.3.4\0");
    d.extend(vec![b'1'; 64]);
    seeds.push(("lying-length-implicit".into(), IMPLICIT, d));
    // ... inside a defined-length sequence (the outer length is honest).
    let inner = long(0x0018, 0x1030, b"UT", 0xFFFF_FFF0, b"abcd");
    let item = tag_len(0xFFFE, 0xE000, inner.len() as u32, &inner);
    let mut d = header_attrs();
    d.extend(long(0x0040, 0xA730, b"SQ", item.len() as u32, &item));
    seeds.push(("lying-length-in-sequence".into(), EXPLICIT, d));
    // T13 (b): pixel data cut off.
    let mut d = header_attrs();
    d.extend(long(0x7FE0, 0x0010, b"OW", 4096, &[0u8; 100]));
    seeds.push(("pixel-data-cut-short".into(), EXPLICIT, d));

    // T14: sequences nested past the depth limit, and 1,100 deep (IC-DCMTK-0003).
    for (name, depth) in [("nested-65", 65usize), ("nested-1100", 1100)] {
        let mut d = header_attrs();
        for _ in 0..depth {
            d.extend(long(0x0040, 0xA730, b"SQ", UNDEFINED, &[]));
            d.extend(tag_len(0xFFFE, 0xE000, UNDEFINED, &[]));
        }
        seeds.push((name.into(), EXPLICIT, d));
    }
    // T14: delimiters where they cannot be.
    let mut d = header_attrs();
    d.extend(tag_len(0xFFFE, 0xE00D, 0, &[]));
    seeds.push(("item-delimiter-at-top".into(), EXPLICIT, d));
    let mut d = header_attrs();
    d.extend(tag_len(0xFFFE, 0xE0DD, 0, &[]));
    d.extend(tag_len(0xFFFE, 0xE000, 4, b"abcd"));
    seeds.push(("sequence-delimiter-at-top".into(), EXPLICIT, d));
    // A duplicated SOP Instance UID after the other attributes.
    let mut d = header_attrs();
    d.extend(short(0x0008, 0x0018, b"UI", b"9.9.9.9\0"));
    seeds.push(("duplicate-sop-instance".into(), EXPLICIT, d));
    Ok(seeds)
}

fn datasets(out: &Out) -> Result<(), Box<dyn Error>> {
    for (name, ts, body) in dataset_seeds()? {
        // dataset_structure: [ts, PDV size - 1, data set]
        out.put("dataset_structure", &name, &[&[ts, 63][..], &body].concat())?;
        // store_ingest: [ts, first PDV length - 1, data set]; the duplicate
        // with its first PDV ending just before the second SOP Instance UID.
        let first = if name == "duplicate-sop-instance" {
            header_attrs().len() as u8 - 1
        } else {
            40
        };
        out.put("store_ingest", &name, &[&[ts, first][..], &body].concat())?;
    }
    Ok(())
}

// --- Identifiers -------------------------------------------------------------

fn identifiers(out: &Out) -> Result<(), Box<dyn Error>> {
    let study = StudyQuery {
        patient_id: Some("SYNTH*".into()),
        study_instance_uids: vec!["1.2.3".into(), "1.2.4".into()],
        study_date: Some(DateRange::between("20240101", "20241231")?),
        accession_number: None,
    };
    let instance = InstanceQuery {
        sop_instance_uids: vec!["1.2.3.4".into()],
        ..InstanceQuery::default()
    };
    let mut matched = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
        (tags::MODALITIES_IN_STUDY, VR::CS, "CT\\SR"),
        (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, "12"),
        (tags::NUMBER_OF_STUDY_RELATED_SERIES, VR::IS, "2"),
        (tags::PATIENT_ID, VR::LO, "P1"),
        (tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.1.1"),
    ] {
        matched.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let mut failed = InMemDicomObject::new_empty();
    failed.put(DataElement::new(
        tags::FAILED_SOP_INSTANCE_UID_LIST,
        VR::UI,
        PrimitiveValue::from("1.2.3.4\\1.2.3.5"),
    ));
    let objects = [
        ("study-query", study.identifier()?),
        ("instance-query", instance.identifier()?),
        (
            "retrieve-instance",
            RetrieveTarget::instance("1.2", "1.2.3", "1.2.3.4").identifier()?,
        ),
        ("study-match", matched),
        ("failed-uid-list", failed),
    ];
    for (name, o) in objects {
        for (sel, ts) in [
            (0u8, identifier::EXPLICIT_VR_LE),
            (1, identifier::IMPLICIT_VR_LE),
        ] {
            let bytes = identifier::encode(&o, ts)?;
            out.put(
                "qr_identifier",
                &format!("{name}-{}", if sel == 0 { "explicit" } else { "implicit" }),
                &[&[sel][..], &bytes].concat(),
            )?;
        }
    }
    let evil = [0x10, 0, 0x10, 0, b'U', b'T', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF];
    out.put(
        "qr_identifier",
        "lying-length",
        &[&[0u8][..], &evil].concat(),
    )?;
    Ok(())
}

// --- Part-10 files -------------------------------------------------------------

fn part10_files(out: &Out) -> Result<(), Box<dyn Error>> {
    let receipt = Receipt {
        source_ip: "192.0.2.1".into(),
        received_at_ms: 1_700_000_000_000,
    };
    let body = image(&entries::EXPLICIT_VR_LITTLE_ENDIAN.erased())?;
    let mut file = part10::file_header(CT, "1.2.3.4", "1.2.840.10008.1.2.1", "CT01", &receipt)?;
    file.extend_from_slice(&body);
    out.put(
        "part10_stream",
        "spool-file",
        &[&[31u8][..], &file].concat(),
    )?;
    out.put(
        "part10_stream",
        "cut-in-meta",
        &[&[7u8][..], &file[..150]].concat(),
    )?;
    let mut huge = file.clone();
    huge[140..144].copy_from_slice(&u32::MAX.to_le_bytes());
    out.put(
        "part10_stream",
        "huge-group-length",
        &[&[7u8][..], &huge].concat(),
    )?;
    Ok(())
}

// --- Bucket and index JSON -------------------------------------------------------

fn bucket(out: &Out) -> Result<(), Box<dyn Error>> {
    let hash = blake3::hash(b"data set");
    let hex = hash.to_hex().to_string();
    let record = InstanceRecord {
        sop_instance_uid: "1.2.3.4".into(),
        sop_class_uid: CT.into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        blake3: hex.clone(),
        dataset_bytes: 10,
        file_bytes: 300,
        patient_id: "PID".into(),
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.1".into(),
        calling_ae: "CT01".into(),
        source_ip: "192.0.2.1".into(),
        received_at_ms: 5,
        study_date: "20260101".into(),
        modality: String::new(),
        findings: Vec::new(),
    };
    let mut manifest = StudyManifest::new("1.2.3");
    manifest.merge(&[ManifestEntry {
        record: record.clone(),
        key: pacs_mirror_agent::bucket::object_key(&pacs_mirror_store::index::ObjectId::from(hash)),
        file_blake3: hex.clone(),
    }]);
    // The index's records in both encodings: JSON (version 1, rows of
    // earlier releases, still read) and compact (version 2, written now).
    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let body = serde_json::to_vec(v).unwrap_or_default();
        [&[records::RECORD_V1][..], &body].concat()
    }
    let object = ObjectRecord {
        sop_instance_uid: "1.2.3.4".into(),
        dataset_bytes: 10,
        file_bytes: 300,
        sop_class_uid: CT.into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        evicted_at_ms: Some(9),
    };
    let outbox = OutboxRecord {
        enqueued_at_ms: 5,
        attempts: 2,
        last_error: Some("A700".into()),
        file_bytes: Some(300),
    };
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("manifest", 0, serde_json::to_vec_pretty(&manifest)?),
        (
            "descriptor",
            1,
            serde_json::to_vec(&Descriptor::new("pacs-mirror", 1))?,
        ),
        ("instance-record", 2, json(&record)),
        ("instance-record-v2", 2, records::encode(&record)),
        ("object-record", 3, json(&object)),
        ("object-record-v2", 3, records::encode(&object)),
        ("outbox-record", 4, json(&outbox)),
        ("outbox-record-v2", 4, records::encode(&outbox)),
        ("hash", 6, hex.clone().into_bytes()),
        (
            "object-key",
            7,
            pacs_mirror_agent::bucket::object_key(&pacs_mirror_store::index::ObjectId::from(hash))
                .into_bytes(),
        ),
    ];
    for (name, sel, doc) in seeds {
        out.put("bucket_json", name, &[&[sel][..], &doc].concat())?;
    }
    Ok(())
}

// --- Configuration ---------------------------------------------------------------

fn configs(out: &Out) -> Result<(), Box<dyn Error>> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config");
    for entry in std::fs::read_dir(examples)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            out.put("config_toml", &name, &std::fs::read(&path)?)?;
        }
    }
    Ok(())
}
