//! How an SCU operation fails, phrased for the person on call, and which
//! failures are transient ([`ScuError::is_transient`]).

use std::path::PathBuf;
use std::time::Duration;

use dicom_ul::pdu::AssociationRJSource;

use super::MAX_CONTEXTS;

/// Why an operation with a peer failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// TCP connection refused: nothing listens there.
    #[error(
        "connection refused by {addr}: nothing listens on that port (is the PACS running? right port?)"
    )]
    Refused { addr: String },
    /// No answer within the timeout.
    #[error(
        "no answer from {addr} within {secs} s (firewall dropping packets, wrong host, or the peer is hung)"
    )]
    Timeout { addr: String, secs: u64 },
    /// The peer rejected the association.
    #[error("association rejected by {addr}: {reason}")]
    Rejected {
        addr: String,
        reason: String,
        /// Rejected as busy (PS3.8 9.3.4: temporary congestion, local
        /// limit exceeded): too many associations at once.
        busy: bool,
    },
    /// The peer accepted none of the proposed presentation contexts.
    #[error("{addr} accepted none of the proposed presentation contexts ({what})")]
    NoAcceptedContexts { addr: String, what: String },
    /// No accepted context for this object's SOP class and transfer syntax.
    #[error("{addr} does not accept SOP class {sop_class} in transfer syntax {transfer_syntax}")]
    NoContext {
        addr: String,
        sop_class: String,
        transfer_syntax: String,
    },
    /// The peer aborted or closed the association.
    #[error("{addr} ended the association: {message}")]
    Aborted { addr: String, message: String },
    /// The TLS handshake failed, or TLS could not be set up (`code`:
    /// [`crate::tls::HandshakeFailure::code`], or "config").
    #[error("TLS with {addr}: {message}")]
    Tls {
        addr: String,
        code: &'static str,
        message: String,
    },
    /// The peer broke the protocol, or the network failed.
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
    /// The object's file could not be opened or read (nothing was sent; a
    /// local problem, not the peer's: permanent for this object).
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// More presentation contexts than one association can carry.
    #[error("{0} presentation contexts requested; at most {MAX_CONTEXTS} per association")]
    TooManyContexts(usize),
    /// The object's data set does not hash to the address it was sent for
    /// ([`Outgoing::dataset_blake3`]): its last fragment was never sent.
    /// With `aborted`, part of it was, and the association was aborted so
    /// that the peer discards it; the association is gone.
    #[error(
        "{path}: the data set does not hash to its address (found {found}): not sent{}; run `pacs-mirror verify spool`",
        if *aborted { ", association aborted before its last fragment" } else { "" }
    )]
    Corrupt {
        path: PathBuf,
        found: String,
        aborted: bool,
    },
}

impl ScuError {
    /// Whether trying again later may succeed (the mirror is down, busy or
    /// unreachable) rather than never (it does not accept this object).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            ScuError::NoContext { .. }
                | ScuError::NoAcceptedContexts { .. }
                | ScuError::TooManyContexts(_)
                | ScuError::File { .. }
                | ScuError::Corrupt { .. }
        )
    }

    /// Whether the peer said it has too many associations open.
    pub fn is_busy(&self) -> bool {
        matches!(self, ScuError::Rejected { busy: true, .. })
    }
}

/// A data set that does not hash to [`Outgoing::dataset_blake3`] (carried
/// inside an `io::Error` out of the reading code).
#[derive(Debug)]
pub(super) struct NotItsAddress(pub(super) [u8; 32]);

impl std::fmt::Display for NotItsAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the data set hashes to {}, not to its address",
            blake3::Hash::from_bytes(self.0).to_hex()
        )
    }
}

impl std::error::Error for NotItsAddress {}

/// The hash found, when `e` is a [`NotItsAddress`].
pub(super) fn not_its_address(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<NotItsAddress>())
        .map(|n| blake3::Hash::from_bytes(n.0).to_hex().to_string())
}

pub(super) fn explain_rejection(source: &AssociationRJSource) -> String {
    use dicom_ul::pdu::AssociationRJServiceUserReason as U;
    match source {
        AssociationRJSource::ServiceUser(U::CalledAETitleNotRecognized) => {
            "called AE title not recognized: check the AE title configured on the peer (case and spelling)".into()
        }
        AssociationRJSource::ServiceUser(U::CallingAETitleNotRecognized) => {
            "calling AE title not recognized: the peer does not know our AE title (or not from this IP address); add it to the peer's allowed senders".into()
        }
        AssociationRJSource::ServiceProviderPresentation(r) => {
            format!("the peer is busy ({r}): too many associations at once")
        }
        other => format!("{other:?}"),
    }
}

pub(super) fn classify(addr: &str, e: dicom_ul::association::Error, timeout: Duration) -> ScuError {
    use dicom_ul::association::Error as E;
    let addr = addr.to_string();
    match e {
        E::Rejected { association_rj, .. } => ScuError::Rejected {
            addr,
            reason: explain_rejection(&association_rj.source),
            busy: matches!(
                association_rj.source,
                AssociationRJSource::ServiceProviderPresentation(_)
            ),
        },
        E::NoAcceptedPresentationContexts { .. } => ScuError::NoAcceptedContexts {
            addr,
            what: "none accepted".into(),
        },
        E::Timeout { .. } => ScuError::Timeout {
            addr,
            secs: timeout.as_secs(),
        },
        E::Aborted { .. } | E::ConnectionClosed { .. } => ScuError::Aborted {
            addr,
            message: e.to_string(),
        },
        e => {
            let text = full_chain(&e);
            if text.contains("onnection refused") {
                ScuError::Refused { addr }
            } else if text.contains("timed out") || text.contains("Timeout") {
                ScuError::Timeout {
                    addr,
                    secs: timeout.as_secs(),
                }
            } else {
                ScuError::Protocol {
                    addr,
                    message: text,
                }
            }
        }
    }
}

/// How setting up an association failed: [`classify`], told apart where
/// dicom-ul's report of the connection and TLS handshake is lossy (a TLS
/// handshake failure comes as a connection error; no A-ASSOCIATE answer,
/// whatever the reason, as "TLS not supported").
pub(super) fn classify_establishment(
    peer: &super::Peer,
    addr: &str,
    e: dicom_ul::association::Error,
    elapsed: Duration,
) -> ScuError {
    use dicom_ul::association::Error as E;
    let tls = |e: &E| {
        let f = crate::tls::HandshakeFailure::of(e, false);
        ScuError::Tls {
            addr: addr.to_string(),
            code: f.code,
            message: f.message,
        }
    };
    match e {
        E::TlsNotSupported => no_answer(peer, addr.to_string(), elapsed),
        E::TlsHandshake { .. } | E::TlsConnection { .. } => tls(&e),
        E::Connect { ref source, .. } if tls_failure(source) => tls(&e),
        ref e if peer.tls.is_some() && cut_in_handshake(e) => tls(e),
        e => classify(addr, e, peer.timeout),
    }
}

/// The connection was reset or closed while the TLS handshake was going on
/// (dicom-ul reports it as a connection error).
fn cut_in_handshake(e: &dicom_ul::association::Error) -> bool {
    use std::io::ErrorKind as K;
    match e {
        dicom_ul::association::Error::Connect { source, .. } => matches!(
            source.kind(),
            K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted
        ),
        _ => false,
    }
}

/// No A-ASSOCIATE answer could be read. dicom-ul (with TLS built in) then
/// reports "TLS not supported" whatever happened (its guess that the peer
/// answered in TLS): what it was is told here from what we know.
fn no_answer(peer: &super::Peer, addr: String, elapsed: Duration) -> ScuError {
    if elapsed + Duration::from_millis(100) >= peer.timeout {
        return ScuError::Timeout {
            addr,
            secs: peer.timeout.as_secs(),
        };
    }
    if let Some(t) = &peer.tls {
        let message = if t.tls.certificate().is_none() {
            "the server ended the connection right after the TLS handshake without answering the association request: it most likely requires a client certificate, and this device has none (set [device.tls] certificate and private_key)"
        } else {
            "the server ended the connection right after the TLS handshake without answering the association request: it most likely refused our client certificate (not issued by a CA it trusts); see its log"
        };
        return ScuError::Tls {
            addr,
            code: "refused_by_peer",
            message: message.into(),
        };
    }
    ScuError::Aborted {
        addr,
        message: "the connection was closed without an answer to the association request (or answered in TLS: is this a DICOM TLS port? then give its network_connection tls_cipher_suites)".into(),
    }
}

/// Whether a connect error is in fact a failed TLS handshake (dicom-ul
/// reports those as connection errors, with rustls's error inside).
fn tls_failure(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>() || inner.is::<crate::tls::Refused>())
}

fn full_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
