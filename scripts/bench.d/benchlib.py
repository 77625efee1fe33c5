"""Shared plumbing for scripts/bench scenarios: logging, child processes that
die with the driver, ports, waiting, the pacs-mirror build, data preparation,
storescu runs with response checking, and result output.

Conventions every scenario follows:
  * progress and diagnostics go to stderr (`log`), results to stdout;
  * stdout lines starting with '#' are context (versions, notes); the table
    follows; the scenario ends with `ratio NAME VALUE` lines (pacs-mirror rate /
    peer rate), one per compared pair;
  * anything wrong (a receiver that will not start, a store that was not
    Success, a count that does not match) raises `BenchError`: exit status 1.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
LOOPBACK = "127.0.0.1"


class BenchError(Exception):
    pass


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- processes

_libc = None


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child if the driver dies (even by SIGKILL)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_children: list[subprocess.Popen] = []

# A watchdog process (own session) that holds the read end of a pipe from the
# driver and learns every child's process group. When the pipe reaches EOF
# (the driver exited in any way, including SIGKILL) it stops the groups still
# registered. PR_SET_PDEATHSIG is set too, but not every kernel/sandbox
# delivers it, and it does not reach storescp's forked children.
_WATCHDOG_CODE = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line.startswith("-"):
        groups.discard(int(line[1:]))
    elif line:
        groups.add(int(line))
for sig in (signal.SIGTERM, signal.SIGKILL):
    for g in list(groups):
        try:
            os.killpg(g, sig)
        except ProcessLookupError:
            groups.discard(g)
    if not groups:
        break
    time.sleep(5)
"""
_watchdog: subprocess.Popen | None = None


def _watch(line: str) -> None:
    global _watchdog
    if _watchdog is None:
        _watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        _watchdog.stdin.write(line + "\n")
        _watchdog.stdin.flush()
    except (BrokenPipeError, OSError):
        pass


def _forget(p: subprocess.Popen) -> None:
    if p in _children:
        _children.remove(p)
        _watch(f"-{p.pid}")


def spawn(argv: list[str], *, log_path: Path | None = None, env: dict | None = None,
          cwd: Path | None = None, stdout=None, stderr=None) -> subprocess.Popen:
    """Start a child in its own process group (so Ctrl-C reaches only the
    driver, and the whole group, e.g. storescp's forked children, can be
    stopped), registered for cleanup on any exit."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if log_path is not None:
        fh = open(log_path, "ab")
        stdout = stdout if stdout is not None else fh
        stderr = stderr if stderr is not None else subprocess.STDOUT
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                         env=full_env, cwd=cwd, start_new_session=True,
                         preexec_fn=_die_with_parent)
    if log_path is not None:
        fh.close()
    _children.append(p)
    _watch(str(p.pid))
    return p


def stop(p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 20.0) -> int | None:
    """Signal the child's process group, wait up to `grace` s, then SIGKILL."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} ({Path(p.args[0]).name}) ignored signal {sig} for {grace:.0f}s: SIGKILL")
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    # storescp --fork children share the group; make sure none linger
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _forget(p)
    return p.returncode


def cleanup_children() -> None:
    global _watchdog
    for p in list(_children):
        try:
            stop(p, grace=5.0)
        except Exception as e:  # never let cleanup hide the real error
            print(f"cleanup of pid {p.pid} failed: {e}", file=sys.stderr)
    if _watchdog is not None:
        try:
            _watchdog.stdin.close()
            _watchdog.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _watchdog = None


def install_signal_handlers() -> None:
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def run(argv: list[str], *, check=True, capture=True, timeout=None, env=None, cwd=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=capture, text=True,
                       timeout=timeout, env=full_env, cwd=cwd, preexec_fn=_die_with_parent)
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {r.returncode}\n{(r.stderr or '')[-2000:]}")
    return r


def tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + l for l in lines[-n:])


# ---------------------------------------------------------------- ports, waiting

_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (never the same twice per run)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise BenchError("no free port")


def wait_until(pred, *, what: str, timeout: float, proc: subprocess.Popen | None = None,
               log_path: Path | None = None, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what}: process exited with status {proc.returncode} before it was ready"
                             + (f"; log {log_path}:\n{tail(log_path)}" if log_path else ""))
        try:
            if pred():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f}s"
                             + (f"; log {log_path}:\n{tail(log_path)}" if log_path else ""))
        time.sleep(interval)


def echo_ok(called_ae: str, port: int, calling_ae: str = "BENCH", extra: list[str] | None = None) -> bool:
    """C-ECHO with echoscu; `extra`: options before host/port (e.g. +tls …)."""
    r = subprocess.run(["echoscu", "-q", "-to", "5", "-aet", calling_ae, "-aec", called_ae] + (extra or [])
                       + [LOOPBACK, str(port)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    return r.returncode == 0


def http_get_json(url: str, timeout: float = 5.0):
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def proc_status_kib(pid: int, key: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS…) of /proc/<pid>/status, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def drop_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sync_disks() -> None:
    """Flush dirty pages (e.g. storescp's un-fsynced output) so the next timed
    run does not pay for the previous system's writeback."""
    os.sync()


# ---------------------------------------------------------------- WAN link emulator

class LinkEmu:
    """scripts/bench.d/linkemu.py in its own process (its own GIL): a relay
    from `port` (reserved at construction) to `target_port` over an emulated
    link (one shared FIFO link per direction: RTT/2 one-way delay, `mbit`
    Mbit/s serialization, `window` bytes in flight per connection). With
    `hold`, connections are accepted but held unread until `release()`.
    Counters (`stats()`): per direction `up` (toward the target) and `down`,
    bytes_in/bytes_out, first_in/last_out (CLOCK_MONOTONIC = time.monotonic()),
    connections, timer lateness, the process's CPU seconds."""

    SCRIPT = Path(__file__).resolve().parent / "linkemu.py"

    def __init__(self, workdir: Path, tag: str, target_port: int, *, rtt_ms: float, mbit: float,
                 window: int | None = None, jitter_ms: float = 0.0, hold: bool = False,
                 target_host: str = LOOPBACK):
        self.port = free_port()
        self.control = free_port()
        self.log_path = workdir / f"linkemu-{tag}.log"
        self.argv = [sys.executable, "-B", str(self.SCRIPT), "--listen", str(self.port),
                     "--target", f"{target_host}:{target_port}", "--rtt-ms", str(rtt_ms), "--mbit", str(mbit),
                     "--jitter-ms", str(jitter_ms), "--control", str(self.control)]
        if window is not None:
            self.argv += ["--window", str(window)]
        if hold:
            self.argv.append("--hold")
        self.proc: subprocess.Popen | None = None
        self.final: dict | None = None

    def start(self) -> "LinkEmu":
        self.proc = spawn(self.argv, log_path=self.log_path)
        wait_until(self.stats, what=f"linkemu on {LOOPBACK}:{self.port}", timeout=30, proc=self.proc,
                   log_path=self.log_path, interval=0.05)
        return self

    def cmd(self, command: str, timeout: float = 10.0) -> dict:
        import json

        with socket.create_connection((LOOPBACK, self.control), timeout=timeout) as s:
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf.decode())

    def stats(self) -> dict:
        return self.cmd("stats")

    def drop_held(self) -> int:
        """Abort the connections held so far (their client died)."""
        return int(self.cmd("drop")["dropped"])

    def release(self) -> float:
        """Let held connections proceed; returns the release time (time.monotonic() clock)."""
        return float(self.cmd("release")["released_at"])

    def stop(self) -> dict:
        """Final counters, then stop the process."""
        if self.proc is None:
            return self.final or {}
        if self.proc.poll() is not None:
            raise BenchError(f"linkemu died (status {self.proc.returncode}); log {self.log_path}:\n"
                             f"{tail(self.log_path)}")
        self.final = self.stats()
        try:
            self.cmd("quit", timeout=5)
        except OSError:
            pass
        stop(self.proc, signal.SIGTERM, 5.0)
        self.proc = None
        return self.final

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL, 5.0)
            self.proc = None


# ---------------------------------------------------------------- pacs-mirror binary

def pm_binary(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "pacs-mirror"


def build_release() -> None:
    log("cargo build --release (skip with --no-build)")
    r = subprocess.run(["cargo", "build", "--release"], cwd=REPO, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise BenchError("cargo build --release failed")


def has_subcommand(binary: Path, sub: str) -> bool:
    if not binary.exists():
        return False
    r = subprocess.run([str(binary), sub, "--help"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    return r.returncode == 0


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        text = (r.stdout or r.stderr).strip().splitlines()
        return text[0].strip() if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding `path` (from /proc/mounts)."""
    path = path.resolve()
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    except OSError:
        pass
    return kind


def print_context(workdir: Path, binary: Path | None) -> None:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out(f"# date {time.strftime('%Y-%m-%dT%H:%M:%S%z')}  git {git_describe()}  cpus {os.cpu_count()}  "
        f"kernel {os.uname().release}  loadavg {load}")
    out(f"# workdir {workdir} ({fs_type(workdir)})")
    vers = [tool_version(["storescu", "--version"]), tool_version(["Orthanc", "--version"])]
    if binary is not None:
        vers.append(tool_version([str(binary), "--version"]))
    out("# " + " | ".join(vers))


# ---------------------------------------------------------------- data

def is_part10(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def list_dicom_files(root: Path) -> list[Path]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and is_part10(p))
    return files


def warm(files: list[Path]) -> None:
    """Read every file once (like `cat files > /dev/null`) so all systems see
    the same, warm, sender-side page cache."""
    buf = bytearray(1 << 20)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# ---------------------------------------------------------------- storescu

@dataclass
class SendResult:
    seconds: float
    files: int
    bytes: int
    successes: int
    failures: list[str] = field(default_factory=list)


def storescu_argv(called_ae: str, port: int, files: list[Path], extra: list[str] | None = None) -> list[str]:
    # -v: one "Received Store Response (<status>)" line per file, which we count.
    return (["storescu", "-v", "-aet", "BENCH", "-aec", called_ae] + (extra or [])
            + [LOOPBACK, str(port)] + [str(f) for f in files])


def split(files: list[Path], n: int) -> list[list[Path]]:
    """n contiguous, near-equal chunks (contiguous keeps a study on one association)."""
    k, r = divmod(len(files), n)
    chunks, i = [], 0
    for j in range(n):
        size = k + (1 if j < r else 0)
        chunks.append(files[i:i + size])
        i += size
    return [c for c in chunks if c]


def send(called_ae: str, port: int, files: list[Path], assocs: int, logdir: Path, tag: str,
         extra: list[str] | None = None, env: dict | None = None) -> SendResult:
    """Send `files` over `assocs` parallel storescu processes (one association
    each); time from the first process start to the last exit. Every file must
    get a Success response and every storescu must exit 0."""
    chunks = split(files, assocs)
    procs = []
    logs = []
    t0 = time.perf_counter()
    for j, chunk in enumerate(chunks):
        lp = logdir / f"storescu-{tag}-{j + 1}.log"
        logs.append(lp)
        with open(lp, "wb") as fh:
            procs.append(spawn(storescu_argv(called_ae, port, chunk, extra), stdout=subprocess.DEVNULL,
                               stderr=fh, env=env))
    for p in procs:
        p.wait()
    seconds = time.perf_counter() - t0
    for p in procs:
        try:  # reap any process group leftovers, unregister
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _forget(p)

    successes = 0
    failures: list[str] = []
    for p, lp, chunk in zip(procs, logs, chunks):
        text = lp.read_text(errors="replace")
        ok = 0
        for line in text.splitlines():
            if "Received Store Response" in line:
                if line.rstrip().endswith("Received Store Response (Success)"):
                    ok += 1
                else:
                    failures.append(f"{lp.name}: {line.strip()}")
        successes += ok
        if p.returncode != 0:
            failures.append(f"{lp.name}: storescu exited {p.returncode}")
        if ok != len(chunk):
            failures.append(f"{lp.name}: {ok} Success responses for {len(chunk)} files")
            errs = [l for l in text.splitlines() if l.startswith(("E:", "F:", "W:"))]
            failures.extend(f"    {l}" for l in errs[:10])
    nbytes = sum(f.stat().st_size for f in files)
    return SendResult(seconds=seconds, files=len(files), bytes=nbytes, successes=successes,
                      failures=failures)


def check_send(res: SendResult, what: str) -> None:
    if res.failures or res.successes != res.files:
        detail = "\n".join("  " + f for f in res.failures[:20])
        raise BenchError(f"{what}: {res.successes}/{res.files} stores answered Success\n{detail}")


# ---------------------------------------------------------------- results

def aggregate(samples: list[float], how: str) -> float:
    return min(samples) if how == "best" else statistics.median(samples)


def print_table(rows: list[dict]) -> None:
    """rows: dicts with system, mode, files, seconds, bytes (+ optional samples)."""
    hdr = f"{'system':<13} {'mode':<12} {'files':>6} {'files/s':>9} {'MB/s':>9} {'seconds':>9}"
    out(hdr)
    out("-" * len(hdr))
    for r in rows:
        s = r["seconds"]
        out(f"{r['system']:<13} {r['mode']:<12} {r['files']:>6} {r['files'] / s:>9.1f} "
            f"{r['bytes'] / s / 1e6:>9.1f} {s:>9.3f}"
            + (f"   samples: {' '.join(f'{x:.3f}' for x in r['samples'])}" if len(r.get("samples", [])) > 1 else ""))


def ratio_line(name: str, value: float) -> None:
    out(f"ratio {name} {value:.3f}")


# ---------------------------------------------------------------- scenario registry

@dataclass
class Scenario:
    """One entry of a scenario module's SCENARIOS list."""
    name: str
    help: str
    description: str
    add_arguments: object  # (argparse.ArgumentParser) -> None
    run: object            # (args, ctx) -> int exit status


def parse_systems(text: str, allowed: tuple[str, ...]) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in systems if s not in allowed]
    if bad or not systems:
        raise BenchError(f"--systems: unknown {bad}; choose from {','.join(allowed)}")
    # keep the canonical order (storescp, orthanc, pacs-mirror)
    return [s for s in allowed if s in systems]


def check_free_space(path: Path, need: int, what: str) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise BenchError(f"{what}: needs ~{need / 1e9:.1f} GB free under {path}, only {free / 1e9:.1f} GB")
