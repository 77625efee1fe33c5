//! C-ECHO SCU with a diagnosis a person on call can act on.

use std::time::{Duration, Instant};

use dicom_ul::ClientAssociationOptions;
use dicom_ul::Pdu;
use dicom_ul::pdu::{AssociationRJSource, PDataValue, PDataValueType};

use crate::dimse::{self, CommandSet, Status};

/// A successful echo.
#[derive(Debug, Clone)]
pub struct EchoOk {
    /// Round trip of association + C-ECHO + release.
    pub elapsed: Duration,
    /// Max PDU the peer accepts.
    pub peer_max_pdu: u32,
}

/// Why an echo failed, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EchoError {
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
    Rejected { addr: String, reason: String },
    /// The peer does not accept the Verification SOP class.
    #[error(
        "{addr} accepted the association but not the Verification SOP class (C-ECHO not supported)"
    )]
    NoVerification { addr: String },
    /// Anything else on the way.
    #[error("{addr}: {message}")]
    Other { addr: String, message: String },
    /// The peer answered with a failure status.
    #[error("{addr} answered C-ECHO with {status}")]
    Status { addr: String, status: Status },
}

fn explain_rejection(source: &AssociationRJSource) -> String {
    use dicom_ul::pdu::AssociationRJServiceUserReason as U;
    match source {
        AssociationRJSource::ServiceUser(U::CalledAETitleNotRecognized) => {
            "called AE title not recognized: check the AE title configured on the peer (case and spelling)".into()
        }
        AssociationRJSource::ServiceUser(U::CallingAETitleNotRecognized) => {
            "calling AE title not recognized: the peer does not know our AE title (or not from this IP address); add it to the peer's allowed senders".into()
        }
        other => format!("{other:?}"),
    }
}

/// C-ECHO `called_ae@host:port` as `calling_ae`.
pub async fn echo(
    calling_ae: &str,
    called_ae: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<EchoOk, EchoError> {
    let addr = format!("{host}:{port}");
    let start = Instant::now();
    let fut = async {
        let mut assoc = ClientAssociationOptions::new()
            .calling_ae_title(calling_ae.to_string())
            .called_ae_title(called_ae.to_string())
            .with_abstract_syntax(dimse::VERIFICATION_SOP_CLASS)
            .connection_timeout(timeout)
            .read_timeout(timeout)
            .write_timeout(timeout)
            .establish_async(addr.as_str())
            .await
            .map_err(|e| classify(&addr, e, timeout))?;
        let _ = assoc.inner_stream().set_nodelay(true);
        let pc = assoc
            .presentation_contexts()
            .first()
            .map(|pc| pc.id)
            .ok_or_else(|| EchoError::NoVerification { addr: addr.clone() })?;
        let peer_max_pdu = dicom_ul::association::Association::peer_max_pdu_length(&assoc);
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: dimse::c_echo_rq(1).encode(),
                }],
            })
            .await
            .map_err(|e| classify(&addr, e, timeout))?;
        let mut bytes = Vec::new();
        loop {
            match assoc
                .receive()
                .await
                .map_err(|e| classify(&addr, e, timeout))?
            {
                Pdu::PData { data } => {
                    let mut done = false;
                    for pdv in data {
                        if pdv.value_type == PDataValueType::Command {
                            bytes.extend_from_slice(&pdv.data);
                            done |= pdv.is_last;
                        }
                    }
                    if done {
                        break;
                    }
                }
                other => {
                    return Err(EchoError::Other {
                        addr: addr.clone(),
                        message: format!("unexpected {}", other.short_description()),
                    });
                }
            }
        }
        let rsp = CommandSet::decode(&bytes).map_err(|e| EchoError::Other {
            addr: addr.clone(),
            message: format!("undecodable C-ECHO-RSP: {e}"),
        })?;
        let status = rsp.status().map_err(|e| EchoError::Other {
            addr: addr.clone(),
            message: e.to_string(),
        })?;
        let _ = assoc.release().await;
        if status != Status::Success {
            return Err(EchoError::Status {
                addr: addr.clone(),
                status,
            });
        }
        Ok(EchoOk {
            elapsed: start.elapsed(),
            peer_max_pdu,
        })
    };
    match tokio::time::timeout(timeout * 3, fut).await {
        Ok(r) => r,
        Err(_) => Err(EchoError::Timeout {
            addr,
            secs: timeout.as_secs(),
        }),
    }
}

fn classify(addr: &str, e: dicom_ul::association::Error, timeout: Duration) -> EchoError {
    use dicom_ul::association::Error as E;
    let addr = addr.to_string();
    match e {
        E::Rejected { association_rj, .. } => EchoError::Rejected {
            addr,
            reason: explain_rejection(&association_rj.source),
        },
        E::NoAcceptedPresentationContexts { .. } => EchoError::NoVerification { addr },
        E::Timeout { .. } => EchoError::Timeout {
            addr,
            secs: timeout.as_secs(),
        },
        e => {
            let text = full_chain(&e);
            if text.contains("onnection refused") {
                EchoError::Refused { addr }
            } else if text.contains("timed out") || text.contains("Timeout") {
                EchoError::Timeout {
                    addr,
                    secs: timeout.as_secs(),
                }
            } else {
                EchoError::Other {
                    addr,
                    message: text,
                }
            }
        }
    }
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
