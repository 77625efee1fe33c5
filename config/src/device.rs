//! The local device (`[device]`): its network connections, network AEs and
//! their transfer capabilities — Annex H `dicomDevice`,
//! `dicomNetworkConnection`, `dicomNetworkAE` and `dicomTransferCapability`.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tls::DeviceTls;

/// Default for [`Device::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "./pacs-mirror-data";
/// Default for [`NetworkAe::max_associations`].
pub const DEFAULT_MAX_ASSOCIATIONS: u32 = 32;
/// Allowed values of [`NetworkAe::max_associations`].
pub const MAX_ASSOCIATIONS_RANGE: RangeInclusive<u32> = 1..=1000;
/// Default for [`NetworkAe::max_pdu_bytes`] (256 KiB).
pub const DEFAULT_MAX_PDU_BYTES: u32 = 262_144;
/// Allowed values of [`NetworkAe::max_pdu_bytes`]. Below 1018 bytes the
/// DICOM upper layer cannot receive any PDU; 16 MiB is the upper bound.
pub const MAX_PDU_BYTES_RANGE: RangeInclusive<u32> = 1018..=16_777_216;
/// Default for [`NetworkAe::artim_timeout_secs`].
pub const DEFAULT_ARTIM_TIMEOUT_SECS: u64 = 30;
/// Allowed values of [`NetworkAe::artim_timeout_secs`].
pub const ARTIM_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=3600;
/// Default for [`NetworkAe::idle_timeout_secs`].
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// Allowed values of [`NetworkAe::idle_timeout_secs`].
pub const IDLE_TIMEOUT_SECS_RANGE: RangeInclusive<u64> = 1..=86_400;

pub(crate) fn yes() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}

fn default_max_associations() -> u32 {
    DEFAULT_MAX_ASSOCIATIONS
}

fn default_max_pdu_bytes() -> u32 {
    DEFAULT_MAX_PDU_BYTES
}

fn default_artim_timeout_secs() -> u64 {
    DEFAULT_ARTIM_TIMEOUT_SECS
}

fn default_idle_timeout_secs() -> u64 {
    DEFAULT_IDLE_TIMEOUT_SECS
}

/// The machine pacs-mirror runs as (`[device]`; Annex H `dicomDevice`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Name of this device (Annex H `dicomDeviceName`). Must not be empty.
    /// Appears in logs and metrics; it is not sent on the network.
    pub name: String,
    /// Free-text description of this device (Annex H `dicomDescription`).
    #[serde(default)]
    pub description: Option<String>,
    /// Directory holding the spool, the outbox database and other state.
    /// A relative path is relative to the agent's working directory.
    /// Default: `"./pacs-mirror-data"`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The network connections (address and port) this device listens on
    /// or connects from, one `[[device.network_connection]]` table each.
    #[serde(rename = "network_connection")]
    pub network_connections: Vec<NetworkConnection>,
    /// The local application entities, one `[[device.network_ae]]` table each.
    #[serde(rename = "network_ae")]
    pub network_aes: Vec<NetworkAe>,
    /// The certificate, key and trusted CAs of DICOM TLS (`[device.tls]`);
    /// needed as soon as a network connection has `tls_cipher_suites`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DeviceTls>,
}

/// A TCP endpoint (Annex H `dicomNetworkConnection`). Used for the local
/// device (where to listen) and for remote devices (where to connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConnection {
    /// Name of this connection (Annex H `cn`), unique within its device;
    /// network AEs refer to it in their `network_connections` list.
    pub name: String,
    /// IP address or DNS name (Annex H `dicomHostname`). For the local
    /// device, the address to listen on: `127.0.0.1` (this machine only),
    /// `0.0.0.0` (every IPv4 interface), `::` (every interface) or one
    /// interface's address. For a remote device, the address to connect to.
    /// Write IPv6 addresses without brackets.
    pub hostname: String,
    /// TCP port, 1 to 65535 (Annex H `dicomPort`). 11112 is the registered
    /// DICOM port; 104 is the historical one.
    pub port: u16,
    /// Whether this connection is in use (Annex H `dicomInstalled`).
    /// `false` keeps it in the file without listening on or connecting to it.
    /// Default: `true`.
    #[serde(default = "yes")]
    pub installed: bool,
    /// The cipher suites of DICOM TLS on this connection (Annex H
    /// `dicomTLSCipherSuite`): a non-empty list makes it a TLS connection
    /// (a listener that accepts TLS only; a remote one we connect to with
    /// TLS). `["BCP195-ND"]` is the BCP 195 non-downgrading profile (TLS 1.2
    /// and 1.3, AEAD suites with forward secrecy); IANA suite names may be
    /// listed instead. Empty (the default): plaintext DICOM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_cipher_suites: Vec<String>,
    /// Mutual TLS on a local TLS connection: a peer must present a
    /// certificate issued by `device.tls.trusted_ca`, or its handshake fails.
    /// Default: `false` (a certificate, if presented, is still verified).
    #[serde(default)]
    pub require_client_certificate: bool,
}

impl NetworkConnection {
    /// Whether this is a TLS connection (non-empty `tls_cipher_suites`).
    pub fn is_tls(&self) -> bool {
        !self.tls_cipher_suites.is_empty()
    }
}

/// A local application entity (Annex H `dicomNetworkAE`): an AE title that
/// peers address, the connections it uses and who may call it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkAe {
    /// The AE title (Annex H `dicomAETitle`): 1 to 16 printable ASCII
    /// characters, no backslash; leading and trailing spaces are ignored.
    /// Unique among every local and remote network AE in this file.
    pub ae_title: String,
    /// Free-text description of this AE (Annex H `dicomDescription`).
    #[serde(default)]
    pub description: Option<String>,
    /// Whether this AE accepts associations, i.e. listens on its network
    /// connections (Annex H `dicomAssociationAcceptor`). Default: `true`.
    #[serde(default = "yes")]
    pub association_acceptor: bool,
    /// Whether this AE opens associations to others, e.g. to send to DICOM
    /// targets (Annex H `dicomAssociationInitiator`). Default: `false`.
    #[serde(default)]
    pub association_initiator: bool,
    /// Names of the `[[device.network_connection]]` entries this AE uses
    /// (Annex H `dicomNetworkConnectionReference`). An acceptor needs at
    /// least one.
    pub network_connections: Vec<String>,
    /// Accept associations from any calling AE title. Not recommended on a
    /// listener reachable from the network: prefer `allowed_calling_aes`.
    /// Cannot be combined with a non-empty `allowed_calling_aes`.
    /// Default: `false`.
    #[serde(default)]
    pub accept_any_calling_ae: bool,
    /// AE titles allowed to open associations to this AE. Each must be the
    /// AE title of a `[[remote_device.network_ae]]` with
    /// `association_initiator = true` and non-empty `source_addresses`.
    /// With `accept_any_calling_ae = false`, an acceptor needs at least one.
    #[serde(default)]
    pub allowed_calling_aes: Vec<String>,
    /// The SOP classes and transfer syntaxes this AE supports, one
    /// `[[device.network_ae.transfer_capability]]` table each. Empty (the
    /// default) means every standard storage SOP class plus Verification,
    /// in every transfer syntax.
    #[serde(default, rename = "transfer_capability")]
    pub transfer_capabilities: Vec<TransferCapability>,
    /// Most associations this AE handles at once, 1 to 1000; further
    /// association requests are rejected. Default: 32.
    #[serde(default = "default_max_associations")]
    pub max_associations: u32,
    /// Most of those at once from one source address, 1 to
    /// `max_associations`; further requests from that address are rejected
    /// (transient, local limit exceeded), so one misbehaving sender cannot
    /// take every slot from the others (the primary). Default: unset, only
    /// `max_associations` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_associations_per_address: Option<u32>,
    /// Largest PDU this AE receives, in bytes, announced in the association
    /// negotiation; 1018 to 16777216. Default: 262144 (256 KiB).
    #[serde(default = "default_max_pdu_bytes")]
    pub max_pdu_bytes: u32,
    /// Seconds allowed between accepting a TCP connection and receiving its
    /// A-ASSOCIATE-RQ (the ARTIM timer); 1 to 3600. Default: 30.
    #[serde(default = "default_artim_timeout_secs")]
    pub artim_timeout_secs: u64,
    /// Seconds without any PDU after which an association is closed;
    /// 1 to 86400. Default: 300.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// This AE is the **drill receiver**: the Move Destination of C-MOVE
    /// restore drills (a `[[drill]]` with `retrieve = "c-move"` names it in
    /// `move_destination`). Its C-STOREs go to a scratch inbox of the
    /// running drill, never to the spool, the index or the queues; one that
    /// arrives while no drill is waiting for it is refused (status 0xA700,
    /// "no restore drill is running…"). The mirror PACS must know this AE
    /// (AE title, host, port) and be allowed to call it
    /// (`allowed_calling_aes`). It cannot also receive objects to keep: use
    /// another AE for that. Default: `false`.
    #[serde(default)]
    pub drill_receiver: bool,
}

/// One SOP class an AE supports, in one role, with its transfer syntaxes
/// (Annex H `dicomTransferCapability`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferCapability {
    /// Optional name of this capability (Annex H `cn`), for your own reference.
    #[serde(default)]
    pub name: Option<String>,
    /// The SOP class UID (Annex H `dicomSOPClass`), e.g.
    /// `"1.2.840.10008.5.1.4.1.1.2"` for CT Image Storage.
    pub sop_class: String,
    /// The role this AE plays for the SOP class (Annex H `dicomTransferRole`):
    /// `"scp"` to receive (store), `"scu"` to send.
    pub role: Role,
    /// Transfer syntax UIDs accepted or proposed (Annex H
    /// `dicomTransferSyntax`), e.g. `"1.2.840.10008.1.2.1"` for Explicit VR
    /// Little Endian. Empty (the default) means any transfer syntax.
    #[serde(default)]
    pub transfer_syntaxes: Vec<String>,
}

/// The role in a transfer capability (Annex H `dicomTransferRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Service Class User: this AE invokes the service (sends).
    Scu,
    /// Service Class Provider: this AE performs the service (receives).
    Scp,
}
