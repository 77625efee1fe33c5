//! The DIMSE layer that dicom-ul does not have: typed command sets, the status
//! enum, and the command-set codec. Storage and verification messages for
//! the SCP and the storage SCU; C-FIND / C-GET / C-MOVE / C-CANCEL requests
//! and their responses for the Query/Retrieve SCU (the verifier's `qr`).
//!
//! Command sets are always encoded in Implicit VR Little Endian (PS3.7 §6.3.1)
//! and contain only group 0000 elements. The codec is written by hand because
//! it is small, must never panic on network data, and must bound what it
//! allocates: every length is checked against the bytes actually present.

use std::fmt;

/// Verification SOP Class.
pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// The largest command set we accept (a real one is a few hundred bytes).
pub const MAX_COMMAND_SET_BYTES: usize = 64 * 1024;

/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// Command Data Set Type of a message with a data set (any other value
/// than [`NO_DATA_SET`] says the same).
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// Command Field values (PS3.7 Annex E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandField {
    CStoreRq,
    CStoreRsp,
    CGetRq,
    CGetRsp,
    CFindRq,
    CFindRsp,
    CMoveRq,
    CMoveRsp,
    CEchoRq,
    CEchoRsp,
    CCancelRq,
    /// N-EVENT-REPORT (storage commitment reports).
    NEventReportRq,
    NEventReportRsp,
    /// N-ACTION (storage commitment requests).
    NActionRq,
    NActionRsp,
    /// Any other value (other N-services, unknown).
    Other(u16),
}

impl CommandField {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            CommandField::CStoreRq => 0x0001,
            CommandField::CStoreRsp => 0x8001,
            CommandField::CGetRq => 0x0010,
            CommandField::CGetRsp => 0x8010,
            CommandField::CFindRq => 0x0020,
            CommandField::CFindRsp => 0x8020,
            CommandField::CMoveRq => 0x0021,
            CommandField::CMoveRsp => 0x8021,
            CommandField::CEchoRq => 0x0030,
            CommandField::CEchoRsp => 0x8030,
            CommandField::CCancelRq => 0x0FFF,
            CommandField::NEventReportRq => 0x0100,
            CommandField::NEventReportRsp => 0x8100,
            CommandField::NActionRq => 0x0130,
            CommandField::NActionRsp => 0x8130,
            CommandField::Other(v) => v,
        }
    }

    /// From the wire value.
    pub fn from_code(v: u16) -> Self {
        match v {
            0x0001 => CommandField::CStoreRq,
            0x8001 => CommandField::CStoreRsp,
            0x0010 => CommandField::CGetRq,
            0x8010 => CommandField::CGetRsp,
            0x0020 => CommandField::CFindRq,
            0x8020 => CommandField::CFindRsp,
            0x0021 => CommandField::CMoveRq,
            0x8021 => CommandField::CMoveRsp,
            0x0030 => CommandField::CEchoRq,
            0x8030 => CommandField::CEchoRsp,
            0x0FFF => CommandField::CCancelRq,
            0x0100 => CommandField::NEventReportRq,
            0x8100 => CommandField::NEventReportRsp,
            0x0130 => CommandField::NActionRq,
            0x8130 => CommandField::NActionRsp,
            v => CommandField::Other(v),
        }
    }

    /// The response field for a request field (sets bit 15), if it has one.
    pub fn response_code(self) -> u16 {
        self.code() | 0x8000
    }
}

/// DIMSE status codes used by the agent (PS3.7 Annex C, PS3.4 B.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0x0000.
    Success,
    /// 0xA700–0xA7FF: Refused: Out of Resources.
    OutOfResources(u16),
    /// 0xA900–0xA9FF: Error: Data Set does not match SOP Class.
    DataSetMismatch(u16),
    /// 0xC000–0xCFFF: Error: Cannot understand.
    CannotUnderstand(u16),
    /// 0xB000, 0xB006, 0xB007 and other Bxxx warnings.
    Warning(u16),
    /// 0x0122: Refused: SOP Class not supported.
    SopClassNotSupported,
    /// 0x0211: Unrecognized operation.
    UnrecognizedOperation,
    /// 0xFF00 / 0xFF01.
    Pending(u16),
    /// 0xFE00.
    Cancel,
    /// Any other code.
    Other(u16),
}

impl Status {
    /// Out of resources (0xA700), the answer for a full disk or spool quota.
    pub const OUT_OF_RESOURCES: Status = Status::OutOfResources(0xA700);
    /// The command and the data set name different SOP instances (an
    /// identity conflict).
    pub const UID_MISMATCH: Status = Status::CannotUnderstand(0xC001);
    /// A UID is unusable: in a C-STORE command, one that cannot be an
    /// index key (the store's `identify::usable_key`); in Q/R, one that breaks
    /// PS3.5 9.1 ([`check_uid`]).
    pub const INVALID_UID: Status = Status::CannotUnderstand(0xC002);
    /// The data set is larger than the configured maximum object size.
    pub const OBJECT_TOO_LARGE: Status = Status::OutOfResources(0xA701);

    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Status::Success => 0x0000,
            Status::OutOfResources(c)
            | Status::DataSetMismatch(c)
            | Status::CannotUnderstand(c)
            | Status::Warning(c)
            | Status::Pending(c)
            | Status::Other(c) => c,
            Status::SopClassNotSupported => 0x0122,
            Status::UnrecognizedOperation => 0x0211,
            Status::Cancel => 0xFE00,
        }
    }

    /// From the wire value.
    pub fn from_code(c: u16) -> Self {
        match c {
            0x0000 => Status::Success,
            0xA700..=0xA7FF => Status::OutOfResources(c),
            0xA900..=0xA9FF => Status::DataSetMismatch(c),
            0xC000..=0xCFFF => Status::CannotUnderstand(c),
            0xB000..=0xBFFF => Status::Warning(c),
            0x0122 => Status::SopClassNotSupported,
            0x0211 => Status::UnrecognizedOperation,
            0xFF00 | 0xFF01 => Status::Pending(c),
            0xFE00 => Status::Cancel,
            c => Status::Other(c),
        }
    }

    /// Move destination unknown (C-MOVE, 0xA801).
    pub const MOVE_DESTINATION_UNKNOWN: Status = Status::Other(0xA801);

    /// Success or a warning: the peer stored the object.
    pub fn is_stored(self) -> bool {
        matches!(self, Status::Success | Status::Warning(_))
    }

    /// Pending (0xFF00 / 0xFF01): more responses follow.
    pub fn is_pending(self) -> bool {
        matches!(self, Status::Pending(_))
    }

    /// A final status that is neither Success, a warning, nor Cancel.
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            Status::Success | Status::Warning(_) | Status::Pending(_) | Status::Cancel
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Status::Success => "Success",
            Status::OutOfResources(_) => "Refused: Out of Resources",
            Status::DataSetMismatch(_) => "Error: Data Set does not match SOP Class",
            Status::CannotUnderstand(_) => "Error: Cannot understand",
            Status::Warning(_) => "Warning",
            Status::SopClassNotSupported => "Refused: SOP Class not supported",
            Status::UnrecognizedOperation => "Unrecognized operation",
            Status::Pending(_) => "Pending",
            Status::Cancel => "Cancel",
            Status::Other(_) => "Failure",
        };
        write!(f, "{what} (0x{:04X})", self.code())
    }
}

/// A command-set decoding failure. Any of these is a protocol violation by
/// the peer; the association is aborted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// An element header or value runs past the end of the buffer.
    #[error("command set truncated at byte {offset}")]
    Truncated { offset: usize },
    /// An element outside group 0000.
    #[error("element ({group:04X},{element:04X}) is not a command element")]
    NotCommandGroup { group: u16, element: u16 },
    /// A required element is missing.
    #[error("command set lacks {0}")]
    Missing(&'static str),
    /// The command set is larger than [`MAX_COMMAND_SET_BYTES`].
    #[error("command set of {0} bytes is larger than the {MAX_COMMAND_SET_BYTES}-byte limit")]
    TooLarge(usize),
    /// A US/UL element with the wrong value length.
    #[error("element (0000,{element:04X}) has value length {len}, expected {expected}")]
    BadLength {
        element: u16,
        len: usize,
        expected: usize,
    },
}

/// Command element tags (group 0000) that the agent reads or writes.
pub mod tag {
    pub const GROUP_LENGTH: u16 = 0x0000;
    pub const AFFECTED_SOP_CLASS_UID: u16 = 0x0002;
    pub const COMMAND_FIELD: u16 = 0x0100;
    pub const MESSAGE_ID: u16 = 0x0110;
    pub const MESSAGE_ID_BEING_RESPONDED_TO: u16 = 0x0120;
    pub const MOVE_DESTINATION: u16 = 0x0600;
    pub const PRIORITY: u16 = 0x0700;
    pub const COMMAND_DATA_SET_TYPE: u16 = 0x0800;
    pub const STATUS: u16 = 0x0900;
    pub const ERROR_COMMENT: u16 = 0x0902;
    pub const AFFECTED_SOP_INSTANCE_UID: u16 = 0x1000;
    pub const NUMBER_OF_REMAINING_SUBOPERATIONS: u16 = 0x1020;
    pub const NUMBER_OF_COMPLETED_SUBOPERATIONS: u16 = 0x1021;
    pub const NUMBER_OF_FAILED_SUBOPERATIONS: u16 = 0x1022;
    pub const NUMBER_OF_WARNING_SUBOPERATIONS: u16 = 0x1023;
    pub const MOVE_ORIGINATOR_AE_TITLE: u16 = 0x1030;
    pub const MOVE_ORIGINATOR_MESSAGE_ID: u16 = 0x1031;
}

/// A decoded command set: the raw group 0000 elements, in order, with typed
/// accessors. Unknown elements are kept so nothing is lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSet {
    elements: Vec<(u16, Vec<u8>)>,
}

impl CommandSet {
    /// Decode an Implicit VR Little Endian command set.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_inner(bytes, false).map(|(c, _)| c)
    }

    /// Decode a command set that may be followed by elements of other
    /// groups in the same command PDVs: DCMTK-based SCPs (Orthanc) put a
    /// response's status detail there, e.g. (0008,0058) Failed SOP Instance
    /// UID List of a failed C-GET. Returns the command set and the bytes
    /// from the first non-0000 element on (Implicit VR LE, not checked
    /// here). The group 0000 elements must come first, as PS3.7 orders them.
    pub fn decode_with_trailer(bytes: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        Self::decode_inner(bytes, true)
    }

    fn decode_inner(bytes: &[u8], allow_trailer: bool) -> Result<(Self, &[u8]), DecodeError> {
        if bytes.len() > MAX_COMMAND_SET_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut elements = Vec::new();
        let mut pos = 0usize;
        while pos < bytes.len() {
            let header = bytes
                .get(pos..pos + 8)
                .ok_or(DecodeError::Truncated { offset: pos })?;
            let group = u16::from_le_bytes([header[0], header[1]]);
            let element = u16::from_le_bytes([header[2], header[3]]);
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            if group != 0x0000 {
                if allow_trailer && pos > 0 {
                    return Ok((CommandSet { elements }, &bytes[pos..]));
                }
                return Err(DecodeError::NotCommandGroup { group, element });
            }
            let start = pos + 8;
            let end = start
                .checked_add(len)
                .ok_or(DecodeError::Truncated { offset: pos })?;
            let value = bytes
                .get(start..end)
                .ok_or(DecodeError::Truncated { offset: pos })?;
            if element != tag::GROUP_LENGTH {
                elements.push((element, value.to_vec()));
            }
            pos = end;
        }
        Ok((CommandSet { elements }, &[]))
    }

    /// Encode as Implicit VR Little Endian, group length first.
    pub fn encode(&self) -> Vec<u8> {
        let body_len: usize = self.elements.iter().map(|(_, v)| 8 + v.len()).sum();
        let mut out = Vec::with_capacity(12 + body_len);
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        for (element, value) in &self.elements {
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn raw(&self, element: u16) -> Option<&[u8]> {
        self.elements
            .iter()
            .find(|(e, _)| *e == element)
            .map(|(_, v)| v.as_slice())
    }

    /// Set an element (keeps elements sorted by tag, as PS3.7 requires).
    fn set_raw(&mut self, element: u16, value: Vec<u8>) {
        match self.elements.binary_search_by_key(&element, |(e, _)| *e) {
            Ok(i) => self.elements[i].1 = value,
            Err(i) => self.elements.insert(i, (element, value)),
        }
    }

    /// Read a US element.
    pub fn u16(&self, element: u16) -> Result<Option<u16>, DecodeError> {
        match self.raw(element) {
            None => Ok(None),
            Some(v) if v.len() == 2 => Ok(Some(u16::from_le_bytes([v[0], v[1]]))),
            Some(v) => Err(DecodeError::BadLength {
                element,
                len: v.len(),
                expected: 2,
            }),
        }
    }

    /// Read a string element (UI, AE…), trimmed of trailing NUL and spaces.
    pub fn string(&self, element: u16) -> Option<String> {
        self.raw(element).map(|v| {
            String::from_utf8_lossy(v)
                .trim_end_matches(['\0', ' '])
                .trim_start_matches(' ')
                .to_string()
        })
    }

    /// Set a US element.
    pub fn set_u16(&mut self, element: u16, value: u16) {
        self.set_raw(element, value.to_le_bytes().to_vec());
    }

    /// Set a UI element (padded with NUL to even length).
    pub fn set_uid(&mut self, element: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        self.set_raw(element, v);
    }

    /// Set a text element (AE, LO…; padded with a space to even length).
    pub fn set_text(&mut self, element: u16, value: &str) {
        let mut v = value.as_bytes().to_vec();
        if v.len() % 2 == 1 {
            v.push(b' ');
        }
        self.set_raw(element, v);
    }

    /// The Command Field.
    pub fn command_field(&self) -> Result<CommandField, DecodeError> {
        self.u16(tag::COMMAND_FIELD)?
            .map(CommandField::from_code)
            .ok_or(DecodeError::Missing("Command Field (0000,0100)"))
    }

    /// The Message ID (requests).
    pub fn message_id(&self) -> Result<u16, DecodeError> {
        self.u16(tag::MESSAGE_ID)?
            .ok_or(DecodeError::Missing("Message ID (0000,0110)"))
    }

    /// Whether a data set follows this command.
    pub fn has_data_set(&self) -> Result<bool, DecodeError> {
        let t = self
            .u16(tag::COMMAND_DATA_SET_TYPE)?
            .ok_or(DecodeError::Missing("Command Data Set Type (0000,0800)"))?;
        Ok(t != NO_DATA_SET)
    }

    /// The Status (responses).
    pub fn status(&self) -> Result<Status, DecodeError> {
        self.u16(tag::STATUS)?
            .map(Status::from_code)
            .ok_or(DecodeError::Missing("Status (0000,0900)"))
    }
}

/// A C-STORE-RQ, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CStoreRq {
    pub message_id: u16,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub priority: u16,
    pub move_originator_ae: Option<String>,
    pub move_originator_message_id: Option<u16>,
}

impl CStoreRq {
    /// Read the fields of a C-STORE-RQ from its command set.
    pub fn from_command(cmd: &CommandSet) -> Result<Self, DecodeError> {
        Ok(CStoreRq {
            message_id: cmd.message_id()?,
            sop_class_uid: cmd
                .string(tag::AFFECTED_SOP_CLASS_UID)
                .ok_or(DecodeError::Missing("Affected SOP Class UID (0000,0002)"))?,
            sop_instance_uid: cmd.string(tag::AFFECTED_SOP_INSTANCE_UID).ok_or(
                DecodeError::Missing("Affected SOP Instance UID (0000,1000)"),
            )?,
            priority: cmd.u16(tag::PRIORITY)?.unwrap_or(0),
            move_originator_ae: cmd.string(tag::MOVE_ORIGINATOR_AE_TITLE),
            move_originator_message_id: cmd.u16(tag::MOVE_ORIGINATOR_MESSAGE_ID)?,
        })
    }

    /// Build the command set of this request.
    pub fn to_command(&self) -> CommandSet {
        let mut c = CommandSet::default();
        c.set_uid(tag::AFFECTED_SOP_CLASS_UID, &self.sop_class_uid);
        c.set_u16(tag::COMMAND_FIELD, CommandField::CStoreRq.code());
        c.set_u16(tag::MESSAGE_ID, self.message_id);
        c.set_u16(tag::PRIORITY, self.priority);
        c.set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000);
        c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, &self.sop_instance_uid);
        if let Some(ae) = &self.move_originator_ae {
            c.set_text(tag::MOVE_ORIGINATOR_AE_TITLE, ae);
        }
        if let Some(id) = self.move_originator_message_id {
            c.set_u16(tag::MOVE_ORIGINATOR_MESSAGE_ID, id);
        }
        c
    }
}

/// Build a C-STORE-RSP.
pub fn c_store_rsp(rq: &CStoreRq, status: Status, error_comment: Option<&str>) -> CommandSet {
    let mut c = CommandSet::default();
    c.set_uid(tag::AFFECTED_SOP_CLASS_UID, &rq.sop_class_uid);
    c.set_u16(tag::COMMAND_FIELD, CommandField::CStoreRsp.code());
    c.set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, rq.message_id);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    c.set_u16(tag::STATUS, status.code());
    if let Some(comment) = error_comment {
        // Error Comment is LO: at most 64 characters.
        let comment: String = comment.chars().filter(|c| *c != '\\').take(64).collect();
        c.set_text(tag::ERROR_COMMENT, &comment);
    }
    c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, &rq.sop_instance_uid);
    c
}

/// Build a C-ECHO-RQ.
pub fn c_echo_rq(message_id: u16) -> CommandSet {
    let mut c = CommandSet::default();
    c.set_uid(tag::AFFECTED_SOP_CLASS_UID, VERIFICATION_SOP_CLASS);
    c.set_u16(tag::COMMAND_FIELD, CommandField::CEchoRq.code());
    c.set_u16(tag::MESSAGE_ID, message_id);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    c
}

/// Build the response to any request we answer without a data set: C-ECHO-RSP
/// with Success, or a refusal (0x0211 / 0x0122) of a service we do not offer.
pub fn response_to(request: &CommandSet, status: Status) -> Result<CommandSet, DecodeError> {
    let field = request.command_field()?;
    let mut c = CommandSet::default();
    if let Some(class) = request.string(tag::AFFECTED_SOP_CLASS_UID) {
        c.set_uid(tag::AFFECTED_SOP_CLASS_UID, &class);
    }
    c.set_u16(tag::COMMAND_FIELD, field.response_code());
    c.set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, request.message_id()?);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    c.set_u16(tag::STATUS, status.code());
    if let Some(inst) = request.string(tag::AFFECTED_SOP_INSTANCE_UID) {
        c.set_uid(tag::AFFECTED_SOP_INSTANCE_UID, &inst);
    }
    Ok(c)
}

/// Priority (0000,0700) values.
pub mod priority {
    /// MEDIUM.
    pub const MEDIUM: u16 = 0x0000;
    /// HIGH.
    pub const HIGH: u16 = 0x0001;
    /// LOW.
    pub const LOW: u16 = 0x0002;
}

/// A C-FIND-RQ, C-GET-RQ or C-MOVE-RQ; its identifier follows as a data set
/// in the presentation context's transfer syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRetrieveRq {
    /// [`CommandField::CFindRq`], [`CommandField::CGetRq`] or [`CommandField::CMoveRq`].
    pub field: CommandField,
    pub message_id: u16,
    /// The information model (Study Root FIND…).
    pub sop_class_uid: String,
    /// See [`priority`].
    pub priority: u16,
    /// C-MOVE only: the AE the instances go to.
    pub move_destination: Option<String>,
}

impl QueryRetrieveRq {
    /// Build the command set.
    pub fn to_command(&self) -> CommandSet {
        let mut c = CommandSet::default();
        c.set_uid(tag::AFFECTED_SOP_CLASS_UID, &self.sop_class_uid);
        c.set_u16(tag::COMMAND_FIELD, self.field.code());
        c.set_u16(tag::MESSAGE_ID, self.message_id);
        if let Some(dest) = &self.move_destination {
            c.set_text(tag::MOVE_DESTINATION, dest);
        }
        c.set_u16(tag::PRIORITY, self.priority);
        c.set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000);
        c
    }

    /// Read a request (the SCP side; used by test peers).
    pub fn from_command(cmd: &CommandSet) -> Result<Self, DecodeError> {
        let field = cmd.command_field()?;
        if !matches!(
            field,
            CommandField::CFindRq | CommandField::CGetRq | CommandField::CMoveRq
        ) {
            return Err(DecodeError::Missing(
                "a C-FIND, C-GET or C-MOVE command field",
            ));
        }
        Ok(QueryRetrieveRq {
            field,
            message_id: cmd.message_id()?,
            sop_class_uid: cmd
                .string(tag::AFFECTED_SOP_CLASS_UID)
                .ok_or(DecodeError::Missing("Affected SOP Class UID (0000,0002)"))?,
            priority: cmd.u16(tag::PRIORITY)?.unwrap_or(priority::MEDIUM),
            move_destination: cmd.string(tag::MOVE_DESTINATION),
        })
    }
}

/// Build a C-CANCEL-RQ for the operation with Message ID `message_id`.
pub fn c_cancel_rq(message_id: u16) -> CommandSet {
    let mut c = CommandSet::default();
    c.set_u16(tag::COMMAND_FIELD, CommandField::CCancelRq.code());
    c.set_u16(tag::MESSAGE_ID_BEING_RESPONDED_TO, message_id);
    c.set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATA_SET);
    c
}

/// A C-FIND-RSP, C-GET-RSP or C-MOVE-RSP, typed. Sub-operation counts are
/// those of C-GET and C-MOVE (absent in C-FIND, and optional in finals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRetrieveRsp {
    /// The response command field.
    pub field: CommandField,
    pub message_id_being_responded_to: u16,
    /// Affected SOP Class UID (optional in responses).
    pub sop_class_uid: Option<String>,
    pub status: Status,
    /// An identifier follows (pending C-FIND matches; the Failed SOP
    /// Instance UID List of a final C-GET/C-MOVE).
    pub has_data_set: bool,
    pub remaining: Option<u16>,
    pub completed: Option<u16>,
    pub failed: Option<u16>,
    pub warning: Option<u16>,
    /// Error Comment (0000,0902).
    pub error_comment: Option<String>,
}

impl QueryRetrieveRsp {
    /// Read a response. Fails on a missing Command Field, Message ID Being
    /// Responded To, Data Set Type or Status, on a request field, and on
    /// elements of the wrong length.
    pub fn from_command(cmd: &CommandSet) -> Result<Self, DecodeError> {
        let field = cmd.command_field()?;
        if !matches!(
            field,
            CommandField::CFindRsp | CommandField::CGetRsp | CommandField::CMoveRsp
        ) {
            return Err(DecodeError::Missing(
                "a C-FIND, C-GET or C-MOVE response command field",
            ));
        }
        Ok(QueryRetrieveRsp {
            field,
            message_id_being_responded_to: cmd.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO)?.ok_or(
                DecodeError::Missing("Message ID Being Responded To (0000,0120)"),
            )?,
            sop_class_uid: cmd.string(tag::AFFECTED_SOP_CLASS_UID),
            status: cmd.status()?,
            has_data_set: cmd.has_data_set()?,
            remaining: cmd.u16(tag::NUMBER_OF_REMAINING_SUBOPERATIONS)?,
            completed: cmd.u16(tag::NUMBER_OF_COMPLETED_SUBOPERATIONS)?,
            failed: cmd.u16(tag::NUMBER_OF_FAILED_SUBOPERATIONS)?,
            warning: cmd.u16(tag::NUMBER_OF_WARNING_SUBOPERATIONS)?,
            error_comment: cmd.string(tag::ERROR_COMMENT),
        })
    }

    /// Build the command set (the SCP side; used by test peers).
    pub fn to_command(&self) -> CommandSet {
        let mut c = CommandSet::default();
        if let Some(class) = &self.sop_class_uid {
            c.set_uid(tag::AFFECTED_SOP_CLASS_UID, class);
        }
        c.set_u16(tag::COMMAND_FIELD, self.field.code());
        c.set_u16(
            tag::MESSAGE_ID_BEING_RESPONDED_TO,
            self.message_id_being_responded_to,
        );
        c.set_u16(
            tag::COMMAND_DATA_SET_TYPE,
            if self.has_data_set {
                0x0000
            } else {
                NO_DATA_SET
            },
        );
        c.set_u16(tag::STATUS, self.status.code());
        if let Some(comment) = &self.error_comment {
            c.set_text(tag::ERROR_COMMENT, comment);
        }
        for (element, value) in [
            (tag::NUMBER_OF_REMAINING_SUBOPERATIONS, self.remaining),
            (tag::NUMBER_OF_COMPLETED_SUBOPERATIONS, self.completed),
            (tag::NUMBER_OF_FAILED_SUBOPERATIONS, self.failed),
            (tag::NUMBER_OF_WARNING_SUBOPERATIONS, self.warning),
        ] {
            if let Some(v) = value {
                c.set_u16(element, v);
            }
        }
        c
    }
}

/// Why a UID from the network is unusable ([`check_uid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// The UID is empty.
    #[error("empty UID")]
    Empty,
    /// Longer than 64 characters (bytes).
    #[error("UID of {0} characters (at most 64)")]
    TooLong(usize),
    /// A character other than a digit or a dot.
    #[error("UID contains {0:?}; only digits and dots are allowed")]
    Character(char),
    /// A leading, trailing or doubled dot.
    #[error("UID has an empty component")]
    EmptyComponent,
}

/// Check that a UID from the network is usable: 1–64 characters, only digits
/// and dots, no empty component. Leading zeros in a component are tolerated
/// (legacy modalities send them; refusing would lose images) but reported by
/// [`uid_has_leading_zero`].
pub fn check_uid(uid: &str) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > 64 {
        return Err(UidError::TooLong(uid.len()));
    }
    if let Some(c) = uid.chars().find(|c| !(c.is_ascii_digit() || *c == '.')) {
        return Err(UidError::Character(c));
    }
    if uid.split('.').any(str::is_empty) {
        return Err(UidError::EmptyComponent);
    }
    Ok(())
}

/// Whether a (syntactically usable) UID has a component with a leading zero.
pub fn uid_has_leading_zero(uid: &str) -> bool {
    uid.split('.').any(|c| c.len() > 1 && c.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_rq() -> CStoreRq {
        CStoreRq {
            message_id: 7,
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance_uid: "1.2.3.4.5".into(),
            priority: 0,
            move_originator_ae: None,
            move_originator_message_id: None,
        }
    }

    #[test]
    fn store_rq_round_trip() {
        let rq = sample_rq();
        let bytes = rq.to_command().encode();
        let back = CStoreRq::from_command(&CommandSet::decode(&bytes).unwrap()).unwrap();
        assert_eq!(back, rq);
    }

    /// `to_command` left out the Move Originator AE Title and Message ID
    /// that `from_command` reads, so a C-STORE sub-operation of a C-MOVE
    /// built from a typed request lost them. Found by the `dimse_command`
    /// fuzz target (round-trip oracle).
    #[test]
    fn store_rq_round_trip_keeps_the_move_originator() {
        let rq = CStoreRq {
            move_originator_ae: Some("AGENT".into()),
            move_originator_message_id: Some(2),
            ..sample_rq()
        };
        let cmd = CommandSet::decode(&rq.to_command().encode()).unwrap();
        assert_eq!(cmd.string(tag::MOVE_ORIGINATOR_AE_TITLE).unwrap(), "AGENT");
        assert_eq!(CStoreRq::from_command(&cmd).unwrap(), rq);
    }

    #[test]
    fn encoding_is_implicit_le_with_group_length() {
        let bytes = c_echo_rq(1).encode();
        // (0000,0000) UL length 4, value = bytes after this element
        assert_eq!(&bytes[0..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let group_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(group_len, bytes.len() - 12);
        // Verification UID is 17 chars -> padded with NUL to 18
        assert_eq!(&bytes[12..20], &[0, 0, 2, 0, 18, 0, 0, 0]);
        assert_eq!(&bytes[20..38], b"1.2.840.10008.1.1\0");
    }

    #[test]
    fn store_rsp_carries_status_and_comment() {
        let rsp = c_store_rsp(&sample_rq(), Status::UID_MISMATCH, Some("a\\b"));
        let back = CommandSet::decode(&rsp.encode()).unwrap();
        assert_eq!(back.command_field().unwrap(), CommandField::CStoreRsp);
        assert_eq!(back.status().unwrap().code(), 0xC001);
        assert_eq!(
            back.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(),
            Some(7)
        );
        assert_eq!(back.string(tag::ERROR_COMMENT).unwrap(), "ab");
        assert!(!back.has_data_set().unwrap());
    }

    #[test]
    fn rejects_truncated_and_foreign_groups() {
        let bytes = sample_rq().to_command().encode();
        assert!(matches!(
            CommandSet::decode(&bytes[..bytes.len() - 3]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut foreign = bytes.clone();
        foreign[12] = 8; // group 0008 in the first element after the length
        assert!(matches!(
            CommandSet::decode(&foreign),
            Err(DecodeError::NotCommandGroup { .. })
        ));
        // a huge declared length must not allocate nor panic
        let evil = [0u8, 0, 2, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2];
        assert!(matches!(
            CommandSet::decode(&evil),
            Err(DecodeError::Truncated { .. })
        ));
        let bad_len = [0u8, 0, 0, 1, 3, 0, 0, 0, 1, 0, 0];
        let cs = CommandSet::decode(&bad_len).unwrap();
        assert!(matches!(
            cs.command_field(),
            Err(DecodeError::BadLength { .. })
        ));
    }

    #[test]
    fn uid_checks() {
        assert!(check_uid("1.2.840.10008.1.1").is_ok());
        assert!(check_uid("").is_err());
        assert!(check_uid("../../etc/passwd").is_err());
        assert!(check_uid("1.2.3\0/x").is_err());
        assert!(check_uid("1..2").is_err());
        assert!(check_uid("1.2.").is_err());
        assert!(check_uid(&"1".repeat(65)).is_err());
        assert!(check_uid("1.02.3").is_ok());
        assert_eq!(check_uid("").unwrap_err().to_string(), "empty UID");
        assert_eq!(
            check_uid(&"1".repeat(65)).unwrap_err().to_string(),
            "UID of 65 characters (at most 64)"
        );
        assert_eq!(
            check_uid("1.2.3\0/x").unwrap_err(),
            UidError::Character('\0')
        );
        assert_eq!(
            check_uid("1.2.3\0/x").unwrap_err().to_string(),
            "UID contains '\\0'; only digits and dots are allowed"
        );
        assert_eq!(
            check_uid("1..2").unwrap_err().to_string(),
            "UID has an empty component"
        );
        assert!(uid_has_leading_zero("1.02.3"));
        assert!(!uid_has_leading_zero("1.0.3"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(Status::from_code(0xA700), Status::OUT_OF_RESOURCES);
        assert!(Status::from_code(0xB007).is_stored());
        assert!(!Status::from_code(0xC000).is_stored());
        assert_eq!(Status::from_code(0x0122), Status::SopClassNotSupported);
        assert_eq!(
            Status::OUT_OF_RESOURCES.to_string(),
            "Refused: Out of Resources (0xA700)"
        );
    }

    #[test]
    fn query_retrieve_rq_round_trip_and_layout() {
        let rq = QueryRetrieveRq {
            field: CommandField::CMoveRq,
            message_id: 3,
            sop_class_uid: "1.2.840.10008.5.1.4.1.2.2.2".into(),
            priority: priority::MEDIUM,
            move_destination: Some("STORESCP".into()),
        };
        let cmd = rq.to_command();
        let bytes = cmd.encode();
        let back = CommandSet::decode(&bytes).unwrap();
        assert_eq!(QueryRetrieveRq::from_command(&back).unwrap(), rq);
        assert!(back.has_data_set().unwrap(), "an identifier follows");
        assert_eq!(back.string(tag::MOVE_DESTINATION).unwrap(), "STORESCP");
        // elements are in ascending tag order (PS3.7 6.3.1)
        let mut tags = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            tags.push(u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]));
            let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
            pos += 8 + len;
        }
        assert_eq!(
            tags,
            [0x0000, 0x0002, 0x0100, 0x0110, 0x0600, 0x0700, 0x0800]
        );
        // a C-FIND carries no Move Destination
        let find = QueryRetrieveRq {
            field: CommandField::CFindRq,
            move_destination: None,
            ..rq
        };
        assert_eq!(find.to_command().string(tag::MOVE_DESTINATION), None);
        // a response is not a request
        assert!(QueryRetrieveRq::from_command(&c_echo_rq(1)).is_err());
    }

    #[test]
    fn trailer_after_the_command_set() {
        // What Orthanc 1.10 sends for a failed C-GET: the status detail
        // (0008,0058) merged into the command PDV.
        let mut bytes = c_echo_rq(1).encode();
        let trailer = [0x08, 0, 0x58, 0, 4, 0, 0, 0, b'1', b'.', b'2', 0];
        bytes.extend_from_slice(&trailer);
        assert!(matches!(
            CommandSet::decode(&bytes),
            Err(DecodeError::NotCommandGroup { group: 8, .. })
        ));
        let (cmd, rest) = CommandSet::decode_with_trailer(&bytes).unwrap();
        assert_eq!(cmd, c_echo_rq(1));
        assert_eq!(rest, &trailer);
        // no command element at all is still an error
        assert!(CommandSet::decode_with_trailer(&trailer).is_err());
        // a truncated command before the trailer is still an error
        assert!(CommandSet::decode_with_trailer(&bytes[..20]).is_err());
    }

    #[test]
    fn cancel_rq_fields() {
        let c = CommandSet::decode(&c_cancel_rq(9).encode()).unwrap();
        assert_eq!(c.command_field().unwrap(), CommandField::CCancelRq);
        assert_eq!(c.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO).unwrap(), Some(9));
        assert!(!c.has_data_set().unwrap());
        assert_eq!(c.u16(tag::MESSAGE_ID).unwrap(), None);
    }

    #[test]
    fn query_retrieve_rsp_parse() {
        let rsp = QueryRetrieveRsp {
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
        let back = CommandSet::decode(&rsp.to_command().encode()).unwrap();
        let parsed = QueryRetrieveRsp::from_command(&back).unwrap();
        assert_eq!(parsed, rsp);
        assert!(parsed.status.is_pending());
        assert!(!parsed.status.is_failure());
        assert!(Status::from_code(0xA801).is_failure());
        assert_eq!(Status::from_code(0xA801), Status::MOVE_DESTINATION_UNKNOWN);
        assert!(!Status::Cancel.is_failure());

        // missing Status: clear error
        let mut no_status = rsp.to_command();
        no_status.elements.retain(|(e, _)| *e != tag::STATUS);
        assert_eq!(
            QueryRetrieveRsp::from_command(&no_status),
            Err(DecodeError::Missing("Status (0000,0900)"))
        );
        // a count of the wrong length
        let mut bad = rsp.to_command();
        bad.set_raw(tag::NUMBER_OF_FAILED_SUBOPERATIONS, vec![1, 0, 0, 0]);
        assert!(matches!(
            QueryRetrieveRsp::from_command(&bad),
            Err(DecodeError::BadLength {
                element: 0x1022,
                ..
            })
        ));
        // a request field is not a response
        let rq = QueryRetrieveRq {
            field: CommandField::CFindRq,
            message_id: 1,
            sop_class_uid: "1.2".into(),
            priority: 0,
            move_destination: None,
        };
        assert!(QueryRetrieveRsp::from_command(&rq.to_command()).is_err());
        // a truncated response command set
        let bytes = rsp.to_command().encode();
        for cut in [1, 7, 13, bytes.len() - 1] {
            assert!(matches!(
                CommandSet::decode(&bytes[..cut]),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(cs) = CommandSet::decode(&bytes) {
                let _ = cs.command_field();
                let _ = cs.message_id();
                let _ = cs.has_data_set();
                let _ = CStoreRq::from_command(&cs);
                let _ = QueryRetrieveRsp::from_command(&cs);
                let _ = QueryRetrieveRq::from_command(&cs);
                // re-encoding a decoded set decodes to the same elements
                prop_assert_eq!(CommandSet::decode(&cs.encode()).unwrap(), cs);
            }
        }
    }
}
