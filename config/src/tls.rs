//! DICOM TLS in the configuration (PS3.15 Annex B secure transport
//! connection profiles, Annex H `dicomTLSCipherSuite`): the device's
//! certificate, key and trusted CAs (`[device.tls]`), the cipher suites that
//! make a network connection a TLS one, and a remote AE's certificate
//! identity (`certificate_name`, `certificate_sha256`).
//!
//! Pure: the files are not read here (the agent reads and checks them; see
//! `pacs-mirror config check`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The BCP 195 non-downgrading profile (PS3.15 B.9): TLS 1.2 and 1.3 only,
/// AEAD suites with forward secrecy. The default, and the only profile name
/// `tls_cipher_suites` accepts.
pub const BCP195_ND: &str = "BCP195-ND";

/// The TLS versions of the cipher suites pacs-mirror implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// A cipher suite pacs-mirror implements (rustls).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSuiteInfo {
    /// Its IANA name.
    pub name: &'static str,
    /// Its IANA code point.
    pub code: u16,
    /// Its TLS version.
    pub version: TlsVersion,
    /// Whether [`BCP195_ND`] includes it.
    pub bcp195_nd: bool,
}

const fn suite(
    name: &'static str,
    code: u16,
    version: TlsVersion,
    bcp195_nd: bool,
) -> CipherSuiteInfo {
    CipherSuiteInfo {
        name,
        code,
        version,
        bcp195_nd,
    }
}

/// The cipher suites pacs-mirror implements. Nothing older than TLS 1.2,
/// nothing without forward secrecy or an AEAD cipher.
pub const CIPHER_SUITES: &[CipherSuiteInfo] = &[
    suite("TLS_AES_128_GCM_SHA256", 0x1301, TlsVersion::Tls13, true),
    suite("TLS_AES_256_GCM_SHA384", 0x1302, TlsVersion::Tls13, true),
    suite(
        "TLS_CHACHA20_POLY1305_SHA256",
        0x1303,
        TlsVersion::Tls13,
        true,
    ),
    suite(
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02b,
        TlsVersion::Tls12,
        true,
    ),
    suite(
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xc02c,
        TlsVersion::Tls12,
        true,
    ),
    suite(
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc02f,
        TlsVersion::Tls12,
        true,
    ),
    suite(
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xc030,
        TlsVersion::Tls12,
        true,
    ),
    suite(
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca8,
        TlsVersion::Tls12,
        false,
    ),
    suite(
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0xcca9,
        TlsVersion::Tls12,
        false,
    ),
];

/// The device's TLS material (`[device.tls]`; Annex H
/// `dicomThisNodeCertificateReference` and
/// `dicomAuthorizedNodeCertificateReference`). PEM files; re-read on SIGHUP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceTls {
    /// This device's certificate, followed by its intermediate CAs (PEM).
    /// Needed by a TLS listener; presented to TLS peers that ask for a
    /// client certificate.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The private key of `certificate` (PEM: PKCS#8, PKCS#1 or SEC1).
    /// Keep it readable by the agent's user only.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// The CAs whose certificates this device accepts from peers (PEM, one
    /// or more): the mirror's server certificate, the senders' client
    /// certificates.
    #[serde(default)]
    pub trusted_ca: Option<PathBuf>,
}

/// What is wrong with a `tls_cipher_suites` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CipherSuiteError {
    /// Neither the profile name nor a cipher suite pacs-mirror implements.
    #[error(
        "{0:?} is neither the profile {BCP195_ND:?} nor a cipher suite pacs-mirror implements ({list}); TLS 1.0/1.1, CBC, RSA key exchange and DHE suites are not offered",
        list = suite_names()
    )]
    Unknown(String),
}

fn suite_names() -> String {
    CIPHER_SUITES
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The suites a `tls_cipher_suites` list stands for, in order, without
/// repeats: [`BCP195_ND`] (any case) expands to its suites.
pub fn cipher_suites(list: &[String]) -> Result<Vec<CipherSuiteInfo>, CipherSuiteError> {
    let mut out: Vec<CipherSuiteInfo> = Vec::new();
    for entry in list {
        let e = entry.trim();
        let found: Vec<CipherSuiteInfo> = if e.eq_ignore_ascii_case(BCP195_ND) {
            CIPHER_SUITES
                .iter()
                .filter(|c| c.bcp195_nd)
                .copied()
                .collect()
        } else {
            match CIPHER_SUITES
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(e))
            {
                Some(c) => vec![*c],
                None => return Err(CipherSuiteError::Unknown(entry.clone())),
            }
        };
        for c in found {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

/// The IANA names a `tls_cipher_suites` list stands for ([`cipher_suites`]).
pub fn expand_cipher_suites(list: &[String]) -> Result<Vec<&'static str>, CipherSuiteError> {
    Ok(cipher_suites(list)?.into_iter().map(|c| c.name).collect())
}

/// What is wrong with a `certificate_sha256` pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// Not 32 bytes of hex.
    #[error(
        "{0:?} is not a SHA-256 fingerprint: write 64 hexadecimal digits, with or without colons (as `openssl x509 -noout -fingerprint -sha256` prints it)"
    )]
    Malformed(String),
}

/// A SHA-256 certificate fingerprint, from 64 hex digits with or without
/// colons (any case).
pub fn parse_sha256_pin(s: &str) -> Result<[u8; 32], PinError> {
    let hex: Vec<u8> = s
        .trim()
        .bytes()
        .filter(|b| *b != b':' && *b != b' ')
        .collect();
    let bad = || PinError::Malformed(s.to_string());
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16).ok_or_else(bad);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_expands_to_its_suites_once() {
        let got = expand_cipher_suites(&[
            "bcp195-nd".into(),
            "TLS_AES_128_GCM_SHA256".into(),
            "tls_ecdhe_rsa_with_chacha20_poly1305_sha256".into(),
        ])
        .expect("valid");
        assert_eq!(got.len(), 8, "{got:?}");
        assert_eq!(got[0], "TLS_AES_128_GCM_SHA256");
        assert_eq!(got[7], "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256");
        assert!(!got.contains(&"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"));
    }

    #[test]
    fn weak_suites_are_refused_by_name() {
        let e =
            expand_cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).expect_err("refused");
        assert!(
            e.to_string().contains("TLS_RSA_WITH_AES_128_CBC_SHA"),
            "{e}"
        );
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let plain = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let a = parse_sha256_pin(plain).expect("plain");
        let colons: Vec<String> = plain
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let b = parse_sha256_pin(&colons.join(":")).expect("colons");
        assert_eq!(a, b);
        assert_eq!(a[1], 0x11);
        assert_eq!(a[31], 0xff);
        assert!(parse_sha256_pin(&plain[2..]).is_err());
        assert!(parse_sha256_pin(&plain.replace('0', "g")).is_err());
    }
}
