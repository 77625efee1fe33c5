//! The C-MOVE loop: send the request naming the Move Destination AE, then
//! read pending responses (sub-operation counts) until the final status.
//!
//! The instances themselves travel on associations the peer opens to the
//! destination AE (an SCP of the caller's choosing, which the peer must know
//! by AE title, host and port); nothing arrives on this association. Set
//! [`pacs_mirror_dicom::scu::Peer::timeout`] longer than the gap between pending
//! responses: some SCPs answer only once per sub-operation.

use std::time::{Duration, Instant};

use super::responses::{Event, Operation, Responses};
use super::{
    QrError, QrOptions, RetrieveTarget, STUDY_ROOT_MOVE, SubOperations, ms, qr_context,
    send_request,
};
use pacs_mirror_dicom::dimse::{CommandField, QueryRetrieveRq, Status};
use pacs_mirror_dicom::scu::Scu;

/// The result of a C-MOVE that reached its final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The final status (Success, Warning 0xB000, Cancel, or a failure such
    /// as 0xA801 Move Destination unknown).
    pub status: Status,
    /// The peer's counts (final response, or the last pending one's where
    /// the final omits them).
    pub sub_operations: SubOperations,
    /// Failed SOP Instance UID List (0008,0058) of the final response.
    pub failed_sop_instance_uids: Vec<String>,
    /// Error Comment of the final response.
    pub error_comment: Option<String>,
    /// Pending responses received.
    pub pending_responses: u32,
    /// We sent C-CANCEL.
    pub cancelled: bool,
    /// From sending the request to the final response.
    pub elapsed: Duration,
}

impl MoveOutcome {
    /// Final Success with no failed or warning sub-operation.
    pub fn is_complete(&self) -> bool {
        self.status == Status::Success
            && self.sub_operations.failed == 0
            && self.sub_operations.warning == 0
    }
}

/// Check a Move Destination: an AE title of 1–16 characters, no backslash
/// nor control characters.
fn check_destination(ae: &str) -> Result<(), QrError> {
    let t = ae.trim();
    if t.is_empty() || t.len() > 16 || t.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(QrError::InvalidDestination {
            destination: ae.to_string(),
        });
    }
    Ok(())
}

pub(super) async fn run(
    scu: &mut Scu,
    target: &RetrieveTarget,
    destination: &str,
    options: &QrOptions,
) -> Result<MoveOutcome, QrError> {
    check_destination(destination)?;
    let (pc, ts) = qr_context(scu, STUDY_ROOT_MOVE, "C-MOVE")?;
    let identifier = target.identifier().map_err(QrError::InvalidQuery)?;
    let id = scu.message_id();
    let rq = QueryRetrieveRq {
        field: CommandField::CMoveRq,
        message_id: id,
        sop_class_uid: STUDY_ROOT_MOVE.to_string(),
        priority: options.priority,
        move_destination: Some(destination.trim().to_string()),
    };
    send_request(scu, pc, &ts, &rq, &identifier).await?;
    let start = Instant::now();
    let mut outcome = MoveOutcome {
        status: Status::Success,
        sub_operations: SubOperations::default(),
        failed_sop_instance_uids: Vec::new(),
        error_comment: None,
        pending_responses: 0,
        cancelled: false,
        elapsed: Duration::ZERO,
    };
    let mut responses = Responses::new(Operation::Move, (pc, id), &ts, options);
    loop {
        match responses.next(scu, false).await? {
            Event::Pending { rsp, .. } => {
                outcome.sub_operations.update(&rsp);
                outcome.pending_responses += 1;
            }
            Event::Final { rsp, failed } => {
                outcome.sub_operations.update(&rsp);
                outcome.status = rsp.status;
                outcome.error_comment = rsp.error_comment;
                outcome.failed_sop_instance_uids = failed;
                outcome.cancelled = responses.cancelled;
                return Ok(finish(outcome, start));
            }
            Event::SubCommand { .. } | Event::SubData { .. } => {
                return Err(scu
                    .protocol("C-STORE sub-operation in a C-MOVE".into())
                    .into());
            }
        }
    }
}

fn finish(mut outcome: MoveOutcome, start: Instant) -> MoveOutcome {
    outcome.elapsed = start.elapsed();
    tracing::debug!(
        status = %outcome.status,
        completed = outcome.sub_operations.completed,
        failed = outcome.sub_operations.failed,
        elapsed_ms = ms(outcome.elapsed),
        "C-MOVE done"
    );
    outcome
}

#[cfg(test)]
mod tests {
    use super::super::testpeer::{self, Script, Step};
    use super::super::*;
    use super::check_destination;

    #[tokio::test(flavor = "multi_thread")]
    async fn pending_counts_then_final_with_failed_list() {
        let script = Script::moves(vec![
            Step::Pending(2, 1, 0, 0),
            Step::Pending(1, 1, 1, 0),
            Step::FinalCounts(Status::Warning(0xB000), 2, 1, 0, vec!["1.2.9".into()]),
        ]);
        let (peer, handle) = testpeer::start(script).await;
        let out = move_to(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            "STORESCP",
            &QrOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.status, Status::Warning(0xB000));
        assert_eq!(out.pending_responses, 2);
        assert_eq!(
            out.sub_operations,
            SubOperations {
                remaining: None,
                completed: 2,
                failed: 1,
                warning: 0
            }
        );
        assert_eq!(out.failed_sop_instance_uids, ["1.2.9"]);
        assert!(!out.is_complete());
        let seen = handle.await.unwrap();
        assert_eq!(
            seen.requests[0].move_destination.as_deref(),
            Some("STORESCP")
        );
        assert!(seen.released);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unknown_destination_and_bad_input() {
        let script = Script::moves(vec![Step::Final(Status::MOVE_DESTINATION_UNKNOWN)]);
        let (peer, handle) = testpeer::start(script).await;
        let out = move_to(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            "NOBODY",
            &QrOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.status, Status::MOVE_DESTINATION_UNKNOWN);
        assert!(out.status.is_failure());
        handle.await.unwrap();

        for bad in ["", "A\\B", "SEVENTEEN_CHARS_X"] {
            let e = check_destination(bad).unwrap_err();
            assert!(
                matches!(e, QrError::InvalidDestination { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn data_set_on_a_pending_move_response_is_a_protocol_error() {
        // a pending response with a data set (here: a match) is refused
        let mut m = dicom_object::InMemDicomObject::new_empty();
        m.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from("1.2"),
        ));
        let (peer, handle) = testpeer::start(Script::moves(vec![Step::Match(m)])).await;
        let e = move_to(
            &peer,
            &RetrieveTarget::study("1.2.3"),
            "STORESCP",
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("with a data set"), "{e}");
        assert!(handle.await.unwrap().aborted);
    }
}
