//! The DICOM TLS checks of [`Config::validate`]: cipher suites, the
//! device's TLS files being named where a TLS connection needs them, remote
//! AE certificate identities; and [`Config::plaintext_findings`] (a listener
//! or a target outside loopback without TLS).

use super::{Report, trim_ae};
use crate::Config;
use crate::device::NetworkConnection;
use crate::host::{is_loopback_host, listener_display};
use crate::tls::{BCP195_ND, expand_cipher_suites, parse_sha256_pin};

impl Config {
    pub(super) fn check_tls(&self, r: &mut Report) {
        let tls = self.device.tls.clone().unwrap_or_default();
        let mut needs_certificate = false;
        let mut needs_trusted_ca = false;
        let mut any_tls = false;

        for (i, c) in self.device.network_connections.iter().enumerate() {
            let p = format!("device.network_connection[{i}]");
            check_suites(&p, c, r);
            any_tls |= c.is_tls();
            if c.require_client_certificate && !c.is_tls() {
                r.error(
                    format!("{p}.require_client_certificate"),
                    format!(
                        "require_client_certificate needs a TLS connection: add tls_cipher_suites = [\"{BCP195_ND}\"]"
                    ),
                );
            }
            if !self.listens_on(c) {
                continue;
            }
            if c.is_tls() {
                needs_certificate = true;
                needs_trusted_ca |= c.require_client_certificate;
            }
        }

        for (d, device) in self.remote_devices.iter().enumerate() {
            for (i, c) in device.network_connections.iter().enumerate() {
                let p = format!("remote_device[{d}].network_connection[{i}]");
                check_suites(&p, c, r);
                any_tls |= c.is_tls();
                if c.require_client_certificate {
                    r.error(
                        format!("{p}.require_client_certificate"),
                        "require_client_certificate is for this device's own listeners; for a remote AE, name its certificate with certificate_name or certificate_sha256",
                    );
                }
            }
            for (a, ae) in device.network_aes.iter().enumerate() {
                let p = format!("remote_device[{d}].network_ae[{a}]");
                let pinned = match &ae.certificate_sha256 {
                    Some(pin) => match parse_sha256_pin(pin) {
                        Ok(_) => true,
                        Err(e) => {
                            r.error(format!("{p}.certificate_sha256"), e.to_string());
                            false
                        }
                    },
                    None => false,
                };
                if let Some(name) = &ae.certificate_name
                    && name.trim().is_empty()
                {
                    r.error(
                        format!("{p}.certificate_name"),
                        "certificate_name is empty; write the DNS name or common name its certificate carries, or remove the key",
                    );
                }
                let identity = pinned || ae.certificate_name.is_some();
                // Outbound: what we connect to.
                if ae.association_acceptor
                    && let Some(c) = Config::remote_connection(device, ae)
                {
                    if c.is_tls() {
                        any_tls = true;
                        needs_trusted_ca |= !pinned;
                    } else if identity {
                        r.warning(
                            p.clone(),
                            "certificate_name / certificate_sha256 are not checked when connecting to this AE: its network connection is plaintext",
                        );
                    }
                }
                // Inbound: an AE with a certificate identity is admitted
                // over TLS only.
                if identity && ae.association_initiator {
                    for (l, local) in self.device.network_aes.iter().enumerate() {
                        if !local
                            .allowed_calling_aes
                            .iter()
                            .any(|t| trim_ae(t) == trim_ae(&ae.ae_title))
                        {
                            continue;
                        }
                        for name in &local.network_connections {
                            if let Some(c) = self.connection(name)
                                && c.installed
                                && !c.is_tls()
                            {
                                r.warning(
                                    format!("device.network_ae[{l}].allowed_calling_aes"),
                                    format!(
                                        "{:?} has a certificate identity, so its associations on the plaintext listener {} are refused; it must call over TLS",
                                        trim_ae(&ae.ae_title),
                                        listener_display(&c.hostname, c.port)
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }

        match (&tls.certificate, &tls.private_key) {
            (Some(_), None) => r.error(
                "device.tls.private_key",
                "certificate is set without private_key; name the PEM file of its key",
            ),
            (None, Some(_)) => r.error(
                "device.tls.certificate",
                "private_key is set without certificate; name the PEM file of its certificate (and chain)",
            ),
            (None, None) if needs_certificate => r.error(
                "device.tls",
                "a TLS listener needs this device's certificate: set [device.tls] certificate and private_key (PEM files)",
            ),
            _ => {}
        }
        if needs_trusted_ca && tls.trusted_ca.is_none() {
            r.error(
                "device.tls.trusted_ca",
                "TLS peers are verified against trusted CAs (mutual TLS, or a TLS target without certificate_sha256): set [device.tls] trusted_ca (a PEM file of CA certificates)",
            );
        }
        if self.device.tls.is_some() && !any_tls {
            r.warning(
                "device.tls",
                "[device.tls] is set but no network connection has tls_cipher_suites; nothing uses TLS",
            );
        }
    }

    /// The plaintext exposure of this configuration, as warnings (shown by
    /// `pacs-mirror config check` and logged at start-up; not part of
    /// [`Config::validate`], which is about correctness): every installed
    /// plaintext listener on an address outside loopback, and every DICOM
    /// target reached in plaintext outside loopback.
    pub fn plaintext_findings(&self) -> Vec<crate::Finding> {
        let mut r = Report::default();
        for (i, c) in self.device.network_connections.iter().enumerate() {
            if self.listens_on(c) && !c.is_tls() && !is_loopback_host(&c.hostname) {
                r.warning(
                    format!("device.network_connection[{i}]"),
                    format!(
                        "plaintext DICOM listener on {}: objects and patient data cross the network unencrypted and senders are identified by AE title and address only; make it TLS (tls_cipher_suites = [\"{BCP195_ND}\"]) and keep a plaintext connection only for modalities that cannot do TLS",
                        listener_display(&c.hostname, c.port)
                    ),
                );
            }
        }
        for (d, device) in self.remote_devices.iter().enumerate() {
            for (a, ae) in device.network_aes.iter().enumerate() {
                if let Some(c) = Config::remote_connection(device, ae)
                    && ae.association_acceptor
                    && !c.is_tls()
                    && !is_loopback_host(&c.hostname)
                    && self.sends_to(&ae.ae_title)
                {
                    r.warning(
                        format!("remote_device[{d}].network_ae[{a}]"),
                        format!(
                            "target {:?} is reached in plaintext at {}: what is sent to it crosses the network unencrypted and its identity is not checked; give its network_connection tls_cipher_suites = [\"{BCP195_ND}\"]",
                            trim_ae(&ae.ae_title),
                            listener_display(&c.hostname, c.port)
                        ),
                    );
                }
            }
        }
        r.findings
    }

    /// Whether the agent listens on this local connection (installed, used
    /// by an acceptor AE).
    fn listens_on(&self, c: &NetworkConnection) -> bool {
        c.installed
            && self
                .acceptor_aes()
                .any(|ae| ae.network_connections.contains(&c.name))
    }

    /// Whether some target or drill connects to this remote AE.
    fn sends_to(&self, ae_title: &str) -> bool {
        let t = trim_ae(ae_title);
        self.targets.iter().any(|target| {
            matches!(target, crate::Target::Dicom { remote_ae, .. } if trim_ae(remote_ae) == t)
        })
    }
}

fn check_suites(p: &str, c: &NetworkConnection, r: &mut Report) {
    for (k, entry) in c.tls_cipher_suites.iter().enumerate() {
        if let Err(e) = expand_cipher_suites(std::slice::from_ref(entry)) {
            r.error(format!("{p}.tls_cipher_suites[{k}]"), e.to_string());
        }
    }
}
