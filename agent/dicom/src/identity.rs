//! Which attributes identify a received object, and reading them from the
//! walk of its data set as it arrives ([`Walker::capturing`]): one walk per
//! object, never dicom-object, so that data sets dicom-object refuses
//! (undefined-length UN, odd UIDs) are read all the same. What is done with
//! them (the ingest policy: kept, refused, findings) is the store's.

use crate::structure::{Observed, Walker};

/// (0008,0016) SOP Class UID.
pub const SOP_CLASS: (u16, u16) = (0x0008, 0x0016);
/// (0008,0018) SOP Instance UID.
pub const SOP_INSTANCE: (u16, u16) = (0x0008, 0x0018);
/// (0008,0020) Study Date.
pub const STUDY_DATE: (u16, u16) = (0x0008, 0x0020);
/// (0008,0060) Modality.
pub const MODALITY: (u16, u16) = (0x0008, 0x0060);
/// (0010,0020) Patient ID.
pub const PATIENT_ID: (u16, u16) = (0x0010, 0x0020);
/// (0020,000D) Study Instance UID.
pub const STUDY: (u16, u16) = (0x0020, 0x000D);
/// (0020,000E) Series Instance UID.
pub const SERIES: (u16, u16) = (0x0020, 0x000E);

/// The top-level elements the walker captures for the index.
pub const IDENTIFYING: &[(u16, u16)] = &[
    SOP_CLASS,
    SOP_INSTANCE,
    STUDY_DATE,
    MODALITY,
    PATIENT_ID,
    STUDY,
    SERIES,
];

/// A walker for a data set in `transfer_syntax` that also reads its
/// identifying attributes.
pub fn walker(transfer_syntax: &str) -> Walker {
    Walker::new(transfer_syntax).capturing(IDENTIFYING)
}

/// A captured value as text, with its declared length: trailing NUL and
/// spaces and leading spaces trimmed; bytes that are not UTF-8 replaced.
pub fn text(observed: &Observed, tag: (u16, u16)) -> Option<(String, u32)> {
    observed.get(tag).map(|c| {
        let s = String::from_utf8_lossy(&c.value);
        (
            s.trim_end_matches(['\0', ' ']).trim_start().to_string(),
            c.length,
        )
    })
}

/// A captured attribute as text (trimmed), empty when absent. For readers
/// that do not apply the policy (drill copies, old records' study date).
pub fn attribute(observed: &Observed, tag: (u16, u16)) -> String {
    text(observed, tag).map(|(v, _)| v).unwrap_or_default()
}
