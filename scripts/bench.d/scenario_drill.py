"""Scenario `drill`: time of a restore drill of one study (C-GET from the
mirror Orthanc, hash and compare every instance with the index) versus DCMTK
getscu retrieving the same study from the same Orthanc in the same run; and
of a C-MOVE drill of that study (Orthanc sends it to pacs-mirror's drill
receiver AE) versus DCMTK movescu moving it from the same Orthanc to a DCMTK
storescp."""

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

C-MOVE row (unless --no-cmove), same Orthanc, same study, same run. Setup
(untimed): Orthanc's DicomModalities also hold the drill receiver AE
PACS_MIRROR_DRL (on the agent's port), movescu's AE MOVESCU and a DCMTK
storescp (STORESCP, started before the runs and kept running: storescp
--fork +xa +B -od DIR PORT, TCP_NODELAY=1, max PDU 16384 = its default, or
--storescp-pdu; writes every file to disk as received, no fsync). A second
agent configuration (same data dir, index and spool; it differs only in the
drill AE `PACS_MIRROR_DRL` with drill_receiver = true and allowed_calling_aes
["ORTHANC"], Orthanc's remote AE being an association initiator from
127.0.0.1, and [[drill]] retrieve = "c-move", move_destination =
"PACS_MIRROR_DRL") passes `pacs-mirror config check`.
movescu      movescu -S -aet MOVESCU -aec ORTHANC -aem STORESCP
             -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=UID 127.0.0.1 PORT
             (TCP_NODELAY=1). Orthanc's C-MOVE is synchronous: it sends the
             final response after the last C-STORE sub-operation was answered,
             and storescp answers each only after writing its file. Must exit 0
             with N files in storescp's DIR (emptied, untimed, before each
             run). Time = movescu's process wall time (start-up, association,
             the C-MOVE: Orthanc's association to storescp, a storescp fork,
             N stores written to disk, the final response, release).
pacs-mirror  pacs-mirror drill --config CFG-CMOVE --target mirror --study UID
             --json, the agent stopped as for C-GET, so the CLI binds the drill
             receiver's listener (the agent's port) itself for the drill's
             duration. Same checks as the C-GET drill, plus report retrieve
             "c-move". Time = process wall time (as for C-GET, plus binding and
             closing the drill receiver listener; the C-MOVE with blake3 of
             every instance as it arrives instead of the C-GET).
Each repeat runs the C-MOVE pair after the C-GET pair, in the same alternating
order (movescu first when getscu is first). The drill receiver's CPU is in the
drill process's; storescp's (its forked children included) is logged beside
movescu's.

Output: '#' context lines, the table (median, or --stat best, of the
repeats), the drills' own timings, then
  ratio drill_vs_getscu X          (getscu seconds / C-GET drill seconds)
  ratio drill_cmove_vs_movescu Y   (movescu seconds / C-MOVE drill seconds)
Exit status 2 if the C-GET drill took more than 1.2x getscu's time
(X < 0.833); the C-MOVE ratio is reported, with no acceptance target.
"""

TIME_FACTOR = 1.2
RATIO_TARGET = 1 / TIME_FACTOR
GETSCU_AE = "GETSCU"
MOVESCU_AE = "MOVESCU"
DRILL_AE = "PACS_MIRROR_DRL"
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
    g.add_argument("--no-cmove", action="store_true",
                   help="skip the C-MOVE row (C-MOVE drill vs movescu to storescp)")
    g.add_argument("--storescp-pdu", type=int, metavar="BYTES",
                   help="the C-MOVE row's storescp max receive PDU (4096..131072; default: storescp's "
                        "own, 16384)")
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

def check_retrieved(what: str, rc: int, files: list[Path], where: Path, n: int, nbytes: int,
                    logs: list[Path]) -> int:
    """A DCMTK retrieval (getscu, or movescu into storescp) must exit 0 and
    leave the study's n files, ~all its bytes, in `where`; returns the bytes."""
    got = sum(p.stat().st_size for p in files)
    names = ", ".join(str(p) for p in logs)
    if rc != 0:
        raise BenchError(f"{what} exited {rc}; log {names}:\n{benchlib.tail(logs[0])}")
    if len(files) != n:
        raise BenchError(f"{what}: {len(files)} files in {where}, expected {n}; log {names}:\n"
                         f"{benchlib.tail(logs[0])}")
    if got < nbytes - 4096 * n:
        raise BenchError(f"{what}: {got} bytes retrieved into {where}, the study has {nbytes}")
    return got


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
    got = check_retrieved(f"getscu {tag}", rc, [p for p in outdir.iterdir() if p.is_file()], outdir, n, nbytes,
                          [log_path])
    log(f"getscu {tag}: {secs:.3f}s, {n / secs:.1f} files/s, {got / secs / 1e6:.1f} MB/s; "
        f"CPU getscu {cpu:.2f}s, orthanc {ocpu:.2f}s")
    benchlib.drop_tree(outdir)
    return {"secs": secs, "cpu": cpu, "orthanc_cpu": ocpu, "bytes": got}


def run_drill(pm: receivers.PacsMirror, o: MirrorOrthanc, uid: str, n: int, tag: str, args, ctx, *,
              config: Path | None = None, name: str = "drill", retrieve: str | None = None) -> dict:
    """One `pacs-mirror drill` of the study (the agent stopped: the CLI runs
    it). `config` (default the agent's, C-GET) and `name` (log file names)
    select the C-MOVE variant; `retrieve`, if given, must be the report's."""
    tmp = ctx.workdir / "drill-tmp"
    tmp.mkdir(exist_ok=True)
    argv = [str(pm.binary), "drill", "--config", str(config or pm.config), "--target", "mirror", "--study", uid,
            "--json"]
    log_path = ctx.workdir / f"{name}-{tag}.log"
    json_path = ctx.workdir / f"{name}-{tag}.json"
    tag = f"{retrieve} {tag}" if retrieve else tag
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
    if retrieve is not None and rep.get("retrieve") != retrieve:
        raise BenchError(f"drill {tag}: the report says retrieve {rep.get('retrieve')!r}, expected {retrieve!r}")
    left = list(tmp.rglob("*"))
    if left:
        raise BenchError(f"drill {tag}: its scratch files were left behind in {tmp}: {left[:5]}")
    info = {"secs": secs, "cpu": cpu, "orthanc_cpu": ocpu, "study_secs": float(study["study_secs"]),
            "first_secs": float(study.get("first_instance_secs") or 0.0),
            "report_secs": float(rep["seconds"]), "bytes": int(study["bytes"])}
    log(f"drill {tag}: {secs:.3f}s wall (report: drill {info['report_secs']:.3f}s, "
        f"{'C-GET' if retrieve in (None, 'c-get') else retrieve.upper()} {info['study_secs']:.3f}s, "
        f"first instance {info['first_secs']:.3f}s), MATCH {counts['MATCH']}; CPU drill {cpu:.2f}s, "
        f"orthanc {ocpu:.2f}s")
    json_path.unlink()
    return info


def group_cpu(pgid: int) -> float:
    """utime + stime of every process in group `pgid` (storescp and its
    forked children, zombies included), plus the leader's cutime + cstime
    (children it has reaped). Its difference over a run is the group's CPU in
    that run: a child reaped during the run moves from its own figures to the
    leader's cutime."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(f[2]) != pgid:  # field 5, pgrp
            continue
        total += int(f[11]) + int(f[12])
        if int(d.name) == pgid:
            total += int(f[13]) + int(f[14])
    return total / tick


def clear_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_dir():
            shutil.rmtree(f, ignore_errors=True)
        else:
            f.unlink()


def run_movescu(o: MirrorOrthanc, scp: receivers.StoreScp, uid: str, n: int, nbytes: int, tag: str,
                args, ctx) -> dict:
    if scp.proc.poll() is not None:
        raise BenchError(f"storescp died (status {scp.proc.returncode}); log {scp.log_path}")
    clear_dir(scp.out)
    argv = ["movescu", "-S", "-aet", MOVESCU_AE, "-aec", o.ae, "-aem", scp.ae,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
            benchlib.LOOPBACK, str(o.port)]
    log_path = ctx.workdir / f"movescu-{tag}.log"
    sync_disks()
    ocpu0, scpu0 = cpu_secs(o.proc), group_cpu(scp.proc.pid)
    secs, rc, cpu = timed(argv, log_path, env=receivers.DCMTK_ENV, stdout_path=None, timeout=args.timeout)
    # untimed: storescp answered every store after writing its file; give its
    # child a moment to close the association before reading CPU and files
    deadline = time.perf_counter() + 10.0
    while True:
        files = [p for p in scp.out.rglob("*") if p.is_file()]
        if len(files) >= n or time.perf_counter() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    ocpu, scpu = cpu_secs(o.proc) - ocpu0, group_cpu(scp.proc.pid) - scpu0
    got = check_retrieved(f"movescu {tag}", rc, [p for p in scp.out.rglob("*") if p.is_file()], scp.out, n,
                          nbytes, [log_path, scp.log_path])
    log(f"movescu {tag}: {secs:.3f}s, {n / secs:.1f} files/s, {got / secs / 1e6:.1f} MB/s; "
        f"CPU movescu {cpu:.2f}s, storescp {scpu:.2f}s, orthanc {ocpu:.2f}s")
    clear_dir(scp.out)
    return {"secs": secs, "cpu": cpu, "scp_cpu": scpu, "orthanc_cpu": ocpu, "bytes": got}


def cmove_config(pm: receivers.PacsMirror, o: MirrorOrthanc) -> Path:
    """The agent's configuration with the C-MOVE drill instead of the C-GET
    one: the drill receiver AE on the agent's port (Orthanc may call it),
    Orthanc's remote AE an association initiator, [[drill]] retrieve =
    "c-move". Same data dir: the drill reads the same index and spool.
    Checked with `pacs-mirror config check`."""
    text = pm.config.read_text()
    cget = '\n[[drill]]\ntarget = "mirror"\ntimeout_secs = 120\n'
    remote = f'ae_title = "{o.ae}"\nassociation_acceptor = true\n'
    if text.count(cget) != 1 or text.count(remote) != 1:
        raise BenchError(f"{pm.config}: not the layout the C-MOVE configuration is derived from")
    text = text.replace(remote, remote + f'association_initiator = true\nsource_addresses = ["{benchlib.LOOPBACK}"]\n')
    text = text.replace(cget, f"""
[[drill]]
target = "mirror"
timeout_secs = 120
retrieve = "c-move"
move_destination = "{DRILL_AE}"

[[device.network_ae]]
ae_title = "{DRILL_AE}"
network_connections = ["dicom"]
drill_receiver = true
allowed_calling_aes = ["{o.ae}"]
""")
    path = pm.dir / "pacs-mirror-cmove.toml"
    path.write_text(text)
    r = benchlib.run([str(pm.binary), "config", "check", str(path)], check=False, timeout=60)
    if r.returncode != 0:
        raise BenchError(f"pacs-mirror config check {path} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return path


def replicate(files, nbytes, uid, binary, args, ctx, scp: receivers.StoreScp | None = None) -> tuple[MirrorOrthanc, receivers.PacsMirror]:
    """Fresh Orthanc + agent; the study stored into the agent and replicated;
    the agent stopped. Returns both (Orthanc running)."""
    n = len(files)
    o = MirrorOrthanc(ctx.workdir, "drill")
    pm = mirror_agent(binary, ctx.workdir, "drill", o)
    pm.extra_toml += '\n[[drill]]\ntarget = "mirror"\ntimeout_secs = 120\n'
    o.modalities = {"agent": (pm.ae, pm.port), "getscu": (GETSCU_AE, 104)}
    if scp is not None:
        o.modalities.update({"drill": (DRILL_AE, pm.port), "movescu": (MOVESCU_AE, 104),
                             "storescp": (scp.ae, scp.port)})

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
    if args.storescp_pdu is not None and not 4096 <= args.storescp_pdu <= 131072:
        raise BenchError("--storescp-pdu must be within 4096..131072")
    if not shutil.which("getscu") or not shutil.which("dcmdump"):
        raise BenchError("getscu and dcmdump (DCMTK) are needed")
    cmove = not args.no_cmove
    if cmove and (not shutil.which("movescu") or not shutil.which("storescp")):
        raise BenchError("movescu and storescp (DCMTK) are needed for the C-MOVE row (or pass --no-cmove)")
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
    if cmove:
        out(f"# {tool_version(['movescu', '--version'])}")
        out(f"# C-MOVE row: movescu -S (TCP_NODELAY=1) moves the study from orthanc to storescp --fork +xa +B "
            f"(TCP_NODELAY=1, max PDU {args.storescp_pdu or 16384}{'' if args.storescp_pdu else ' (default)'}, "
            f"files written to disk, no fsync); pacs-mirror drill retrieve = \"c-move\" to its drill receiver "
            f"AE {DRILL_AE}, served by the CLI process (agent stopped), max PDU 262144")
    pairs = "(getscu, drill), (movescu, drill c-move)" if cmove else "(getscu, drill)"
    out(f"# order: {args.warmup} untimed warm-up of each, then repeat x {pairs} alternating "
        f"within each pair; statistic: {args.stat} of {args.repeat}")
    out("# times: each side = wall time of its client process, spawn to exit (getscu / movescu / "
        "`pacs-mirror drill`); sync before each run")

    scp = None
    if cmove:
        scp = receivers.StoreScp(ctx.workdir, "drill", args.storescp_pdu, bit_preserving=True)
    o, pm = replicate(files, nbytes, uid, binary, args, ctx, scp)
    ok = False
    g, d, mv, dm = [], [], [], []
    try:
        cmove_cfg = None
        if cmove:
            scp.start()
            cmove_cfg = cmove_config(pm, o)
            log(f"C-MOVE drill configuration {cmove_cfg} passes config check")

        def one(what: str, tag: str) -> dict:
            if what == "getscu":
                return run_getscu(o, uid, n, nbytes, tag, args, ctx)
            if what == "drill":
                return run_drill(pm, o, uid, n, tag, args, ctx)
            if what == "movescu":
                return run_movescu(o, scp, uid, n, nbytes, tag, args, ctx)
            return run_drill(pm, o, uid, n, tag, args, ctx, config=cmove_cfg, name="drill-cmove",
                             retrieve="c-move")

        for w in range(args.warmup):
            log(f"--- warm-up {w + 1}/{args.warmup}")
            for what in ("getscu", "drill") + (("movescu", "drill-cmove") if cmove else ()):
                one(what, f"w{w + 1}")
        for rep in range(args.repeat):
            tag = f"r{rep + 1}"
            order = ("getscu", "drill") if rep % 2 == 0 else ("drill", "getscu")
            if cmove:
                order += ("movescu", "drill-cmove") if rep % 2 == 0 else ("drill-cmove", "movescu")
            log(f"--- repeat {rep + 1}/{args.repeat}: {', '.join(order)}")
            for what in order:
                {"getscu": g, "drill": d, "movescu": mv, "drill-cmove": dm}[what].append(one(what, tag))
        if orthanc_count(o) != n:
            raise BenchError(f"orthanc holds {orthanc_count(o)} instances after the runs, expected {n}")
        o.finish(n, nbytes)
        if scp is not None:
            if scp.proc.poll() is not None:
                raise BenchError(f"storescp died during the runs (status {scp.proc.returncode}); log {scp.log_path}")
            benchlib.stop(scp.proc, signal.SIGTERM, 10.0)
        ok = True
    finally:
        if not ok:
            o.kill()
            if scp is not None:
                scp.kill()
            log(f"drill: logs kept in {pm.dir} and {o.dir}" + (f" and {scp.dir}" if scp is not None else ""))
        elif not ctx.keep:
            o.remove()
            pm.remove()
            if scp is not None:
                scp.remove()
    gs = [x["secs"] for x in g]
    ds = [x["secs"] for x in d]
    gsec, dsec = aggregate(gs, args.stat), aggregate(ds, args.stat)
    med = statistics.median
    out()
    rows = [
        {"system": "getscu", "mode": "C-GET", "files": n, "seconds": gsec, "bytes": nbytes, "samples": gs},
        {"system": "pacs-mirror", "mode": "drill", "files": n, "seconds": dsec, "bytes": nbytes, "samples": ds},
    ]
    if cmove:
        ms = [x["secs"] for x in mv]
        dms = [x["secs"] for x in dm]
        msec, dmsec = aggregate(ms, args.stat), aggregate(dms, args.stat)
        rows += [
            {"system": "movescu", "mode": "C-MOVE", "files": n, "seconds": msec, "bytes": nbytes, "samples": ms},
            {"system": "pacs-mirror", "mode": "drill-mv", "files": n, "seconds": dmsec, "bytes": nbytes,
             "samples": dms},
        ]
    print_table(rows)
    out()
    out("# drill report: study_secs (association + C-GET of the study) "
        + " ".join(f"{x['study_secs']:.3f}" for x in d)
        + f" (median {med([x['study_secs'] for x in d]):.3f}); first_instance_secs "
        + " ".join(f"{x['first_secs']:.3f}" for x in d)
        + "; report seconds " + " ".join(f"{x['report_secs']:.3f}" for x in d))
    if cmove:
        out("# C-MOVE drill report: study_secs (association + C-MOVE of the study + last arrivals) "
            + " ".join(f"{x['study_secs']:.3f}" for x in dm)
            + f" (median {med([x['study_secs'] for x in dm]):.3f}); first_instance_secs "
            + " ".join(f"{x['first_secs']:.3f}" for x in dm)
            + "; report seconds " + " ".join(f"{x['report_secs']:.3f}" for x in dm))
    out(f"# CPU s (median): getscu {med([x['cpu'] for x in g]):.2f} (orthanc {med([x['orthanc_cpu'] for x in g]):.2f}); "
        f"drill process {med([x['cpu'] for x in d]):.2f} (orthanc {med([x['orthanc_cpu'] for x in d]):.2f})")
    if cmove:
        out(f"# CPU s (median), C-MOVE: movescu {med([x['cpu'] for x in mv]):.2f} + storescp "
            f"{med([x['scp_cpu'] for x in mv]):.2f} (orthanc {med([x['orthanc_cpu'] for x in mv]):.2f}); "
            f"C-MOVE drill process {med([x['cpu'] for x in dm]):.2f} (orthanc {med([x['orthanc_cpu'] for x in dm]):.2f})")
    out(f"# loadavg at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratio = gsec / dsec
    good = ratio >= RATIO_TARGET
    out(f"# acceptance: drill {dsec:.3f}s <= {TIME_FACTOR}x getscu {gsec:.3f}s = {TIME_FACTOR * gsec:.3f}s "
        f"(ratio {ratio:.3f} >= {RATIO_TARGET:.3f}): {'PASS' if good else 'FAIL'}")
    if cmove:
        out(f"# C-MOVE (no acceptance target): C-MOVE drill {dmsec:.3f}s vs movescu to storescp {msec:.3f}s "
            f"= {dmsec / msec:.2f}x movescu's time")
    ratio_line("drill_vs_getscu", ratio)
    if cmove:
        ratio_line("drill_cmove_vs_movescu", msec / dmsec)
    return 0 if good else 2


SCENARIOS = [
    Scenario("drill", "restore drill of one study (C-GET + hash + compare) vs DCMTK getscu of the same study; "
             "C-MOVE drill vs movescu to storescp",
             DRILL_DOC, add_args, run_drill_scenario),
]
