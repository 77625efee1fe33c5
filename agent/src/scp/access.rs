//! Who may open an association: the called AE must be one of ours, and the
//! calling AE must be allowed from the peer's address.
//!
//! dicom-ul's `AccessControl` hook sees AE titles but not the peer address, so
//! one [`PeerAccess`] is made per TCP connection, carrying the address.
//!
//! Every refusal decided here is logged (WARN, "association refused") with
//! the fields `calling_ae`, `called_ae`, `peer` (address:port) and `reason`.
//! The calling and called AE titles are also kept in [`PeerAccess::seen`], so
//! that the listener can name them when it logs the A-ASSOCIATE-RJ of a
//! rejection dicom-ul decided by itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use ipnet::IpNet;

/// Access policy of one local AE.
#[derive(Debug, Clone)]
pub struct AePolicy {
    /// Our AE title (trimmed).
    pub ae_title: String,
    /// Accept any calling AE from anywhere.
    pub accept_any_calling_ae: bool,
    /// Allowed (calling AE title, source networks).
    pub allowed: Vec<(String, Vec<IpNet>)>,
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
}

impl Refusal {
    /// In words, for the log.
    pub fn describe(&self) -> &'static str {
        match self {
            Refusal::CalledAe => "called AE title is not one of this listener's",
            Refusal::UnknownCallingAe => "calling AE title is not on the allow-list",
            Refusal::WrongAddress => "calling AE title is allowed, but not from this address",
        }
    }
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
    pub fn check(&self, calling_ae: &str, peer: IpAddr) -> Result<(), Refusal> {
        if self.accept_any_calling_ae {
            return Ok(());
        }
        let calling = calling_ae.trim();
        let mut known = false;
        for (ae, nets) in &self.allowed {
            if ae == calling {
                known = true;
                if nets.iter().any(|n| n.contains(&canonical(peer))) {
                    return Ok(());
                }
            }
        }
        Err(if known {
            Refusal::WrongAddress
        } else {
            Refusal::UnknownCallingAe
        })
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
}

impl PeerAccess {
    /// Access control for one connection from `peer`.
    pub fn new(policies: Policies, peer: SocketAddr) -> Self {
        PeerAccess {
            policies,
            peer,
            seen: Arc::new(OnceLock::new()),
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
        policy.check(calling_ae, self.peer.ip())?;
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
                reason = refusal.describe(),
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
            Err(Refusal::UnknownCallingAe | Refusal::WrongAddress) => {
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
        });
        assert!(may_be_admitted(&open, "192.0.2.1".parse().unwrap()));
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
