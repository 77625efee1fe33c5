//! The lossless uncompressed fallback: an object in Explicit VR Little
//! Endian re-encoded into Implicit VR Little Endian (or the reverse), in
//! memory, only when the peer accepts the fallback and not the original.

use super::error::NotItsAddress;
use super::store::Outgoing;

/// Largest object re-encoded for the uncompressed fallback (it is held in
/// memory while sent).
pub const MAX_TRANSCODE_BYTES: u64 = 256 << 20;
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

/// The lossless uncompressed alternative of a transfer syntax, if any.
pub fn uncompressed_fallback(transfer_syntax: &str) -> Option<&'static str> {
    match transfer_syntax {
        EXPLICIT_VR_LE => Some(IMPLICIT_VR_LE),
        IMPLICIT_VR_LE => Some(EXPLICIT_VR_LE),
        _ => None,
    }
}

/// A data set re-encoded for the uncompressed fallback before it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reencoded {
    /// The transfer syntax it was sent in.
    pub transfer_syntax_uid: String,
    /// blake3 of the data set bytes sent.
    pub blake3: [u8; 32],
}

/// Re-encode a Part-10 object's data set into another uncompressed
/// transfer syntax.
pub(super) fn reencode(object: &Outgoing, ts: &str) -> std::io::Result<Vec<u8>> {
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let read;
    let bytes: &[u8] = match &object.memory {
        Some(m) => &m.0,
        None => {
            read = std::fs::read(&object.path)?;
            &read
        }
    };
    if let Some(want) = object.dataset_blake3 {
        let offset = crate::part10::dataset_offset_in(&mut std::io::Cursor::new(bytes))?;
        let dataset = usize::try_from(offset)
            .ok()
            .and_then(|o| bytes.get(o..))
            .unwrap_or_default();
        let found = *blake3::hash(dataset).as_bytes();
        if found != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                NotItsAddress(found),
            ));
        }
    }
    // from_reader starts at "DICM": skip the preamble.
    let obj = bytes
        .get(128..)
        .ok_or_else(|| invalid("shorter than a Part-10 preamble".into()))
        .and_then(|b| dicom_object::from_reader(b).map_err(|e| invalid(e.to_string())))?;
    let target = TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| invalid(format!("unknown transfer syntax {ts}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(out)
}
