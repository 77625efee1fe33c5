//! The requestor side: associations to remote AEs, C-ECHO, and C-STORE of
//! spooled objects streamed from their files.
//!
//! Each object goes out on a presentation context of its own SOP class and
//! its own transfer syntax, byte for byte. The one exception is the lossless
//! uncompressed fallback: an object in Explicit VR Little Endian is also
//! proposed in Implicit VR Little Endian (and the reverse), on a context of
//! its own, and re-encoded into it (in memory, up to
//! [`MAX_TRANSCODE_BYTES`]) only when the peer accepts the fallback and not
//! the original. Nothing else is ever converted, and never lossily. A peer
//! that accepts neither gets [`ScuError::NoContext`], a permanent failure
//! for that object (the replication queue dead-letters it). At most [`MAX_CONTEXTS`] contexts
//! are proposed (dicom-ul numbers them 1, 3, … and wraps past 255).
//!
//! Errors are phrased for the person on call (refused connection, rejected
//! association and why, timeout) and classified by [`ScuError::is_transient`].
//!
//! [`Scu`] is also the association layer of the Query/Retrieve SCU
//! (the verifier's `qr`): [`AssociationRequest`] adds SCP role selection (C-GET)
//! and a receive limit, commands and data sets are sent fragmented to the
//! peer's PDU size, and [`Scu::receive_pdv`] hands over command sets
//! (reassembled by [`crate::reassembly`]) and data fragments one by one
//! (never collected here).
//!
//! # Layout
//! - this module: the association layer (set-up, presentation contexts,
//!   sending fragmented, receiving, release and abort);
//! - `error`: [`ScuError`], how failures are phrased and classified
//!   (association set-up told apart where dicom-ul's report is lossy);
//! - `link`: the transport under an association, TCP or TLS;
//! - `echo`: C-ECHO and its diagnosis;
//! - `store`: streamed C-STORE of Part-10 files, with read-ahead and the
//!   hash check;
//! - `transcode`: the lossless uncompressed fallback.

use std::collections::VecDeque;
use std::time::Duration;

use dicom_ul::pdu::{
    PDataValue, PDataValueType, PresentationContextNegotiated, PresentationContextResultReason,
};
use dicom_ul::{ClientAssociationOptions, Pdu};

use crate::dimse::{self, CommandSet};
use crate::reassembly::{Message, Reassembler};

mod echo;
mod error;
mod link;
pub mod pace;
mod store;
#[cfg(test)]
pub(crate) mod tests;
mod transcode;

pub use echo::{EchoOk, echo};
pub use error::ScuError;
use error::classify;
use link::Link;
use store::ReadAhead;
pub use store::{InMemory, Outgoing, contexts_for, outgoing};
pub use transcode::{
    EXPLICIT_VR_LE, IMPLICIT_VR_LE, MAX_TRANSCODE_BYTES, Reencoded, uncompressed_fallback,
};

/// Most presentation contexts proposed on one association.
pub const MAX_CONTEXTS: usize = 128;
/// Largest data PDV sent, whatever the peer accepts (bounds memory even when
/// the peer announces an unlimited PDU).
pub const MAX_SEND_CHUNK: usize = 1 << 20;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Our AE title.
    pub calling_ae: String,
    /// Theirs.
    pub called_ae: String,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connection and per-message timeout.
    pub timeout: Duration,
    /// DICOM TLS, when the peer's connection is a TLS one.
    pub tls: Option<ClientTls>,
    /// Paces the data sets sent (the target's `max_bandwidth`); None:
    /// as fast as the link takes them.
    pub pace: Option<std::sync::Arc<pace::Pacer>>,
}

/// How to connect to a peer with TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// This device's TLS material.
    pub tls: std::sync::Arc<crate::tls::Tls>,
    /// The cipher suites of the peer's connection.
    pub suites: crate::tls::Suites,
    /// The certificate the peer must present (without a pin: one from a
    /// trusted CA valid for `identity.name`, else for the host name).
    pub identity: crate::tls::Identity,
}

impl Peer {
    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What to propose when associating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AssociationRequest {
    /// One presentation context per (abstract syntax, transfer syntaxes)
    /// entry, numbered 1, 3, 5… in this order.
    pub contexts: Vec<(String, Vec<String>)>,
    /// SOP classes for which we propose the SCP role (SCU role off): the
    /// storage classes whose C-STORE sub-operations a C-GET brings back.
    pub scp_roles: Vec<String>,
    /// Largest PDU we receive (PDU length field); None keeps dicom-ul's
    /// default (32 KiB). Values below 1018 are raised to 1018 (dicom-ul
    /// accepts smaller ones and then fails every receive).
    pub max_pdu: Option<u32>,
}

/// One PDV as [`Scu::receive_pdv`] hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A complete command set (its fragments reassembled).
    Command {
        /// Presentation context it came on.
        pc_id: u8,
        /// The decoded command set.
        command: CommandSet,
        /// Elements outside group 0000 that followed the command set in its
        /// PDVs (Implicit VR LE), usually empty. DCMTK-based SCPs (Orthanc)
        /// merge a response's status detail there, e.g. the Failed SOP
        /// Instance UID List of a failed C-GET.
        trailer: Vec<u8>,
    },
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

/// An established association.
pub struct Scu {
    assoc: Link,
    peer: Peer,
    next_message_id: u16,
    /// PDVs of the last PDU not handed over yet.
    queued: VecDeque<PDataValue>,
    /// Command fragments collected so far ([`crate::reassembly`]).
    reassembly: Reassembler,
    /// The object to read ahead once the current one is sent.
    next: Option<Outgoing>,
    /// Its first block, being read.
    read_ahead: Option<ReadAhead>,
    /// Block buffers for reuse (at most two).
    spare: Vec<Vec<u8>>,
}

impl Scu {
    /// Associate, proposing one presentation context per (abstract syntax,
    /// transfer syntaxes) entry.
    pub async fn connect(
        peer: &Peer,
        contexts: &[(String, Vec<String>)],
    ) -> Result<Self, ScuError> {
        let request = AssociationRequest {
            contexts: contexts.to_vec(),
            ..AssociationRequest::default()
        };
        Self::associate(peer, &request).await
    }

    /// Associate with everything [`AssociationRequest`] can say: contexts,
    /// SCP role selection, receive limit. Sets TCP_NODELAY.
    pub async fn associate(peer: &Peer, request: &AssociationRequest) -> Result<Self, ScuError> {
        let contexts = &request.contexts;
        if contexts.len() > MAX_CONTEXTS {
            return Err(ScuError::TooManyContexts(contexts.len()));
        }
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(peer.calling_ae.clone())
            .called_ae_title(peer.called_ae.clone())
            .connection_timeout(peer.timeout)
            .read_timeout(peer.timeout)
            .write_timeout(peer.timeout);
        if let Some(max) = request.max_pdu {
            options = options.max_pdu_length(max.max(dicom_ul::pdu::MINIMUM_PDU_SIZE));
        }
        for (abstract_syntax, tss) in contexts {
            options = options.with_presentation_context(abstract_syntax.clone(), tss.to_vec());
        }
        for sop_class in &request.scp_roles {
            options = options.with_role_selection(sop_class.clone(), false, true);
        }
        let addr = peer.addr();
        let started = std::time::Instant::now();
        let established = match &peer.tls {
            None => {
                let fut = options.establish_async(addr.as_str());
                tokio::time::timeout(peer.timeout * 2, fut)
                    .await
                    .map(|r| r.map(|a| Link::Plain(Box::new(a))))
            }
            Some(t) => {
                let config = t
                    .tls
                    .client(&t.suites, &t.identity)
                    .map_err(|e| ScuError::Tls {
                        addr: addr.clone(),
                        code: "config",
                        message: e.to_string(),
                    })?;
                let host = peer.host.trim_start_matches('[').trim_end_matches(']');
                let fut = options
                    .tls_config(config)
                    .server_name(host)
                    .establish_tls_async(addr.as_str());
                tokio::time::timeout(peer.timeout * 2, fut)
                    .await
                    .map(|r| r.map(|a| Link::Tls(Box::new(a))))
            }
        };
        let mut assoc = match established {
            Err(_) => {
                return Err(ScuError::Timeout {
                    addr,
                    secs: peer.timeout.as_secs(),
                });
            }
            Ok(r) => r.map_err(|e| {
                match error::classify_establishment(peer, &addr, e, started.elapsed()) {
                    ScuError::NoAcceptedContexts { addr, .. } => ScuError::NoAcceptedContexts {
                        addr,
                        what: describe(contexts),
                    },
                    other => other,
                }
            })?,
        };
        // Without it every small message waits ~40 ms for delayed ACKs.
        let _ = assoc.tcp().set_nodelay(true);
        Ok(Scu {
            assoc,
            peer: peer.clone(),
            next_message_id: 1,
            queued: VecDeque::new(),
            reassembly: Reassembler::with_trailer(),
            next: None,
            read_ahead: None,
            spare: Vec::new(),
        })
    }

    /// The peer this association is with.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The accepted presentation contexts.
    pub fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        self.assoc.presentation_contexts()
    }

    /// The first accepted context for this abstract syntax, in whatever
    /// transfer syntax the peer chose: (id, transfer syntax).
    pub fn accepted_context(&self, abstract_syntax: &str) -> Option<(u8, String)> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
            })
            .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
    }

    /// The accepted context with this id: (abstract syntax, transfer syntax).
    pub fn context_by_id(&self, pc_id: u8) -> Option<(String, String)> {
        crate::presentation::accepted(self.assoc.presentation_contexts(), pc_id)
    }

    /// Whether the peer accepted our SCP role for this SOP class (role
    /// selection answered). Some SCPs (Orthanc) push C-GET sub-operations
    /// without answering role selection at all.
    pub fn scp_role_accepted(&self, sop_class: &str) -> bool {
        self.assoc.scp_role_accepted(sop_class)
    }

    /// The peer's IP address, if the socket still knows it.
    pub fn peer_ip(&mut self) -> Option<std::net::IpAddr> {
        self.assoc.peer_addr().map(|a| a.ip())
    }

    /// The accepted context for this abstract syntax in exactly this
    /// transfer syntax.
    pub fn context_for(&self, abstract_syntax: &str, transfer_syntax: &str) -> Option<u8> {
        self.assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
                    && pc.transfer_syntax.trim_end_matches('\0') == transfer_syntax
            })
            .map(|pc| pc.id)
    }

    /// Release the association (best effort: a failed release loses nothing).
    pub async fn release(self) {
        let _ = self.assoc.release().await;
    }

    /// Abort the association (A-ABORT, then close): after a protocol error,
    /// or to give up in the middle of an operation.
    pub async fn abort(self) {
        let _ = self.assoc.abort().await;
    }

    /// Send an A-ABORT (service user, no reason) and shut the connection
    /// down, without giving up `self`: the peer discards the message in
    /// progress, and every later operation on this association fails.
    async fn abort_in_place(&mut self) {
        use tokio::io::AsyncWriteExt;
        const A_ABORT: [u8; 10] = [0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0];
        let stream = self.assoc.stream();
        let _ = tokio::time::timeout(self.peer.timeout, async {
            let _ = stream.write_all(&A_ABORT).await;
            let _ = stream.shutdown().await;
        })
        .await;
    }

    /// A fresh Message ID (1, 2, … wrapping, never 0).
    pub fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// A [`ScuError::Protocol`] naming this peer.
    pub fn protocol(&self, message: String) -> ScuError {
        ScuError::Protocol {
            addr: self.peer.addr(),
            message,
        }
    }

    /// The largest PDV payload to send: the peer's PDU limit less the PDV
    /// header, at most [`MAX_SEND_CHUNK`].
    fn max_pdv_payload(&self) -> usize {
        (self.assoc.peer_max_pdu_length() as usize)
            .saturating_sub(dicom_ul::pdu::PDV_HEADER_SIZE as usize)
            .clamp(1012, MAX_SEND_CHUNK)
    }

    async fn send_pdv(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        is_last: bool,
        data: Vec<u8>,
    ) -> Result<(), ScuError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last,
                data,
            }],
        };
        self.assoc
            .send(&pdu)
            .await
            .map_err(|e| classify(&self.peer.addr(), e, self.peer.timeout))
    }

    /// Send `bytes` as PDVs of `value_type`, each within the peer's PDU
    /// limit, the last one flagged.
    async fn send_fragmented(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        bytes: &[u8],
    ) -> Result<(), ScuError> {
        let chunk = self.max_pdv_payload();
        if bytes.is_empty() {
            return self.send_pdv(pc, value_type, true, Vec::new()).await;
        }
        let count = bytes.len().div_ceil(chunk);
        for (i, piece) in bytes.chunks(chunk).enumerate() {
            self.send_pdv(pc, value_type.clone(), i + 1 == count, piece.to_vec())
                .await?;
        }
        Ok(())
    }

    /// Send a command set (fragmented if the peer's PDUs are small).
    pub async fn send_command(&mut self, pc: u8, cmd: &CommandSet) -> Result<(), ScuError> {
        self.send_fragmented(pc, PDataValueType::Command, &cmd.encode())
            .await
    }

    /// Send a whole data set held in memory (an identifier).
    pub async fn send_data(&mut self, pc: u8, bytes: &[u8]) -> Result<(), ScuError> {
        self.send_fragmented(pc, PDataValueType::Data, bytes).await
    }

    /// The next command set or data fragment from the peer. Command
    /// fragments are collected (at most [`dimse::MAX_COMMAND_SET_BYTES`])
    /// and decoded; data fragments are handed over as they come. A-ABORT is
    /// [`ScuError::Aborted`]; any other PDU, or a command split across two
    /// contexts, is a protocol error. Cancel-safe: a PDU is either wholly
    /// received and queued, or still in dicom-ul's read buffer.
    pub async fn receive_pdv(&mut self) -> Result<Inbound, ScuError> {
        loop {
            while let Some(pdv) = self.queued.pop_front() {
                match self.reassembly.push(pdv) {
                    Ok(Message::Partial) => {}
                    Ok(Message::Data { pc_id, bytes, last }) => {
                        return Ok(Inbound::Data { pc_id, bytes, last });
                    }
                    Ok(Message::Command {
                        pc_id,
                        command,
                        trailer,
                    }) => {
                        return Ok(Inbound::Command {
                            pc_id,
                            command,
                            trailer,
                        });
                    }
                    Err(e) => return Err(self.protocol(e.to_string())),
                }
            }
            let pdu = self
                .assoc
                .receive()
                .await
                .map_err(|e| classify(&self.peer.addr(), e, self.peer.timeout))?;
            match pdu {
                Pdu::PData { data } => self.queued.extend(data),
                Pdu::AbortRQ { source } => {
                    return Err(ScuError::Aborted {
                        addr: self.peer.addr(),
                        message: format!("A-ABORT ({source:?})"),
                    });
                }
                other => {
                    return Err(self.protocol(format!("unexpected {}", other.short_description())));
                }
            }
        }
    }

    /// Read until a complete command set arrives that answers `id` (data
    /// fragments and responses to other messages are skipped).
    pub async fn read_response(&mut self, id: u16) -> Result<CommandSet, ScuError> {
        loop {
            let Inbound::Command { command, .. } = self.receive_pdv().await? else {
                continue;
            };
            let answered = command
                .u16(dimse::tag::MESSAGE_ID_BEING_RESPONDED_TO)
                .map_err(|e| self.protocol(e.to_string()))?;
            if answered == Some(id) {
                return Ok(command);
            }
            tracing::debug!(
                ?answered,
                expected = id,
                "ignoring a response to another message"
            );
        }
    }
}

/// "SOP class in transfer syntax(es)" for each proposed context (at most 4).
fn describe(contexts: &[(String, Vec<String>)]) -> String {
    let mut parts: Vec<String> = contexts
        .iter()
        .take(4)
        .map(|(a, ts)| format!("{a} in {}", ts.join(" or ")))
        .collect();
    if contexts.len() > 4 {
        parts.push(format!("and {} more", contexts.len() - 4));
    }
    format!("proposed: {}", parts.join("; "))
}
