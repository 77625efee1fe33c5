//! Storage Commitment Push Model (PS3.4 Annex J): the messages both roles
//! exchange, and their data sets.
//!
//! - The SCU asks with an N-ACTION-RQ (Action Type ID 1, "request storage
//!   commitment") whose data set holds a Transaction UID and the Referenced
//!   SOP Sequence (SOP class and instance of each object).
//! - The SCP answers the N-ACTION at once (it only says the request was
//!   taken) and reports later with an N-EVENT-REPORT-RQ (Event Type ID 1:
//!   every object committed; 2: failures exist) carrying the same
//!   Transaction UID, the Referenced SOP Sequence of what it committed and
//!   the Failed SOP Sequence of what it did not, each with a Failure Reason.
//!   The report travels on the request's association while it is open, else
//!   on a new association the SCP opens to the SCU's AE, proposing the SCP
//!   role of this SOP class (role selection: SCU off, SCP on).
//!
//! Data sets are Explicit or Implicit VR Little Endian (the two transfer
//! syntaxes both roles propose), checked by the structure walker before
//! dicom-object parses them, and at most [`MAX_DATA_SET_BYTES`].

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::dimse::{self, CommandField, CommandSet, Status, tag};
use crate::query::{self, QueryError};

/// Storage Commitment Push Model SOP Class.
pub const SOP_CLASS: &str = "1.2.840.10008.1.20.1";
/// Its well-known SOP instance (every request and report names it).
pub const SOP_INSTANCE: &str = "1.2.840.10008.1.20.1.1";
/// Action Type ID of a request for storage commitment.
pub const ACTION_REQUEST: u16 = 1;
/// Event Type ID: every referenced object committed.
pub const EVENT_ALL_COMMITTED: u16 = 1;
/// Event Type ID: the request is complete, failures exist.
pub const EVENT_FAILURES_EXIST: u16 = 2;
/// Largest request or report data set accepted (about 100 000 references).
pub const MAX_DATA_SET_BYTES: usize = 16 << 20;

/// Failure Reason (0008,1197) values (PS3.3 C.14.1.1).
pub mod reason {
    /// Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
    /// No such object instance.
    pub const NO_SUCH_OBJECT_INSTANCE: u16 = 0x0112;
    /// Class / instance conflict.
    pub const CLASS_INSTANCE_CONFLICT: u16 = 0x0119;
    /// Referenced SOP class not supported.
    pub const CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Resource limitation.
    pub const RESOURCE_LIMITATION: u16 = 0x0213;
    /// Duplicate transaction UID.
    pub const DUPLICATE_TRANSACTION_UID: u16 = 0x0131;
}

/// N-ACTION statuses the SCP answers (PS3.7 10.1.4.1.10).
pub mod status {
    use crate::dimse::Status;
    /// No such action type (not 1).
    pub const NO_SUCH_ACTION_TYPE: Status = Status::Other(0x0123);
    /// No such SOP instance (not the well-known one).
    pub const NO_SUCH_SOP_INSTANCE: Status = Status::Other(0x0112);
    /// Processing failure (e.g. the data set cannot be read).
    pub const PROCESSING_FAILURE: Status = Status::Other(0x0110);
    /// Missing attribute (no Transaction UID, no references).
    pub const MISSING_ATTRIBUTE: Status = Status::Other(0x0120);
}

const TRANSACTION_UID: Tag = tags::TRANSACTION_UID;
const REFERENCED_SOP_SEQUENCE: Tag = tags::REFERENCED_SOP_SEQUENCE;
const FAILED_SOP_SEQUENCE: Tag = tags::FAILED_SOP_SEQUENCE;
const REFERENCED_SOP_CLASS_UID: Tag = tags::REFERENCED_SOP_CLASS_UID;
const REFERENCED_SOP_INSTANCE_UID: Tag = tags::REFERENCED_SOP_INSTANCE_UID;
const FAILURE_REASON: Tag = tags::FAILURE_REASON;

/// Command elements of the N-services.
pub mod command_tag {
    /// Requested SOP Class UID (N-ACTION-RQ).
    pub const REQUESTED_SOP_CLASS_UID: u16 = 0x0003;
    /// Requested SOP Instance UID (N-ACTION-RQ).
    pub const REQUESTED_SOP_INSTANCE_UID: u16 = 0x1001;
    /// Event Type ID (N-EVENT-REPORT).
    pub const EVENT_TYPE_ID: u16 = 0x1002;
    /// Action Type ID (N-ACTION).
    pub const ACTION_TYPE_ID: u16 = 0x1008;
}

/// What a request or a report cannot say.
#[derive(Debug, thiserror::Error)]
pub enum CommitmentError {
    /// The data set cannot be read or written.
    #[error(transparent)]
    Codec(#[from] QueryError),
    /// The data set is larger than [`MAX_DATA_SET_BYTES`].
    #[error("storage commitment data set of {0} bytes (at most {MAX_DATA_SET_BYTES})")]
    TooLarge(usize),
    /// A required attribute is missing or empty.
    #[error("storage commitment data set without {0}")]
    Missing(&'static str),
    /// A value is not what its VR allows.
    #[error("storage commitment data set: {0}")]
    Invalid(String),
}

/// One referenced object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SopRef {
    /// Referenced SOP Class UID.
    pub class_uid: String,
    /// Referenced SOP Instance UID.
    pub instance_uid: String,
}

/// An N-ACTION request's data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Transaction UID: the report names it.
    pub transaction_uid: String,
    /// The objects whose commitment is asked.
    pub references: Vec<SopRef>,
}

/// An N-EVENT-REPORT's data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The request's Transaction UID.
    pub transaction_uid: String,
    /// Committed.
    pub committed: Vec<SopRef>,
    /// Not committed, each with its Failure Reason ([`reason`]).
    pub failed: Vec<(SopRef, u16)>,
}

impl Request {
    /// The data set in `transfer_syntax_uid`.
    pub fn encode(&self, transfer_syntax_uid: &str) -> Result<Vec<u8>, CommitmentError> {
        let mut obj = InMemDicomObject::new_empty();
        put_uid(&mut obj, TRANSACTION_UID, &self.transaction_uid);
        obj.put(sequence(
            REFERENCED_SOP_SEQUENCE,
            self.references.iter().map(|r| (r, None)),
        ));
        Ok(query::encode(&obj, transfer_syntax_uid)?)
    }

    /// Read a request's data set.
    pub fn decode(bytes: &[u8], transfer_syntax_uid: &str) -> Result<Self, CommitmentError> {
        let obj = decode(bytes, transfer_syntax_uid)?;
        let transaction_uid = transaction(&obj)?;
        let references = items(&obj, REFERENCED_SOP_SEQUENCE)?
            .into_iter()
            .map(|(r, _)| r)
            .collect::<Vec<_>>();
        if references.is_empty() {
            return Err(CommitmentError::Missing(
                "Referenced SOP Sequence (0008,1199) items",
            ));
        }
        Ok(Request {
            transaction_uid,
            references,
        })
    }
}

impl Report {
    /// Event Type ID of this report.
    pub fn event_type(&self) -> u16 {
        if self.failed.is_empty() {
            EVENT_ALL_COMMITTED
        } else {
            EVENT_FAILURES_EXIST
        }
    }

    /// The data set in `transfer_syntax_uid`.
    pub fn encode(&self, transfer_syntax_uid: &str) -> Result<Vec<u8>, CommitmentError> {
        let mut obj = InMemDicomObject::new_empty();
        put_uid(&mut obj, TRANSACTION_UID, &self.transaction_uid);
        if !self.committed.is_empty() {
            obj.put(sequence(
                REFERENCED_SOP_SEQUENCE,
                self.committed.iter().map(|r| (r, None)),
            ));
        }
        if !self.failed.is_empty() {
            obj.put(sequence(
                FAILED_SOP_SEQUENCE,
                self.failed.iter().map(|(r, why)| (r, Some(*why))),
            ));
        }
        Ok(query::encode(&obj, transfer_syntax_uid)?)
    }

    /// Read a report's data set. A failed item without a Failure Reason is
    /// taken as a processing failure.
    pub fn decode(bytes: &[u8], transfer_syntax_uid: &str) -> Result<Self, CommitmentError> {
        let obj = decode(bytes, transfer_syntax_uid)?;
        Ok(Report {
            transaction_uid: transaction(&obj)?,
            committed: items(&obj, REFERENCED_SOP_SEQUENCE)?
                .into_iter()
                .map(|(r, _)| r)
                .collect(),
            failed: items(&obj, FAILED_SOP_SEQUENCE)?
                .into_iter()
                .map(|(r, why)| (r, why.unwrap_or(reason::PROCESSING_FAILURE)))
                .collect(),
        })
    }
}

fn decode(bytes: &[u8], transfer_syntax_uid: &str) -> Result<InMemDicomObject, CommitmentError> {
    if bytes.len() > MAX_DATA_SET_BYTES {
        return Err(CommitmentError::TooLarge(bytes.len()));
    }
    Ok(query::decode_bounded(
        bytes,
        transfer_syntax_uid,
        MAX_DATA_SET_BYTES,
    )?)
}

fn put_uid(obj: &mut InMemDicomObject, tag: Tag, uid: &str) {
    obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(uid)));
}

fn sequence<'a>(
    tag: Tag,
    refs: impl Iterator<Item = (&'a SopRef, Option<u16>)>,
) -> DataElement<InMemDicomObject> {
    let items: Vec<InMemDicomObject> = refs
        .map(|(r, why)| {
            let mut item = InMemDicomObject::new_empty();
            put_uid(&mut item, REFERENCED_SOP_CLASS_UID, &r.class_uid);
            put_uid(&mut item, REFERENCED_SOP_INSTANCE_UID, &r.instance_uid);
            if let Some(why) = why {
                item.put(DataElement::new(
                    FAILURE_REASON,
                    VR::US,
                    PrimitiveValue::from(why),
                ));
            }
            item
        })
        .collect();
    DataElement::new(tag, VR::SQ, dicom_core::value::DataSetSequence::from(items))
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Result<Option<String>, CommitmentError> {
    query::text(obj, tag).map_err(CommitmentError::from)
}

fn transaction(obj: &InMemDicomObject) -> Result<String, CommitmentError> {
    let uid = text(obj, TRANSACTION_UID)?
        .filter(|u| !u.is_empty())
        .ok_or(CommitmentError::Missing("Transaction UID (0008,1195)"))?;
    dimse::check_uid(&uid)
        .map_err(|e| CommitmentError::Invalid(format!("Transaction UID: {e}")))?;
    Ok(uid)
}

/// The items of a reference sequence: (reference, Failure Reason if any).
/// An absent sequence has no items; an item without both UIDs is an error.
fn items(obj: &InMemDicomObject, tag: Tag) -> Result<Vec<(SopRef, Option<u16>)>, CommitmentError> {
    let Some(element) = obj.get(tag) else {
        return Ok(Vec::new());
    };
    let Some(items) = element.items() else {
        return Err(CommitmentError::Invalid(format!("{tag} is not a sequence")));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let class_uid = text(item, REFERENCED_SOP_CLASS_UID)?
            .filter(|u| !u.is_empty())
            .ok_or(CommitmentError::Missing(
                "Referenced SOP Class UID (0008,1150) in an item",
            ))?;
        let instance_uid = text(item, REFERENCED_SOP_INSTANCE_UID)?
            .filter(|u| !u.is_empty())
            .ok_or(CommitmentError::Missing(
                "Referenced SOP Instance UID (0008,1155) in an item",
            ))?;
        let why = match item.get(FAILURE_REASON) {
            None => None,
            Some(e) => Some(e.to_int::<u16>().map_err(|e| {
                CommitmentError::Invalid(format!("Failure Reason (0008,1197): {e}"))
            })?),
        };
        out.push((
            SopRef {
                class_uid,
                instance_uid,
            },
            why,
        ));
    }
    Ok(out)
}

/// The presentation context both roles propose: this SOP class in
/// Explicit or Implicit VR Little Endian.
pub fn presentation_context() -> (String, Vec<String>) {
    (
        SOP_CLASS.to_string(),
        vec![
            crate::scu::EXPLICIT_VR_LE.to_string(),
            crate::scu::IMPLICIT_VR_LE.to_string(),
        ],
    )
}

// ---------------------------------------------------------------------------
// Command sets
// ---------------------------------------------------------------------------

/// An N-ACTION-RQ asking for storage commitment (a data set follows).
pub fn n_action_rq(message_id: u16) -> CommandSet {
    let mut c = CommandSet::default();
    c.set_uid(command_tag::REQUESTED_SOP_CLASS_UID, SOP_CLASS);
    c.set_u16(tag::COMMAND_FIELD, CommandField::NActionRq.code());
    c.set_u16(tag::MESSAGE_ID, message_id);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, dimse::DATA_SET_PRESENT);
    c.set_uid(command_tag::REQUESTED_SOP_INSTANCE_UID, SOP_INSTANCE);
    c.set_u16(command_tag::ACTION_TYPE_ID, ACTION_REQUEST);
    c
}

/// The N-ACTION-RSP to `rq` (no data set).
pub fn n_action_rsp(rq: &CommandSet, status: Status) -> Result<CommandSet, dimse::DecodeError> {
    let mut c = CommandSet::default();
    c.set_uid(tag::AFFECTED_SOP_CLASS_UID, SOP_CLASS);
    c.set_u16(tag::COMMAND_FIELD, CommandField::NActionRq.response_code());
    c.set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id()?);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, dimse::NO_DATA_SET);
    c.set_u16(tag::STATUS, status.code());
    c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, SOP_INSTANCE);
    if status == Status::Success {
        c.set_u16(command_tag::ACTION_TYPE_ID, ACTION_REQUEST);
    }
    Ok(c)
}

/// An N-EVENT-REPORT-RQ carrying a report (a data set follows).
pub fn n_event_report_rq(message_id: u16, event_type: u16) -> CommandSet {
    let mut c = CommandSet::default();
    c.set_uid(tag::AFFECTED_SOP_CLASS_UID, SOP_CLASS);
    c.set_u16(tag::COMMAND_FIELD, CommandField::NEventReportRq.code());
    c.set_u16(tag::MESSAGE_ID, message_id);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, dimse::DATA_SET_PRESENT);
    c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, SOP_INSTANCE);
    c.set_u16(command_tag::EVENT_TYPE_ID, event_type);
    c
}

/// The N-EVENT-REPORT-RSP to `rq` (no data set).
pub fn n_event_report_rsp(
    rq: &CommandSet,
    status: Status,
) -> Result<CommandSet, dimse::DecodeError> {
    let mut c = CommandSet::default();
    c.set_uid(tag::AFFECTED_SOP_CLASS_UID, SOP_CLASS);
    c.set_u16(
        tag::COMMAND_FIELD,
        CommandField::NEventReportRq.response_code(),
    );
    c.set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id()?);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, dimse::NO_DATA_SET);
    c.set_u16(tag::STATUS, status.code());
    c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, SOP_INSTANCE);
    if let Some(event) = rq.u16(command_tag::EVENT_TYPE_ID)? {
        c.set_u16(command_tag::EVENT_TYPE_ID, event);
    }
    Ok(c)
}

/// Why an N-ACTION-RQ is not a storage commitment request we take: the
/// status to answer, or None when it is one.
pub fn check_n_action(rq: &CommandSet) -> Result<Option<Status>, dimse::DecodeError> {
    let class = rq.string(command_tag::REQUESTED_SOP_CLASS_UID);
    if class.as_deref() != Some(SOP_CLASS) {
        return Ok(Some(Status::SopClassNotSupported));
    }
    if rq
        .string(command_tag::REQUESTED_SOP_INSTANCE_UID)
        .as_deref()
        != Some(SOP_INSTANCE)
    {
        return Ok(Some(status::NO_SUCH_SOP_INSTANCE));
    }
    if rq.u16(command_tag::ACTION_TYPE_ID)? != Some(ACTION_REQUEST) {
        return Ok(Some(status::NO_SUCH_ACTION_TYPE));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scu::{EXPLICIT_VR_LE, IMPLICIT_VR_LE};

    fn sop(i: u32) -> SopRef {
        SopRef {
            class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            instance_uid: format!("1.2.826.0.1.3680043.2.1143.{i}"),
        }
    }

    #[test]
    fn requests_and_reports_round_trip_in_both_syntaxes() {
        for ts in [EXPLICIT_VR_LE, IMPLICIT_VR_LE] {
            let rq = Request {
                transaction_uid: "2.25.12345".into(),
                references: (0..300).map(sop).collect(),
            };
            let bytes = rq.encode(ts).unwrap();
            assert_eq!(Request::decode(&bytes, ts).unwrap(), rq);
            let report = Report {
                transaction_uid: "2.25.12345".into(),
                committed: (0..3).map(sop).collect(),
                failed: vec![
                    (sop(7), reason::NO_SUCH_OBJECT_INSTANCE),
                    (sop(8), reason::CLASS_INSTANCE_CONFLICT),
                ],
            };
            assert_eq!(report.event_type(), EVENT_FAILURES_EXIST);
            let bytes = report.encode(ts).unwrap();
            assert_eq!(Report::decode(&bytes, ts).unwrap(), report);
            let all = Report {
                failed: Vec::new(),
                ..report
            };
            assert_eq!(all.event_type(), EVENT_ALL_COMMITTED);
            assert_eq!(Report::decode(&all.encode(ts).unwrap(), ts).unwrap(), all);
        }
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        let ts = EXPLICIT_VR_LE;
        // no references
        let empty = Request {
            transaction_uid: "2.25.1".into(),
            references: Vec::new(),
        };
        let e = Request::decode(&empty.encode(ts).unwrap(), ts).unwrap_err();
        assert!(matches!(e, CommitmentError::Missing(_)), "{e}");
        // no transaction UID
        let mut obj = InMemDicomObject::new_empty();
        obj.put(sequence(
            REFERENCED_SOP_SEQUENCE,
            [(&sop(1), None)].into_iter(),
        ));
        let bytes = query::encode(&obj, ts).unwrap();
        let e = Request::decode(&bytes, ts).unwrap_err();
        assert!(e.to_string().contains("Transaction UID"), "{e}");
        // an item without its instance UID
        let mut obj = InMemDicomObject::new_empty();
        put_uid(&mut obj, TRANSACTION_UID, "2.25.1");
        let mut item = InMemDicomObject::new_empty();
        put_uid(&mut item, REFERENCED_SOP_CLASS_UID, "1.2.3");
        obj.put(DataElement::new(
            REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(vec![item]),
        ));
        let e = Request::decode(&query::encode(&obj, ts).unwrap(), ts).unwrap_err();
        assert!(e.to_string().contains("(0008,1155)"), "{e}");
        // truncated and hostile bytes
        let good = Request {
            transaction_uid: "2.25.1".into(),
            references: vec![sop(1)],
        }
        .encode(ts)
        .unwrap();
        for cut in [1, 7, good.len() / 2, good.len() - 1] {
            assert!(Request::decode(&good[..cut], ts).is_err(), "cut at {cut}");
        }
        let mut lie = good.clone();
        // the Transaction UID's length field claims 4 GiB
        lie[6..8].copy_from_slice(&[0xFF, 0xFF]);
        assert!(Request::decode(&lie, ts).is_err());
        assert!(Request::decode(&good, "1.2.840.10008.1.2.4.50").is_err());
    }

    #[test]
    fn commands_carry_what_peers_check() {
        let rq = n_action_rq(7);
        assert_eq!(check_n_action(&rq).unwrap(), None);
        let rsp = n_action_rsp(&rq, Status::Success).unwrap();
        assert_eq!(rsp.command_field().unwrap().code(), 0x8130, "N-ACTION-RSP");
        assert_eq!(
            rsp.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(),
            Some(7)
        );
        assert_eq!(
            rsp.string(tag::AFFECTED_SOP_CLASS_UID).as_deref(),
            Some(SOP_CLASS)
        );
        assert_eq!(
            rsp.string(tag::AFFECTED_SOP_INSTANCE_UID).as_deref(),
            Some(SOP_INSTANCE)
        );
        assert!(!rsp.has_data_set().unwrap());
        let ev = n_event_report_rq(9, EVENT_FAILURES_EXIST);
        assert!(ev.has_data_set().unwrap());
        let ev_rsp = n_event_report_rsp(&ev, Status::Success).unwrap();
        assert_eq!(ev_rsp.command_field().unwrap().code(), 0x8100);
        assert_eq!(ev_rsp.u16(command_tag::EVENT_TYPE_ID).unwrap(), Some(2));
        let mut other = n_action_rq(1);
        other.set_u16(command_tag::ACTION_TYPE_ID, 2);
        assert_eq!(
            check_n_action(&other).unwrap(),
            Some(status::NO_SUCH_ACTION_TYPE)
        );
        let mut wrong = n_action_rq(1);
        wrong.set_uid(command_tag::REQUESTED_SOP_INSTANCE_UID, "1.2.3");
        assert_eq!(
            check_n_action(&wrong).unwrap(),
            Some(status::NO_SUCH_SOP_INSTANCE)
        );
    }
}
