//! Remote devices (`[[remote_device]]`): the peers pacs-mirror talks to —
//! the primary PACS and modalities that send to it, and the mirror PACS it
//! sends to. Each is an Annex H `dicomDevice` with only the attributes
//! pacs-mirror needs.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::device::NetworkConnection;
use crate::host::deserialize_source_addresses;

/// Another system on the network (`[[remote_device]]`; Annex H `dicomDevice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteDevice {
    /// Name of the remote device (Annex H `dicomDeviceName`), non-empty and
    /// unique among remote devices.
    pub name: String,
    /// Free-text description (Annex H `dicomDescription`).
    #[serde(default)]
    pub description: Option<String>,
    /// Where the remote device's AEs accept associations, one
    /// `[[remote_device.network_connection]]` table each. Needed only for
    /// remote AEs that pacs-mirror connects to (targets).
    #[serde(default, rename = "network_connection")]
    pub network_connections: Vec<NetworkConnection>,
    /// The remote device's application entities, one
    /// `[[remote_device.network_ae]]` table each.
    #[serde(rename = "network_ae")]
    pub network_aes: Vec<RemoteAe>,
}

/// An application entity of a remote device (Annex H `dicomNetworkAE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAe {
    /// The remote AE title (Annex H `dicomAETitle`), same rules as a local
    /// one; unique among every local and remote network AE in this file.
    pub ae_title: String,
    /// Names of this remote device's `network_connection` entries the AE
    /// accepts associations on (Annex H `dicomNetworkConnectionReference`).
    #[serde(default)]
    pub network_connections: Vec<String>,
    /// `true` if this AE accepts associations from pacs-mirror, i.e. it is
    /// a DICOM target we send to (Annex H `dicomAssociationAcceptor`).
    /// Default: `false`.
    #[serde(default)]
    pub association_acceptor: bool,
    /// `true` if this AE opens associations to pacs-mirror, i.e. it sends
    /// to us (Annex H `dicomAssociationInitiator`). Required for an AE
    /// listed in `allowed_calling_aes`. Default: `false`.
    #[serde(default)]
    pub association_initiator: bool,
    /// Addresses this AE may connect from: CIDR networks (`"192.0.2.0/24"`)
    /// or single IP addresses (`"192.0.2.10"`, meaning `/32`, or `/128` for
    /// IPv6). An association whose calling AE title is this AE's, from any
    /// other address, is rejected. Must not be empty when the AE is listed
    /// in `allowed_calling_aes`; write `"0.0.0.0/0"` (and `"::/0"`) to allow
    /// any address.
    #[serde(default, deserialize_with = "deserialize_source_addresses")]
    pub source_addresses: Vec<IpNet>,
    /// Over TLS, the name its certificate must carry: a DNS name among its
    /// subject alternative names, or its subject common name. Checked on the
    /// client certificate of an association it opens (then it must present
    /// one) and on the server certificate when we connect to it (instead of
    /// the connection's hostname). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_name: Option<String>,
    /// Over TLS, the SHA-256 fingerprint of the certificate it must present
    /// (64 hex digits, colons allowed: `openssl x509 -noout -fingerprint
    /// -sha256`). A pinned certificate is accepted without a CA (e.g.
    /// self-signed); any other certificate is refused. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_sha256: Option<String>,
    /// Storage commitment this AE asks of us (it sends to us): report an
    /// object committed only once it is also delivered to these targets
    /// (their names; for a target with `storage_commitment`, once its
    /// mirror committed it), so that a modality deletes its copy only when
    /// the remote copy exists. Default: empty (committed once durable in
    /// the spool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commit_after_delivery_to: Vec<String>,
    /// How long such a report waits for those deliveries, in seconds, 1 to
    /// 86400; what is not delivered by then is reported failed (0110H).
    /// Default: 3600.
    #[serde(default = "default_commit_wait_secs")]
    pub commit_wait_secs: u64,
}

fn default_commit_wait_secs() -> u64 {
    3600
}
