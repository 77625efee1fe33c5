//! Fixtures shared by the unit tests of the durability modules.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

/// A minimal data set (Explicit VR LE) with the attributes the agent reads:
/// SOP class and instance, patient ID, study `1.2.3`, series `1.2.3.1`.
pub fn dataset(sop_class: &str, sop_instance: &str, patient_id: &str) -> Vec<u8> {
    dataset_in_study(sop_class, sop_instance, patient_id, "1.2.3")
}

/// [`dataset`] in study `study` (series still `1.2.3.1`).
pub fn dataset_in_study(
    sop_class: &str,
    sop_instance: &str,
    patient_id: &str,
    study: &str,
) -> Vec<u8> {
    let mut ds = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, sop_class),
        (tags::SOP_INSTANCE_UID, VR::UI, sop_instance),
        (tags::PATIENT_ID, VR::LO, patient_id),
        (tags::STUDY_INSTANCE_UID, VR::UI, study),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.1"),
    ] {
        ds.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let mut body = Vec::new();
    ds.write_dataset_with_ts(
        &mut body,
        &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .expect("encoding a small data set in memory");
    body
}
