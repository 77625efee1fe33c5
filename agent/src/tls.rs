//! DICOM TLS in the agent: the configuration mapped onto the DICOM layer's
//! [`Tls`] (files, pins, each connection's suites, each remote AE's
//! identity), one loaded material per process ([`device_tls`]), reloaded
//! by [`reload`] (SIGHUP), and the handshake failure counts and certificate
//! expiry the status, the metrics and the monitor show.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use pacs_mirror_config::{Config, Finding, NetworkConnection, RemoteAe, cipher_suites};
use pacs_mirror_dicom::tls::{Identity, Suites, Tls, TlsError, TlsFiles};
use serde::{Deserialize, Serialize};

/// The device's TLS files from `[device.tls]`.
pub fn files(config: &Config) -> TlsFiles {
    let t = config.device.tls.clone().unwrap_or_default();
    TlsFiles {
        certificate: t.certificate,
        private_key: t.private_key,
        trusted_ca: t.trusted_ca,
    }
}

/// Whether any connection of the configuration is a TLS one.
pub fn used(config: &Config) -> bool {
    config
        .device
        .network_connections
        .iter()
        .chain(
            config
                .remote_devices
                .iter()
                .flat_map(|d| d.network_connections.iter()),
        )
        .any(NetworkConnection::is_tls)
}

/// The SHA-256 pins of the remote AEs (their client certificates are
/// accepted without a CA, then held to that AE).
pub fn pins(config: &Config) -> Vec<[u8; 32]> {
    config
        .remote_devices
        .iter()
        .flat_map(|d| d.network_aes.iter())
        .filter_map(|ae| ae.certificate_sha256.as_deref())
        .filter_map(|p| pacs_mirror_config::tls::parse_sha256_pin(p).ok())
        .collect()
}

/// A connection's cipher suites (code points); empty for a plaintext one
/// (and for names `validate` refuses).
pub fn suites(c: &NetworkConnection) -> Suites {
    Suites(
        cipher_suites(&c.tls_cipher_suites)
            .map(|v| v.into_iter().map(|s| s.code).collect())
            .unwrap_or_default(),
    )
}

/// The certificate identity a remote AE must present.
pub fn identity(ae: &RemoteAe) -> Identity {
    Identity {
        name: ae
            .certificate_name
            .as_ref()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty()),
        sha256: ae
            .certificate_sha256
            .as_deref()
            .and_then(|p| pacs_mirror_config::tls::parse_sha256_pin(p).ok()),
    }
}

/// The TLS files' problems as configuration findings (`config check`, and
/// the agent's start): every one at once.
pub fn findings(config: &Config) -> Vec<Finding> {
    if !used(config) {
        return Vec::new();
    }
    Tls::check(&files(config))
        .into_iter()
        .map(|e| Finding::error(finding_path(&e), e.to_string()))
        .collect()
}

fn finding_path(e: &TlsError) -> String {
    let what = match e {
        TlsError::Read { what, .. } | TlsError::Content { what, .. } => what,
        TlsError::KeyMismatch { .. } => "private_key",
        _ => return "device.tls".into(),
    };
    format!("device.tls.{what}")
}

/// The loaded materials of this process, by their files and pins.
type Registry = Mutex<Vec<((TlsFiles, Vec<[u8; 32]>), Arc<Tls>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// The device's TLS material for `config` (None if no connection is TLS),
/// loaded once per process and shared by every association.
pub fn device_tls(config: &Config) -> Result<Option<Arc<Tls>>, TlsLoadError> {
    if !used(config) {
        return Ok(None);
    }
    let key = (files(config), pins(config));
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, t)) = r.iter().find(|(k, _)| *k == key) {
        return Ok(Some(t.clone()));
    }
    let tls = Arc::new(Tls::load(key.0.clone(), key.1.clone()).map_err(TlsLoadError)?);
    r.push((key, tls.clone()));
    Ok(Some(tls))
}

/// The TLS files could not be loaded; every problem.
#[derive(Debug, thiserror::Error)]
#[error("DICOM TLS: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct TlsLoadError(pub Vec<TlsError>);

/// Read every loaded material's files again (SIGHUP). A material whose files
/// are bad keeps the old ones; the errors are returned, per material.
pub fn reload() -> Vec<Result<Option<String>, TlsLoadError>> {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.iter()
        .map(|(_, t)| {
            t.reload()
                .map(|info| info.map(|i| i.describe()))
                .map_err(TlsLoadError)
        })
        .collect()
}

/// The inbound handshake failures of this process, by reason.
pub fn handshake_failures() -> &'static HandshakeCounts {
    static C: OnceLock<HandshakeCounts> = OnceLock::new();
    C.get_or_init(HandshakeCounts::default)
}

/// Handshake failures by reason, since start.
#[derive(Debug, Default)]
pub struct HandshakeCounts(Mutex<BTreeMap<&'static str, u64>>);

impl HandshakeCounts {
    /// One more failure for `code`.
    pub fn count(&self, code: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// The counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }
}

/// DICOM TLS as `/status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// This device's certificate: subject, issuer, SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Its end of validity (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<i64>,
    /// Failed inbound handshakes by reason, since start.
    #[serde(default)]
    pub handshake_failures: BTreeMap<String, u64>,
}

impl TlsStatus {
    /// The status of `tls` with `counts`.
    pub fn of(tls: &Tls, counts: &HandshakeCounts) -> TlsStatus {
        let cert = tls.certificate();
        TlsStatus {
            certificate: cert.as_ref().map(|c| c.describe()),
            not_after_ms: cert.map(|c| c.not_after.saturating_mul(1000)),
            handshake_failures: counts.snapshot(),
        }
    }
}
