"""DICOM TLS for the benchmarks: certificates made with the `openssl` CLI in
the work dir, and the options that put each peer on them.

  Certs         make(dir, key_kind): a CA (EC P-256, CA:TRUE) and three
                leaves it signs, X.509 v3 with SKI/AKI, keys PKCS#8 PEM:
                  mirror  the receivers (Orthanc, storescp): CN=localhost
                  agent   pacs-mirror (its TLS listener and its SCU side)
                  bench   the DCMTK SCUs (storescu, echoscu)
                every one with SAN IP:127.0.0.1 + DNS:localhost and EKU
                serverAuth + clientAuth (OpenSSL checks a client
                certificate's EKU; Orthanc presents its one certificate as
                SCP and SCU). Leaves EC P-256 (`ec`) or RSA 2048 (`rsa`).
  DCMTK         scu_args() / scp_args(): `+tls KEY CERT +cf CA
                --profile-bcp195-nd --require-peer-cert` (private key first);
                scp_log_config(): a log4cplus file for storescp `-lc` that
                prints DCMTK's TLS connection details (logger dcmtk.dcmtls at
                DEBUG) and nothing else below WARN.
  Orthanc       orthanc_config(): DicomTlsEnabled & co (its DICOM port then
                speaks TLS only; client certificate required).
  pacs-mirror   device_toml() ([device.tls]) and connection_toml()
                (tls_cipher_suites on a network connection).

What was negotiated: dcmtk_sessions(log) reads DCMTK's "Protocol :" and
"Ciphersuite :" lines (storescp -lc, echoscu -d); echo_session() asks
echoscu -d; agent_session() runs `pacs-mirror echo --config` with rustls'
debug log ("Using ciphersuite ...").

Key kinds and DCMTK 3.6.7 (tests/e2e/TLS-PEERS.md): its BCP 195 profiles
offer TLS 1.2 suites for RSA leaves only (ECDHE_RSA/DHE_RSA), so EC leaves
always give TLS 1.3 with DCMTK and Orthanc; RSA leaves allow TLS 1.2 too
(pacs-mirror speaks TLS 1.2 if its tls_cipher_suites list only 1.2 suites).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchlib import LOOPBACK, BenchError, log, tool_version

KEY_KINDS = ("ec", "rsa")
KEY_LABEL = {"ec": "EC P-256", "rsa": "RSA 2048"}
DCMTK_PROFILE = "--profile-bcp195-nd"
BCP195_ND = "BCP195-ND"  # pacs-mirror's tls_cipher_suites profile name

OPENSSL_CNF = """\
[req]
distinguished_name = req_dn
[req_dn]

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = IP:127.0.0.1, DNS:localhost
"""

SCP_LOG_CONFIG = """\
# storescp -lc: warnings and errors as usual, plus DCMTK's TLS connection
# details (protocol, cipher suite, peer certificate) of every association
log4cplus.rootLogger = WARN, console
log4cplus.logger.dcmtk.dcmtls = DEBUG
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.logToStdErr = true
log4cplus.appender.console.ImmediateFlush = true
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %p: %m%n
"""


@dataclass
class Leaf:
    cert: Path
    key: Path


@dataclass
class Certs:
    dir: Path
    kind: str
    ca: Path
    mirror: Leaf
    agent: Leaf
    bench: Leaf
    seconds: float

    def describe(self) -> str:
        openssl = tool_version(["openssl", "version"]).split(" (")[0]
        return (f"CA EC P-256, leaves {KEY_LABEL[self.kind]} (mirror, agent, bench; SAN IP:127.0.0.1, "
                f"EKU serverAuth+clientAuth), {openssl}")

    # ---------------------------------------------------------- DCMTK
    def scu_args(self) -> list[str]:
        """storescu/echoscu: present `bench`, require the SCP's certificate."""
        return ["+tls", str(self.bench.key), str(self.bench.cert), "+cf", str(self.ca), DCMTK_PROFILE,
                "--require-peer-cert"]

    def scp_args(self) -> list[str]:
        """storescp: present `mirror`, require a client certificate."""
        return ["+tls", str(self.mirror.key), str(self.mirror.cert), "+cf", str(self.ca), DCMTK_PROFILE,
                "--require-peer-cert"]

    def scp_log_config(self) -> Path:
        p = self.dir / "storescp-tls-log.cfg"
        if not p.exists():
            p.write_text(SCP_LOG_CONFIG)
        return p

    # ---------------------------------------------------------- Orthanc
    def orthanc_config(self) -> dict:
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.mirror.cert),
            "DicomTlsPrivateKey": str(self.mirror.key),
            "DicomTlsTrustedCertificates": str(self.ca),
            "DicomTlsRemoteCertificateRequired": True,
        }

    # ---------------------------------------------------------- pacs-mirror
    def device_toml(self) -> str:
        return (f'[device.tls]\ncertificate = "{self.agent.cert}"\nprivate_key = "{self.agent.key}"\n'
                f'trusted_ca = "{self.ca}"\n')


def connection_toml(suites: list[str], require_client_certificate: bool = False) -> str:
    """The lines that make a [[…network_connection]] a TLS one."""
    s = "tls_cipher_suites = [" + ", ".join(f'"{x}"' for x in suites) + "]\n"
    if require_client_certificate:
        s += "require_client_certificate = true\n"
    return s


def _openssl(argv: list[str], cwd: Path) -> None:
    r = subprocess.run(["openssl"] + argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"openssl {' '.join(argv)} exited {r.returncode}\n{r.stderr[-2000:]}")


def _new_key(kind: str) -> list[str]:
    if kind == "rsa":
        return ["-newkey", "rsa:2048", "-noenc"]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"]


def make(dir: Path, kind: str) -> Certs:
    """The CA and the three leaves, in `dir` (created)."""
    if kind not in KEY_KINDS:
        raise BenchError(f"unknown key kind {kind}")
    t0 = time.perf_counter()
    dir.mkdir(parents=True, exist_ok=True)
    (dir / "openssl.cnf").write_text(OPENSSL_CNF)
    ca = Leaf(dir / "ca.pem", dir / "ca.key")
    _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "v3_ca", "-subj", "/CN=pacs-mirror bench CA",
              "-days", "30", "-sha256", "-set_serial", "1", "-out", str(ca.cert), "-keyout", str(ca.key)]
             + _new_key("ec"), dir)
    leaves = {}
    for serial, (name, cn) in enumerate((("mirror", "localhost"), ("agent", "pacs-mirror bench agent"),
                                         ("bench", "pacs-mirror bench storescu")), start=2):
        leaf = Leaf(dir / f"{name}.pem", dir / f"{name}.key")
        _openssl(["req", "-x509", "-config", "openssl.cnf", "-extensions", "v3_leaf", "-subj", f"/CN={cn}",
                  "-days", "30", "-sha256", "-set_serial", str(serial), "-CA", str(ca.cert), "-CAkey", str(ca.key),
                  "-out", str(leaf.cert), "-keyout", str(leaf.key)] + _new_key(kind), dir)
        leaves[name] = leaf
    certs = Certs(dir=dir, kind=kind, ca=ca.cert, seconds=time.perf_counter() - t0, **leaves)
    log(f"tls: certificates in {dir} ({KEY_LABEL[kind]} leaves) made in {certs.seconds:.2f}s")
    return certs


# ---------------------------------------------------------------- what was negotiated

def dcmtk_sessions(text: str) -> list[str]:
    """'PROTOCOL SUITE' of every TLS connection DCMTK described in `text`
    (debug lines "Protocol    : TLSv1.3", "Ciphersuite : TLS_…, encryption: N bits").
    storescp's forked children write to one log, so two associations that
    start together interleave their lines: protocols are paired with suites
    first in, first out."""
    found, protos = [], []
    for line in text.splitlines():
        m = re.search(r"\bProtocol\s*:\s*(\S+)", line)
        if m:
            protos.append(m.group(1))
            continue
        m = re.search(r"\bCiphersuite\s*:\s*([^,\s]+)", line)
        if m and protos:
            found.append(f"{protos.pop(0)} {m.group(1)}")
    return found


def summarize(sessions: list[str]) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384 x 3' (one item per distinct pair)."""
    if not sessions:
        return "no TLS connection logged"
    return ", ".join(f"{k} x {n}" for k, n in Counter(sessions).most_common())


def echo_session(called_ae: str, port: int, certs: Certs) -> str:
    """echoscu -d over TLS: what a DCMTK SCU (storescu's library and
    options) negotiates with the SCP on `port`."""
    r = subprocess.run(["echoscu", "-d", "-to", "10", "-aet", "BENCH", "-aec", called_ae] + certs.scu_args()
                       + [LOOPBACK, str(port)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, TCP_NODELAY="1"))
    s = dcmtk_sessions(r.stdout + r.stderr)
    if r.returncode != 0 or not s:
        log(f"tls: echoscu -d to {called_ae} on {port}: exit {r.returncode}, {s}")
        return "?"
    return s[0]


RUSTLS_TLS12 = re.compile(r"^TLS_ECDHE_")


def agent_session(binary: Path, config: Path, called_ae: str) -> str:
    """`pacs-mirror echo --config CONFIG AE` with rustls' handshake debug log:
    the suite pacs-mirror's SCU negotiates with that configured remote AE
    (same TLS client configuration as the replication)."""
    env = dict(os.environ, RUST_LOG="warn,rustls::client::hs=debug")
    r = subprocess.run([str(binary), "echo", "--config", str(config), called_ae], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60, env=env)
    text = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    m = re.search(r"Using ciphersuite (\w+)", text)
    if r.returncode != 0 or not m:
        log(f"tls: pacs-mirror echo {called_ae}: exit {r.returncode}: {text.strip()[-500:]}")
        return "?"
    suite = m.group(1)
    if suite.startswith("TLS13_"):
        return f"TLSv1.3 {suite}"
    return f"TLSv1.2 {suite}" if RUSTLS_TLS12.match(suite) else suite
