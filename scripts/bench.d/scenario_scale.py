"""Scenario `scale`: what each operation costs as the archive grows (issue
19). Builds one archive of small synthetic objects with `backfill` and, at
each size asked for, measures the figures an administrator of a
50-million-instance archive lives with."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import benchlib
from benchlib import BenchError, Scenario, log, out, print_context, proc_status_kib, ratio_line, spawn, stop
from scenario_ingest import prepare_binary

SCALE_DOC = """\
Issue 19 acceptance (at 1M instances): start-up < 1 s after a clean stop and
< 3 s after kill -9; /status and /metrics < 20 ms with 1M pending; one drill
of 3 studies < 1 s and < 100 MB; `restore --dry-run` of one study < 1 s;
index <= 1.5 KB per instance; agent RSS < 300 MB idle.

Data: small synthetic CT objects (`pacs-mirror synth --rows 16 --columns 16`,
--per-study instances per study, one series each), made in batches of
--batch instances with a new seed and patient prefix per batch, each batch
imported with `pacs-mirror backfill` (the durable ingest path) and deleted.
The agent's configuration: the embedded defaults but for the data directory,
a loopback listener, an admin endpoint, and one object-store target `backup`
(a folder under the work directory) with a [[drill]] table (2 random
studies + the newest: 3 studies).

At each size of --at (default: 100000 and --instances), in order:
  index        `du` of data/index, bytes per instance; `index stats` time
  pending      the agent started on the archive as backfill left it (every
               object queued for `backup`): time from spawn to its "ready"
               log line (ready_clean), then GET /status and /metrics 5 times
               each (median ms) while everything new is pending
  drain        time until /status shows backup pending 0 (not a target)
  rss_idle     agent VmRSS 3 s after the drain
  restart      SIGTERM; start again: ready_clean; VmRSS 3 s later
  kill -9      SIGKILL; start again: ready_kill9
  drill        agent stopped: `pacs-mirror drill --target backup --json`,
               wall time and peak RSS (wait4), must report ok
  restore      `pacs-mirror restore --from backup --dry-run --study UID`
               (the newest study), wall time and peak RSS
  verify       `pacs-mirror verify spool`, wall time (--no-verify skips it)

Output: '#' context lines, one table row per size and figure, then per
figure `ratio scale_growth_<figure> X` = value at the largest size / value
at the smallest (1 = flat, the size ratio = linear), and the acceptance
lines for the largest size. Exit status 2 if an acceptance target is missed
at the largest size (only when it is at least 1M; smaller runs only report).
"""

POLL = 0.005
TARGETS = {
    # figure: (limit, unit) at 1M instances
    "ready_clean_s": (1.0, "s"),
    "ready_kill9_s": (3.0, "s"),
    "status_ms": (20.0, "ms"),
    "metrics_ms": (20.0, "ms"),
    "drill_s": (1.0, "s"),
    "drill_rss_mb": (100.0, "MB"),
    "restore_dry_run_s": (1.0, "s"),
    "index_bytes_per_instance": (1536.0, "B"),
    "rss_idle_mb": (300.0, "MB"),
    "rss_restart_mb": (300.0, "MB"),
}


def add_args(p) -> None:
    p.add_argument("--instances", type=int, default=1_000_000, help="the largest archive (default 1000000)")
    p.add_argument("--at", default=None,
                   help="comma-separated sizes to measure at (default: 100000 and --instances)")
    p.add_argument("--per-study", type=int, default=100, help="instances per study (default 100)")
    p.add_argument("--batch", type=int, default=20_000, help="instances per synth+backfill batch (default 20000)")
    p.add_argument("--no-verify", action="store_true", help="skip `verify spool` (it reads every object)")


class Agent:
    """The agent on the scale archive, started and timed to readiness."""

    def __init__(self, binary: Path, config: Path, workdir: Path, admin_port: int):
        self.binary, self.config, self.workdir, self.admin_port = binary, config, workdir, admin_port
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> float:
        """Spawn and return the seconds until the log says ready."""
        self.runs += 1
        self.log_path = self.workdir / f"agent-{self.runs}.log"
        t0 = time.perf_counter()
        self.proc = spawn([str(self.binary), "run", "--config", str(self.config)], log_path=self.log_path)
        deadline = t0 + 600
        while True:
            if self.log_path.exists() and "pacs-mirror ready" in self.log_path.read_text(errors="replace"):
                return time.perf_counter() - t0
            if self.proc.poll() is not None:
                raise BenchError(f"the agent exited {self.proc.returncode}:\n{benchlib.tail(self.log_path)}")
            if time.perf_counter() > deadline:
                raise BenchError(f"the agent was not ready after 600 s:\n{benchlib.tail(self.log_path)}")
            time.sleep(POLL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        rc = stop(self.proc, sig, grace=600)
        if sig == signal.SIGTERM and rc != 0:
            raise BenchError(f"the agent exited {rc} after SIGTERM:\n{benchlib.tail(self.log_path)}")
        self.proc = None

    def rss_mb(self) -> float:
        assert self.proc is not None
        return (proc_status_kib(self.proc.pid, "VmRSS") or 0) / 1024

    def get_ms(self, path: str) -> tuple[float, bytes]:
        import urllib.request
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=120) as r:
            body = r.read()
        return (time.perf_counter() - t0) * 1000, body

    def status(self) -> dict:
        return json.loads(self.get_ms("/status")[1])


def timed(argv: list[str], what: str) -> float:
    """Run a command that must exit 0; its wall seconds."""
    t0 = time.perf_counter()
    benchlib.run(argv, timeout=36000)
    return time.perf_counter() - t0


def peak_rss_mb(argv: list[str], what: str) -> tuple[float, float, str]:
    """Run a command under GNU time (its own rusage: a child forked from
    this Python would count Python's pages before the exec):
    (seconds, peak RSS MB, stdout)."""
    if not Path("/usr/bin/time").exists():
        raise BenchError("GNU time (/usr/bin/time, Debian package time) is needed for peak RSS")
    t0 = time.perf_counter()
    r = benchlib.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *argv], check=False, timeout=36000)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"{what}: {' '.join(argv)} exited {r.returncode}\n{(r.stderr or '')[-2000:]}")
    m = re.findall(r"MAXRSS_KB=(\d+)", r.stderr or "")
    if not m:
        raise BenchError(f"{what}: no peak RSS from GNU time: {(r.stderr or '')[-500:]}")
    return secs, int(m[-1]) / 1024, r.stdout


def du_bytes(path: Path) -> int:
    r = benchlib.run(["du", "-sb", str(path)])
    return int(r.stdout.split()[0])


def grow(binary: Path, config: Path, workdir: Path, have: int, want: int, args, batch_no: list[int]) -> None:
    """Backfill batches until the archive holds `want` instances."""
    while have < want:
        n = min(args.batch, want - have)
        studies = max(1, n // args.per_study)
        per = n // studies
        k = batch_no[0]
        batch_no[0] += 1
        src = workdir / "batch"
        shutil.rmtree(src, ignore_errors=True)
        benchlib.run([str(binary), "synth", "--out", str(src), "--studies", str(studies),
                      "--instances-per-series", str(per), "--rows", "16", "--columns", "16",
                      "--seed", str(1000 + k), "--patient-id", f"SCALE{k:05d}-"], timeout=3600)
        r = benchlib.run([str(binary), "backfill", str(src), "--config", str(config), "--json"], timeout=36000)
        rep = json.loads(r.stdout)
        imported = int(rep["totals"]["imported"])
        if imported != studies * per:
            raise BenchError(f"backfill imported {imported} of {studies * per}: {r.stdout[:1000]}")
        shutil.rmtree(src, ignore_errors=True)
        have += studies * per
        log(f"archive: {have} instances")


def measure(binary: Path, config: Path, data: Path, agent: Agent, n: int, args) -> dict:
    f: dict = {"instances": n}
    index_bytes = du_bytes(data / "index")
    f["index_mb"] = index_bytes / 1e6
    f["index_bytes_per_instance"] = index_bytes / n
    f["index_stats_s"] = timed([str(binary), "index", "stats", "--config", str(config)], "index stats")

    f["ready_clean_s"] = agent.start()
    st = agent.status()
    f["pending"] = st["targets"]["backup"]["pending"]
    s_ms = sorted(agent.get_ms("/status")[0] for _ in range(5))
    m_ms = sorted(agent.get_ms("/metrics")[0] for _ in range(5))
    f["status_ms"], f["metrics_ms"] = s_ms[2], m_ms[2]
    t0 = time.perf_counter()
    while agent.status()["targets"]["backup"]["pending"] != 0:
        if agent.proc.poll() is not None:
            raise BenchError(f"the agent died:\n{benchlib.tail(agent.log_path)}")
        time.sleep(1)
    f["drain_s"] = time.perf_counter() - t0
    time.sleep(3)
    f["rss_idle_mb"] = agent.rss_mb()
    agent.stop()
    f["ready_clean_s"] = min(f["ready_clean_s"], agent.start())
    time.sleep(3)
    f["rss_restart_mb"] = agent.rss_mb()
    agent.stop(signal.SIGKILL)
    f["ready_kill9_s"] = agent.start()
    agent.stop()

    secs, rss, stdout = peak_rss_mb([str(binary), "drill", "--config", str(config), "--target", "backup", "--json"],
                                    "drill")
    f["drill_s"], f["drill_rss_mb"] = secs, rss
    newest = None
    try:
        reports = json.loads(stdout)
        reports = reports if isinstance(reports, list) else [reports]
        for r in reports:
            if r.get("ok") is not True:
                raise BenchError(f"the drill failed: {stdout[:2000]}")
            for s in r.get("studies", []):
                if "newest" in s.get("picked", []):
                    newest = s.get("study_instance_uid")
    except json.JSONDecodeError:
        raise BenchError(f"drill --json printed no JSON: {stdout[:500]}")
    if newest:
        secs, rss, _ = peak_rss_mb([str(binary), "restore", "--config", str(config), "--from", "backup",
                                    "--to", "NOBODY@127.0.0.1:9", "--study", newest, "--dry-run", "--quiet"],
                                   "restore --dry-run")
        f["restore_dry_run_s"], f["restore_dry_run_rss_mb"] = secs, rss
    if not args.no_verify:
        f["verify_spool_s"] = timed([str(binary), "verify", "spool", "--config", str(config)], "verify spool")
    return f


def run_scale(args, ctx) -> int:
    binary = prepare_binary(args, needed=True, wanted_for_synth=True)
    sizes = sorted({int(x) for x in (args.at or f"{min(100_000, args.instances)},{args.instances}").split(",")})
    if sizes[-1] > args.instances:
        raise BenchError("--at names a size above --instances")
    benchlib.check_free_space(ctx.workdir, int(sizes[-1] * 12_000), "scale archive")
    print_context(ctx.workdir, binary)
    data = ctx.workdir / "data"
    bucket = ctx.workdir / "bucket"
    port, admin = benchlib.free_port(), benchlib.free_port()
    config = ctx.workdir / "scale.toml"
    config.write_text(f"""[device]
name = "scale"
data_dir = "{data}"

[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
port = {port}

[[device.network_ae]]
ae_title = "PACS_MIRROR"
network_connections = ["dicom"]
accept_any_calling_ae = true

[[target]]
type = "object_store"
name = "backup"
url = "file://{bucket}"

[[drill]]
target = "backup"

[admin]
listen = "127.0.0.1:{admin}"
""")
    agent = Agent(binary, config, ctx.workdir, admin)
    results = []
    have, batch_no = 0, [0]
    for n in sizes:
        grow(binary, config, ctx.workdir, have, n, args, batch_no)
        have = n
        log(f"measuring at {n} instances")
        results.append(measure(binary, config, data, agent, n, args))
        log(json.dumps(results[-1]))
    out()
    figures = [k for k in results[0] if k != "instances"]
    out("figure".ljust(28) + "".join(f"{r['instances']:>14}" for r in results))
    for k in figures:
        out(k.ljust(28) + "".join(f"{r.get(k, float('nan')):>14.3f}" for r in results))
    out()
    first, last = results[0], results[-1]
    if len(results) > 1:
        out(f"# growth: value at {last['instances']} / value at {first['instances']} "
            f"(size ratio {last['instances'] / first['instances']:.1f}: linear growth shows that ratio, flat 1)")
        for k in figures:
            if k in ("instances", "pending", "index_mb", "drain_s", "verify_spool_s", "index_stats_s"):
                continue
            a, b = first.get(k), last.get(k)
            if a and b:
                ratio_line(f"scale_growth_{k}", b / a)
    missed = []
    for k, (limit, unit) in TARGETS.items():
        v = last.get(k)
        if v is None:
            continue
        good = v <= limit
        missed += [] if good else [k]
        out(f"# acceptance at {last['instances']}: {k} {v:.3f} <= {limit:g} {unit}: {'PASS' if good else 'FAIL'}")
    if missed and last["instances"] >= 1_000_000:
        return 2
    return 0


SCENARIOS = [
    Scenario("scale", "what each operation costs as the archive grows (start-up, status, drill, restore, "
             "index size, RSS) at 100k and 1M instances", SCALE_DOC, add_args, run_scale),
]
