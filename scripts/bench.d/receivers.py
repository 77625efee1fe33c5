"""The three Storage SCPs the benchmarks compare, each started fresh in its own
directory under the work dir, on free 127.0.0.1 ports, and verified after a run:

  StoreScp    DCMTK storescp --fork (writes files, no fsync)
  Orthanc     Orthanc (Debian 1.10.1) with a private JSON config, SQLite index,
              no plugins (SyncStorageArea default: true, i.e. it fsyncs)
  PacsMirror  target/release/pacs-mirror run --config <toml> (fsyncs file,
              directory and index before answering Success)

and, for the object-storage scenario, the S3 server:

  MotoS3      moto_server (S3 in memory), one bucket, unsigned admin calls
  LocalBucket localbucket (PyPI; S3 on folders, ThreadingHTTPServer), one bucket
  S3sFs       s3s-fs (crates.io; Rust, S3 on folders, checks SigV4), one bucket

Life cycle: r = Cls(...); r.start()  (raises BenchError if it is not ready);
… send …; info = r.finish(expected, sent_bytes)  (reads peak RSS, stops it,
checks that it holds `expected` instances and about `sent_bytes` bytes, raises
BenchError if not); r.remove().

All DCMTK-based processes (storescp, Orthanc's DICOM server, storescu) get
TCP_NODELAY=1 in their environment: DCMTK 3.6.7 leaves Nagle's algorithm on
unless that variable is set (its trace log says "using the default value (0)").

DICOM TLS: set `r.tls = certs` (a dicomtls.Certs) before start() and the
receiver's DICOM port speaks TLS only (storescp +tls, Orthanc DicomTlsEnabled,
pacs-mirror tls_cipher_suites + require_client_certificate), each requiring
a client certificate from the bench CA; the readiness C-ECHO then goes over
TLS too, and `scu_args()` are the options a storescu needs to reach it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import dicomtls
from benchlib import (LOOPBACK, BenchError, drop_tree, echo_ok, free_port, http_get_json, log,
                      proc_status_kib, spawn, stop, wait_until)

DCMTK_ENV = {"TCP_NODELAY": "1"}
START_TIMEOUT = 60.0


class Receiver:
    system = "?"
    ae = "?"

    def __init__(self, workdir: Path, tag: str, pdu: int | None = None):
        self.dir = workdir / f"{self.system}-{tag}"
        drop_tree(self.dir)
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / f"{self.system}.log"
        self.port = free_port()
        self.pdu = pdu
        self.proc: subprocess.Popen | None = None
        self.tls = None  # dicomtls.Certs: serve DICOM over TLS only

    # subclasses: argv(), env(), ready(), count(), pdu_note()
    def env(self) -> dict:
        return {}

    def scu_args(self) -> list[str]:
        """storescu/echoscu options to reach this receiver (TLS or not)."""
        return self.tls.scu_args() if self.tls is not None else []

    def ready(self) -> bool:
        return echo_ok(self.ae, self.port, extra=self.scu_args())

    def start(self) -> "Receiver":
        self.prepare()
        self.proc = spawn(self.argv(), log_path=self.log_path, env=self.env(), cwd=self.dir)
        wait_until(self.ready, what=f"{self.system} on {LOOPBACK}:{self.port}", timeout=START_TIMEOUT,
                   proc=self.proc, log_path=self.log_path, interval=0.2)
        self.after_ready()
        log(f"{self.system} ready on {LOOPBACK}:{self.port} (pid {self.proc.pid}, {self.dir})")
        return self

    def prepare(self) -> None:
        pass

    def after_ready(self) -> None:
        pass

    # (instances, bytes held); the driver checks both against what was sent
    def count_before_stop(self) -> tuple[int, int] | None:
        return None

    def count_after_stop(self) -> tuple[int, int] | None:
        return None

    stop_signal = signal.SIGTERM
    stop_grace = 30.0
    # VmHWM of the started process is the receiver's peak RSS (not for
    # storescp --fork, whose forked children do the work)
    measure_rss = True

    def finish(self, expected: int, sent_bytes: int) -> dict:
        """Peak RSS, stop, and check the receiver holds `expected` instances
        and at least about `sent_bytes` (each file may differ by its meta
        header: 4 KiB slack per file)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"{self.system} died during the run (status {self.proc.returncode}); "
                             f"log {self.log_path}")
        hwm = proc_status_kib(self.proc.pid, "VmHWM") if self.measure_rss else None
        held = self.count_before_stop()
        rc = stop(self.proc, self.stop_signal, self.stop_grace)
        if held is None:
            held = self.count_after_stop()
        n, nbytes = held
        if n != expected:
            raise BenchError(f"{self.system}: holds {n} instances after the run, expected {expected} "
                             f"(log {self.log_path})")
        if nbytes < sent_bytes - 4096 * expected:
            raise BenchError(f"{self.system}: holds {nbytes} bytes after the run, sent {sent_bytes} "
                             f"(log {self.log_path})")
        return {"peak_rss_kib": hwm, "stored": n, "stored_bytes": nbytes, "exit": rc}

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL, 5.0)

    def remove(self) -> None:
        drop_tree(self.dir)


class StoreScp(Receiver):
    system = "storescp"
    ae = "STORESCP"
    measure_rss = False

    def __init__(self, workdir: Path, tag: str, pdu: int | None = None, bit_preserving: bool = False):
        super().__init__(workdir, tag, pdu)
        self.out = self.dir / "out"
        self.bit_preserving = bit_preserving

    def prepare(self) -> None:
        self.out.mkdir()

    def argv(self) -> list[str]:
        a = ["storescp", "--fork", "+xa", "-aet", self.ae, "-od", str(self.out)]
        if self.pdu:
            a += ["-pdu", str(self.pdu)]
        if self.bit_preserving:
            a += ["+B"]
        if self.tls is not None:
            # -lc: DCMTK's TLS details of each association in the log
            a += self.tls.scp_args() + ["-lc", str(self.tls.scp_log_config())]
        return a + [str(self.port)]

    def env(self) -> dict:
        return DCMTK_ENV

    def pdu_note(self) -> str:
        return (f"max PDU {self.pdu or 16384}" + (" (default)" if not self.pdu else "")
                + (", bit-preserving +B" if self.bit_preserving else ""))

    def count_before_stop(self) -> tuple[int, int]:
        files = [p for p in self.out.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)

    def sync_output(self) -> float:
        """Seconds one `sync -f` of the output folder takes (syncfs(2) of its
        filesystem): what storescp would pay to make what it wrote durable
        with a single flush."""
        t0 = time.perf_counter()
        r = subprocess.run(["sync", "-f", str(self.out)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
        secs = time.perf_counter() - t0
        if r.returncode != 0:
            raise BenchError(f"sync -f {self.out} failed: {r.stderr.strip()}")
        return secs


class Orthanc(Receiver):
    system = "orthanc"
    ae = "ORTHANC"
    BINARY = "/usr/sbin/Orthanc"

    def __init__(self, workdir: Path, tag: str, pdu: int | None = None):
        super().__init__(workdir, tag, pdu)
        self.http_port = free_port()
        self.config = self.dir / "orthanc.json"

    def prepare(self) -> None:
        cfg = {
            "Name": "pacs-mirror-bench",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "DicomServerEnabled": True,
            "DicomAet": self.ae,
            "DicomPort": self.port,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            # Passing this file as the only configuration means the Debian
            # /etc/orthanc/orthanc.json (whose "Plugins" lists
            # /usr/share/orthanc/plugins/) is never read; say so explicitly.
            "Plugins": [],
        }
        if self.pdu:
            cfg["MaximumPduLength"] = self.pdu
        if self.tls is not None:
            cfg.update(self.tls.orthanc_config())
        self.config.write_text(json.dumps(cfg, indent=2))

    def argv(self) -> list[str]:
        return [self.BINARY, str(self.config)]

    def env(self) -> dict:
        return DCMTK_ENV

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.http_port}{path}"

    def ready(self) -> bool:
        http_get_json(self.url("/system"), timeout=2)
        return echo_ok(self.ae, self.port, extra=self.scu_args())

    def after_ready(self) -> None:
        plugins = http_get_json(self.url("/plugins"))
        # "explorer.js" is Orthanc's built-in Explorer extension, not a plugin
        real = [p for p in plugins if p != "explorer.js"]
        if real:
            raise BenchError(f"orthanc loaded plugins {real}; the benchmark wants none")

    def pdu_note(self) -> str:
        return f"max PDU {self.pdu or 16384}" + (" (default)" if not self.pdu else "")

    def count_before_stop(self) -> tuple[int, int]:
        st = http_get_json(self.url("/statistics"))
        return int(st["CountInstances"]), int(st["TotalDiskSize"])


class PacsMirror(Receiver):
    system = "pacs-mirror"
    ae = "PACS_MIRROR"
    stop_grace = 120.0

    def __init__(self, binary: Path, workdir: Path, tag: str, pdu: int | None = None):
        super().__init__(workdir, tag, pdu)
        self.binary = binary
        self.data = self.dir / "pm-data"
        self.config = self.dir / "pacs-mirror.toml"
        # scenario hooks (empty for `ingest`): lines added inside the agent's
        # [[device.network_ae]] table, TOML appended after the config, global
        # flags before `run` (e.g. --log-format json), extra environment
        self.ae_extra = ""
        self.extra_toml = ""
        self.global_args: list[str] = []
        self.extra_env: dict = {}

    def prepare(self) -> None:
        if not self.binary.exists():
            raise BenchError(f"{self.binary} does not exist (build it, or pass --bin)")
        pdu = f"max_pdu_bytes = {self.pdu}\n" if self.pdu else ""
        tls_device = tls_conn = ""
        if self.tls is not None:
            tls_device = "\n" + self.tls.device_toml()
            tls_conn = dicomtls.connection_toml([dicomtls.BCP195_ND], require_client_certificate=True)
        self.config.write_text(f"""[device]
name = "bench"
data_dir = "{self.data}"
{tls_device}
[[device.network_connection]]
name = "dicom"
hostname = "{LOOPBACK}"
port = {self.port}
{tls_conn}
[[device.network_ae]]
ae_title = "{self.ae}"
network_connections = ["dicom"]
accept_any_calling_ae = true
{pdu}{self.ae_extra}
[spool]
min_free_bytes = 0
{self.extra_toml}""")

    def argv(self) -> list[str]:
        return [str(self.binary)] + self.global_args + ["run", "--config", str(self.config)]

    def env(self) -> dict:
        return dict(self.extra_env)

    def pdu_note(self) -> str:
        return f"max PDU {self.pdu or 262144}" + (" (default; DCMTK sends at most 131072)" if not self.pdu else "")

    def count_after_stop(self) -> tuple[int, int]:
        # == `find <data>/spool/objects -name '*.dcm' | wc -l`
        objects = self.data / "spool" / "objects"
        files = [p for p in objects.rglob("*.dcm") if p.is_file()] if objects.exists() else []
        return len(files), sum(p.stat().st_size for p in files)


def make(system: str, *, workdir: Path, tag: str, pdu: int | None, binary: Path | None,
         storescp_bit_preserving: bool = False) -> Receiver:
    if system == "storescp":
        return StoreScp(workdir, tag, pdu, storescp_bit_preserving)
    if system == "orthanc":
        return Orthanc(workdir, tag, pdu)
    if system == "pacs-mirror":
        assert binary is not None
        return PacsMirror(binary, workdir, tag, pdu)
    raise BenchError(f"unknown system {system}")


SYSTEMS = ("storescp", "orthanc", "pacs-mirror")


class MotoS3(Receiver):
    """moto in server mode (the S3 test server scripts/test installs): an
    S3-compatible endpoint on 127.0.0.1 holding one bucket, in memory (a
    restart is empty). Same life cycle as the Storage SCPs: the port is
    reserved at construction (so an agent can be pointed at it before it
    runs), start() waits for GET /moto-api/ and creates the bucket with an
    unsigned PUT (moto checks no signature); stop()/kill() by PID."""

    system = "moto"
    ae = "-"
    VERSION = "5.2.5"
    BUSY_NOTE = "; one Python process, so ~1 core at most"
    ENV = "PACS_MIRROR_MOTO_SERVER"  # names the executable, if set
    EXE = "moto_server"  # else ~/.cache/pacs-mirror/<system>-<VERSION>/bin/EXE

    def __init__(self, workdir: Path, tag: str, bucket: str = "pacs-mirror-bench"):
        super().__init__(workdir, tag)
        self.bucket = bucket

    @classmethod
    def binary(cls) -> Path:
        explicit = os.environ.get(cls.ENV)
        if explicit:
            return Path(explicit)
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "pacs-mirror" / f"{cls.system}-{cls.VERSION}" / "bin" / cls.EXE

    def prepare(self) -> None:
        if not self.binary().is_file():
            raise BenchError(f"the S3 test server is not at {self.binary()} (set $PACS_MIRROR_MOTO_SERVER, "
                             "or run scripts/test, which installs moto there)")

    def argv(self) -> list[str]:
        return [str(self.binary()), "-H", LOOPBACK, "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as r:
            return r.status == 200

    def after_ready(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            if r.status != 200:
                raise BenchError(f"moto: creating bucket {self.bucket} answered {r.status}")

    def pdu_note(self) -> str:
        return "-"

    def list_objects(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix` (ListObjectsV2, all
        pages, unsigned)."""
        ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
        out: list[tuple[str, int]] = []
        token = None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            url = f"{self.endpoint}/{self.bucket}?{urllib.parse.urlencode(q)}"
            with urllib.request.urlopen(url, timeout=30) as r:
                root = ET.fromstring(r.read())
            for c in root.iter(f"{ns}Contents"):
                out.append((c.findtext(f"{ns}Key") or "", int(c.findtext(f"{ns}Size") or 0)))
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                return out
            token = root.findtext(f"{ns}NextContinuationToken")
            if not token:
                raise BenchError(f"moto: truncated listing of {prefix} without a continuation token")

    def cpu_secs(self) -> float:
        """utime + stime of the server so far (start-up included)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float | None:
        kib = proc_status_kib(self.proc.pid, "VmRSS")
        return kib / 1024 if kib else None

    def stop_server(self) -> None:
        """Stop it (its data is gone); raise if it had died."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise BenchError(f"moto died during the run (status {self.proc.returncode}); log {self.log_path}")
        stop(self.proc, signal.SIGTERM, 10.0)


class LocalBucket(MotoS3):
    """localbucket 1.2.1 (PyPI): a small S3-compatible server that keeps each
    bucket as a folder under DATA_ROOT (here the receiver's own directory) and
    serves requests from a ThreadingHTTPServer. Its per-request CPU is a
    fraction of moto's, so it shows what the client side does when the server
    is not the bottleneck. It honours If-None-Match: * (PutMode::Create) but
    has no bulk delete and no If-Match; the bench needs neither. Installed by
    `scripts/bench` on first use into ~/.cache/pacs-mirror/localbucket-1.2.1
    (or $PACS_MIRROR_LOCALBUCKET names the executable)."""

    system = "localbucket"
    VERSION = "1.2.1"
    ENV = "PACS_MIRROR_LOCALBUCKET"
    EXE = "localbucket"

    @classmethod
    def install(cls) -> None:
        """Create the venv and install the pinned version (a few seconds)."""
        if cls.binary().is_file() or os.environ.get(cls.ENV):
            return
        venv = cls.binary().parent.parent
        log(f"installing localbucket=={cls.VERSION} into {venv}")
        for argv in (["python3", "-m", "venv", str(venv)],
                     [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                      f"localbucket=={cls.VERSION}"]):
            if subprocess.run(argv, stdin=subprocess.DEVNULL).returncode:
                raise BenchError(f"installing localbucket failed: {' '.join(argv)}")

    def prepare(self) -> None:
        self.install()
        (self.dir / "data").mkdir(exist_ok=True)

    def argv(self) -> list[str]:
        return [str(self.binary()), "--host", LOOPBACK, "--port", str(self.port), str(self.dir / "data")]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/", timeout=2) as r:
            return r.status == 200


class S3sFs(MotoS3):
    """s3s-fs 0.14.1 (crates.io, Rust, multi-threaded): S3 on a folder,
    checking SigV4 (key and secret "test", as the bench's clients use).
    Every GET costs it ~35 ms of latency whatever the size (see
    s3-test-server.md), so it suits the upload rows better than restore.
    The bucket is a directory made before start; listings read that
    directory (an unsigned ListObjects would be refused). Installed by
    `scripts/bench` on first use with `cargo install` (~2 min) into
    ~/.cache/pacs-mirror/s3s-fs-0.14.1 (or $PACS_MIRROR_S3S_FS names it)."""

    system = "s3s-fs"
    VERSION = "0.14.1"
    BUSY_NOTE = "; multi-threaded"
    ENV = "PACS_MIRROR_S3S_FS"
    EXE = "s3s-fs"

    @classmethod
    def install(cls) -> None:
        if cls.binary().is_file() or os.environ.get(cls.ENV):
            return
        root = cls.binary().parent.parent
        log(f"installing s3s-fs@{cls.VERSION} into {root} (cargo install, ~2 min)")
        argv = ["cargo", "install", f"s3s-fs@{cls.VERSION}", "--locked", "--features", "binary",
                "--root", str(root), "--quiet"]
        if subprocess.run(argv, stdin=subprocess.DEVNULL).returncode:
            raise BenchError(f"installing s3s-fs failed: {' '.join(argv)}")

    def prepare(self) -> None:
        self.install()
        (self.dir / "data" / self.bucket).mkdir(parents=True, exist_ok=True)

    def argv(self) -> list[str]:
        return [str(self.binary()), "--host", LOOPBACK, "--port", str(self.port),
                "--access-key", "test", "--secret-key", "test", str(self.dir / "data")]

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
        except urllib.error.HTTPError:
            pass  # any answer (403: unsigned) means it serves
        return True

    def after_ready(self) -> None:
        pass  # the bucket is the directory made in prepare()

    def list_objects(self, prefix: str) -> list[tuple[str, int]]:
        root = self.dir / "data" / self.bucket
        out = []
        for p in root.rglob("*"):
            key = p.relative_to(root).as_posix()
            if p.is_file() and key.startswith(prefix) and not p.name.startswith("."):
                out.append((key, p.stat().st_size))
        return out


S3_SERVERS = {"moto": MotoS3, "localbucket": LocalBucket, "s3s-fs": S3sFs}
