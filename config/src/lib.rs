//! Typed, validated configuration of pacs-mirror.
//!
//! The configuration is a TOML file shaped like the DICOM Application
//! Configuration Management model (DICOM PS3.15 Annex H): a **device**
//! (pacs-mirror itself) owns **network connections** (address and port) and
//! **network AEs** (AE titles) with their **transfer capabilities**; every
//! peer — the primary PACS and modalities that send to pacs-mirror, the
//! mirror PACS it replicates to — is a **remote device** with its own
//! network AEs and connections. AE titles are unique across the whole file,
//! like Annex H's unique AE titles registry.
//!
//! # Mapping to Annex H
//!
//! | TOML key | Annex H object / attribute |
//! |---|---|
//! | `[device]` | Device (`dicomDevice`) |
//! | `device.name` | `dicomDeviceName` |
//! | `device.description` | `dicomDescription` |
//! | `device.data_dir` | — (pacs-mirror: where state is kept) |
//! | `[[device.network_connection]]` | Network Connection (`dicomNetworkConnection`) |
//! | `….network_connection.name` | `cn` |
//! | `….network_connection.hostname` | `dicomHostname` |
//! | `….network_connection.port` | `dicomPort` |
//! | `….network_connection.installed` | `dicomInstalled` |
//! | `….network_connection.tls_cipher_suites` | `dicomTLSCipherSuite` (`["BCP195-ND"]`: the PS3.15 B.9 profile) |
//! | `….network_connection.require_client_certificate` | — (pacs-mirror: mutual TLS on a listener) |
//! | `[device.tls]` `certificate`, `private_key` | `dicomThisNodeCertificateReference` |
//! | `[device.tls]` `trusted_ca` | `dicomAuthorizedNodeCertificateReference` |
//! | `[[device.network_ae]]` | Network AE (`dicomNetworkAE`) |
//! | `….network_ae.ae_title` | `dicomAETitle` |
//! | `….network_ae.description` | `dicomDescription` |
//! | `….network_ae.association_acceptor` | `dicomAssociationAcceptor` |
//! | `….network_ae.association_initiator` | `dicomAssociationInitiator` |
//! | `….network_ae.network_connections` | `dicomNetworkConnectionReference` |
//! | `….network_ae.accept_any_calling_ae`, `allowed_calling_aes` | — (pacs-mirror: calling AE allow-list) |
//! | `….network_ae.max_associations`, `max_associations_per_address`, `max_pdu_bytes`, `artim_timeout_secs`, `idle_timeout_secs` | — (pacs-mirror: association limits) |
//! | `….network_ae.drill_receiver` | — (pacs-mirror: the Move Destination of C-MOVE restore drills) |
//! | `[[device.network_ae.transfer_capability]]` | Transfer Capability (`dicomTransferCapability`) |
//! | `….transfer_capability.name` | `cn` |
//! | `….transfer_capability.sop_class` | `dicomSOPClass` |
//! | `….transfer_capability.role` (`"scu"`/`"scp"`) | `dicomTransferRole` (`SCU`/`SCP`) |
//! | `….transfer_capability.transfer_syntaxes` | `dicomTransferSyntax` |
//! | `[[remote_device]]` | another Device of the configuration (`dicomDevice`) |
//! | `[[remote_device.network_connection]]` | its Network Connections |
//! | `[[remote_device.network_ae]]` | its Network AEs (same attributes as above) |
//! | `….remote_device.network_ae.source_addresses` | — (pacs-mirror: where a sender may connect from) |
//! | `….remote_device.network_ae.certificate_name`, `certificate_sha256` | — (pacs-mirror: the TLS certificate identity an AE must present) |
//! | `[spool]` | — (pacs-mirror: spool limits) |
//! | `[index]` | — (pacs-mirror: the index's memory) |
//! | `[[target]]` | — (pacs-mirror: replication targets) |
//!
//! `pacs-mirror config ldif` writes the same model as LDIF in the Annex H
//! LDAP schema: see [`ldif`].
//!
//! # Loading
//!
//! [`Config::load`] reads and parses a file. Text that is not TOML is a
//! [`ConfigError::Parse`] error with the line and column. Otherwise every
//! unknown key (with "did you mean …?" when a valid key is close), wrong
//! type, bad enum value and missing required key is reported at once as a
//! [`ConfigError::Invalid`] finding, with its TOML path, line and column.
//! [`Config::validate`] then checks everything that parsing cannot
//! (ranges, references between entries, AE title rules, the calling-AE
//! allow-list policy…) and returns *every* [`Finding`] at once.
//! [`Config::load_validated`] does both and fails with
//! [`ConfigError::Invalid`] if any finding is an error.

#![deny(missing_docs)]

use std::path::Path;

use serde::{Deserialize, Serialize};

mod admin;
mod alerts;
pub mod bandwidth;
mod device;
mod dicom;
mod drill;
mod error;
mod host;
mod index;
pub mod ldif;
mod remote;
mod schema;
mod spool;
mod target;
pub mod tls;
mod validate;

pub use admin::AdminConfig;
pub use alerts::{ActiveWindow, AlertsConfig, SilenceRule, WindowError};
pub use device::{
    ARTIM_TIMEOUT_SECS_RANGE, DEFAULT_ARTIM_TIMEOUT_SECS, DEFAULT_DATA_DIR,
    DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_ASSOCIATIONS, DEFAULT_MAX_PDU_BYTES, Device,
    IDLE_TIMEOUT_SECS_RANGE, MAX_ASSOCIATIONS_RANGE, MAX_PDU_BYTES_RANGE, NetworkAe,
    NetworkConnection, Role, TransferCapability,
};
pub use dicom::{
    AE_TITLE_MAX_CHARS, AeTitleError, UID_MAX_CHARS, UidError, validate_ae_title, validate_uid,
};
pub use drill::{DrillConfig, Retrieve};
pub use error::{ConfigError, Finding, Severity};
pub use host::{SourceAddressError, is_loopback_host, parse_source_address};
pub use index::{DEFAULT_INDEX_CACHE_BYTES, IndexConfig, MIN_INDEX_CACHE_BYTES};
pub use remote::{RemoteAe, RemoteDevice};
pub use spool::{DEFAULT_MIN_FREE_BYTES, MIN_MAX_OBJECT_BYTES, MIN_SPOOL_MAX_BYTES, SpoolConfig};
pub use target::{Delivery, OBJECT_STORE_SCHEMES, Target};
pub use tls::{BCP195_ND, CipherSuiteInfo, DeviceTls, TlsVersion, cipher_suites};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This pacs-mirror instance (`[device]`).
    pub device: Device,
    /// Spool limits (`[spool]`); every key has a default.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// The index (`[index]`); every key has a default.
    #[serde(default)]
    pub index: IndexConfig,
    /// The peers pacs-mirror talks to, one `[[remote_device]]` table each.
    #[serde(default, rename = "remote_device")]
    pub remote_devices: Vec<RemoteDevice>,
    /// Replication targets, one `[[target]]` table each.
    #[serde(default, rename = "target")]
    pub targets: Vec<Target>,
    /// The admin HTTP endpoint (`[admin]`); absent: none.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Restore drills, one `[[drill]]` table each.
    #[serde(default, rename = "drill")]
    pub drills: Vec<DrillConfig>,
    /// Monitoring thresholds and where alerts go (`[alerts]`); absent: the
    /// default thresholds, alerts only logged and shown in the metrics.
    #[serde(default)]
    pub alerts: Option<AlertsConfig>,
}

impl Config {
    /// A commented example configuration for a PACS administrator to copy;
    /// printed by `pacs-mirror config example`. It validates without findings.
    pub const EXAMPLE_TOML: &'static str = include_str!("example.toml");

    /// The text of the built-in default configuration (see
    /// [`Config::embedded_default`]).
    pub const DEFAULT_TOML: &'static str = include_str!("default.toml");

    /// Parses a configuration from TOML text, without validating it.
    /// `origin` names where the text came from, for error messages.
    ///
    /// Text that is not TOML is a [`ConfigError::Parse`] error. Otherwise
    /// every unknown key (with the closest valid key, when one is close)
    /// and every wrong-typed value, bad enum value or missing key that can
    /// be found is reported at once, as [`ConfigError::Invalid`] findings
    /// with their TOML path, line and column.
    pub fn from_toml_str(s: &str, origin: &Path) -> Result<Config, ConfigError> {
        let parse_error = |mut e: toml::de::Error| {
            e.set_input(Some(s));
            ConfigError::Parse {
                path: origin.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            }
        };
        let findings = schema::check(s).map_err(parse_error)?;
        if !findings.is_empty() {
            return Err(ConfigError::Invalid { findings });
        }
        toml::from_str(s).map_err(parse_error)
    }

    /// Reads and parses a configuration file, without validating it.
    /// Unknown keys and wrong types are reported all at once, as
    /// [`ConfigError::Invalid`] findings (see [`Config::from_toml_str`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, path)
    }

    /// Reads, parses and validates a configuration file. Fails with
    /// [`ConfigError::Invalid`] (holding every finding) if validation finds
    /// any error; otherwise returns the configuration and its warnings.
    pub fn load_validated(path: &Path) -> Result<(Config, Vec<Finding>), ConfigError> {
        let config = Config::load(path)?;
        let findings = config.validate();
        if findings.iter().any(Finding::is_error) {
            return Err(ConfigError::Invalid { findings });
        }
        Ok((config, findings))
    }

    /// The built-in default configuration, parsed from
    /// [`Config::DEFAULT_TOML`]: device `pacs-mirror`, data in
    /// `./pacs-mirror-data`, AE `PACS_MIRROR` accepting any calling AE on
    /// `127.0.0.1:11112` only, backing up into the folder
    /// `./pacs-mirror-data/backup`. It validates without findings.
    pub fn embedded_default() -> Config {
        Config::from_toml_str(Config::DEFAULT_TOML, Path::new("<embedded default.toml>"))
            .unwrap_or_else(|_| Config::builtin_default())
    }

    /// The same configuration as `default.toml`, built in code; a unit test
    /// keeps the two equal, so this is only reached if that test is ignored.
    fn builtin_default() -> Config {
        Config {
            device: Device {
                name: "pacs-mirror".to_string(),
                description: None,
                data_dir: DEFAULT_DATA_DIR.into(),
                network_connections: vec![NetworkConnection {
                    name: "dicom".to_string(),
                    hostname: "127.0.0.1".to_string(),
                    port: 11112,
                    installed: true,
                    tls_cipher_suites: Vec::new(),
                    require_client_certificate: false,
                }],
                network_aes: vec![NetworkAe {
                    ae_title: "PACS_MIRROR".to_string(),
                    description: None,
                    association_acceptor: true,
                    association_initiator: false,
                    network_connections: vec!["dicom".to_string()],
                    accept_any_calling_ae: true,
                    allowed_calling_aes: Vec::new(),
                    transfer_capabilities: Vec::new(),
                    max_associations: DEFAULT_MAX_ASSOCIATIONS,
                    max_associations_per_address: None,
                    max_pdu_bytes: DEFAULT_MAX_PDU_BYTES,
                    artim_timeout_secs: DEFAULT_ARTIM_TIMEOUT_SECS,
                    idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
                    drill_receiver: false,
                }],
                tls: None,
            },
            spool: SpoolConfig::default(),
            index: IndexConfig::default(),
            remote_devices: Vec::new(),
            targets: vec![Target::ObjectStore {
                name: "backup".to_string(),
                url: "file://./pacs-mirror-data/backup".to_string(),
                options: Default::default(),
                concurrency: 32,
                timeout_secs: 60,
                retry_initial_secs: 5,
                retry_max_secs: 3600,
                refused_attempts: 3,
                max_bandwidth: Default::default(),
                bandwidth_schedule: Vec::new(),
                live_window_secs: 300,
            }],
            admin: Some(AdminConfig {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 11180)),
            }),
            drills: Vec::new(),
            alerts: None,
        }
    }

    /// The warnings among [`Config::validate`]'s findings: what an operator
    /// should see at start-up and in the agent's status.
    pub fn warnings(&self) -> Vec<Finding> {
        self.validate()
            .into_iter()
            .filter(|f| !f.is_error())
            .collect()
    }

    /// The local AEs that accept associations: `association_acceptor = true`
    /// and at least one referenced local connection that exists and is
    /// installed.
    pub fn acceptor_aes(&self) -> impl Iterator<Item = &NetworkAe> {
        self.device.network_aes.iter().filter(|ae| {
            ae.association_acceptor
                && ae
                    .network_connections
                    .iter()
                    .filter_map(|name| self.connection(name))
                    .any(|c| c.installed)
        })
    }

    /// The local network connection (`[[device.network_connection]]`) named
    /// `name`, if any.
    pub fn connection(&self, name: &str) -> Option<&NetworkConnection> {
        self.device
            .network_connections
            .iter()
            .find(|c| c.name == name)
    }

    /// The connection pacs-mirror uses to reach a remote AE: the first
    /// installed one it names (the AE's `network_connections` order).
    pub fn remote_connection<'a>(
        device: &'a RemoteDevice,
        ae: &RemoteAe,
    ) -> Option<&'a NetworkConnection> {
        ae.network_connections.iter().find_map(|c| {
            device
                .network_connections
                .iter()
                .find(|nc| &nc.name == c && nc.installed)
        })
    }

    /// The remote AE whose AE title is `ae_title`, with its device.
    /// Leading and trailing spaces are ignored on both sides; case matters.
    pub fn remote_ae(&self, ae_title: &str) -> Option<(&RemoteDevice, &RemoteAe)> {
        let wanted = ae_title.trim_matches(' ');
        self.remote_devices.iter().find_map(|device| {
            device
                .network_aes
                .iter()
                .find(|ae| ae.ae_title.trim_matches(' ') == wanted)
                .map(|ae| (device, ae))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
