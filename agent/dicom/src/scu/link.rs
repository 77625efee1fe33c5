//! The transport under an SCU association: plain TCP or TLS. dicom-ul types
//! an association by its stream, so [`Link`] holds either and forwards the
//! calls the SCU makes.

use std::net::SocketAddr;

use dicom_ul::Pdu;
use dicom_ul::association::client::AsyncTlsStream;
use dicom_ul::association::{Association, AsyncClientAssociation};
use dicom_ul::pdu::PresentationContextNegotiated;
use tokio::net::TcpStream;

/// An established association over TCP or TLS.
pub(super) enum Link {
    Plain(Box<AsyncClientAssociation<TcpStream>>),
    Tls(Box<AsyncClientAssociation<AsyncTlsStream>>),
}

/// The same expression on either variant.
macro_rules! each {
    ($link:expr, $a:ident => $e:expr) => {
        match $link {
            Link::Plain($a) => $e,
            Link::Tls($a) => $e,
        }
    };
}

type Result<T> = std::result::Result<T, dicom_ul::association::Error>;

impl Link {
    pub(super) fn presentation_contexts(&self) -> &[PresentationContextNegotiated] {
        each!(self, a => a.presentation_contexts())
    }

    pub(super) fn peer_max_pdu_length(&self) -> u32 {
        each!(self, a => a.peer_max_pdu_length())
    }

    pub(super) fn scp_role_accepted(&self, sop_class: &str) -> bool {
        each!(self, a => a.requestor_roles_for(sop_class).scp)
    }

    pub(super) fn tcp(&mut self) -> &TcpStream {
        match self {
            Link::Plain(a) => a.inner_stream(),
            Link::Tls(a) => a.inner_stream().get_ref().0,
        }
    }

    pub(super) fn peer_addr(&mut self) -> Option<SocketAddr> {
        self.tcp().peer_addr().ok()
    }

    /// Whole PDUs, or anything else, written straight to the stream.
    pub(super) fn stream(&mut self) -> &mut (dyn tokio::io::AsyncWrite + Unpin + Send) {
        match self {
            Link::Plain(a) => a.inner_stream(),
            Link::Tls(a) => a.inner_stream(),
        }
    }

    pub(super) async fn send(&mut self, pdu: &Pdu) -> Result<()> {
        each!(self, a => a.send(pdu).await)
    }

    pub(super) async fn receive(&mut self) -> Result<Pdu> {
        each!(self, a => a.receive().await)
    }

    pub(super) async fn release(self) -> Result<()> {
        match self {
            Link::Plain(a) => (*a).release().await,
            Link::Tls(a) => (*a).release().await,
        }
    }

    pub(super) async fn abort(self) -> Result<()> {
        match self {
            Link::Plain(a) => (*a).abort().await,
            Link::Tls(a) => (*a).abort().await,
        }
    }
}
