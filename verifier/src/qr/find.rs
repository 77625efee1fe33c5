//! The C-FIND loop: send the request and its identifier, collect one match
//! per Pending response (0xFF00 / 0xFF01) until the final status.
//!
//! Memory is bounded: each identifier is at most
//! [`super::identifier::MAX_IDENTIFIER_BYTES`], and past
//! [`QrOptions::max_matches`] C-CANCEL is sent and later matches are dropped
//! unread. A final failure status is [`QrError::Failed`]; a final Cancel is
//! a success only if we cancelled.

use std::time::{Duration, Instant};

use dicom_object::InMemDicomObject;

use super::responses::{Event, Operation, Responses};
use super::{InformationModel, QrError, QrOptions, ms, qr_context, send_request};
use pacs_mirror_dicom::dimse::{CommandField, QueryRetrieveRq, Status};
use pacs_mirror_dicom::scu::Scu;

/// The result of a C-FIND.
#[derive(Debug, Clone, PartialEq)]
pub struct FindOutcome<T> {
    /// The matches, in the order received (at most `max_matches`).
    pub matches: Vec<T>,
    /// The final status: Success (or a warning), or Cancel after our C-CANCEL.
    pub status: Status,
    /// We sent C-CANCEL (token cancelled, or `max_matches` exceeded).
    pub cancelled: bool,
    /// More than `max_matches` matches: the list is incomplete.
    pub truncated: bool,
    /// A response was 0xFF01: some optional keys were not supported.
    pub optional_keys_unsupported: bool,
    /// From sending the request to the final response.
    pub elapsed: Duration,
}

impl<T> FindOutcome<T> {
    /// The same outcome with other matches (typed from raw ones).
    pub fn with_matches<U>(self, matches: Vec<U>) -> FindOutcome<U> {
        FindOutcome {
            matches,
            status: self.status,
            cancelled: self.cancelled,
            truncated: self.truncated,
            optional_keys_unsupported: self.optional_keys_unsupported,
            elapsed: self.elapsed,
        }
    }
}

pub(super) async fn run(
    scu: &mut Scu,
    model: InformationModel,
    identifier: &InMemDicomObject,
    options: &QrOptions,
) -> Result<FindOutcome<InMemDicomObject>, QrError> {
    let sop_class = model.find_sop_class();
    let (pc, ts) = qr_context(scu, sop_class, "C-FIND")?;
    let id = scu.message_id();
    let rq = QueryRetrieveRq {
        field: CommandField::CFindRq,
        message_id: id,
        sop_class_uid: sop_class.to_string(),
        priority: options.priority,
        move_destination: None,
    };
    let start = Instant::now();
    send_request(scu, pc, &ts, &rq, identifier).await?;
    let mut outcome = FindOutcome {
        matches: Vec::new(),
        status: Status::Success,
        cancelled: false,
        truncated: false,
        optional_keys_unsupported: false,
        elapsed: Duration::ZERO,
    };
    let mut responses = Responses::new(Operation::Find, (pc, id), &ts, options);
    loop {
        let room = outcome.matches.len() < options.max_matches;
        match responses.next(scu, room).await? {
            Event::Pending { rsp, identifier } => {
                if rsp.status == Status::Pending(0xFF01) {
                    outcome.optional_keys_unsupported = true;
                }
                match identifier {
                    Some(m) => outcome.matches.push(m),
                    None if !rsp.has_data_set => {
                        tracing::warn!("pending C-FIND response without an identifier: ignored");
                    }
                    None => {
                        // Over max_matches: drained unread, and the rest
                        // cancelled.
                        if !outcome.truncated {
                            outcome.truncated = true;
                            tracing::warn!(
                                max_matches = options.max_matches,
                                "more C-FIND matches than allowed: cancelling, later matches dropped"
                            );
                        }
                        responses.cancel(scu).await?;
                    }
                }
            }
            Event::Final { rsp, .. } => {
                outcome.cancelled = responses.cancelled;
                return finish(scu, outcome, rsp.status, rsp.error_comment, start);
            }
            Event::SubCommand { .. } | Event::SubData { .. } => {
                return Err(scu
                    .protocol("C-STORE sub-operation in a C-FIND".into())
                    .into());
            }
        }
    }
}

fn finish(
    scu: &Scu,
    mut outcome: FindOutcome<InMemDicomObject>,
    status: Status,
    comment: Option<String>,
    start: Instant,
) -> Result<FindOutcome<InMemDicomObject>, QrError> {
    outcome.status = status;
    outcome.elapsed = start.elapsed();
    let ok = match status {
        Status::Success | Status::Warning(_) => true,
        Status::Cancel => outcome.cancelled,
        _ => false,
    };
    if !ok {
        return Err(QrError::Failed {
            addr: super::addr_of(scu),
            operation: "C-FIND",
            status,
            comment,
        });
    }
    tracing::debug!(
        matches = outcome.matches.len(),
        %status,
        elapsed_ms = ms(outcome.elapsed),
        "C-FIND done"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::super::testpeer::{self, Script, Step};
    use super::super::*;
    use std::time::Duration;

    fn study_match(uid: &str) -> dicom_object::InMemDicomObject {
        let mut o = dicom_object::InMemDicomObject::new_empty();
        o.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::STUDY_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from(uid),
        ));
        o.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::NUMBER_OF_STUDY_RELATED_INSTANCES,
            dicom_core::VR::IS,
            dicom_core::PrimitiveValue::from("3"),
        ));
        o
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pending_matches_then_success_fragmented() {
        let script = Script::find(vec![
            Step::Match(study_match("1.2.3.1")),
            Step::MatchSplit(study_match("1.2.3.2"), 5),
            Step::Final(Status::Success),
        ]);
        let (peer, handle) = testpeer::start(script).await;
        let out = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap();
        let uids: Vec<_> = out
            .matches
            .iter()
            .map(|m| m.study_instance_uid.as_str())
            .collect();
        assert_eq!(uids, ["1.2.3.1", "1.2.3.2"]);
        assert_eq!(out.matches[0].number_of_study_related_instances, Some(3));
        assert_eq!(out.status, Status::Success);
        assert!(!out.cancelled && !out.truncated);
        let seen = handle.await.unwrap();
        assert_eq!(seen.requests.len(), 1);
        assert_eq!(
            seen.identifiers[0]
                .get(dicom_dictionary_std::tags::QUERY_RETRIEVE_LEVEL)
                .unwrap()
                .to_str()
                .unwrap(),
            "STUDY"
        );
        assert!(seen.released, "released after the final response");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn max_matches_cancels_and_truncates() {
        let script = Script::find(vec![
            Step::Match(study_match("1.2.3.1")),
            Step::Match(study_match("1.2.3.2")),
            Step::ExpectCancel,
            Step::Match(study_match("1.2.3.3")),
            Step::Final(Status::Cancel),
        ]);
        let (peer, handle) = testpeer::start(script).await;
        let options = QrOptions {
            max_matches: 1,
            ..QrOptions::default()
        };
        let out = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &options,
        )
        .await
        .unwrap();
        assert_eq!(out.matches.len(), 1);
        assert!(out.truncated && out.cancelled);
        assert_eq!(out.status, Status::Cancel);
        assert!(handle.await.unwrap().cancelled);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn token_cancel_sends_c_cancel() {
        let token = tokio_util::sync::CancellationToken::new();
        let script = Script::find(vec![
            Step::Match(study_match("1.2.3.1")),
            Step::ExpectCancel,
            Step::Final(Status::Cancel),
        ]);
        let (peer, handle) = testpeer::start(script).await;
        let options = QrOptions {
            cancel: Some(token.clone()),
            ..QrOptions::default()
        };
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            token.cancel();
        });
        let out = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &options,
        )
        .await
        .unwrap();
        canceller.await.unwrap();
        assert!(out.cancelled && !out.truncated);
        assert_eq!(out.matches.len(), 1);
        assert!(handle.await.unwrap().cancelled);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn failure_status_is_an_error_with_comment() {
        let script = Script::find(vec![Step::FinalComment(
            Status::from_code(0xC311),
            "bad key",
        )]);
        let (peer, handle) = testpeer::start(script).await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, QrError::Failed { status, comment: Some(c), .. } if status.code() == 0xC311 && c == "bad key"),
            "{e}"
        );
        assert!(!e.is_transient());
        handle.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn malformed_responses_are_clear_errors() {
        // a truncated identifier
        let (peer, h) = testpeer::start(Script::find(vec![Step::RawIdentifier(vec![
            0x20, 0, 0x0D, 0, b'U', b'I', 40, 0, b'1',
        ])]))
        .await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, QrError::Malformed { .. }),
            "truncated identifier: {e}"
        );
        assert!(h.await.unwrap().aborted, "association aborted");

        // a truncated command set
        let (peer, h) = testpeer::start(Script::find(vec![Step::RawCommand(vec![
            0, 0, 0, 1, 2, 0, 0, 0, 0x20,
        ])]))
        .await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("undecodable command set"),
            "truncated command: {e}"
        );
        h.await.unwrap();

        // a match without its unique key
        let mut no_uid = study_match("1.2");
        no_uid.remove_element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID);
        let (peer, h) = testpeer::start(Script::find(vec![
            Step::Match(no_uid),
            Step::Final(Status::Success),
        ]))
        .await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("without Study Instance UID"), "{e}");
        h.await.unwrap();

        // a response to another message, then the peer aborts
        let (peer, h) = testpeer::start(Script::find(vec![Step::WrongMessageId])).await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("outstanding"), "{e}");
        h.await.unwrap();

        let (peer, h) = testpeer::start(Script::find(vec![Step::Abort])).await;
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                QrError::Association(pacs_mirror_dicom::scu::ScuError::Aborted { .. })
            ),
            "{e}"
        );
        assert!(e.is_transient());
        h.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn silence_is_a_timeout() {
        let (mut peer, h) =
            testpeer::start(Script::find(vec![Step::Sleep(Duration::from_secs(3))])).await;
        peer.timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let e = find(
            &peer,
            InformationModel::StudyRoot,
            &StudyQuery::default(),
            &QrOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                QrError::Association(pacs_mirror_dicom::scu::ScuError::Timeout { .. })
            ),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        h.abort();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn refused_model_is_not_negotiated() {
        let (peer, h) = testpeer::start(Script::find_only_patient_root()).await;
        // the peer accepts only Patient Root FIND; we ask Study Root too
        let mut a = QrAssociation::connect(
            &peer,
            &[
                Service::Find(InformationModel::StudyRoot),
                Service::Find(InformationModel::PatientRoot),
            ],
        )
        .await
        .unwrap();
        let e = a
            .find(
                InformationModel::StudyRoot,
                &StudyQuery::default(),
                &QrOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, QrError::NotNegotiated { .. }), "{e}");
        a.release().await;
        h.await.unwrap();
    }
}
