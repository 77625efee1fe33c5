//! Who may open an association: the called AE must be one of ours, and the
//! calling AE must be allowed from the peer's address; over TLS, and for a
//! calling AE with a certificate identity (`certificate_name`,
//! `certificate_sha256`), the client certificate must show it.
//!
//! Identity is (AE title, address, certificate): an AE with a certificate
//! identity is refused on a plaintext listener and without a certificate;
//! a certificate that no trusted CA issued (accepted by the TLS layer only
//! because some AE pins it) is accepted only for the AE that pins it.
//!
//! dicom-ul's `AccessControl` hook sees AE titles but not the peer address, so
//! one [`PeerAccess`] is made per TCP connection, carrying the address.
//!
//! Every refusal decided here is logged (WARN, "association refused") with
//! the fields `calling_ae`, `called_ae`, `peer` (address:port) and `reason`.
//! The calling and called AE titles are also kept in [`PeerAccess::seen`], so
//! that the listener can name them when it logs the A-ASSOCIATE-RJ of a
//! rejection dicom-ul decided by itself.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use ipnet::IpNet;
use pacs_mirror_dicom::tls::{ClientCertificate, Identity};

/// Access policy of one local AE.
#[derive(Debug, Clone)]
pub struct AePolicy {
    /// Our AE title (trimmed).
    pub ae_title: String,
    /// Accept any calling AE from anywhere.
    pub accept_any_calling_ae: bool,
    /// Allowed (calling AE title, source networks).
    pub allowed: Vec<(String, Vec<IpNet>)>,
    /// The certificate identities of allowed calling AEs that have one.
    pub identities: Vec<(String, Identity)>,
}

/// Why an association is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The called AE title is none of ours.
    CalledAe,
    /// The calling AE title is not on the allow-list.
    UnknownCallingAe,
    /// The calling AE is known but not from this address.
    WrongAddress,
    /// Its certificate (or the lack of one, or of TLS) does not fit.
    Certificate(String),
}

impl Refusal {
    /// In words, for the log.
    pub fn describe(&self) -> Cow<'static, str> {
        match self {
            Refusal::CalledAe => "called AE title is not one of this listener's".into(),
            Refusal::UnknownCallingAe => "calling AE title is not on the allow-list".into(),
            Refusal::WrongAddress => {
                "calling AE title is allowed, but not from this address".into()
            }
            Refusal::Certificate(why) => why.clone().into(),
        }
    }
}

/// What the connection tells of the peer's certificate.
#[derive(Debug, Clone, Copy)]
pub enum Transport<'a> {
    /// A plaintext connection.
    Plain,
    /// TLS: the verified client certificate (DER, and whether a trusted CA
    /// issued it), if one was presented.
    Tls(Option<(&'a [u8], bool)>),
}

/// The AE titles of an association request, as the access check saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Calling AE title (trimmed).
    pub calling_ae: String,
    /// Called AE title (trimmed).
    pub called_ae: String,
    /// The refusal, if the check refused.
    pub refusal: Option<Refusal>,
}

impl AePolicy {
    /// Decide for one association request.
    pub fn check(
        &self,
        calling_ae: &str,
        peer: IpAddr,
        transport: Transport<'_>,
    ) -> Result<(), Refusal> {
        let calling = calling_ae.trim();
        if !self.accept_any_calling_ae {
            let mut known = false;
            let mut from_here = false;
            for (ae, nets) in &self.allowed {
                if ae == calling {
                    known = true;
                    from_here |= nets.iter().any(|n| n.contains(&canonical(peer)));
                }
            }
            match (known, from_here) {
                (false, _) => return Err(Refusal::UnknownCallingAe),
                (true, false) => return Err(Refusal::WrongAddress),
                (true, true) => {}
            }
        }
        let identity = self
            .identities
            .iter()
            .find(|(ae, _)| ae == calling)
            .map(|(_, id)| id);
        certificate_fits(calling, identity, transport).map_err(Refusal::Certificate)
    }
}

/// The certificate rule: an AE with an identity calls over TLS with a
/// certificate showing it; a certificate no trusted CA issued is good only
/// for the AE that pins it.
fn certificate_fits(
    calling: &str,
    identity: Option<&Identity>,
    transport: Transport<'_>,
) -> Result<(), String> {
    match (identity, transport) {
        (Some(_), Transport::Plain) => Err(format!(
            "{calling:?} has a certificate identity (certificate_name/certificate_sha256) and must call over TLS, not on this plaintext listener"
        )),
        (Some(_), Transport::Tls(None)) => Err(format!(
            "{calling:?} has a certificate identity but presented no client certificate"
        )),
        (Some(id), Transport::Tls(Some((der, by_ca)))) => {
            id.check(der).map_err(|e| format!("{calling:?}: {e}"))?;
            if !by_ca && id.sha256.is_none() {
                return Err(format!(
                    "{calling:?}: its certificate is not issued by a trusted CA"
                ));
            }
            Ok(())
        }
        (None, Transport::Tls(Some((_, false)))) => Err(format!(
            "{calling:?}: its certificate is not issued by a trusted CA (it is pinned for another AE)"
        )),
        (None, _) => Ok(()),
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The policies of the AEs served on one listener.
pub type Policies = Arc<Vec<AePolicy>>;

/// Whether any AE of the listener could accept an association from `peer`
/// (it accepts any caller, or allows some calling AE from that address).
/// When not, every request from there will be refused, whatever it says.
pub fn may_be_admitted(policies: &[AePolicy], peer: IpAddr) -> bool {
    let peer = canonical(peer);
    policies.iter().any(|p| {
        p.accept_any_calling_ae
            || p.allowed
                .iter()
                .any(|(_, nets)| nets.iter().any(|n| n.contains(&peer)))
    })
}

/// Per-connection access control handed to dicom-ul.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    /// The AEs on this listener.
    pub policies: Policies,
    /// The peer's address and port.
    pub peer: SocketAddr,
    /// What the request said, set by the access check.
    pub seen: Arc<OnceLock<Seen>>,
    /// On a TLS listener, where the verified client certificate is recorded
    /// during the handshake (None: plaintext).
    pub client_certificate: Option<ClientCertificate>,
}

impl PeerAccess {
    /// Access control for one connection from `peer`.
    pub fn new(policies: Policies, peer: SocketAddr) -> Self {
        PeerAccess {
            policies,
            peer,
            seen: Arc::new(OnceLock::new()),
            client_certificate: None,
        }
    }

    /// The decision, with the reason (for logging).
    pub fn decide(&self, calling_ae: &str, called_ae: &str) -> Result<&AePolicy, Refusal> {
        let called = called_ae.trim();
        let policy = self
            .policies
            .iter()
            .find(|p| p.ae_title == called)
            .ok_or(Refusal::CalledAe)?;
        let transport = match &self.client_certificate {
            None => Transport::Plain,
            Some(slot) => Transport::Tls(slot.get()),
        };
        policy.check(calling_ae, self.peer.ip(), transport)?;
        Ok(policy)
    }
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let decision = self.decide(calling_ae_title, called_ae_title);
        let calling_ae = calling_ae_title.trim();
        let called_ae = called_ae_title.trim();
        let _ = self.seen.set(Seen {
            calling_ae: calling_ae.to_string(),
            called_ae: called_ae.to_string(),
            refusal: decision.as_ref().err().cloned(),
        });
        if let Err(refusal) = &decision {
            tracing::warn!(
                calling_ae,
                called_ae,
                peer = %self.peer,
                reason = %refusal.describe(),
                "association refused"
            );
        }
        match decision {
            Ok(_) => Ok(()),
            Err(Refusal::CalledAe) => {
                Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
            }
            // The (AE, address) pair is the identity: a known AE from the
            // wrong address is as unrecognized as an unknown AE.
            Err(Refusal::UnknownCallingAe | Refusal::WrongAddress | Refusal::Certificate(_)) => {
                Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(peer: &str) -> PeerAccess {
        PeerAccess::new(
            Arc::new(vec![AePolicy {
                ae_title: "PACS_MIRROR".into(),
                accept_any_calling_ae: false,
                allowed: vec![(
                    "PRIMARY".into(),
                    vec!["10.0.0.5/32".parse().unwrap(), "fd00::/8".parse().unwrap()],
                )],
                identities: vec![],
            }]),
            SocketAddr::new(peer.parse().unwrap(), 4000),
        )
    }

    #[test]
    fn strangers_are_the_addresses_no_policy_allows() {
        let policies = access("10.0.0.5").policies;
        let admitted = |ip: &str| may_be_admitted(&policies, ip.parse().unwrap());
        assert!(admitted("10.0.0.5"));
        assert!(admitted("::ffff:10.0.0.5"), "IPv4-mapped compares as IPv4");
        assert!(admitted("fd12::1"));
        assert!(!admitted("10.0.0.6"));
        assert!(!admitted("192.0.2.1"));
        assert!(!admitted("fe80::1"));
        // every request from there would be refused, whatever it says
        for calling in ["PRIMARY", "ANYONE"] {
            assert!(access("10.0.0.6").decide(calling, "PACS_MIRROR").is_err());
        }
        let mut open = (*policies).clone();
        open.push(AePolicy {
            ae_title: "OPEN".into(),
            accept_any_calling_ae: true,
            allowed: vec![],
            identities: vec![],
        });
        assert!(may_be_admitted(&open, "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn the_certificate_rule() {
        let pin = Identity {
            name: None,
            sha256: Some(pacs_mirror_dicom::tls::sha256(b"pinned")),
        };
        let fits = |id: Option<&Identity>, t: Transport<'_>| certificate_fits("PRIMARY", id, t);
        // No identity: plaintext, TLS without a certificate, a CA's certificate.
        assert!(fits(None, Transport::Plain).is_ok());
        assert!(fits(None, Transport::Tls(None)).is_ok());
        assert!(fits(None, Transport::Tls(Some((b"any", true)))).is_ok());
        // A certificate accepted only for someone else's pin.
        let e = fits(None, Transport::Tls(Some((b"pinned", false)))).unwrap_err();
        assert!(e.contains("not issued by a trusted CA"), "{e}");
        // With an identity: TLS and that certificate only.
        let e = fits(Some(&pin), Transport::Plain).unwrap_err();
        assert!(e.contains("must call over TLS"), "{e}");
        let e = fits(Some(&pin), Transport::Tls(None)).unwrap_err();
        assert!(e.contains("presented no client certificate"), "{e}");
        assert!(fits(Some(&pin), Transport::Tls(Some((b"pinned", false)))).is_ok());
        let e = fits(Some(&pin), Transport::Tls(Some((b"other", true)))).unwrap_err();
        assert!(e.contains("not the pinned one"), "{e}");
        // A name needs a CA as well as the name.
        let named = Identity {
            name: Some("primary.example.org".into()),
            sha256: None,
        };
        let e = fits(
            Some(&named),
            Transport::Tls(Some((b"not a certificate", true))),
        )
        .unwrap_err();
        assert!(e.contains("does not carry the name"), "{e}");
    }

    #[test]
    fn decisions() {
        let a = access("10.0.0.5");
        assert!(a.decide("PRIMARY", "PACS_MIRROR").is_ok());
        assert!(a.decide("PRIMARY  ", " PACS_MIRROR ").is_ok());
        assert_eq!(a.decide("PRIMARY", "OTHER").unwrap_err(), Refusal::CalledAe);
        assert_eq!(
            a.decide("STRANGER", "PACS_MIRROR").unwrap_err(),
            Refusal::UnknownCallingAe
        );
        assert_eq!(
            access("10.0.0.6")
                .decide("PRIMARY", "PACS_MIRROR")
                .unwrap_err(),
            Refusal::WrongAddress
        );
        assert!(
            access("::ffff:10.0.0.5")
                .decide("PRIMARY", "PACS_MIRROR")
                .is_ok()
        );
        assert!(access("fd00::1").decide("PRIMARY", "PACS_MIRROR").is_ok());
        assert_eq!(
            a.check_access("x", "STRANGER", "PACS_MIRROR", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        assert_eq!(
            a.check_access("x", "PRIMARY", "NOPE", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        // The first request's titles are kept for the rejection's log line.
        assert_eq!(
            a.seen.get(),
            Some(&Seen {
                calling_ae: "STRANGER".into(),
                called_ae: "PACS_MIRROR".into(),
                refusal: Some(Refusal::UnknownCallingAe),
            })
        );
    }
}
