//! C-ECHO with an operator-facing diagnosis of what answers and what does
//! not.

use std::time::{Duration, Instant};

use super::{Peer, Scu, ScuError};
use crate::dimse::{self, Status};

/// A successful C-ECHO.
#[derive(Debug, Clone)]
pub struct EchoOk {
    /// Round trip of association + C-ECHO + release.
    pub elapsed: Duration,
    /// Max PDU the peer accepts.
    pub peer_max_pdu: u32,
}

/// C-ECHO `peer`: associate with Verification, echo, release.
pub async fn echo(peer: &Peer) -> Result<EchoOk, ScuError> {
    let start = Instant::now();
    let contexts = [(
        dimse::VERIFICATION_SOP_CLASS.to_string(),
        vec![
            "1.2.840.10008.1.2.1".to_string(),
            "1.2.840.10008.1.2".to_string(),
        ],
    )];
    let mut scu = Scu::connect(peer, &contexts).await?;
    let peer_max_pdu = scu.assoc.peer_max_pdu_length();
    let pc = scu
        .assoc
        .presentation_contexts()
        .first()
        .map(|pc| pc.id)
        .ok_or_else(|| ScuError::NoAcceptedContexts {
            addr: peer.addr(),
            what: "Verification".into(),
        })?;
    let id = scu.message_id();
    scu.send_command(pc, &dimse::c_echo_rq(id)).await?;
    let rsp = scu.read_response(id).await?;
    let status = rsp.status().map_err(|e| scu.protocol(e.to_string()))?;
    scu.release().await;
    if status != Status::Success {
        return Err(ScuError::Protocol {
            addr: peer.addr(),
            message: format!("C-ECHO answered with {status}"),
        });
    }
    Ok(EchoOk {
        elapsed: start.elapsed(),
        peer_max_pdu,
    })
}
