"""Scenario `drill`: time of a restore drill of one study (C-GET from the
mirror Orthanc, hash and compare every instance with the index) versus DCMTK
getscu retrieving the same study from the same Orthanc in the same run."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path

import benchlib
import receivers
from benchlib import (BenchError, Scenario, aggregate, check_send, log, out, print_context, print_table,
                      ratio_line, send, spawn, sync_disks, tool_version, warm)
from datasets import ct_dataset
from scenario_ingest import prepare_binary
from scenario_mirror import admin_target, cpu_secs, mirror_agent, orthanc_count, poll_until, stop_agent

DRILL_DOC = """\
Issue acceptance: a restore drill of one 250-instance study from the mirror
Orthanc by C-GET (`pacs-mirror drill`, which also hashes every instance and
compares it with the index) takes <= 1.2x the time of DCMTK `getscu`
retrieving the same study from the same Orthanc, in the same run.

Data: one study of --count (default 250) synthetic 512x512x16-bit CT
instances, one series (`pacs-mirror synth --studies 1 --instances-per-series
N`, or the stdlib generator; --data DIR reuses DIR's files, which must be one
study).

Setup (untimed): a fresh Orthanc (private config, SQLite, no plugins,
TCP_NODELAY=1) that knows the agent's AE and getscu's AE as modalities (C-GET
allowed); a fresh agent whose DICOM target "mirror" is that Orthanc
([[drill]] target "mirror", timeout_secs 120). storescu (2 associations)
stores the study into the agent; wait until its admin /status shows the
mirror target with pending 0 and delivered N and Orthanc holds N instances;
then SIGTERM the agent, so `pacs-mirror drill` runs the drill in its own
process (with the agent running it would run inside the agent; the stopped
agent gives a clean measurement of the drill alone).

Timed, --repeat times (default 3), the order alternating (getscu first in odd
repeats, the drill first in even ones), after --warmup untimed runs of each
(default 1), `sync` before every run:
getscu       getscu -S -aet GETSCU -aec ORTHANC -k QueryRetrieveLevel=STUDY
             -k StudyInstanceUID=UID +B -od DIR 127.0.0.1 PORT
             (TCP_NODELAY=1; study root; +B: written to disk as received, no
             fsync; max receive PDU 16384 = getscu's default, or --getscu-pdu).
             Must exit 0 with N files in DIR. Time = process wall time.
pacs-mirror  pacs-mirror drill --config CFG --target mirror --study UID --json
             (TMPDIR = a directory under the work dir, so its scratch files
             land on the same filesystem as getscu's). Must exit 0 with a
             report ok true and counts {MATCH: N}; the scratch dir must be
             empty afterwards. Time = process wall time (start-up, index
             reads, the C-GET with blake3 of every instance as it arrives,
             comparison, removing the scratch copies, the history write and
             index flush). Like getscu's, the drill's copies are not fsynced:
             they are hashed as they arrive and removed afterwards. The
             report's own study_secs (association + C-GET) and
             first_instance_secs are printed too.
CPU seconds of each client process and of Orthanc during each run are logged.

Output: '#' context lines, the table (median, or --stat best, of the
repeats), the drill's own timings, then
  ratio drill_vs_getscu X     (getscu seconds / drill seconds)
Exit status 2 if the drill took more than 1.2x getscu's time (X < 0.833).
"""

TIME_FACTOR = 1.2
RATIO_TARGET = 1 / TIME_FACTOR
GETSCU_AE = "GETSCU"
ASSOCS = 2


class MirrorOrthanc(receivers.Orthanc):
    """The bench's Orthanc, with `DicomModalities` (every service allowed) so
    the agent and getscu may C-GET from it."""

    def __init__(self, workdir: Path, tag: str):
        super().__init__(workdir, tag)
        self.modalities: dict[str, tuple[str, int]] = {}

    def prepare(self) -> None:
        super().prepare()
        cfg = json.loads(self.config.read_text())
        cfg["DicomModalities"] = {
            name: {"AET": ae, "Host": benchlib.LOOPBACK, "Port": port, "AllowEcho": True,
                   "AllowStore": True, "AllowFind": True, "AllowGet": True, "AllowMove": True}
            for name, (ae, port) in self.modalities.items()
        }
        self.config.write_text(json.dumps(cfg, indent=2))


def add_args(p) -> None:
    g = p.add_argument_group("drill options")
    g.add_argument("--count", type=int, default=250, metavar="N",
                   help="instances in the study (default 250)")
    g.add_argument("--data", type=Path, metavar="DIR",
                   help="use the DICOM files in DIR (first N in path order; one study); if DIR is empty "
                        "or missing, generate the study there and keep it for later runs")
    g.add_argument("--generator", choices=("auto", "synth", "python"), default="auto",
                   help="data generator: `pacs-mirror synth`, the stdlib one in bench.d, or auto = synth "
                        "if this build has it (default)")
    g.add_argument("--repeat", type=int, default=3, metavar="N",
                   help="timed runs of each (default 3)")
    g.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed runs of each before the timed ones (default 1)")
    g.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which of the --repeat runs the table shows (default median)")
    g.add_argument("--getscu-pdu", type=int, metavar="BYTES",
                   help="getscu's max receive PDU (4096..131072; default: getscu's own, 16384)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="give up waiting for replication or a retrieve after S seconds (default 300)")


# ---------------------------------------------------------------- helpers

_UID_LINE = re.compile(r"^\(0020,000d\) UI \[([0-9.]+)\]", re.I)


def study_uids(files: list[Path]) -> set[str]:
    """StudyInstanceUID of each file (dcmdump, in batches)."""
    uids: set[str] = set()
    for i in range(0, len(files), 200):
        batch = files[i:i + 200]
        r = benchlib.run(["dcmdump", "-q", "+P", "0020,000d"] + [str(f) for f in batch], timeout=120)
        found = [m.group(1) for m in map(_UID_LINE.match, r.stdout.splitlines()) if m]
        if len(found) != len(batch):
            raise BenchError(f"dcmdump found {len(found)} Study Instance UIDs in {len(batch)} files")
        uids.update(found)
    return uids


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], log_path: Path, *, env: dict | None, stdout_path: Path | None,
          timeout: float) -> tuple[float, int, float]:
    """Run argv to completion; (wall seconds, exit status, CPU seconds).

    A blocking wait (waitpid) with a timer that kills on timeout: Popen.wait
    with a timeout polls, sleeping up to 50 ms between polls, which would
    round the figures up by as much."""
    c0 = children_cpu()
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    with open(log_path, "wb") as err, open(stdout_path or os.devnull, "wb") as so:
        t0 = time.perf_counter()
        p = spawn(argv, stdout=so, stderr=err, env=env)
        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            p.wait()
        finally:
            timer.cancel()
        secs = time.perf_counter() - t0
    benchlib.stop(p, grace=1.0)  # exited: reap the group, unregister
    if expired.is_set():
        raise BenchError(f"{Path(argv[0]).name} did not finish in {timeout:.0f}s; log {log_path}")
    return secs, p.returncode, children_cpu() - c0


# ---------------------------------------------------------------- the runs

def run_getscu(o: MirrorOrthanc, uid: str, n: int, nbytes: int, tag: str, args, ctx) -> dict:
    outdir = ctx.workdir / f"getscu-{tag}"
    benchlib.drop_tree(outdir)
    outdir.mkdir(parents=True)
    argv = ["getscu", "-S", "-aet", GETSCU_AE, "-aec", o.ae, "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={uid}", "+B", "-od", str(outdir)]
    if args.getscu_pdu:
        argv += ["-pdu", str(args.getscu_pdu)]
    argv += [benchlib.LOOPBACK, str(o.port)]
    log_path = ctx.workdir / f"getscu-{tag}.log"
    sync_disks()
    ocpu0 = cpu_secs(o.proc)
    secs, rc, cpu = timed(argv, log_path, env=receivers.DCMTK_ENV, stdout_path=None, timeout=args.timeout)
    ocpu = cpu_secs(o.proc) - ocpu0
    files = [p for p in outdir.iterdir() if p.is_file()]
    got = sum(p.stat().st_size for p in files)
    if rc != 0:
        raise BenchError(f"getscu {tag} exited {rc}; log {log_path}:\n{benchlib.tail(log_path)}")
    if len(files) != n:
        raise BenchError(f"getscu {tag}: {len(files)} files in {outdir}, expected {n}; log {log_path}:\n"
                         f"{benchlib.tail(log_path)}")
    if got < nbytes - 4096 * n:
        raise BenchError(f"getscu {tag}: {got} bytes retrieved, the study has {nbytes}")
    log(f"getscu {tag}: {secs:.3f}s, {n / secs:.1f} files/s, {got / secs / 1e6:.1f} MB/s; "
        f"CPU getscu {cpu:.2f}s, orthanc {ocpu:.2f}s")
    benchlib.drop_tree(outdir)
    return {"secs": secs, "cpu": cpu, "orthanc_cpu": ocpu, "bytes": got}


def run_drill(pm: receivers.PacsMirror, o: MirrorOrthanc, uid: str, n: int, tag: str, args, ctx) -> dict:
    tmp = ctx.workdir / "drill-tmp"
    tmp.mkdir(exist_ok=True)
    argv = [str(pm.binary), "drill", "--config", str(pm.config), "--target", "mirror", "--study", uid,
            "--json"]
    log_path = ctx.workdir / f"drill-{tag}.log"
    json_path = ctx.workdir / f"drill-{tag}.json"
    sync_disks()
    ocpu0 = cpu_secs(o.proc)
    secs, rc, cpu = timed(argv, log_path, env={"TMPDIR": str(tmp)}, stdout_path=json_path,
                          timeout=args.timeout)
    ocpu = cpu_secs(o.proc) - ocpu0
    text = json_path.read_text(errors="replace")
    try:
        reports = json.loads(text)
        rep = reports[0]
        study = rep["studies"][0]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BenchError(f"drill {tag}: exit {rc}, no JSON report ({e}): {text[:500]}; log {log_path}:\n"
                         f"{benchlib.tail(log_path)}")
    counts = rep.get("counts", {})
    if rc != 0 or rep.get("ok") is not True or counts != {"MATCH": n}:
        raise BenchError(f"drill {tag}: exit {rc}, ok {rep.get('ok')}, counts {counts} (want MATCH {n}), "
                         f"failure {rep.get('failure')!r}; log {log_path}")
    left = list(tmp.rglob("*"))
    if left:
        raise BenchError(f"drill {tag}: its scratch files were left behind in {tmp}: {left[:5]}")
    info = {"secs": secs, "cpu": cpu, "orthanc_cpu": ocpu, "study_secs": float(study["study_secs"]),
            "first_secs": float(study.get("first_instance_secs") or 0.0),
            "report_secs": float(rep["seconds"]), "bytes": int(study["bytes"])}
    log(f"drill {tag}: {secs:.3f}s wall (report: drill {info['report_secs']:.3f}s, C-GET {info['study_secs']:.3f}s, "
        f"first instance {info['first_secs']:.3f}s), MATCH {counts['MATCH']}; CPU drill {cpu:.2f}s, "
        f"orthanc {ocpu:.2f}s")
    json_path.unlink()
    return info


def replicate(files, nbytes, uid, binary, args, ctx) -> tuple[MirrorOrthanc, receivers.PacsMirror]:
    """Fresh Orthanc + agent; the study stored into the agent and replicated;
    the agent stopped. Returns both (Orthanc running)."""
    n = len(files)
    o = MirrorOrthanc(ctx.workdir, "drill")
    pm = mirror_agent(binary, ctx.workdir, "drill", o)
    pm.extra_toml += '\n[[drill]]\ntarget = "mirror"\ntimeout_secs = 120\n'
    o.modalities = {"agent": (pm.ae, pm.port), "getscu": (GETSCU_AE, 104)}

    def replicated() -> bool:
        t = admin_target(pm)
        return t["pending"] == 0 and t["delivered"] >= n and orthanc_count(o) >= n

    ok = False
    try:
        o.start()
        pm.start()
        warm(files)
        log(f"storing the study ({n} files) into the agent; it replicates to orthanc")
        res = send(pm.ae, pm.port, files, ASSOCS, pm.dir, "fill", env=receivers.DCMTK_ENV)
        check_send(res, "store into pacs-mirror")
        poll_until(replicated, f"pacs-mirror: mirror delivered == {n}", args.timeout,
                   [(pm, "pacs-mirror"), (o, "orthanc")])
        time.sleep(0.3)  # would more rows appear?
        t, c = admin_target(pm), orthanc_count(o)
        if t["pending"] != 0 or t["delivered"] != n or t.get("dead_letters", 0) != 0 or c != n:
            raise BenchError(f"after replication: agent pending {t['pending']}, delivered {t['delivered']}, "
                             f"dead_letters {t.get('dead_letters')}; orthanc holds {c} (want 0, {n}, 0; {n})")
        stop_agent(pm)
        ok = True
    finally:
        if not ok:
            o.kill()
            pm.kill()
            log(f"drill setup: logs kept in {pm.dir} and {o.dir}")
    log(f"replicated: orthanc holds {c} instances; agent stopped (the drill runs in the CLI process)")
    return o, pm


def run_drill_scenario(args, ctx) -> int:
    if args.repeat < 1:
        raise BenchError("--repeat must be >= 1")
    if args.warmup < 0:
        raise BenchError("--warmup must be >= 0")
    if args.count < ASSOCS:
        raise BenchError(f"--count must be >= {ASSOCS}")
    if args.getscu_pdu is not None and not 4096 <= args.getscu_pdu <= 131072:
        raise BenchError("--getscu-pdu must be within 4096..131072")
    if not shutil.which("getscu") or not shutil.which("dcmdump"):
        raise BenchError("getscu and dcmdump (DCMTK) are needed")
    binary = prepare_binary(args, True, wanted_for_synth=True)
    files, how = ct_dataset(args.data, args.count, args.generator, binary, ctx.workdir, studies=1)
    n = len(files)
    nbytes = sum(f.stat().st_size for f in files)
    uids = study_uids(files)
    if len(uids) != 1:
        raise BenchError(f"the {n} files hold {len(uids)} studies; the drill scenario wants one")
    uid = next(iter(uids))

    print_context(ctx.workdir, binary)
    out(f"# {tool_version(['getscu', '--version'])}")
    out(f"# data: 1 study, {n} files, {nbytes / 1e6:.1f} MB ({nbytes / n / 1e3:.1f} KB each); {how}")
    out(f"# getscu: -S +B, TCP_NODELAY=1, max PDU {args.getscu_pdu or 16384}"
        f"{'' if args.getscu_pdu else ' (default)'}, no fsync; pacs-mirror drill: agent stopped, drill run "
        f"by the CLI process, max PDU 262144, scratch copies not fsynced, blake3 + index compare")
    out(f"# order: {args.warmup} untimed warm-up of each, then repeat x (getscu, drill) alternating; "
        f"statistic: {args.stat} of {args.repeat}")

    o, pm = replicate(files, nbytes, uid, binary, args, ctx)
    ok = False
    try:
        for w in range(args.warmup):
            log(f"--- warm-up {w + 1}/{args.warmup}")
            run_getscu(o, uid, n, nbytes, f"w{w + 1}", args, ctx)
            run_drill(pm, o, uid, n, f"w{w + 1}", args, ctx)
        g, d = [], []
        for rep in range(args.repeat):
            tag = f"r{rep + 1}"
            order = ("getscu", "drill") if rep % 2 == 0 else ("drill", "getscu")
            log(f"--- repeat {rep + 1}/{args.repeat}: {', '.join(order)}")
            for what in order:
                if what == "getscu":
                    g.append(run_getscu(o, uid, n, nbytes, tag, args, ctx))
                else:
                    d.append(run_drill(pm, o, uid, n, tag, args, ctx))
        if orthanc_count(o) != n:
            raise BenchError(f"orthanc holds {orthanc_count(o)} instances after the runs, expected {n}")
        o.finish(n, nbytes)
        ok = True
    finally:
        if not ok:
            o.kill()
            log(f"drill: logs kept in {pm.dir} and {o.dir}")
        elif not ctx.keep:
            o.remove()
            pm.remove()
    gs = [x["secs"] for x in g]
    ds = [x["secs"] for x in d]
    gsec, dsec = aggregate(gs, args.stat), aggregate(ds, args.stat)
    med = statistics.median
    out()
    print_table([
        {"system": "getscu", "mode": "C-GET", "files": n, "seconds": gsec, "bytes": nbytes, "samples": gs},
        {"system": "pacs-mirror", "mode": "drill", "files": n, "seconds": dsec, "bytes": nbytes, "samples": ds},
    ])
    out()
    out("# drill report: study_secs (association + C-GET of the study) "
        + " ".join(f"{x['study_secs']:.3f}" for x in d)
        + f" (median {med([x['study_secs'] for x in d]):.3f}); first_instance_secs "
        + " ".join(f"{x['first_secs']:.3f}" for x in d)
        + "; report seconds " + " ".join(f"{x['report_secs']:.3f}" for x in d))
    out(f"# CPU s (median): getscu {med([x['cpu'] for x in g]):.2f} (orthanc {med([x['orthanc_cpu'] for x in g]):.2f}); "
        f"drill process {med([x['cpu'] for x in d]):.2f} (orthanc {med([x['orthanc_cpu'] for x in d]):.2f})")
    out(f"# loadavg at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratio = gsec / dsec
    good = ratio >= RATIO_TARGET
    out(f"# acceptance: drill {dsec:.3f}s <= {TIME_FACTOR}x getscu {gsec:.3f}s = {TIME_FACTOR * gsec:.3f}s "
        f"(ratio {ratio:.3f} >= {RATIO_TARGET:.3f}): {'PASS' if good else 'FAIL'}")
    ratio_line("drill_vs_getscu", ratio)
    return 0 if good else 2


SCENARIOS = [
    Scenario("drill", "restore drill of one study (C-GET + hash + compare) vs DCMTK getscu of the same study",
             DRILL_DOC, add_args, run_drill_scenario),
]
