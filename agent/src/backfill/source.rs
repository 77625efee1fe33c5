//! Reading a source file of a backfill: is it a DICOM Part-10 file, what does
//! its file meta group say (SOP class and instance, transfer syntax), and
//! where do its data set bytes start.
//!
//! Only the 128-byte preamble, `DICM` and the meta group are read here, with
//! a bound on the meta group's size; the data set is streamed by the caller
//! from the returned file position, never read whole.

use std::io::Read;

use dicom_encoding::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Largest file meta group accepted (group length value). Real ones are a
/// few hundred bytes; this only stops a corrupt length from being trusted.
pub const MAX_META_GROUP_BYTES: u32 = 64 * 1024;

/// Media Storage SOP Class UID of a DICOMDIR (a media directory, not an
/// instance).
pub const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// What the file meta group of a source file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMeta {
    /// Media Storage SOP Class UID (0002,0002).
    pub sop_class_uid: String,
    /// Media Storage SOP Instance UID (0002,0003).
    pub sop_instance_uid: String,
    /// Transfer Syntax UID (0002,0010): the encoding of the data set bytes.
    pub transfer_syntax_uid: String,
    /// Where the data set starts: 132 + 12 + the group length.
    pub dataset_offset: u64,
}

/// Why a file is skipped, in words for the operator.
#[derive(Debug, thiserror::Error)]
pub enum Skipped {
    /// Shorter than a preamble and "DICM".
    #[error(
        "not a DICOM Part-10 file: {0} bytes, too short for the 128-byte preamble and \"DICM\""
    )]
    TooShort(u64),
    /// No "DICM" after the preamble.
    #[error("not a DICOM Part-10 file (no \"DICM\" at byte 128)")]
    NoDicm,
    /// The file ends inside its meta group.
    #[error("DICOM file cut short inside its file meta group")]
    CutShort,
    /// The meta group does not open with (0002,0000) UL.
    #[error("the file meta group does not start with its group length (0002,0000) UL")]
    NoGroupLength,
    /// A group length no real meta group has.
    #[error("file meta group length {0} is implausible (over {MAX_META_GROUP_BYTES} bytes)")]
    ImplausibleGroupLength(u32),
    /// The meta group's elements do not parse.
    #[error("unreadable file meta group: {0}")]
    Meta(#[source] pacs_mirror_dicom::part10::Part10Error),
    /// A UID the index would key the object by is unusable.
    #[error("unusable {what}: {source}")]
    UnusableKey {
        /// Which attribute.
        what: &'static str,
        /// Why.
        #[source]
        source: pacs_mirror_store::identify::UnusableKey,
    },
    /// A media directory, not an object.
    #[error("a DICOMDIR (media directory), not a SOP instance")]
    Dicomdir,
    /// A transfer syntax network ingest would not accept either.
    #[error("unknown transfer syntax {0} (the agent would not accept it over the network either)")]
    UnknownTransferSyntax(String),
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
}

/// Read and check the preamble and file meta group of `file` (of length
/// `len`). On success the file position is at the first data set byte. The
/// error is the reason the file is skipped, in words for the operator.
pub fn read_meta(file: &mut impl Read, len: u64) -> Result<SourceMeta, Skipped> {
    let io = Skipped::Read;
    if len < 132 {
        return Err(Skipped::TooShort(len));
    }
    let mut head = [0u8; 144];
    file.read_exact(&mut head[..132]).map_err(io)?;
    if &head[128..132] != b"DICM" {
        return Err(Skipped::NoDicm);
    }
    if len < 144 {
        return Err(Skipped::CutShort);
    }
    file.read_exact(&mut head[132..144]).map_err(io)?;
    if head[132..138] != [2, 0, 0, 0, b'U', b'L'] || head[138..140] != [4, 0] {
        return Err(Skipped::NoGroupLength);
    }
    let group_len = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    if group_len > MAX_META_GROUP_BYTES {
        return Err(Skipped::ImplausibleGroupLength(group_len));
    }
    let dataset_offset = 144 + u64::from(group_len);
    if dataset_offset > len {
        return Err(Skipped::CutShort);
    }
    let mut meta_bytes = Vec::with_capacity(16 + group_len as usize);
    meta_bytes.extend_from_slice(&head[128..144]);
    meta_bytes.resize(16 + group_len as usize, 0);
    file.read_exact(&mut meta_bytes[16..]).map_err(io)?;
    let meta = pacs_mirror_dicom::part10::parse_meta(&meta_bytes).map_err(Skipped::Meta)?;
    let out = SourceMeta {
        sop_class_uid: meta.media_storage_sop_class_uid,
        sop_instance_uid: meta.media_storage_sop_instance_uid,
        transfer_syntax_uid: meta.transfer_syntax,
        dataset_offset,
    };
    out.check()?;
    Ok(out)
}

impl SourceMeta {
    /// The checks network ingest makes on the C-STORE command and the
    /// negotiated transfer syntax, made on the file meta group instead.
    fn check(&self) -> Result<(), Skipped> {
        if let Some((what, source)) = pacs_mirror_store::identify::unusable_key([
            (
                "Media Storage SOP Class UID (0002,0002)",
                self.sop_class_uid.as_str(),
            ),
            (
                "Media Storage SOP Instance UID (0002,0003)",
                self.sop_instance_uid.as_str(),
            ),
            (
                "Transfer Syntax UID (0002,0010)",
                self.transfer_syntax_uid.as_str(),
            ),
        ]) {
            return Err(Skipped::UnusableKey { what, source });
        }
        if self.sop_class_uid == MEDIA_STORAGE_DIRECTORY {
            return Err(Skipped::Dicomdir);
        }
        if TransferSyntaxRegistry
            .get(&self.transfer_syntax_uid)
            .is_none()
        {
            return Err(Skipped::UnknownTransferSyntax(
                self.transfer_syntax_uid.clone(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacs_mirror_dicom::part10::{Receipt, file_header};
    use std::fs::File;
    use std::io::Seek;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const TS: &str = "1.2.840.10008.1.2.1";

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File, u64) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        let f = File::open(&p).unwrap();
        (d, f, bytes.len() as u64)
    }

    fn part10(class: &str, ts: &str) -> (Vec<u8>, usize) {
        let receipt = Receipt {
            source_ip: String::new(),
            received_at_ms: 1,
        };
        let mut v = file_header(class, "1.2.3.4", ts, "ORIGIN", &receipt).unwrap();
        let offset = v.len();
        v.extend_from_slice(&pacs_mirror_dicom::testing::dataset(CT, "1.2.3.4", "P"));
        (v, offset)
    }

    #[test]
    fn reads_the_meta_and_stops_at_the_data_set() {
        let (bytes, offset) = part10(CT, TS);
        let (_d, mut f, len) = file_with(&bytes);
        let m = read_meta(&mut f, len).unwrap();
        assert_eq!(m.sop_class_uid, CT);
        assert_eq!(m.sop_instance_uid, "1.2.3.4");
        assert_eq!(m.transfer_syntax_uid, TS);
        assert_eq!(m.dataset_offset, offset as u64);
        assert_eq!(f.stream_position().unwrap(), offset as u64);
    }

    #[test]
    fn skip_reasons() {
        let reason = |bytes: &[u8]| {
            let (_d, mut f, len) = file_with(bytes);
            read_meta(&mut f, len).unwrap_err().to_string()
        };
        assert!(reason(b"hello").contains("too short"));
        assert!(reason(&[0u8; 300]).contains("no \"DICM\""));
        let (good, offset) = part10(CT, TS);
        assert!(reason(&good[..140]).contains("cut short"));
        assert!(reason(&good[..offset - 3]).contains("cut short"));
        let mut bad_len = good.clone();
        bad_len[140..144].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(reason(&bad_len).contains("implausible"));
        let mut no_group_len = good.clone();
        no_group_len[134] = 1; // (0002,0001) where (0002,0000) belongs
        assert!(reason(&no_group_len).contains("group length"));
        assert!(reason(&part10(MEDIA_STORAGE_DIRECTORY, TS).0).contains("DICOMDIR"));
        assert!(reason(&part10(CT, "1.2.3.999").0).contains("unknown transfer syntax"));
        // Our meta group reader takes any text (a kept object's UIDs need
        // not be conformant); the transfer syntax check then refuses it.
        let r = reason(&part10(CT, "1.2.x").0);
        assert!(r.contains("unknown transfer syntax 1.2.x"), "{r}");
    }
}
