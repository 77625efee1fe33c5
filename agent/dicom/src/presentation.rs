//! Negotiated presentation contexts, read the same way by both ends.

use dicom_ul::pdu::{PresentationContextNegotiated, PresentationContextResultReason};

/// The accepted context `pc_id` among `contexts`: its abstract syntax and
/// transfer syntax (trailing NUL padding removed); `None` when it was not
/// accepted or not proposed.
pub fn accepted(contexts: &[PresentationContextNegotiated], pc_id: u8) -> Option<(String, String)> {
    contexts
        .iter()
        .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
}
