//! Fuzz harnesses: one function per decoder the agent owns that reads
//! network, file or bucket input (test-catalogue T09).
//!
//! Each `pub fn NAME(data: &[u8])` must never panic on any input except to
//! report a broken oracle: a decode → encode → decode round trip that changes
//! the value, a checker that accepts what a parser then cannot read safely,
//! two readers of the same bytes that disagree, an output larger than its
//! input allows. The cargo-fuzz crate in `tests/fuzz/` calls them under
//! libFuzzer with an allocation cap (a decoder that trusts a declared length
//! is caught there as an out-of-memory), and the test
//! `agent/tests/fuzz_corpus.rs` replays the in-tree corpus through them on the
//! stable toolchain. [`TARGETS`] lists them by the names of their corpus
//! directories.
//!
//! The first bytes of an input often choose a parameter (a transfer syntax,
//! where to cut it into PDVs); the rest is the decoder's input.

use dicom_transfer_syntax_registry::entries;

use pacs_mirror_dicom::dimse::{
    self, CStoreRq, CommandField, CommandSet, QueryRetrieveRq, QueryRetrieveRsp, Status,
};
use pacs_mirror_dicom::part10::{self, Receipt};
use pacs_mirror_dicom::query as identifier;
use pacs_mirror_dicom::structure::Walker;

/// A harness: panics only when an oracle fails.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("dimse_command", dimse_command),
    ("uid", uid),
    ("dataset_structure", dataset_structure),
    ("store_ingest", store_ingest),
    ("qr_identifier", qr_identifier),
    ("part10_stream", part10_stream),
    ("bucket_json", bucket_json),
    ("config_toml", config_toml),
];

/// Transfer syntaxes a data set may arrive in, chosen by an input byte.
const TRANSFER_SYNTAXES: [&str; 6] = [
    "1.2.840.10008.1.2",      // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",    // Explicit VR Little Endian
    "1.2.840.10008.1.2.2",    // Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99", // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50", // JPEG Baseline (encapsulated pixel data)
    "1.2.840.10008.1.2.4.95", // JPIP Referenced Deflate
];

const DEFLATED: [&str; 2] = ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"];

fn transfer_syntax(selector: u8) -> &'static str {
    TRANSFER_SYNTAXES[usize::from(selector) % TRANSFER_SYNTAXES.len()]
}

/// The dicom-rs transfer syntax dicom-object reads `uid`'s data set bytes with.
fn registry_ts(uid: &str) -> dicom_encoding::TransferSyntax {
    match uid {
        "1.2.840.10008.1.2" => entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        "1.2.840.10008.1.2.2" => entries::EXPLICIT_VR_BIG_ENDIAN.erased(),
        "1.2.840.10008.1.2.1.99" => entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        "1.2.840.10008.1.2.4.95" => entries::JPIP_REFERENCED_DEFLATE.erased(),
        "1.2.840.10008.1.2.4.50" => entries::JPEG_BASELINE.erased(),
        _ => entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    }
}

/// Feed `data` to a fresh [`Walker`] in pieces of `chunk` bytes.
fn walk(
    ts: &str,
    data: &[u8],
    chunk: usize,
) -> Result<(), pacs_mirror_dicom::structure::StructureError> {
    let mut w = Walker::new(ts);
    for piece in data.chunks(chunk.max(1)) {
        w.feed(piece)?;
    }
    w.finish()
}

// ---------------------------------------------------------------------------
// DIMSE command sets
// ---------------------------------------------------------------------------

/// `CommandSet::decode` and `decode_with_trailer`, then every typed reader.
///
/// Oracles: a decoded set re-encodes to at most its input plus a group
/// length element and decodes back to itself; every typed request or
/// response read from it survives `to_command → encode → decode →
/// from_command` unchanged; a response built for it decodes to that
/// response; the trailer is a suffix of the input.
pub fn dimse_command(data: &[u8]) {
    if let Ok(cmd) = CommandSet::decode(data) {
        check_command(&cmd, data.len());
    }
    if let Ok((cmd, rest)) = CommandSet::decode_with_trailer(data) {
        assert!(data.ends_with(rest), "the trailer is the end of the input");
        let head = &data[..data.len() - rest.len()];
        assert_eq!(
            CommandSet::decode(head).as_ref(),
            Ok(&cmd),
            "the command part decodes alone to the same set"
        );
        if !rest.is_empty() {
            assert_ne!(
                u16::from_le_bytes([rest[0], rest.get(1).copied().unwrap_or(0)]),
                0,
                "a trailer starts outside group 0000"
            );
        }
        check_command(&cmd, head.len());
    }
}

fn check_command(cmd: &CommandSet, input_len: usize) {
    let bytes = cmd.encode();
    assert!(
        bytes.len() <= input_len + 12,
        "{} bytes encoded from {input_len}",
        bytes.len()
    );
    let back = CommandSet::decode(&bytes);
    if bytes.len() <= dimse::MAX_COMMAND_SET_BYTES {
        assert_eq!(back.as_ref(), Ok(cmd), "decode(encode(cmd)) == cmd");
    } else {
        assert!(matches!(back, Err(dimse::DecodeError::TooLarge(_))));
    }

    if let Ok(field) = cmd.command_field() {
        assert_eq!(CommandField::from_code(field.code()), field);
    }
    if let Ok(status) = cmd.status() {
        assert_eq!(Status::from_code(status.code()), status);
        let _ = status.to_string();
    }
    let _ = cmd.has_data_set();

    if let Ok(rq) = CStoreRq::from_command(cmd) {
        let again = CStoreRq::from_command(&reencoded(&rq.to_command()));
        assert_eq!(again.as_ref(), Ok(&rq), "C-STORE-RQ round trip");
        let comment = cmd.string(dimse::tag::ERROR_COMMENT);
        for status in [Status::Success, Status::UID_MISMATCH, Status::INVALID_UID] {
            let rsp = reencoded(&dimse::c_store_rsp(&rq, status, comment.as_deref()));
            assert_eq!(rsp.command_field(), Ok(CommandField::CStoreRsp));
            assert_eq!(rsp.status(), Ok(status));
            assert_eq!(
                rsp.u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO),
                Ok(Some(rq.message_id))
            );
            assert_eq!(rsp.has_data_set(), Ok(false));
            if let Some(c) = rsp.string(dimse::tag::ERROR_COMMENT) {
                assert!(c.chars().count() <= 64 && !c.contains('\\'), "LO comment");
            }
        }
    }
    if let Ok(rq) = QueryRetrieveRq::from_command(cmd) {
        let again = QueryRetrieveRq::from_command(&reencoded(&rq.to_command()));
        assert_eq!(again.as_ref(), Ok(&rq), "C-FIND/GET/MOVE-RQ round trip");
    }
    if let Ok(rsp) = QueryRetrieveRsp::from_command(cmd) {
        let again = QueryRetrieveRsp::from_command(&reencoded(&rsp.to_command()));
        assert_eq!(again.as_ref(), Ok(&rsp), "C-FIND/GET/MOVE-RSP round trip");
    }
    if let Ok(rsp) = dimse::response_to(cmd, Status::UnrecognizedOperation) {
        let rsp = reencoded(&rsp);
        let field = cmd.command_field().map(CommandField::response_code);
        assert_eq!(rsp.u16(dimse::tag::COMMAND_FIELD), field.map(Some));
        assert_eq!(
            rsp.u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO),
            cmd.message_id().map(Some)
        );
        assert_eq!(rsp.status(), Ok(Status::UnrecognizedOperation));
    }
}

/// A command set after encode → decode (our own encoding must decode).
fn reencoded(cmd: &CommandSet) -> CommandSet {
    match CommandSet::decode(&cmd.encode()) {
        Ok(c) => c,
        Err(e) => panic!("our own encoding does not decode: {e}"),
    }
}

// ---------------------------------------------------------------------------
// UIDs and AE titles
// ---------------------------------------------------------------------------

/// `dimse::check_uid` (network UIDs) against PS3.5 §9.1 written out, and
/// against the configuration's stricter `validate_uid`; AE title checks.
///
/// Oracles: `check_uid` accepts exactly 1–64 characters of digits and dots
/// with no empty component; the configuration accepts exactly what
/// `check_uid` accepts without a leading zero.
pub fn uid(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let reference = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && s.split('.').all(|c| !c.is_empty());
    let network = dimse::check_uid(&s);
    assert_eq!(network.is_ok(), reference, "check_uid({s:?}) = {network:?}");
    let config = pacs_mirror_config::validate_uid(&s);
    assert_eq!(
        config.is_ok(),
        reference && !dimse::uid_has_leading_zero(&s),
        "validate_uid({s:?}) = {config:?}"
    );
    if pacs_mirror_config::validate_ae_title(&s).is_ok() {
        let t = s.trim_matches(' ');
        assert!((1..=16).contains(&t.chars().count()));
        assert!(t.chars().all(|c| (' '..='~').contains(&c) && c != '\\'));
    }
}

// ---------------------------------------------------------------------------
// Data set structure
// ---------------------------------------------------------------------------

/// The streaming structure checker ([`Walker`]).
///
/// Input: a transfer-syntax selector byte, a PDV-size byte, the data set.
/// Oracles: the verdict does not depend on how the bytes are cut into PDVs;
/// a data set the checker accepts is one dicom-object reads without
/// allocating more than the input (the allocation cap of the fuzzer turns a
/// value length that the checker let through into a crash); and whatever
/// dicom-object writes, the checker accepts.
pub fn dataset_structure(data: &[u8]) {
    let [selector, chunk, body @ ..] = data else {
        return;
    };
    let ts = transfer_syntax(*selector);
    let whole = walk(ts, body, body.len());
    let pieces = walk(ts, body, usize::from(*chunk) + 1);
    if DEFLATED.contains(&ts) {
        assert_eq!(whole.is_ok(), pieces.is_ok(), "{whole:?} / {pieces:?}");
    } else {
        assert_eq!(whole, pieces, "the verdict depends on the PDV size");
    }
    // dicom-object is only handed what the checker for it accepts (as the
    // agent does: identifiers, header parses).
    let mut for_dicom_rs = Walker::for_dicom_rs(ts);
    if for_dicom_rs
        .feed(body)
        .and_then(|()| for_dicom_rs.finish())
        .is_err()
    {
        return;
    }
    let registry = registry_ts(ts);
    let Ok(obj) = dicom_object::InMemDicomObject::read_dataset_with_ts(body, &registry) else {
        return;
    };
    let mut written = Vec::new();
    if whole.is_ok()
        && obj.write_dataset_with_ts(&mut written, &registry).is_ok()
        && let Err(e) = walk(ts, &written, written.len())
    {
        panic!("the checker refuses what dicom-object wrote: {e}");
    }
}

// ---------------------------------------------------------------------------
// C-STORE ingest: our file header, the walk of the data set, the full parse
// ---------------------------------------------------------------------------

const CT_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// What the SCP does with a received data set to identify it
/// ([`crate::scp::store`], [`pacs_mirror_store::commit`], [`pacs_mirror_store::identify`]): one
/// walk that checks the structure and captures the identifying attributes,
/// fed PDV by PDV, then the ingest policy's decision; and the same file read
/// back as recovery and `reindex` read it.
///
/// Input: a transfer-syntax selector byte, a byte choosing the length of the
/// first PDV, the data set.
/// Oracles: no walk allocates more than the input (and no captured value
/// exceeds its cap); the walk fed in two PDVs sees what one walk of the
/// whole sees (the index records what the stored file holds); a kept
/// object's study and series keys are usable keys (no NUL, no control
/// character, within the limit) or empty; reading the stored file back
/// (`part10::read_identity`) gives the same decision, hash and offsets.
pub fn store_ingest(data: &[u8]) {
    let [selector, first_len, body @ ..] = data else {
        return;
    };
    let ts = transfer_syntax(*selector);
    let receipt = Receipt {
        source_ip: "192.0.2.1".into(),
        received_at_ms: 1,
    };
    let header = match part10::file_header(CT_IMAGE, "1.2.3.4", ts, "FUZZ", &receipt) {
        Ok(h) => h,
        Err(e) => panic!("our own file header: {e}"),
    };
    // The first PDV: 1 to 256 bytes, or all of a short data set.
    let cut = (usize::from(*first_len) + 1).min(body.len());
    let (first, rest) = body.split_at(cut);

    let mut split = pacs_mirror_store::identify::walker(ts);
    let _ = split.feed(first);
    let _ = split.feed(rest);
    let split = split.finish_observing();
    let mut whole_walk = pacs_mirror_store::identify::walker(ts);
    let _ = whole_walk.feed(body);
    let whole_walk = whole_walk.finish_observing();
    assert_eq!(
        split, whole_walk,
        "the walk depends on where the PDVs split"
    );
    for c in &split.captured {
        assert!(c.value.len() <= pacs_mirror_dicom::structure::CAPTURE_LIMIT);
        assert!(c.value.len() as u64 <= body.len() as u64);
    }
    let decided = pacs_mirror_store::identify::identify(CT_IMAGE, "1.2.3.4", &split);
    if let Ok(id) = &decided {
        for key in [&id.study_instance_uid, &id.series_instance_uid] {
            assert!(
                key.is_empty() || pacs_mirror_store::identify::usable_key(key).is_ok(),
                "an unusable key was kept: {key:?}"
            );
        }
    }

    let file = [header.as_slice(), body].concat();
    match part10::read_identity_from(file.as_slice()) {
        Ok(back) => {
            assert_eq!(back.meta.dataset_offset, header.len() as u64);
            assert_eq!(back.meta.transfer_syntax_uid, ts);
            assert_eq!(back.meta.receipt.as_ref(), Some(&receipt));
            assert_eq!(back.dataset_blake3, *blake3::hash(body).as_bytes());
            assert_eq!(back.dataset_bytes, body.len() as u64);
            assert_eq!(back.observed, whole_walk, "read back differently");
        }
        Err(e) => panic!("our own file does not read back: {e}"),
    }
    let whole = part10::read_header_from(std::io::Cursor::new(file.as_slice()));
    if let Ok(h) = &whole {
        assert_eq!(h.dataset_offset, header.len() as u64);
        assert_eq!(
            part10::dataset_offset_in(&mut file.as_slice()).ok(),
            Some(header.len() as u64)
        );
    }
}

// ---------------------------------------------------------------------------
// Query/Retrieve identifiers
// ---------------------------------------------------------------------------

/// [`identifier::decode`] of a C-FIND match or a C-GET/C-MOVE final
/// identifier, then every typed reader of a match.
///
/// Input: a byte choosing Explicit or Implicit VR LE, the identifier.
/// Oracles: nothing is allocated beyond the input; a decoded identifier
/// encodes (at most twice as large), our own encoding decodes, and decoding
/// loses nothing of it: it re-encodes to the same bytes. (The first
/// encoding may differ from the input: dicom-object pads odd values, which
/// changes how a binary-valued UN element reads as text.)
pub fn qr_identifier(data: &[u8]) {
    use pacs_mirror_dicom::query::{FindQuery, InstanceQuery, SeriesQuery, StudyQuery};
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    let ts = if selector & 1 == 0 {
        identifier::EXPLICIT_VR_LE
    } else {
        identifier::IMPLICIT_VR_LE
    };
    let Ok(obj) = identifier::decode(bytes, ts) else {
        return;
    };
    let _ = StudyQuery::parse(&obj);
    let _ = SeriesQuery::parse(&obj);
    let _ = InstanceQuery::parse(&obj);
    let _ = identifier::failed_sop_instance_uids(&obj);
    let Ok(encoded) = identifier::encode(&obj, ts) else {
        return;
    };
    // Re-encoding pads odd values (one byte each) and may write a short
    // element with an explicit header: bounded by twice the input.
    assert!(
        encoded.len() <= 2 * bytes.len() + 16,
        "{} bytes re-encoded from {}",
        encoded.len(),
        bytes.len()
    );
    let back = match identifier::decode(&encoded, ts) {
        Ok(b) => b,
        Err(e) => panic!("our own encoding of a decoded identifier does not decode: {e}"),
    };
    match identifier::encode(&back, ts) {
        Ok(again) => assert_eq!(again, encoded, "decoding our encoding changed it"),
        Err(e) => panic!("a decoded identifier does not encode: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Part-10 byte streams: downloads, spool files, backfill sources
// ---------------------------------------------------------------------------

/// The readers of a Part-10 file's first bytes: [`part10::dataset_offset_in`]
/// (spool files), [`part10::StreamHasher`] (bucket downloads, any split of
/// the stream) and [`crate::backfill::source::read_meta`] (files imported by
/// `backfill`).
///
/// Input: a PDV-size byte, then the file.
/// Oracles: the stream hasher's data set offset is `dataset_offset_in`'s, its
/// hashes are those of the whole file and of the bytes from that offset, its
/// verdict does not depend on the split; a file meta `read_meta` accepts has
/// usable UIDs, leaves the reader at the data set, and agrees on the offset.
pub fn part10_stream(data: &[u8]) {
    let Some((chunk, file)) = data.split_first() else {
        return;
    };
    let offset = part10::dataset_offset_in(&mut &file[..]).ok();

    let hash = |piece: usize| {
        let mut h = part10::StreamHasher::default();
        for c in file.chunks(piece.max(1)) {
            h.update(c)?;
        }
        h.finish()
    };
    let whole = hash(file.len());
    let pieces = hash(usize::from(*chunk) + 1);
    assert_eq!(whole.as_ref().ok(), pieces.as_ref().ok());
    assert_eq!(whole.is_ok(), pieces.is_ok());
    if let Ok(h) = whole {
        assert_eq!(Some(h.dataset_offset), offset);
        assert_eq!(h.file_bytes, file.len() as u64);
        assert_eq!(h.file, *blake3::hash(file).as_bytes());
        let start = usize::try_from(h.dataset_offset).unwrap_or(usize::MAX);
        assert_eq!(
            h.dataset,
            *blake3::hash(file.get(start..).unwrap_or_default()).as_bytes()
        );
    }

    let mut reader = file;
    if let Ok(meta) = crate::backfill::source::read_meta(&mut reader, file.len() as u64) {
        assert_eq!(Some(meta.dataset_offset), offset);
        assert_eq!(
            file.len() - reader.len(),
            usize::try_from(meta.dataset_offset).unwrap_or(usize::MAX),
            "the reader is left at the data set"
        );
        for uid in [&meta.sop_class_uid, &meta.sop_instance_uid] {
            assert!(
                pacs_mirror_store::identify::usable_key(uid).is_ok(),
                "{uid:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// JSON read back from a bucket or the index
// ---------------------------------------------------------------------------

/// The JSON documents read back from a bucket (study manifests, the bucket
/// descriptor), the versioned index records, object keys and hex hashes.
///
/// Input: a selector byte, then the document.
/// Oracles: whatever decodes re-encodes and decodes to the same value; an
/// object key or hash that parses is the one we would write for it.
pub fn bucket_json(data: &[u8]) {
    use crate::bucket::manifest::{Descriptor, StudyManifest};
    use pacs_mirror_store::index::records::{
        self, ConflictRecord, InstanceRecord, ObjectRecord, OutboxRecord,
    };
    let Some((selector, doc)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => json_round_trip::<StudyManifest>(doc),
        1 => json_round_trip::<Descriptor>(doc),
        2 => record_round_trip::<InstanceRecord>(doc),
        3 => record_round_trip::<ObjectRecord>(doc),
        4 => record_round_trip::<OutboxRecord>(doc),
        5 => record_round_trip::<ConflictRecord>(doc),
        _ => {
            let s = String::from_utf8_lossy(doc);
            if let Ok(h) = pacs_mirror_store::index::parse_hash(&s) {
                assert_eq!(
                    pacs_mirror_store::index::hash_hex(&h),
                    s.to_ascii_lowercase(),
                    "a hash parses only from its hex digits"
                );
            }
            if let Some(h) = crate::bucket::parse_object_key(&s) {
                assert_eq!(
                    crate::bucket::object_key(&h),
                    s,
                    "an object key parses only as we write it"
                );
            }
        }
    }

    fn json_round_trip<T>(doc: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if let Ok(v) = serde_json::from_slice::<T>(doc) {
            let json = match serde_json::to_vec(&v) {
                Ok(j) => j,
                Err(e) => panic!("a decoded document does not encode: {e}"),
            };
            let back: Result<T, _> = serde_json::from_slice(&json);
            assert_eq!(back.ok().as_ref(), Some(&v), "JSON round trip");
        }
    }

    fn record_round_trip<T>(doc: &[u8])
    where
        T: serde::Serialize
            + serde::de::DeserializeOwned
            + PartialEq
            + std::fmt::Debug
            + std::any::Any,
    {
        if let Ok(v) = records::decode::<T>(doc) {
            let back = records::decode::<T>(&records::encode(&v));
            assert_eq!(back.ok().as_ref(), Some(&v), "index record round trip");
        }
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// The configuration file: TOML parse, validation, LDIF export.
///
/// Oracles: a parsed configuration serializes back to TOML that parses to
/// the same configuration; validation and export never panic, and exported
/// LDIF lines are folded at 76 characters.
pub fn config_toml(data: &[u8]) {
    use pacs_mirror_config::Config;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_str(text, std::path::Path::new("fuzz")) else {
        return;
    };
    if let Ok(again) = toml::to_string(&config) {
        let back = Config::from_toml_str(&again, std::path::Path::new("fuzz"));
        assert_eq!(
            back.as_ref().ok(),
            Some(&config),
            "TOML round trip: {again}"
        );
    }
    let findings = config.validate();
    let _ = config.warnings();
    if findings.iter().any(pacs_mirror_config::Finding::is_error) {
        return;
    }
    let options = pacs_mirror_config::ldif::LdifOptions::default();
    if let Ok(export) = pacs_mirror_config::ldif::to_ldif(&config, &options) {
        for line in export.text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.len() <= 76,
                "LDIF line of {} bytes: {line:?}",
                line.len()
            );
        }
    }
}

pub use pacs_mirror_dicom::testing::element;
