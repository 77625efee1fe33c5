//! Who may open an association: the called AE must be one of ours, and the
//! calling AE must be allowed from the peer's address.
//!
//! dicom-ul's `AccessControl` hook sees AE titles but not the peer address, so
//! one [`PeerAccess`] is made per TCP connection, carrying the address.

use std::net::IpAddr;
use std::sync::Arc;

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
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The policies of the AEs served on one listener.
pub type Policies = Arc<Vec<AePolicy>>;

/// Per-connection access control handed to dicom-ul.
#[derive(Debug, Clone)]
pub struct PeerAccess {
    /// The AEs on this listener.
    pub policies: Policies,
    /// The peer's address.
    pub peer: IpAddr,
}

impl PeerAccess {
    /// The decision, with the reason (for logging).
    pub fn decide(&self, calling_ae: &str, called_ae: &str) -> Result<&AePolicy, Refusal> {
        let called = called_ae.trim();
        let policy = self
            .policies
            .iter()
            .find(|p| p.ae_title == called)
            .ok_or(Refusal::CalledAe)?;
        policy.check(calling_ae, self.peer)?;
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
        match self.decide(calling_ae_title, called_ae_title) {
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
        PeerAccess {
            policies: Arc::new(vec![AePolicy {
                ae_title: "PACS_MIRROR".into(),
                accept_any_calling_ae: false,
                allowed: vec![(
                    "PRIMARY".into(),
                    vec!["10.0.0.5/32".parse().unwrap(), "fd00::/8".parse().unwrap()],
                )],
            }]),
            peer: peer.parse().unwrap(),
        }
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
    }
}
