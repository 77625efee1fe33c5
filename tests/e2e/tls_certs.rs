//! Test certificates for DICOM TLS, made with the `openssl` CLI: two
//! unrelated CAs, leaves signed by them for 127.0.0.1/localhost and for a
//! client, an expired and a short-lived leaf, and a self-signed leaf (for
//! pinning). Keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), read by
//! DCMTK, Orthanc (through DCMTK) and rustls-pki-types alike; the CAs' are
//! EC P-256, the leaves' EC P-256 ([`TlsCerts::generate`], ~100 ms) or RSA
//! 2048 ([`TlsCerts::generate_with`] `KeyKind::Rsa2048`). Mind the trap:
//! DCMTK 3.6.7's BCP 195 profiles offer TLS 1.2 suites for RSA leaves only,
//! so EC leaves talk to DCMTK and Orthanc over TLS 1.3 only (see
//! [`KeyKind`]). Every certificate is X.509 v3 with basicConstraints
//! (CA:TRUE on the CAs, CA:FALSE on the leaves), keyUsage, extendedKeyUsage
//! on leaves, subjectKeyIdentifier and (on CA-signed leaves)
//! authorityKeyIdentifier, as webpki wants.
//!
//! See tests/e2e/TLS-PEERS.md for which peer takes which file.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::harness::{run, tail};

/// A leaf certificate and its private key (PEM files).
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every certificate [`TlsCerts::generate`] makes, as PEM paths.
#[derive(Clone, Debug)]
pub struct TlsCerts {
    pub dir: PathBuf,
    /// The leaves' key kind (the CAs are EC P-256).
    pub kind: KeyKind,
    /// The test CA ("pacs-mirror test CA"), self-signed, CA:TRUE.
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// A second, unrelated CA ("pacs-mirror other CA").
    pub other_ca: PathBuf,
    pub other_ca_key: PathBuf,
    /// CN=localhost, SAN IP:127.0.0.1 + DNS:localhost, signed by `ca`;
    /// EKU serverAuth *and* clientAuth, because Orthanc presents its one
    /// `DicomTlsCertificate` both as SCP and as SCU (and OpenSSL checks the
    /// EKU of a client certificate).
    pub server: CertKey,
    /// CN="STORESCU client", SAN DNS:client.test, EKU clientAuth, signed by
    /// `ca`.
    pub client: CertKey,
    /// As `server` (same SANs and EKUs), signed by `other_ca`.
    pub other_server: CertKey,
    /// CN="short-lived", valid 10 days from now, SAN IP:127.0.0.1 +
    /// DNS:localhost + DNS:client.test, EKU serverAuth + clientAuth, signed
    /// by `ca`.
    pub short_lived: CertKey,
    /// CN="expired", valid 2020-01-01 to 2020-02-01, otherwise as
    /// `short_lived`.
    pub expired: CertKey,
    /// CN=localhost, self-signed (no CA behind it), CA:FALSE, SAN
    /// IP:127.0.0.1 + DNS:localhost, EKU serverAuth + clientAuth: for
    /// fingerprint pinning.
    pub self_signed: CertKey,
    /// How long [`TlsCerts::generate`] took.
    pub took: Duration,
}

/// The extension sections every certificate is made with (`-extensions`),
/// plus the minimal `[req]` and `openssl ca` sections the CLI needs, so
/// that nothing depends on the system's openssl.cnf.
const OPENSSL_CNF: &str = r#"
[req]
distinguished_name = req_dn
[req_dn]

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = IP:127.0.0.1, DNS:localhost

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:client.test

[v3_both]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = IP:127.0.0.1, DNS:localhost, DNS:client.test

[v3_self_signed]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
subjectAltName = IP:127.0.0.1, DNS:localhost

[ca_expired]
# relative to the directory `openssl ca` runs in (expired-ca/)
database = ./index.txt
new_certs_dir = .
serial = ./serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
"#;

/// The `openssl` binary (fails the test when missing).
pub fn openssl() -> PathBuf {
    let p = Path::new("/usr/bin/openssl");
    if p.is_file() {
        return p.to_path_buf();
    }
    crate::harness::tool("openssl")
}

/// Run `openssl ARGS` in `dir`; fails the test on error.
fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(openssl());
    cmd.current_dir(dir).args(args);
    let what = format!("openssl {}", args.join(" "));
    let out = run(&mut cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        tail(&out.stdout, 20),
        tail(&out.stderr, 20)
    );
    out.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The kind of the leaves' keys (the CAs' keys are always EC P-256: what
/// signs a chain does not decide the cipher suite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// EC P-256, made afresh (~10 ms each). With DCMTK 3.6.7's BCP 195
    /// profiles (`--profile-bcp195-nd`, `--profile-bcp195`, Orthanc 1.10.1)
    /// these work over TLS 1.3 only: their TLS 1.2 suites are
    /// ECDHE_RSA/DHE_RSA, which need an RSA leaf.
    EcP256,
    /// RSA 2048: TLS 1.2 (ECDHE-RSA/DHE-RSA AES-GCM) and TLS 1.3 with every
    /// DCMTK profile. The keys come from a pool made once and kept under
    /// CARGO_TARGET_TMPDIR (RSA key generation takes 0.1–1 s a key), so
    /// two `TlsCerts` of one run share keys (not certificates).
    Rsa2048,
}

/// Leaves that take a key from the RSA pool, one pool slot each.
const RSA_LEAVES: [&str; 6] = [
    "server",
    "client",
    "other_server",
    "short_lived",
    "expired",
    "self_signed",
];

/// The RSA 2048 keys (PKCS#8 PEM) of the pool, made on first use (in
/// parallel) and kept for later test processes.
fn rsa_pool() -> &'static [PathBuf] {
    static POOL: OnceLock<Vec<PathBuf>> = OnceLock::new();
    POOL.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tls-rsa2048-keys-v1");
        std::fs::create_dir_all(&dir).expect("creating the RSA key pool dir");
        std::thread::scope(|sc| {
            let handles: Vec<_> = RSA_LEAVES
                .iter()
                .map(|name| {
                    let dir = &dir;
                    sc.spawn(move || {
                        let key = dir.join(format!("{name}.key"));
                        if std::fs::read_to_string(&key)
                            .is_ok_and(|k| k.starts_with("-----BEGIN PRIVATE KEY-----"))
                        {
                            return key;
                        }
                        // Made under a private name, then renamed: another
                        // process never sees half a key.
                        let tmp = dir.join(format!("{name}.key.{}", std::process::id()));
                        openssl_ok(
                            dir,
                            &[
                                "genpkey",
                                "-algorithm",
                                "RSA",
                                "-pkeyopt",
                                "rsa_keygen_bits:2048",
                                "-out",
                                s(&tmp),
                            ],
                        );
                        std::fs::rename(&tmp, &key).expect("renaming an RSA pool key");
                        key
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("making an RSA pool key"))
                .collect()
        })
    })
}

/// The `openssl req` arguments that give leaf `name` its key at `key`:
/// a fresh EC P-256 key, or a copy of its RSA pool key.
fn key_args(kind: KeyKind, name: &str, key: &Path) -> Vec<String> {
    match kind {
        KeyKind::EcP256 => [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
            "-keyout",
            s(key),
        ]
        .map(String::from)
        .to_vec(),
        KeyKind::Rsa2048 => {
            let slot = RSA_LEAVES
                .iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| panic!("no RSA pool key for {name}"));
            std::fs::copy(&rsa_pool()[slot], key).expect("copying an RSA pool key");
            vec!["-key".into(), s(key).into()]
        }
    }
}

/// A key and a certificate for it: self-signed when `ca` is `None`, else
/// signed by `ca` (one `openssl req -x509 [-CA]` call: OpenSSL 3.0 or
/// later).
#[allow(clippy::too_many_arguments)]
fn make(
    dir: &Path,
    kind: KeyKind,
    name: &str,
    subject: &str,
    ext: &str,
    days: &str,
    serial: u32,
    ca: Option<&CertKey>,
) -> CertKey {
    let ck = CertKey {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let serial = serial.to_string();
    let mut args: Vec<String> = [
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        ext,
        "-out",
        s(&ck.cert),
        "-subj",
        subject,
        "-days",
        days,
        "-sha256",
        "-set_serial",
        &serial,
    ]
    .map(String::from)
    .to_vec();
    args.extend(key_args(kind, name, &ck.key));
    if let Some(ca) = ca {
        args.extend(["-CA", s(&ca.cert), "-CAkey", s(&ca.key)].map(String::from));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl_ok(dir, &args);
    ck
}

/// A certificate valid from 2020-01-01 to 2020-02-01 signed by `ca`:
/// `openssl req`/`x509` cannot date a certificate in the past, `openssl
/// ca` can (it wants a small database, kept in `dir/expired-ca`).
fn expired(dir: &Path, kind: KeyKind, ca: &CertKey) -> CertKey {
    let db = dir.join("expired-ca");
    std::fs::create_dir_all(&db).expect("creating the openssl ca database dir");
    std::fs::write(db.join("index.txt"), "").expect("writing index.txt");
    std::fs::write(db.join("serial"), "1000\n").expect("writing serial");
    let ck = CertKey {
        cert: dir.join("expired.pem"),
        key: dir.join("expired.key"),
    };
    let csr = db.join("expired.csr");
    let mut args: Vec<String> = [
        "req",
        "-new",
        "-config",
        "openssl.cnf",
        "-out",
        s(&csr),
        "-subj",
        "/CN=expired",
    ]
    .map(String::from)
    .to_vec();
    args.extend(key_args(kind, "expired", &ck.key));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    openssl_ok(dir, &args);
    let cnf = dir.join("openssl.cnf");
    openssl_ok(
        &db,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            s(&cnf),
            "-name",
            "ca_expired",
            "-cert",
            s(&ca.cert),
            "-keyfile",
            s(&ca.key),
            "-in",
            s(&csr),
            "-out",
            s(&ck.cert),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extfile",
            s(&cnf),
            "-extensions",
            "v3_both",
        ],
    );
    ck
}

impl TlsCerts {
    /// Make every certificate into `dir` (created if needed), with EC P-256
    /// keys (~100 ms in all). See [`KeyKind::EcP256`] for what DCMTK does
    /// with them.
    pub fn generate(dir: &Path) -> TlsCerts {
        TlsCerts::generate_with(dir, KeyKind::EcP256)
    }

    /// As [`TlsCerts::generate`], the leaves with keys of `kind`. The two
    /// CAs first, then the leaves, each on its own thread.
    pub fn generate_with(dir: &Path, kind: KeyKind) -> TlsCerts {
        let t0 = Instant::now();
        if kind == KeyKind::Rsa2048 {
            rsa_pool();
        }
        std::fs::create_dir_all(dir).expect("creating the certificate dir");
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("writing openssl.cnf");
        let ec = KeyKind::EcP256;
        let (ca, other_ca) = std::thread::scope(|sc| {
            let ca = sc.spawn(|| {
                make(
                    dir,
                    ec,
                    "ca",
                    "/CN=pacs-mirror test CA",
                    "v3_ca",
                    "3650",
                    1,
                    None,
                )
            });
            let other = sc.spawn(|| {
                make(
                    dir,
                    ec,
                    "other_ca",
                    "/CN=pacs-mirror other CA",
                    "v3_ca",
                    "3650",
                    1,
                    None,
                )
            });
            (
                ca.join().expect("making the CA"),
                other.join().expect("making the other CA"),
            )
        });
        let (ca_ref, other_ref) = (Some(&ca), Some(&other_ca));
        let (server, client, other_server, short_lived, expired, self_signed) =
            std::thread::scope(|sc| {
                let server = sc.spawn(|| {
                    make(
                        dir,
                        kind,
                        "server",
                        "/CN=localhost",
                        "v3_server",
                        "3650",
                        2,
                        ca_ref,
                    )
                });
                let client = sc.spawn(|| {
                    make(
                        dir,
                        kind,
                        "client",
                        "/CN=STORESCU client",
                        "v3_client",
                        "3650",
                        3,
                        ca_ref,
                    )
                });
                let other_server = sc.spawn(|| {
                    make(
                        dir,
                        kind,
                        "other_server",
                        "/CN=localhost",
                        "v3_server",
                        "3650",
                        4,
                        other_ref,
                    )
                });
                let short_lived = sc.spawn(|| {
                    make(
                        dir,
                        kind,
                        "short_lived",
                        "/CN=short-lived",
                        "v3_both",
                        "10",
                        5,
                        ca_ref,
                    )
                });
                let exp = sc.spawn(|| expired(dir, kind, &ca));
                let ss = sc.spawn(|| {
                    make(
                        dir,
                        kind,
                        "self_signed",
                        "/CN=localhost",
                        "v3_self_signed",
                        "3650",
                        6,
                        None,
                    )
                });
                (
                    server.join().expect("making the server certificate"),
                    client.join().expect("making the client certificate"),
                    other_server
                        .join()
                        .expect("making the other-CA server certificate"),
                    short_lived
                        .join()
                        .expect("making the short-lived certificate"),
                    exp.join().expect("making the expired certificate"),
                    ss.join().expect("making the self-signed certificate"),
                )
            });
        TlsCerts {
            dir: dir.to_path_buf(),
            kind,
            ca: ca.cert,
            ca_key: ca.key,
            other_ca: other_ca.cert,
            other_ca_key: other_ca.key,
            server,
            client,
            other_server,
            short_lived,
            expired,
            self_signed,
            took: t0.elapsed(),
        }
    }

    /// Write the concatenation of PEM files `parts` to `dir/name` (e.g. a
    /// trust bundle of both CAs); its path.
    pub fn bundle(&self, name: &str, parts: &[&Path]) -> PathBuf {
        let mut all = Vec::new();
        for p in parts {
            let b = std::fs::read(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            all.extend_from_slice(&b);
            if !all.ends_with(b"\n") {
                all.push(b'\n');
            }
        }
        let out = self.dir.join(name);
        std::fs::write(&out, all).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        out
    }
}

/// The SHA-256 fingerprint of a certificate's DER, two ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// `AB:CD:…` (what `openssl x509 -fingerprint` prints).
    pub colon_upper: String,
    /// `abcd…` (64 lowercase hex digits).
    pub hex_lower: String,
}

/// The SHA-256 fingerprint of the (first) certificate in PEM file `cert`.
pub fn fingerprint(cert: &Path) -> Fingerprint {
    let out = openssl_ok(
        Path::new("/"),
        &["x509", "-noout", "-fingerprint", "-sha256", "-in", s(cert)],
    );
    // OpenSSL 3 prints "sha256 Fingerprint=AB:CD:…" (1.1: "SHA256 …").
    let colon_upper = out
        .trim()
        .split_once('=')
        .map(|(_, v)| v.trim().to_ascii_uppercase())
        .unwrap_or_else(|| panic!("no fingerprint in openssl's answer: {out}"));
    let hex_lower: String = colon_upper
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    assert_eq!(
        hex_lower.len(),
        64,
        "not a SHA-256 fingerprint: {colon_upper}"
    );
    Fingerprint {
        colon_upper,
        hex_lower,
    }
}

/// The lowercase hex SHA-256 of a PEM certificate's DER (what a pin in the
/// agent's configuration would hold).
pub fn sha256_hex(cert: &Path) -> String {
    fingerprint(cert).hex_lower
}

/// The DER bytes of the (first) certificate in PEM file `cert`.
pub fn cert_der(cert: &Path) -> Vec<u8> {
    let out = Command::new(openssl())
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .expect("running openssl x509 -outform DER");
    assert!(
        out.status.success(),
        "openssl x509 -outform DER -in {} failed: {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
