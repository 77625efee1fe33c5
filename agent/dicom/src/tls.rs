//! DICOM TLS (PS3.15 Annex B secure transport connection profiles) on
//! rustls with ring: no OpenSSL.
//!
//! [`Tls`] holds this device's certificate chain, private key and trusted
//! CAs, read from PEM files, and hands out the rustls configuration of each
//! association: [`Tls::server`] for an accepted connection (with a
//! [`ClientCertificate`] slot in which the verified client certificate is
//! recorded, so that the access check can bind an AE title to it), and
//! [`Tls::client`] for a connection we open (the server certificate checked
//! against the trusted CAs and the peer's name, or against a SHA-256 pin).
//!
//! Reloading ([`Tls::reload`], on SIGHUP) reads the files again and, only if
//! all of them are good, swaps them in: an association in progress keeps
//! the session it has; the next one uses the new certificate. A bad file
//! leaves the old material in place and is reported.
//!
//! Session resumption is off on both sides: every association makes a full
//! handshake, so the client certificate is verified (and recorded) every
//! time. DICOM associations are long, so this costs little.
//!
//! Handshake failures are described for the person on call by
//! [`HandshakeFailure`]: unknown CA, no client certificate, protocol
//! version, expired certificate, a pin or name that does not match, a peer
//! that speaks plaintext.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use sha2::Digest;

/// The PEM files of this device's TLS material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This device's certificate followed by its chain.
    pub certificate: Option<PathBuf>,
    /// Its private key.
    pub private_key: Option<PathBuf>,
    /// The CAs trusted for peers' certificates.
    pub trusted_ca: Option<PathBuf>,
}

/// What is wrong with a TLS file or setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{what} {path}: cannot read it: {source}")]
    Read {
        /// Which file ("certificate", "private_key", "trusted_ca").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{what} {path}: {message}")]
    Content {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The private key is not the certificate's.
    #[error(
        "private_key {key} does not belong to certificate {certificate} (their public keys differ)"
    )]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A listener without a certificate.
    #[error("a TLS listener needs this device's certificate and private key ([device.tls])")]
    NoCertificate,
    /// Peers cannot be verified without trusted CAs.
    #[error("{0}: set [device.tls] trusted_ca")]
    NoTrustedCa(&'static str),
    /// No cipher suite left.
    #[error("no cipher suite pacs-mirror implements is configured")]
    NoCipherSuites,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("TLS client verification: {0}")]
    Verifier(String),
}

/// A certificate, as the operator needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    /// SHA-256 of the DER, lowercase hex with colons.
    pub sha256: String,
    /// Subject alternative names (DNS names and IP addresses).
    pub names: Vec<String>,
    /// Subject common name, if any.
    pub common_name: Option<String>,
}

impl CertificateInfo {
    /// Parse a DER certificate (None if it is not one).
    pub fn of(der: &[u8]) -> Option<CertificateInfo> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push((*d).to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => {
                            let a: [u8; 4] = (*ip).try_into().ok()?;
                            names.push(std::net::Ipv4Addr::from(a).to_string());
                        }
                        16 => {
                            let a: [u8; 16] = (*ip).try_into().ok()?;
                            names.push(std::net::Ipv6Addr::from(a).to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        Some(CertificateInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: fingerprint_hex(&sha256(der)),
            names,
            common_name,
        })
    }

    /// "subject …, issued by …, SHA-256 …" for a log line or an error.
    pub fn describe(&self) -> String {
        format!(
            "subject \"{}\", issued by \"{}\", SHA-256 {}",
            self.subject, self.issuer, self.sha256
        )
    }

    /// Whether it carries `name`: a DNS subject alternative name (exactly,
    /// any case, or under a `*.` wildcard for one label) or, failing that,
    /// the subject common name.
    pub fn carries_name(&self, name: &str) -> bool {
        let want = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let matches = |have: &str| {
            let have = have.trim_end_matches('.').to_ascii_lowercase();
            if have == want {
                return true;
            }
            match (have.strip_prefix("*."), want.split_once('.')) {
                (Some(suffix), Some((label, rest))) => !label.is_empty() && rest == suffix,
                _ => false,
            }
        };
        self.names.iter().any(|n| matches(n)) || self.common_name.as_deref().is_some_and(matches)
    }
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(der).into()
}

/// `aa:bb:…` lowercase.
pub fn fingerprint_hex(d: &[u8; 32]) -> String {
    d.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificate identity a peer must present (a remote AE's
/// `certificate_name` / `certificate_sha256`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Identity {
    /// A name among its DNS subject alternative names, or its common name.
    pub name: Option<String>,
    /// The SHA-256 of its certificate.
    pub sha256: Option<[u8; 32]>,
}

impl Identity {
    /// Whether any identity is required.
    pub fn is_set(&self) -> bool {
        self.name.is_some() || self.sha256.is_some()
    }

    /// Check a presented certificate; `Err` says what does not match.
    pub fn check(&self, der: &[u8]) -> Result<(), String> {
        let info = CertificateInfo::of(der);
        let describe = || {
            info.as_ref()
                .map_or_else(|| "an unreadable certificate".to_string(), |i| i.describe())
        };
        if let Some(pin) = &self.sha256
            && sha256(der) != *pin
        {
            return Err(format!(
                "its certificate is not the pinned one (certificate_sha256 {}); it presented {}",
                fingerprint_hex(pin),
                describe()
            ));
        }
        if let Some(name) = &self.name
            && !info.as_ref().is_some_and(|i| i.carries_name(name))
        {
            return Err(format!(
                "its certificate does not carry the name {name:?} (certificate_name); it presented {}",
                describe()
            ));
        }
        Ok(())
    }
}

/// The cipher suites (IANA code points) and, through them, the TLS
/// versions of one connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suites(pub Vec<u16>);

/// The material of one load.
struct Material {
    key: Option<Arc<CertifiedKey>>,
    roots: Arc<RootCertStore>,
    certificate: Option<CertificateInfo>,
}

/// This device's TLS material, reloadable.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<Material>>,
    /// Client configurations by (suites, identity, whether a CA is needed),
    /// emptied on reload.
    clients: Mutex<HashMap<(Suites, Identity), Arc<ClientConfig>>>,
    /// Certificates that are accepted from a client without a CA because
    /// some remote AE pins them.
    pins: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Read the files; every problem at once. `pins`: the SHA-256 pins of
    /// remote AEs (their client certificates need no CA).
    pub fn load(files: TlsFiles, pins: Vec<[u8; 32]>) -> Result<Tls, Vec<TlsError>> {
        let material = read_material(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(material)),
            clients: Mutex::new(HashMap::new()),
            pins,
        })
    }

    /// Check the files without keeping them (`config check`).
    pub fn check(files: &TlsFiles) -> Vec<TlsError> {
        read_material(files).err().unwrap_or_default()
    }

    /// Read the files again; swap them in only if all are good.
    pub fn reload(&self) -> Result<Option<CertificateInfo>, Vec<TlsError>> {
        let material = read_material(&self.files)?;
        let info = material.certificate.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(material);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(info)
    }

    fn material(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This device's certificate (for the expiry metric and alert).
    pub fn certificate(&self) -> Option<CertificateInfo> {
        self.material().certificate.clone()
    }

    /// The server side of one accepted connection: its rustls
    /// configuration, and the slot in which the client certificate is
    /// recorded once verified.
    pub fn server(
        &self,
        suites: &Suites,
        require_client_certificate: bool,
    ) -> Result<(Arc<ServerConfig>, ClientCertificate), TlsError> {
        let material = self.material();
        let key = material.key.clone().ok_or(TlsError::NoCertificate)?;
        let provider = provider(suites)?;
        let inner: Arc<dyn ClientCertVerifier> = if material.roots.is_empty() {
            if require_client_certificate {
                return Err(TlsError::NoTrustedCa(
                    "require_client_certificate needs the CAs that issue client certificates",
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        } else {
            let b = WebPkiClientVerifier::builder_with_provider(
                material.roots.clone(),
                provider.clone(),
            );
            let b = if require_client_certificate {
                b
            } else {
                b.allow_unauthenticated()
            };
            b.build().map_err(|e| TlsError::Verifier(e.to_string()))?
        };
        let slot = ClientCertificate::default();
        let verifier = Arc::new(RecordingVerifier {
            inner,
            slot: slot.clone(),
            pins: self.pins.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&provider))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(FixedCert(key)));
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.ignore_client_order = true;
        config.send_tls13_tickets = 0;
        Ok((Arc::new(config), slot))
    }

    /// The client configuration to connect to a peer that must present
    /// `identity` (without a pin: a certificate from a trusted CA, valid for
    /// `identity.name` or else the name connected to).
    pub fn client(
        &self,
        suites: &Suites,
        identity: &Identity,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let cache_key = (suites.clone(), identity.clone());
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
        {
            return Ok(c.clone());
        }
        let material = self.material();
        let provider = provider(suites)?;
        let webpki = if identity.sha256.is_some() {
            None
        } else if material.roots.is_empty() {
            return Err(TlsError::NoTrustedCa(
                "a TLS peer without certificate_sha256 is verified against trusted CAs",
            ));
        } else {
            Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    material.roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
            )
        };
        let verifier = Arc::new(PeerVerifier {
            webpki,
            identity: identity.clone(),
            algorithms: provider.signature_verification_algorithms,
        });
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(&provider))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &material.key {
            Some(key) => builder.with_client_cert_resolver(Arc::new(FixedClientCert(key.clone()))),
            None => builder.with_no_client_auth(),
        };
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cache_key, config.clone());
        Ok(config)
    }
}

/// The client certificate of one accepted TLS connection, once verified:
/// its DER, and whether a trusted CA issued it (false: accepted only
/// because a remote AE pins it).
#[derive(Debug, Clone, Default)]
pub struct ClientCertificate(Arc<OnceLock<(CertificateDer<'static>, bool)>>);

impl ClientCertificate {
    /// The certificate and whether a trusted CA issued it; None if the
    /// client presented none.
    pub fn get(&self) -> Option<(&[u8], bool)> {
        self.0.get().map(|(c, ca)| (c.as_ref(), *ca))
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn content(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Content {
        what,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| content(what, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            what,
            path,
            "holds no certificate (a PEM file with -----BEGIN CERTIFICATE----- blocks is expected)",
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        if CertificateInfo::of(c).is_none() {
            return Err(content(
                what,
                path,
                format!("certificate {} is not a readable X.509 certificate", i + 1),
            ));
        }
    }
    Ok(certs)
}

fn read_material(files: &TlsFiles) -> Result<Material, Vec<TlsError>> {
    let provider = rustls::crypto::ring::default_provider();
    let mut errors = Vec::new();
    let chain = files
        .certificate
        .as_deref()
        .map(|p| certificates("certificate", p))
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let key_der = files
        .private_key
        .as_deref()
        .map(|p| {
            let pem = read("private_key", p)?;
            PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                content(
                    "private_key",
                    p,
                    format!(
                        "holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1 expected): {e}"
                    ),
                )
            })
        })
        .transpose()
        .map_err(|e| errors.push(e))
        .ok()
        .flatten();
    let mut roots = RootCertStore::empty();
    if let Some(p) = files.trusted_ca.as_deref() {
        match certificates("trusted_ca", p) {
            Ok(cas) => {
                for (i, ca) in cas.into_iter().enumerate() {
                    if let Err(e) = roots.add(ca) {
                        errors.push(content(
                            "trusted_ca",
                            p,
                            format!("certificate {} cannot be a trust anchor: {e}", i + 1),
                        ));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let mut key = None;
    let mut certificate = None;
    if let (Some(chain), Some(der)) = (chain, key_der) {
        let cert_path = files.certificate.clone().unwrap_or_default();
        let key_path = files.private_key.clone().unwrap_or_default();
        match provider.key_provider.load_private_key(der) {
            Err(e) => errors.push(content(
                "private_key",
                &key_path,
                format!("unsupported private key: {e}"),
            )),
            Ok(signing) => {
                let certified = CertifiedKey::new(chain, signing);
                match certified.keys_match() {
                    Ok(())
                    | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                        certificate = certified
                            .end_entity_cert()
                            .ok()
                            .and_then(|c| CertificateInfo::of(c));
                        key = Some(Arc::new(certified));
                    }
                    Err(_) => errors.push(TlsError::KeyMismatch {
                        certificate: cert_path,
                        key: key_path,
                    }),
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(Material {
            key,
            roots: Arc::new(roots),
            certificate,
        })
    } else {
        Err(errors)
    }
}

/// ring's provider, restricted to `suites`.
fn provider(suites: &Suites) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| suites.0.contains(&u16::from(s.suite())));
    if p.cipher_suites.is_empty() {
        return Err(TlsError::NoCipherSuites);
    }
    // RFC 9325's preference: TLS 1.3, then AES-128-GCM first (as strong
    // for this purpose and about a quarter cheaper than AES-256 for both
    // ends: a mirror link runs at the speed of its endpoints' CPUs). As a
    // server we pick by this order, not the client's.
    p.cipher_suites.sort_by_key(|s| {
        let name = s.suite().as_str().unwrap_or_default();
        (
            s.version() != &rustls::version::TLS13,
            !name.contains("AES_128_GCM"),
            name.contains("CHACHA20"),
        )
    });
    Ok(Arc::new(p))
}

/// The TLS versions the provider's suites allow (1.2 and/or 1.3).
fn versions(p: &CryptoProvider) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut v = Vec::new();
    if p.cipher_suites
        .iter()
        .any(|s| s.version() == &rustls::version::TLS13)
    {
        v.push(&rustls::version::TLS13);
    }
    if p.cipher_suites
        .iter()
        .any(|s| s.version() == &rustls::version::TLS12)
    {
        v.push(&rustls::version::TLS12);
    }
    v
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Why we refused a peer's certificate, carried inside rustls's error so
/// that [`HandshakeFailure`] can say it with what was presented.
#[derive(Debug, thiserror::Error)]
#[error("{reason}; it presented {presented}")]
pub struct Refused {
    /// Short reason code (for metrics).
    pub code: &'static str,
    /// What is wrong.
    pub reason: String,
    /// The certificate presented, described.
    pub presented: String,
}

fn refused(code: &'static str, reason: String, der: &[u8]) -> rustls::Error {
    let presented = CertificateInfo::of(der)
        .map_or_else(|| "an unreadable certificate".to_string(), |i| i.describe());
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused {
        code,
        reason,
        presented,
    }))))
}

/// The webpki reason, in words, with its code.
fn certificate_reason(e: &rustls::Error) -> (&'static str, String) {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => (
                "unknown_ca",
                "its certificate is not issued by a trusted CA (unknown CA)".into(),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                ("expired", "its certificate has expired".into())
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                "not_yet_valid",
                "its certificate is not valid yet (check both clocks)".into(),
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                (
                    "name_mismatch",
                    "its certificate is not valid for this name".into(),
                )
            }
            CertificateError::Revoked => ("revoked", "its certificate is revoked".into()),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
                "bad_certificate",
                "its certificate is not meant for this use (extended key usage)".into(),
            ),
            other => (
                "bad_certificate",
                format!("its certificate is refused: {other:?}"),
            ),
        },
        other => (
            "bad_certificate",
            format!("its certificate is refused: {other}"),
        ),
    }
}

/// The handshake signature checks both verifiers share: the provider's
/// algorithms (a pinned or CA-verified certificate alike must prove its key).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

/// Records the verified client certificate; accepts, without a CA, one that
/// some remote AE pins (the access check then holds it to that AE).
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    slot: ClientCertificate,
    pins: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for RecordingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth() || !self.pins.is_empty()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let by_ca = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        let ca = match by_ca {
            Ok(_) => true,
            Err(_) if self.pins.contains(&sha256(end_entity)) => false,
            Err(e) => {
                let (code, reason) = certificate_reason(&e);
                return Err(refused(code, reason, end_entity));
            }
        };
        let _ = self.slot.0.set((end_entity.clone().into_owned(), ca));
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// Checks a server's certificate: against its pin, or against the trusted
/// CAs and the name (`identity.name`, else the name connected to).
#[derive(Debug)]
struct PeerVerifier {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    identity: Identity,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.identity.sha256 {
            if sha256(end_entity) != *pin {
                return Err(refused(
                    "pin_mismatch",
                    format!(
                        "its certificate is not the pinned one (certificate_sha256 {})",
                        fingerprint_hex(pin)
                    ),
                    end_entity,
                ));
            }
            if let Some(name) = &self.identity.name
                && let Err(e) = self.identity.check(end_entity)
            {
                return Err(refused(
                    "name_mismatch",
                    format!("{name:?}: {e}"),
                    end_entity,
                ));
            }
            return Ok(ServerCertVerified::assertion());
        }
        let Some(webpki) = &self.webpki else {
            return Err(refused(
                "unknown_ca",
                "no trusted CA is configured".into(),
                end_entity,
            ));
        };
        let wanted: ServerName<'_> = match &self.identity.name {
            Some(n) => ServerName::try_from(n.clone()).map_err(|_| {
                refused(
                    "name_mismatch",
                    format!("{n:?} is not a DNS name"),
                    end_entity,
                )
            })?,
            None => server_name.clone(),
        };
        match webpki.verify_server_cert(end_entity, intermediates, &wanted, ocsp_response, now) {
            Ok(v) => Ok(v),
            // A name given by certificate_name may be the subject CN.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.identity.name.is_some() && self.identity.check(end_entity).is_ok() => {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => {
                let (code, reason) = certificate_reason(&e);
                let reason = if code == "name_mismatch" {
                    format!("its certificate is not valid for {}", name_of(&wanted))
                } else {
                    reason
                };
                Err(refused(code, reason, end_entity))
            }
        }
    }

    signature_checks!();
}

fn name_of(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => format!("{:?}", d.as_ref()),
        ServerName::IpAddress(ip) => format!("{}", std::net::IpAddr::from(*ip)),
        other => format!("{other:?}"),
    }
}

/// A failed TLS handshake, in words for the person on call, with a short
/// code for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// Short reason: `unknown_ca`, `no_client_certificate`,
    /// `protocol_version`, `bad_certificate`, `expired`, `not_yet_valid`,
    /// `name_mismatch`, `pin_mismatch`, `refused_by_peer`, `not_tls`,
    /// `closed`, `other`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl HandshakeFailure {
    /// Describe a failure from the error chain of a handshake. `we_are_server`
    /// phrases "the client" / "the server".
    pub fn of(err: &(dyn std::error::Error + 'static), we_are_server: bool) -> HandshakeFailure {
        let peer = if we_are_server {
            "the client"
        } else {
            "the server"
        };
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut eof = false;
        let known = |e: &(dyn std::error::Error + 'static)| {
            if let Some(r) = e.downcast_ref::<Refused>() {
                return Some(HandshakeFailure {
                    code: r.code,
                    message: format!("{peer} was refused: {r}"),
                });
            }
            e.downcast_ref::<rustls::Error>()
                .map(|r| Self::of_rustls(r, peer))
        };
        while let Some(e) = cur {
            if let Some(f) = known(e) {
                return f;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(f) = io.get_ref().and_then(|inner| known(inner)) {
                    return f;
                }
                eof |= matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                );
            }
            cur = e.source();
        }
        if eof {
            return HandshakeFailure {
                code: "closed",
                message: format!(
                    "{peer} closed the connection during the TLS handshake: it may not speak TLS on this port (plaintext DICOM?), or it refused our TLS version, cipher suites or certificate"
                ),
            };
        }
        HandshakeFailure {
            code: "other",
            message: format!("TLS handshake failed: {err}"),
        }
    }

    fn of_rustls(e: &rustls::Error, peer: &str) -> HandshakeFailure {
        use rustls::AlertDescription as A;
        let (code, message) = match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
                match o.0.downcast_ref::<Refused>() {
                    Some(r) => (r.code, format!("{peer} was refused: {r}")),
                    None => (
                        "bad_certificate",
                        format!("{peer}'s certificate is refused: {o}"),
                    ),
                }
            }
            rustls::Error::InvalidCertificate(_) => {
                let (code, reason) = certificate_reason(e);
                (code, format!("{peer} was refused: {reason}"))
            }
            rustls::Error::NoCertificatesPresented => (
                "no_client_certificate",
                format!(
                    "{peer} presented no certificate, and this listener requires one (mutual TLS)"
                ),
            ),
            rustls::Error::PeerIncompatible(p) => (
                "protocol_version",
                format!(
                    "{peer} offers no TLS version or cipher suite we accept (TLS 1.2/1.3, BCP 195 suites): {p:?}"
                ),
            ),
            rustls::Error::AlertReceived(a) => match a {
                A::UnknownCA => (
                    "refused_by_peer",
                    format!(
                        "{peer} refused our certificate: unknown CA (it does not trust our issuer)"
                    ),
                ),
                A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown => (
                    "refused_by_peer",
                    format!("{peer} refused our certificate ({a:?})"),
                ),
                A::CertificateExpired => (
                    "refused_by_peer",
                    format!("{peer} refused our certificate: expired"),
                ),
                A::CertificateRequired => (
                    "no_client_certificate",
                    format!(
                        "{peer} requires a client certificate; set [device.tls] certificate and private_key"
                    ),
                ),
                A::ProtocolVersion => (
                    "protocol_version",
                    format!("{peer} refused the TLS version"),
                ),
                A::HandshakeFailure | A::InsufficientSecurity => (
                    "protocol_version",
                    format!(
                        "{peer} refused the handshake: no TLS version or cipher suite in common"
                    ),
                ),
                other => (
                    "refused_by_peer",
                    format!("{peer} ended the handshake: {other:?}"),
                ),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => (
                "not_tls",
                format!("{peer} does not speak TLS (plaintext DICOM on a TLS connection?)"),
            ),
            other => (
                "other",
                format!("TLS handshake with {peer} failed: {other}"),
            ),
        };
        HandshakeFailure { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_san_wildcard_or_cn() {
        let info = CertificateInfo {
            subject: "CN=MIRROR".into(),
            issuer: "CN=ca".into(),
            not_after: 0,
            sha256: String::new(),
            names: vec!["mirror.example.org".into(), "*.dr.example.org".into()],
            common_name: Some("Mirror PACS".into()),
        };
        assert!(info.carries_name("MIRROR.example.org."));
        assert!(info.carries_name("pacs.dr.example.org"));
        assert!(!info.carries_name("a.b.dr.example.org"));
        assert!(!info.carries_name("dr.example.org"));
        assert!(info.carries_name("mirror pacs"));
        assert!(!info.carries_name("other.example.org"));
    }

    #[test]
    fn aes_128_gcm_and_tls_1_3_come_first() {
        let all = Suites(vec![
            0x1301, 0x1302, 0x1303, 0xc02b, 0xc02c, 0xc02f, 0xc030, 0xcca8, 0xcca9,
        ]);
        let p = provider(&all).expect("suites");
        let order: Vec<u16> = p
            .cipher_suites
            .iter()
            .map(|s| u16::from(s.suite()))
            .collect();
        assert_eq!(order[0], 0x1301, "{order:x?}");
        assert!(
            order[..3]
                .iter()
                .all(|c| [0x1301, 0x1302, 0x1303].contains(c)),
            "{order:x?}"
        );
        assert!([0xc02b, 0xc02f].contains(&order[3]), "{order:x?}");
        let only = provider(&Suites(vec![0xc030])).expect("one suite");
        assert_eq!(only.cipher_suites.len(), 1);
        assert!(matches!(
            provider(&Suites(vec![0x0005])),
            Err(TlsError::NoCipherSuites)
        ));
    }

    #[test]
    fn missing_files_are_all_reported() {
        let files = TlsFiles {
            certificate: Some("/nonexistent/cert.pem".into()),
            private_key: Some("/nonexistent/key.pem".into()),
            trusted_ca: Some("/nonexistent/ca.pem".into()),
        };
        let errors = Tls::check(&files);
        assert_eq!(errors.len(), 3, "{errors:?}");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("certificate /nonexistent/cert.pem: cannot read it"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("private_key /nonexistent/key.pem"),
            "{text:?}"
        );
        assert!(
            text[2].starts_with("trusted_ca /nonexistent/ca.pem"),
            "{text:?}"
        );
    }
}
