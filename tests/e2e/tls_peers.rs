//! DICOM TLS peers for the end-to-end tests, and the proof that they work
//! among themselves (no pacs-mirror involved): DCMTK storescp/storescu/
//! echoscu with `+tls` under the non-downgrading BCP 195 profile, and
//! Orthanc 1.10.1 with `DicomTlsEnabled` (SCP) and `UseDicomTls` (SCU).
//! Certificates come from [`crate::tls_certs`]. The command lines and
//! configuration keys are summed up in tests/e2e/TLS-PEERS.md.
//!
//! Every test asserts on exit codes, DIMSE statuses, log lines and the
//! received bytes; a peer that cannot start fails the test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::tls_certs::{CertKey, KeyKind, TlsCerts, cert_der, fingerprint, openssl, sha256_hex};

// ---------------------------------------------------------------------------
// DCMTK command lines
// ---------------------------------------------------------------------------

/// What a DCMTK tool does with its peer's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerCert {
    /// `--require-peer-cert` (DCMTK's default): verify it against the
    /// `+cf` certificates, fail if absent or not trusted.
    Require,
    /// `--verify-peer-cert` (storescp only): verify it if one is sent, an
    /// SCU without a certificate is let in.
    Verify,
    /// `--ignore-peer-cert`: do not verify (nor, on an SCP, ask for) one.
    Ignore,
}

/// The DCMTK (3.6.7) TLS options of one tool.
#[derive(Clone, Debug)]
pub struct DcmtkTls {
    /// `+tls KEY CERT` (private key first!); `None`: `+tla`, anonymous TLS
    /// (SCU only).
    pub own: Option<CertKey>,
    /// `+cf FILE` each: the certificates (CAs, or a peer's own
    /// self-signed certificate) the peer's certificate is verified
    /// against. Without one DCMTK trusts nothing: with `Require` every
    /// handshake then fails with "certificate verify failed".
    pub trusted: Vec<PathBuf>,
    pub peer_cert: PeerCert,
    /// `--profile-bcp195-nd` (the default of 3.6.7, written anyway),
    /// `--profile-bcp195` or `--profile-bcp195-ex`.
    pub profile: &'static str,
}

impl DcmtkTls {
    /// An SCP (storescp) presenting `own`, trusting `trusted`.
    pub fn scp(own: &CertKey, trusted: &[&Path], peer_cert: PeerCert) -> DcmtkTls {
        DcmtkTls {
            own: Some(own.clone()),
            trusted: trusted.iter().map(|p| p.to_path_buf()).collect(),
            peer_cert,
            profile: "--profile-bcp195-nd",
        }
    }

    /// An SCU (storescu, echoscu) presenting `own` (`None`: `+tla`) and
    /// requiring the SCP's certificate to verify against `trusted`.
    pub fn scu(own: Option<&CertKey>, trusted: &[&Path]) -> DcmtkTls {
        DcmtkTls {
            own: own.cloned(),
            trusted: trusted.iter().map(|p| p.to_path_buf()).collect(),
            peer_cert: PeerCert::Require,
            profile: "--profile-bcp195-nd",
        }
    }

    pub fn with_peer_cert(mut self, peer_cert: PeerCert) -> DcmtkTls {
        self.peer_cert = peer_cert;
        self
    }

    pub fn with_profile(mut self, profile: &'static str) -> DcmtkTls {
        self.profile = profile;
        self
    }

    /// The options, to put before the host/port arguments.
    pub fn args(&self) -> Vec<String> {
        let p = |p: &Path| p.to_str().expect("a UTF-8 path").to_string();
        let mut a = Vec::new();
        match &self.own {
            Some(ck) => {
                a.push("+tls".to_string());
                a.push(p(&ck.key));
                a.push(p(&ck.cert));
            }
            None => a.push("+tla".to_string()),
        }
        for t in &self.trusted {
            a.push("+cf".to_string());
            a.push(p(t));
        }
        a.push(self.profile.to_string());
        a.push(
            match self.peer_cert {
                PeerCert::Require => "--require-peer-cert",
                PeerCert::Verify => "--verify-peer-cert",
                PeerCert::Ignore => "--ignore-peer-cert",
            }
            .to_string(),
        );
        a
    }
}

/// Whether something listens on TCP `port` (any address), from
/// /proc/net/tcp{,6}: a readiness check that opens no connection (a bare
/// TCP probe makes a TLS SCP log a failed handshake).
pub fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut it = l.split_whitespace();
                let local = it.nth(1).unwrap_or("");
                let state = it.nth(1).unwrap_or("");
                local.ends_with(&want) && state == "0A"
            })
        })
    })
}

/// The protocol and cipher suite DCMTK printed in `-d` mode ("Protocol
/// : TLSv1.3", "Ciphersuite : TLS_AES_256_GCM_SHA384, …") for the first
/// TLS connection in `log`.
pub fn dcmtk_tls_details(log: &str) -> Option<(String, String)> {
    let val = |key: &str| {
        log.lines()
            .find_map(|l| l.trim_start_matches("D:").trim().strip_prefix(key))
            .map(|v| v.trim().trim_start_matches(':').trim().to_string())
    };
    Some((val("Protocol")?, val("Ciphersuite")?))
}

/// DCMTK storescp with TLS, bit-preserving (`+B`), accepting every
/// transfer syntax (`+xa`), logging in debug mode (`-d`: the TLS details
/// of each connection, with the peer's certificate) to `log`. Killed on
/// drop.
pub struct TlsStorescp {
    child: Option<Child>,
    pub ae: String,
    pub port: u16,
    pub out: PathBuf,
    pub log: PathBuf,
}

impl TlsStorescp {
    /// Start it on `port` with files under `dir/storescp-<port>/`, and wait
    /// (10 s at most) until it listens; fails the test if it exits first.
    pub fn start(dir: &Path, ae: &str, port: u16, tls: &DcmtkTls) -> TlsStorescp {
        let base = dir.join(format!("storescp-{port}"));
        let out = base.join("out");
        std::fs::create_dir_all(&out).expect("creating the storescp output dir");
        let log = base.join("storescp.log");
        let logf = std::fs::File::create(&log).expect("creating the storescp log");
        let child = Command::new(tool("storescp"))
            .args(["-d", "+B", "+xa", "-aet", ae, "-od"])
            .arg(&out)
            .args(tls.args())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                logf.try_clone().expect("cloning the storescp log handle"),
            ))
            .stderr(Stdio::from(logf))
            .spawn()
            .expect("starting storescp");
        let mut scp = TlsStorescp {
            child: Some(child),
            ae: ae.into(),
            port,
            out,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = scp.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "storescp {:?} exited before listening ({st}){}",
                    tls.args(),
                    log_tail(&scp.log)
                );
            }
            if listening(port) {
                return scp;
            }
            assert!(
                Instant::now() < deadline,
                "storescp did not listen on {port} within 10 s{}",
                log_tail(&scp.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Data set bytes of every file received, by SOP Instance UID.
    pub fn received(&self) -> BTreeMap<String, Vec<u8>> {
        files_under(&self.out)
            .iter()
            .map(|p| {
                let (meta, ds) = raw_info(p);
                (meta.sop_instance_uid, ds)
            })
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for TlsStorescp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `storescu -v` over TLS to 127.0.0.1:`port` (called AE `called`), one
/// association; parsed.
pub fn storescu_tls(port: u16, called: &str, tls: &DcmtkTls, files: &[PathBuf]) -> StoreRun {
    let args = tls.args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = storescu_cmd(port, SENDER_AE, called, &extra, files);
    StoreRun::parse(run(&mut cmd, Duration::from_secs(120)))
}

/// `echoscu -d` over TLS to 127.0.0.1:`port` (`tls: None`: plain TCP).
pub fn echoscu_tls(port: u16, called: &str, tls: Option<&DcmtkTls>) -> Output {
    let mut cmd = Command::new(tool("echoscu"));
    cmd.args(["-d", "-to", "10", "-aet", "ECHOSCU", "-aec", called]);
    if let Some(t) = tls {
        cmd.args(t.args());
    }
    cmd.args(["127.0.0.1", &port.to_string()]);
    run(&mut cmd, Duration::from_secs(60))
}

/// The TLS 1.2 suites and groups rustls offers (its default provider),
/// in OpenSSL's names: no DHE, no CBC.
pub const RUSTLS_TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-RSA-CHACHA20-POLY1305";
pub const RUSTLS_GROUPS: &str = "X25519:P-256:P-384";

/// One TLS handshake with `openssl s_client` to 127.0.0.1:`port`, limited
/// to `version` ("-tls1_2" or "-tls1_3") and to what rustls offers,
/// presenting `client`, verifying the server against `ca`; then EOF (the
/// peer logs a failed association: nothing DICOM is sent). The protocol
/// and suite negotiated, or what s_client said.
pub fn s_client_handshake(
    port: u16,
    version: &str,
    client: &CertKey,
    ca: &Path,
) -> Result<(String, String), String> {
    let out = run(
        Command::new(openssl())
            .args(["s_client", "-brief", "-verify_return_error", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                version,
                "-cipher",
                RUSTLS_TLS12_CIPHERS,
                "-groups",
                RUSTLS_GROUPS,
            ])
            .arg("-cert")
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .arg("-CAfile")
            .arg(ca),
        Duration::from_secs(30),
    );
    let all = out.all();
    let field = |k: &str| {
        all.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    match (
        out.status.success(),
        field("Protocol version:"),
        field("Ciphersuite:"),
    ) {
        (true, Some(p), Some(c)) => Ok((p, c)),
        _ => Err(tail(&all, 6)),
    }
}

// ---------------------------------------------------------------------------
// Orthanc
// ---------------------------------------------------------------------------

/// The `OrthancOptions.extra` keys that turn DICOM TLS on in Orthanc
/// 1.10.1 (names as in its /etc/orthanc/orthanc.json): its SCP port then
/// speaks TLS only, and every modality with `UseDicomTls` is called over
/// TLS. `own` is presented by both its SCP and its SCU (so it needs EKU
/// serverAuth and clientAuth); `trusted` (a PEM bundle, required even when
/// no client certificate is) verifies peers in both roles;
/// `remote_cert_required: false` lets SCUs in without a certificate
/// (`DicomTlsRemoteCertificateRequired`, default true).
pub fn orthanc_tls_extra(
    own: &CertKey,
    trusted: &Path,
    remote_cert_required: bool,
) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("DicomTlsEnabled".into(), Value::Bool(true));
    m.insert(
        "DicomTlsCertificate".into(),
        Value::String(own.cert.display().to_string()),
    );
    m.insert(
        "DicomTlsPrivateKey".into(),
        Value::String(own.key.display().to_string()),
    );
    m.insert(
        "DicomTlsTrustedCertificates".into(),
        Value::String(trusted.display().to_string()),
    );
    m.insert(
        "DicomTlsRemoteCertificateRequired".into(),
        Value::Bool(remote_cert_required),
    );
    m
}

/// Orthanc `ae` on free ports with DICOM TLS on (see
/// [`orthanc_tls_extra`]), knowing `modalities`; also waits until its DICOM
/// port listens.
pub fn start_tls_orthanc(
    dir: &Path,
    ae: &str,
    own: &CertKey,
    trusted: &Path,
    remote_cert_required: bool,
    modalities: Vec<OrthancModality>,
) -> Orthanc {
    let o = Orthanc::start_with(
        dir,
        ae,
        free_port(),
        free_port(),
        &OrthancOptions {
            modalities,
            extra: orthanc_tls_extra(own, trusted, remote_cert_required),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(o.dicom_port) {
        assert!(
            Instant::now() < deadline,
            "Orthanc's DICOM TLS port {} does not listen{}",
            o.dicom_port,
            o.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    o
}

/// `POST /modalities/{modality}/store` of Orthanc instance IDs, synchronous:
/// the HTTP status and the answer as JSON (or as text in `Value::String`).
pub fn orthanc_store_to(o: &Orthanc, modality: &str, ids: &[String]) -> (u16, Value) {
    let body = serde_json::json!({ "Resources": ids, "Synchronous": true }).to_string();
    let (code, bytes) = o.post(&format!("/modalities/{modality}/store"), &body);
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (code, v)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

fn certs(dir: &Path) -> TlsCerts {
    TlsCerts::generate(&dir.join("certs"))
}

fn datasets(files: &[PathBuf]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|p| {
            let (meta, ds) = raw_info(p);
            (meta.sop_instance_uid, ds)
        })
        .collect()
}

fn openssl_out(args: &[&str], file: &Path) -> Output {
    run(
        Command::new(openssl()).args(args).arg(file),
        Duration::from_secs(30),
    )
}

/// Every certificate is what its name says, to OpenSSL: v3, CA:TRUE only
/// on the CAs, verifying (for the right purpose) against its CA and not
/// against the other one; the expired one expired, the short-lived one
/// valid for 10 days; keys in PKCS#8 PEM; fingerprints equal to the
/// SHA-256 of the DER computed by sha256sum. Generation is timed.
#[test]
fn certificates_are_what_their_names_say() {
    let dir = tempdir();
    for kind in [KeyKind::EcP256, KeyKind::Rsa2048] {
        let c = TlsCerts::generate_with(&dir.path().join(format!("{kind:?}")), kind);
        eprintln!("certificate generation ({kind:?}) took {:?}", c.took);
        check_certificates(&c, dir.path());
    }
    // Again, now that the RSA pool exists: both quick.
    for kind in [KeyKind::EcP256, KeyKind::Rsa2048] {
        let c = TlsCerts::generate_with(&dir.path().join(format!("{kind:?}-2")), kind);
        eprintln!("certificate generation ({kind:?}, again) took {:?}", c.took);
        assert!(
            c.took < Duration::from_secs(5),
            "generating the certificates took {:?}",
            c.took
        );
    }
}

fn check_certificates(c: &TlsCerts, tmp: &Path) {
    let text = |p: &Path| {
        let o = openssl_out(&["x509", "-noout", "-text", "-in"], p);
        assert!(
            o.status.success(),
            "x509 -text {}: {}",
            p.display(),
            o.stderr
        );
        o.stdout
    };
    for ca in [&c.ca, &c.other_ca] {
        let t = text(ca);
        assert!(t.contains("Version: 3 (0x2)"), "{t}");
        assert!(t.contains("CA:TRUE"), "{t}");
        assert!(t.contains("Certificate Sign"), "{t}");
        assert!(t.contains("X509v3 Subject Key Identifier"), "{t}");
    }
    let leaves = [
        &c.server,
        &c.client,
        &c.other_server,
        &c.short_lived,
        &c.expired,
        &c.self_signed,
    ];
    for ck in leaves {
        let t = text(&ck.cert);
        assert!(t.contains("Version: 3 (0x2)"), "{t}");
        assert!(t.contains("CA:FALSE"), "{t}");
        assert!(t.contains("X509v3 Extended Key Usage"), "{t}");
        assert!(t.contains("X509v3 Subject Key Identifier"), "{t}");
        match c.kind {
            KeyKind::EcP256 => assert!(t.contains("NIST CURVE: P-256"), "{t}"),
            KeyKind::Rsa2048 => assert!(t.contains("Public-Key: (2048 bit)"), "{t}"),
        }
        let key = std::fs::read_to_string(&ck.key).expect("reading a key");
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{} is not PKCS#8 PEM",
            ck.key.display()
        );
    }
    let t = text(&c.server.cert);
    assert!(t.contains("IP Address:127.0.0.1, DNS:localhost"), "{t}");
    assert!(
        t.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{t}"
    );
    assert!(t.contains("X509v3 Authority Key Identifier"), "{t}");
    let t = text(&c.client.cert);
    assert!(t.contains("Subject: CN = STORESCU client"), "{t}");
    assert!(t.contains("DNS:client.test"), "{t}");
    assert!(t.contains("TLS Web Client Authentication"), "{t}");
    assert!(!t.contains("TLS Web Server Authentication"), "{t}");

    let verify = |ca: &Path, purpose: &str, cert: &Path| -> Output {
        run(
            Command::new(openssl())
                .args(["verify", "-purpose", purpose, "-CAfile"])
                .arg(ca)
                .arg(cert),
            Duration::from_secs(30),
        )
    };
    let ok = |ca: &Path, purpose: &str, cert: &Path| {
        let o = verify(ca, purpose, cert);
        assert!(
            o.status.success() && o.stdout.contains(": OK"),
            "{} should verify ({purpose}) against {}: {}",
            cert.display(),
            ca.display(),
            o.all()
        );
    };
    let refused = |ca: &Path, purpose: &str, cert: &Path, why: &str| {
        let o = verify(ca, purpose, cert);
        assert!(
            !o.status.success() && o.all().contains(why),
            "{} should not verify ({purpose}) against {} ({why}): {}",
            cert.display(),
            ca.display(),
            o.all()
        );
    };
    ok(&c.ca, "sslserver", &c.server.cert);
    ok(&c.ca, "sslclient", &c.server.cert);
    ok(&c.ca, "sslclient", &c.client.cert);
    refused(
        &c.ca,
        "sslserver",
        &c.client.cert,
        "unsuitable certificate purpose",
    );
    ok(&c.other_ca, "sslserver", &c.other_server.cert);
    refused(
        &c.ca,
        "sslserver",
        &c.other_server.cert,
        "unable to get local issuer certificate",
    );
    refused(
        &c.other_ca,
        "sslserver",
        &c.server.cert,
        "unable to get local issuer certificate",
    );
    ok(&c.ca, "sslserver", &c.short_lived.cert);
    ok(&c.ca, "sslclient", &c.short_lived.cert);
    refused(
        &c.ca,
        "sslserver",
        &c.expired.cert,
        "certificate has expired",
    );
    ok(&c.self_signed.cert, "sslserver", &c.self_signed.cert);
    refused(
        &c.ca,
        "sslserver",
        &c.self_signed.cert,
        "self-signed certificate",
    );

    // Short-lived: still valid in 9 days, not in 11.
    let checkend = |secs: u64| {
        openssl_out(
            &["x509", "-noout", "-checkend", &secs.to_string(), "-in"],
            &c.short_lived.cert,
        )
        .status
        .success()
    };
    assert!(checkend(9 * 86_400), "short-lived expires within 9 days");
    assert!(!checkend(11 * 86_400), "short-lived outlives 11 days");

    // Fingerprints: openssl's against sha256sum of the DER.
    for ck in leaves {
        let fp = fingerprint(&ck.cert);
        let der = cert_der(&ck.cert);
        assert_eq!(der[0], 0x30, "DER starts with a SEQUENCE");
        let der_path = tmp.join("cert.der");
        std::fs::write(&der_path, &der).expect("writing the DER");
        let sum = run_ok(
            Command::new("sha256sum").arg(&der_path),
            Duration::from_secs(10),
        );
        let want = sum
            .stdout
            .split_whitespace()
            .next()
            .expect("sha256sum output")
            .to_string();
        assert_eq!(fp.hex_lower, want, "fingerprint of {}", ck.cert.display());
        assert_eq!(sha256_hex(&ck.cert), want);
        assert_eq!(fp.colon_upper.len(), 64 + 31);
        assert_eq!(
            fp.colon_upper.replace(':', "").to_ascii_lowercase(),
            fp.hex_lower
        );
        assert!(
            fp.colon_upper
                .chars()
                .all(|ch| ch == ':' || ch.is_ascii_digit() || ch.is_ascii_uppercase()),
            "{}",
            fp.colon_upper
        );
    }
    assert_ne!(sha256_hex(&c.server.cert), sha256_hex(&c.self_signed.cert));

    let bundle = c.bundle("both-cas.pem", &[&c.ca, &c.other_ca]);
    ok(&bundle, "sslserver", &c.server.cert);
    ok(&bundle, "sslserver", &c.other_server.cert);
}

/// storescu +tls → storescp +tls, both under BCP 195 ND, each verifying
/// the other against the test CA: every Success, every data set arrives
/// byte-identical, and storescp saw the client certificate over TLS 1.2+.
#[test]
fn dcmtk_mutual_tls_store_is_byte_exact() {
    let dir = tempdir();
    let c = certs(dir.path());
    let files = synth_small(&dir.path().join("src"), 1, 3, 64);
    let scp = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(
        scp.port,
        "STORESCP",
        &DcmtkTls::scu(Some(&c.client), &[&c.ca]),
        &files,
    );
    assert!(r.output.status.success(), "{}{}", r.log(), scp.log_tail());
    assert_eq!(r.successes(), files, "{}", r.log());
    let got = scp.received();
    let want = datasets(&files);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (uid, ds) in &want {
        assert!(got[uid] == *ds, "data set of {uid} changed on the way");
    }
    let log = scp.log();
    let (proto, cipher) = dcmtk_tls_details(&log)
        .unwrap_or_else(|| panic!("storescp -d printed no TLS details{}", scp.log_tail()));
    eprintln!("storescu → storescp (bcp195-nd): {proto}, {cipher}");
    assert!(proto == "TLSv1.3" || proto == "TLSv1.2", "{proto}");
    assert!(
        log.contains("Subject     : /CN=STORESCU client"),
        "storescp did not log the client certificate{}",
        scp.log_tail()
    );
}

/// storescu with anonymous TLS (+tla, no certificate) → a storescp that
/// requires one: the handshake fails, storescu exits non-zero, nothing is
/// received. The same storescu is let in by a storescp with
/// --verify-peer-cert.
#[test]
fn storescp_requiring_a_client_certificate_refuses_anonymous_tls() {
    let dir = tempdir();
    let c = certs(dir.path());
    let files = synth_small(&dir.path().join("src"), 1, 2, 64);
    let anon = DcmtkTls::scu(None, &[&c.ca]);

    let strict = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(strict.port, "STORESCP", &anon, &files);
    assert!(!r.output.status.success(), "{}", r.log());
    assert!(r.responses.is_empty(), "{}", r.log());
    assert!(strict.received().is_empty(), "storescp received files");
    assert!(
        strict.log().contains("peer did not return a certificate"),
        "{}",
        strict.log_tail()
    );

    let lenient = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Verify),
    );
    let r = storescu_tls(lenient.port, "STORESCP", &anon, &files);
    assert!(
        r.output.status.success(),
        "{}{}",
        r.log(),
        lenient.log_tail()
    );
    assert_eq!(r.successes(), files, "{}", r.log());
    assert_eq!(lenient.received(), datasets(&files));
}

/// storescu trusting only other_ca → the ca-signed storescp: storescu
/// refuses the server certificate ("certificate verify failed"), exits
/// non-zero, nothing is received. A storescp presenting the other_ca-signed
/// certificate is accepted by that same storescu.
#[test]
fn storescu_trusting_only_other_ca_refuses_the_ca_signed_storescp() {
    let dir = tempdir();
    let c = certs(dir.path());
    let files = synth_small(&dir.path().join("src"), 1, 2, 64);
    let scu = DcmtkTls::scu(Some(&c.client), &[&c.other_ca]);

    let scp = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(scp.port, "STORESCP", &scu, &files);
    assert!(!r.output.status.success(), "{}", r.log());
    assert!(r.responses.is_empty(), "{}", r.log());
    assert!(
        r.output.all().contains("certificate verify failed"),
        "{}",
        r.log()
    );
    assert!(scp.received().is_empty(), "storescp received files");

    let other = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.other_server, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(other.port, "STORESCP", &scu, &files);
    assert!(r.output.status.success(), "{}{}", r.log(), other.log_tail());
    assert_eq!(other.received(), datasets(&files));
}

/// The expired client certificate is refused by storescp, the short-lived
/// one is accepted; the self-signed server certificate is accepted by a
/// storescu that trusts exactly it (+cf self_signed.pem: a pin) and
/// refused by one that trusts the CA.
#[test]
fn expired_short_lived_and_self_signed_certificates_behave() {
    let dir = tempdir();
    let c = certs(dir.path());
    let files = synth_small(&dir.path().join("src"), 1, 1, 64);

    let scp = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(
        scp.port,
        "STORESCP",
        &DcmtkTls::scu(Some(&c.expired), &[&c.ca]),
        &files,
    );
    assert!(!r.output.status.success(), "{}", r.log());
    assert!(scp.received().is_empty());
    assert!(
        scp.log().contains("certificate expired")
            || scp.log().contains("certificate verify failed"),
        "{}",
        scp.log_tail()
    );
    let r = storescu_tls(
        scp.port,
        "STORESCP",
        &DcmtkTls::scu(Some(&c.short_lived), &[&c.ca]),
        &files,
    );
    assert!(r.output.status.success(), "{}{}", r.log(), scp.log_tail());
    assert_eq!(scp.received(), datasets(&files));

    let pinned = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.self_signed, &[&c.ca], PeerCert::Require),
    );
    let r = storescu_tls(
        pinned.port,
        "STORESCP",
        &DcmtkTls::scu(Some(&c.client), &[&c.ca]),
        &files,
    );
    assert!(!r.output.status.success(), "{}", r.log());
    assert!(pinned.received().is_empty());
    let r = storescu_tls(
        pinned.port,
        "STORESCP",
        &DcmtkTls::scu(Some(&c.client), &[&c.self_signed.cert]),
        &files,
    );
    assert!(
        r.output.status.success(),
        "{}{}",
        r.log(),
        pinned.log_tail()
    );
    assert_eq!(pinned.received(), datasets(&files));
}

/// echoscu +tls → Orthanc with DicomTlsEnabled: Success. Plain echoscu,
/// anonymous TLS (a client certificate is required by default), a client
/// that does not trust Orthanc's CA, and a client certificate from another
/// CA all fail.
#[test]
fn echoscu_tls_to_orthanc() {
    let dir = tempdir();
    let c = certs(dir.path());
    let o = start_tls_orthanc(
        &dir.path().join("orthanc"),
        "ORTHANC_TLS",
        &c.server,
        &c.ca,
        true,
        vec![],
    );
    let port = o.dicom_port;
    let ok = echoscu_tls(
        port,
        "ORTHANC_TLS",
        Some(&DcmtkTls::scu(Some(&c.client), &[&c.ca])),
    );
    assert!(
        ok.status.success() && ok.all().contains("Received Echo Response (Success)"),
        "{}{}",
        tail(&ok.all(), 30),
        o.log_tail()
    );
    let (proto, cipher) = dcmtk_tls_details(&ok.all()).expect("echoscu -d TLS details");
    eprintln!("echoscu → Orthanc: {proto}, {cipher}");

    let fails = |what: &str, tls: Option<&DcmtkTls>| {
        let out = echoscu_tls(port, "ORTHANC_TLS", tls);
        assert!(
            !out.status.success(),
            "{what} succeeded: {}",
            tail(&out.all(), 20)
        );
        assert!(
            !out.all().contains("Received Echo Response"),
            "{what}: {}",
            tail(&out.all(), 20)
        );
        eprintln!(
            "{what}: {}",
            out.all()
                .lines()
                .filter(|l| l.starts_with("F:") || l.starts_with("E:"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    };
    fails("plain echoscu", None);
    fails("anonymous TLS", Some(&DcmtkTls::scu(None, &[&c.ca])));
    fails(
        "trusting only other_ca",
        Some(&DcmtkTls::scu(Some(&c.client), &[&c.other_ca])),
    );
    fails(
        "client certificate of other_ca",
        Some(&DcmtkTls::scu(Some(&c.other_server), &[&c.ca])),
    );
    // Orthanc is still up and serving TLS.
    let again = echoscu_tls(
        port,
        "ORTHANC_TLS",
        Some(&DcmtkTls::scu(Some(&c.client), &[&c.ca])),
    );
    assert!(again.status.success(), "{}", tail(&again.all(), 20));
    eprintln!("Orthanc log:{}", o.log_tail());
}

/// With DicomTlsRemoteCertificateRequired false, Orthanc lets an SCU in
/// without a certificate (+tla), but still refuses one whose certificate
/// it cannot verify.
#[test]
fn orthanc_without_required_client_certificate() {
    let dir = tempdir();
    let c = certs(dir.path());
    let o = start_tls_orthanc(
        &dir.path().join("orthanc"),
        "ORTHANC_TLS",
        &c.server,
        &c.ca,
        false,
        vec![],
    );
    let anon = echoscu_tls(
        o.dicom_port,
        "ORTHANC_TLS",
        Some(&DcmtkTls::scu(None, &[&c.ca])),
    );
    assert!(
        anon.status.success(),
        "{}{}",
        tail(&anon.all(), 20),
        o.log_tail()
    );
    let stranger = echoscu_tls(
        o.dicom_port,
        "ORTHANC_TLS",
        Some(&DcmtkTls::scu(Some(&c.other_server), &[&c.ca])),
    );
    assert!(!stranger.status.success(), "{}", tail(&stranger.all(), 20));
}

/// Orthanc as a TLS SCU: `POST /modalities/{name}/store` to a DCMTK
/// storescp +tls (which requires and verifies Orthanc's certificate)
/// through a modality declared with `UseDicomTls: true` delivers every
/// instance byte-exact. Through a modality without it, or to a storescp
/// whose certificate Orthanc does not trust, the store fails and nothing
/// arrives.
#[test]
fn orthanc_stores_over_tls_to_storescp_byte_exact() {
    let dir = tempdir();
    let c = certs(dir.path());
    let files = synth_small(&dir.path().join("src"), 1, 3, 64);
    let scp = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
    );
    let untrusted = TlsStorescp::start(
        dir.path(),
        "STORESCP",
        free_port(),
        &DcmtkTls::scp(&c.other_server, &[&c.ca], PeerCert::Require),
    );
    let o = start_tls_orthanc(
        &dir.path().join("orthanc"),
        "ORTHANC_TLS",
        &c.server,
        &c.ca,
        true,
        vec![
            OrthancModality::local("tlsscp", "STORESCP", scp.port).with_tls(),
            OrthancModality::local("plainscp", "STORESCP", scp.port),
            OrthancModality::local("untrusted", "STORESCP", untrusted.port).with_tls(),
        ],
    );
    let config: Value = serde_json::from_slice(
        &std::fs::read(o.dir.join("orthanc.json")).expect("reading orthanc.json"),
    )
    .expect("orthanc.json");
    assert_eq!(config["DicomModalities"]["tlsscp"]["UseDicomTls"], true);
    assert!(
        config["DicomModalities"]["plainscp"]
            .get("UseDicomTls")
            .is_none()
    );

    let ids: Vec<String> = files.iter().map(|f| o.upload(f)).collect();

    let (code, answer) = orthanc_store_to(&o, "tlsscp", &ids);
    assert_eq!(code, 200, "{answer}{}{}", o.log_tail(), scp.log_tail());
    assert_eq!(answer["InstancesCount"], 3, "{answer}");
    assert_eq!(answer["FailedInstancesCount"], 0, "{answer}");
    let got = scp.received();
    let want = datasets(&files);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (uid, ds) in &want {
        assert!(got[uid] == *ds, "data set of {uid} changed on the way");
    }
    let log = scp.log();
    let (proto, cipher) = dcmtk_tls_details(&log).expect("storescp -d TLS details");
    eprintln!("Orthanc → storescp: {proto}, {cipher}");
    assert!(
        log.contains("Subject     : /CN=localhost"),
        "storescp did not see Orthanc's certificate{}",
        scp.log_tail()
    );

    std::fs::remove_dir_all(&scp.out).expect("emptying the storescp dir");
    std::fs::create_dir_all(&scp.out).expect("recreating the storescp dir");
    let (code, answer) = orthanc_store_to(&o, "plainscp", &ids);
    assert_ne!(code, 200, "plain C-STORE to a TLS port: {answer}");
    eprintln!("plain store to the TLS port: HTTP {code} {answer}");
    let (code, answer) = orthanc_store_to(&o, "untrusted", &ids);
    assert_ne!(code, 200, "store to an untrusted SCP: {answer}");
    eprintln!("store to an other_ca SCP: HTTP {code} {answer}");
    assert!(scp.received().is_empty());
    assert!(untrusted.received().is_empty());
    eprintln!("Orthanc log:{}", o.log_tail());
}

/// What a rustls-like client (TLS 1.2 ECDHE-GCM/CHACHA suites only, or
/// TLS 1.3) gets from storescp `--profile-bcp195-nd` and from Orthanc
/// 1.10.1, by leaf key kind: TLS 1.3 always; TLS 1.2 only with RSA leaves
/// (DCMTK 3.6.7's BCP 195 TLS 1.2 suites are ECDHE_RSA/DHE_RSA). With RSA
/// leaves, storescu `--profile-bcp195-ex` (TLS 1.2 only) stores into the
/// bcp195-nd storescp byte-exact over TLS 1.2; with EC leaves it cannot.
#[test]
fn tls12_needs_rsa_leaf_keys_with_dcmtk_and_orthanc() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("src"), 1, 1, 64);
    for kind in [KeyKind::EcP256, KeyKind::Rsa2048] {
        let base = dir.path().join(format!("{kind:?}"));
        let c = TlsCerts::generate_with(&base.join("certs"), kind);
        let scp = TlsStorescp::start(
            &base,
            "STORESCP",
            free_port(),
            &DcmtkTls::scp(&c.server, &[&c.ca], PeerCert::Require),
        );
        let o = start_tls_orthanc(
            &base.join("orthanc"),
            "ORTHANC_TLS",
            &c.server,
            &c.ca,
            true,
            vec![],
        );
        for (peer, port) in [("storescp", scp.port), ("Orthanc", o.dicom_port)] {
            let v13 = s_client_handshake(port, "-tls1_3", &c.client, &c.ca);
            let v12 = s_client_handshake(port, "-tls1_2", &c.client, &c.ca);
            eprintln!("{kind:?} {peer}: TLS 1.3 {v13:?}; TLS 1.2 {v12:?}");
            let (p, _) = v13.unwrap_or_else(|e| panic!("{kind:?} {peer} TLS 1.3: {e}"));
            assert_eq!(p, "TLSv1.3");
            match kind {
                KeyKind::EcP256 => assert!(
                    v12.as_ref().is_err_and(|e| e.contains("handshake failure")),
                    "{kind:?} {peer} TLS 1.2: {v12:?}"
                ),
                KeyKind::Rsa2048 => {
                    let (p, suite) = v12.unwrap_or_else(|e| panic!("{kind:?} {peer} TLS 1.2: {e}"));
                    assert_eq!(p, "TLSv1.2");
                    assert!(suite.starts_with("ECDHE-RSA-AES"), "{suite}");
                }
            }
        }

        let before = scp.received().len();
        let ex = DcmtkTls::scu(Some(&c.client), &[&c.ca]).with_profile("--profile-bcp195-ex");
        let r = storescu_tls(scp.port, "STORESCP", &ex, &files);
        match kind {
            KeyKind::EcP256 => {
                assert!(!r.output.status.success(), "{}", r.log());
                assert_eq!(scp.received().len(), before);
            }
            KeyKind::Rsa2048 => {
                assert!(r.output.status.success(), "{}{}", r.log(), scp.log_tail());
                assert_eq!(scp.received(), datasets(&files));
                let log = scp.log();
                let tls12 = log
                    .lines()
                    .filter(|l| l.contains("Protocol    : TLSv1.2"))
                    .count();
                assert!(
                    tls12 >= 1,
                    "storescp saw no TLS 1.2 connection{}",
                    scp.log_tail()
                );
            }
        }
    }
}
