//! DIMSE message reassembly from P-DATA values, one implementation for
//! both ends: the SCP's association loop and the SCU's `receive_pdv`.
//!
//! Command fragments are collected on one presentation context, at most
//! [`MAX_COMMAND_SET_BYTES`] in all (checked as each fragment arrives, so a
//! peer cannot make us buffer more), and decoded when the last one
//! arrives. Data fragments are handed over as they come: a data set is
//! streamed, never assembled here. What a data fragment belongs to (a
//! C-STORE being received, a response's identifier) is the caller's state.

use dicom_ul::pdu::{PDataValue, PDataValueType};

use crate::dimse::{CommandSet, DecodeError, MAX_COMMAND_SET_BYTES};

/// What one P-DATA value completes.
#[derive(Debug)]
pub enum Message {
    /// A complete command set.
    Command {
        /// Presentation context it came on.
        pc_id: u8,
        /// The decoded command set.
        command: CommandSet,
        /// Elements outside group 0000 after it (Implicit VR LE), when the
        /// reassembler allows them ([`Reassembler::with_trailer`]); else
        /// empty.
        trailer: Vec<u8>,
    },
    /// A command fragment that is not the last: nothing complete yet.
    Partial,
    /// One data fragment, as received.
    Data {
        /// Presentation context it came on.
        pc_id: u8,
        /// The bytes.
        bytes: Vec<u8>,
        /// Last fragment of the data set.
        last: bool,
    },
}

/// A broken message: the association must be aborted.
#[derive(Debug, thiserror::Error)]
pub enum ReassemblyError {
    /// A command set's fragments came on two presentation contexts.
    #[error("command fragments on presentation contexts {first} and {second}")]
    TwoContexts {
        /// Where the command began.
        first: u8,
        /// Where a fragment of it came.
        second: u8,
    },
    /// Command fragments add up to more than the limit.
    #[error("command set larger than {MAX_COMMAND_SET_BYTES} bytes")]
    TooLarge,
    /// A data fragment between the fragments of a command set.
    #[error("data fragment in the middle of a command set")]
    DataInCommand,
    /// The command set does not decode.
    #[error("undecodable command set: {0}")]
    Undecodable(#[source] DecodeError),
}

/// Collects command fragments; see the module documentation.
#[derive(Debug, Default)]
pub struct Reassembler {
    command: Option<(u8, Vec<u8>)>,
    allow_trailer: bool,
}

impl Reassembler {
    /// A reassembler whose command sets must hold group 0000 only (the
    /// SCP: requests).
    pub fn new() -> Self {
        Self::default()
    }

    /// A reassembler that keeps elements of other groups following a
    /// command set as its trailer (the SCU: DCMTK-based SCPs such as
    /// Orthanc put a response's status detail there).
    pub fn with_trailer() -> Self {
        Reassembler {
            command: None,
            allow_trailer: true,
        }
    }

    /// Whether a command set is partly received.
    pub fn in_command(&self) -> bool {
        self.command.is_some()
    }

    /// Take one P-DATA value. After an error the reassembler is empty.
    pub fn push(&mut self, pdv: PDataValue) -> Result<Message, ReassemblyError> {
        let pc_id = pdv.presentation_context_id;
        match pdv.value_type {
            PDataValueType::Data => {
                if self.command.take().is_some() {
                    return Err(ReassemblyError::DataInCommand);
                }
                Ok(Message::Data {
                    pc_id,
                    bytes: pdv.data,
                    last: pdv.is_last,
                })
            }
            PDataValueType::Command => {
                let mut bytes = match self.command.take() {
                    None => pdv.data,
                    Some((first, mut bytes)) if first == pc_id => {
                        if bytes.len().saturating_add(pdv.data.len()) > MAX_COMMAND_SET_BYTES {
                            return Err(ReassemblyError::TooLarge);
                        }
                        bytes.extend_from_slice(&pdv.data);
                        bytes
                    }
                    Some((first, _)) => {
                        return Err(ReassemblyError::TwoContexts {
                            first,
                            second: pc_id,
                        });
                    }
                };
                if bytes.len() > MAX_COMMAND_SET_BYTES {
                    return Err(ReassemblyError::TooLarge);
                }
                if !pdv.is_last {
                    self.command = Some((pc_id, std::mem::take(&mut bytes)));
                    return Ok(Message::Partial);
                }
                let (command, trailer) = if self.allow_trailer {
                    let (c, t) = CommandSet::decode_with_trailer(&bytes)
                        .map_err(ReassemblyError::Undecodable)?;
                    (c, t.to_vec())
                } else {
                    let c = CommandSet::decode(&bytes).map_err(ReassemblyError::Undecodable)?;
                    (c, Vec::new())
                };
                Ok(Message::Command {
                    pc_id,
                    command,
                    trailer,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::{CommandField, tag};

    fn pdv(pc: u8, kind: PDataValueType, last: bool, data: &[u8]) -> PDataValue {
        PDataValue {
            presentation_context_id: pc,
            value_type: kind,
            is_last: last,
            data: data.to_vec(),
        }
    }

    fn echo_rq() -> Vec<u8> {
        let mut c = CommandSet::default();
        c.set_uid(tag::AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1");
        c.set_u16(tag::COMMAND_FIELD, CommandField::CEchoRq.code());
        c.set_u16(tag::MESSAGE_ID, 7);
        c.set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0101);
        c.encode()
    }

    /// A command split in three fragments decodes once, at the last.
    #[test]
    fn joins_command_fragments_on_one_context() {
        let bytes = echo_rq();
        let mut r = Reassembler::new();
        let (a, rest) = bytes.split_at(5);
        let (b, c) = rest.split_at(9);
        for part in [a, b] {
            let m = r
                .push(pdv(1, PDataValueType::Command, false, part))
                .unwrap();
            assert!(matches!(m, Message::Partial));
            assert!(r.in_command());
        }
        match r.push(pdv(1, PDataValueType::Command, true, c)).unwrap() {
            Message::Command {
                pc_id,
                command,
                trailer,
            } => {
                assert_eq!(pc_id, 1);
                assert_eq!(command.encode(), bytes);
                assert!(trailer.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(!r.in_command());
    }

    /// Fragments on two contexts, data inside a command, an oversized
    /// command (refused before it is all buffered) and garbage are errors.
    #[test]
    fn refuses_broken_messages() {
        let bytes = echo_rq();
        let mut r = Reassembler::new();
        r.push(pdv(1, PDataValueType::Command, false, &bytes[..4]))
            .unwrap();
        let e = r
            .push(pdv(3, PDataValueType::Command, true, &bytes[4..]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command fragments on presentation contexts 1 and 3"
        );
        assert!(!r.in_command());

        r.push(pdv(1, PDataValueType::Command, false, &bytes[..4]))
            .unwrap();
        let e = r
            .push(pdv(1, PDataValueType::Data, true, b"x"))
            .unwrap_err();
        assert!(matches!(e, ReassemblyError::DataInCommand));

        let big = vec![0u8; MAX_COMMAND_SET_BYTES / 2 + 1];
        r.push(pdv(1, PDataValueType::Command, false, &big))
            .unwrap();
        let e = r
            .push(pdv(1, PDataValueType::Command, false, &big))
            .unwrap_err();
        assert!(matches!(e, ReassemblyError::TooLarge), "{e}");

        let e = r
            .push(pdv(1, PDataValueType::Command, true, &[0, 0, 0]))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("undecodable command set: "),
            "{e}"
        );
    }

    /// Elements of another group after the command: a trailer for the SCU,
    /// an error for the SCP.
    #[test]
    fn a_trailer_only_where_allowed() {
        let mut bytes = echo_rq();
        // (0008,0058) UI "1.2" (Implicit VR LE)
        bytes.extend_from_slice(&[0x08, 0x00, 0x58, 0x00, 4, 0, 0, 0, b'1', b'.', b'2', 0]);
        let m = Reassembler::with_trailer()
            .push(pdv(1, PDataValueType::Command, true, &bytes))
            .unwrap();
        assert!(matches!(m, Message::Command { ref trailer, .. } if trailer.len() == 12));
        assert!(
            Reassembler::new()
                .push(pdv(1, PDataValueType::Command, true, &bytes))
                .is_err()
        );
    }

    /// Data fragments pass through as they are.
    #[test]
    fn data_passes_through() {
        let m = Reassembler::new()
            .push(pdv(5, PDataValueType::Data, true, b"abc"))
            .unwrap();
        assert!(matches!(m, Message::Data { pc_id: 5, ref bytes, last: true } if bytes == b"abc"));
    }
}
