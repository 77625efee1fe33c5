"""Scenario `mirror`: replication throughput (pacs-mirror draining its spool
into Orthanc versus DCMTK storescu sending the same files straight into
Orthanc) and the steady-state replication lag at a paced ingest rate."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from pathlib import Path

import benchlib
import receivers
from benchlib import (BenchError, Scenario, aggregate, check_send, free_port, http_get_json, log, out,
                      print_context, print_table, ratio_line, send, spawn, stop, sync_disks, warm)
from datasets import add_data_args, ct_dataset
from scenario_ingest import prepare_binary

MIRROR_DOC = """\
Issue acceptance: pacs-mirror replicating N instances from its spool into a
fresh Orthanc reaches >= 0.9x the rate of DCMTK storescu sending the same
files straight into the same kind of fresh Orthanc; and while ingesting at
50 instances/s the replication lag has p99 < 2 s.

Data: the same synthetic CT set as `ingest` (--count, --data, --generator).

direct       fresh Orthanc (same receiver as `ingest`: private config, SQLite,
             no plugins, TCP_NODELAY=1); 2 parallel `storescu` (TCP_NODELAY=1,
             half the files each; = pacs-mirror's concurrency 2). Every response
             must be Success. Time = start until both storescu exited and
             Orthanc's /statistics CountInstances == N.
pacs-mirror  1) fill (untimed): a fresh agent whose target points at an Orthanc
             port where nothing listens yet; storescu (2 assocs) stores the N
             files into it; wait until status shows pending == N; SIGTERM.
             2) timed: start a fresh Orthanc on that port, `sync`, start the
             agent again; time from the agent's start until Orthanc's
             CountInstances == N and the agent's pending == 0 (polled every
             50 ms: Orthanc REST /statistics and the agent's admin /status,
             the endpoint `pacs-mirror status --json` reads). Then
             `pacs-mirror status --json` must show running, pending 0,
             dead_letters 0; Orthanc must hold N instances and ~all bytes.
             Target config: concurrency 2, retry_initial_secs 1, retry_max_secs 2.
lag          fresh agent (--log-format json,
             RUST_LOG=info,pacs_mirror_agent::replicate=debug) + fresh Orthanc
             (up); --lag-count files (default 500) are ingested paced at
             --lag-rate/s (default 50): every 100 ms one `storescu` process
             starts for the next group of rate/10 files. Afterwards every one
             of them must be delivered (status pending 0, Orthanc count, one
             `delivered` log line per SOP Instance UID); the lag_ms of those
             lines (delivery time - time queued at ingest) gives p50/p99/max
             (nearest rank). --lag-count 0 skips this part.

Order per repeat: direct, then pacs-mirror (then pacs-mirror-base with
--baseline-bin OLD); the lag run once at the end (and once for OLD).
With --repeat N the table shows the median (or --stat best) of N runs.

Output: '#' context lines, the table (system storescu = direct, pacs-mirror =
from the spool), then
  lag_ms p50 V / lag_ms p99 V / lag_ms max V
  lag_ingest_files_per_s V     (achieved paced ingest rate)
  ratio mirror_vs_direct X     (pacs-mirror files/s / direct files/s)
  with --baseline-bin: lag_ms_base p50/p99/max and
  ratio mirror_vs_baseline X   (pacs-mirror files/s / OLD files/s, same rounds)
Exit status 2 if ratio < 0.9 or lag p99 >= 2000 ms. If the agent's queue
counts do not match the objects (pending after the fill or delivered after
the drain != N, an instance logged `delivered` twice), the figures are still
measured and printed, with `# WARNING` lines before the ratio, and the exit
status is 1.
"""

POLL = 0.05
RATIO_TARGET = 0.9
P99_TARGET_MS = 2000.0
ASSOCS = 2  # pacs-mirror's default / configured concurrency

# Queue-count mismatches seen on the way (more pending/delivered rows than
# objects, an instance delivered twice): the figures are still measured and
# printed, then the run exits 1 ("a count did not match").
ANOMALIES: list[str] = []


def anomaly(msg: str) -> None:
    log(f"WARNING: {msg}")
    ANOMALIES.append(msg)


def add_args(p) -> None:
    g = p.add_argument_group("mirror options")
    add_data_args(g, "replicate")
    g.add_argument("--lag-count", type=int, default=500, metavar="N",
                   help="instances ingested for the lag measurement (default 500; 0 = skip)")
    g.add_argument("--lag-rate", type=int, default=50, metavar="R",
                   help="paced ingest rate for the lag measurement, instances/s (default 50; "
                        "a multiple of 10: one storescu per 100 ms)")
    g.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="timed direct and pacs-mirror runs (default 1)")
    g.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which of the --repeat runs the table shows (default median)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="give up waiting for a transfer after S seconds (default 300)")
    g.add_argument("--baseline-bin", type=Path, metavar="PATH",
                   help="also run this (older) pacs-mirror binary, right after pacs-mirror in every "
                        "round and for the lag, and print `ratio mirror_vs_baseline` and the lag of "
                        "both: before/after from the same rounds")


# ---------------------------------------------------------------- helpers

def mirror_agent(binary: Path, workdir: Path, tag: str, orthanc: receivers.Orthanc,
                 json_log: bool = False) -> receivers.PacsMirror:
    pm = receivers.PacsMirror(binary, workdir, tag)
    pm.admin_port = free_port()
    pm.ae_extra = "association_initiator = true\n"
    pm.extra_toml = f"""
[[remote_device]]
name = "mirror"
[[remote_device.network_connection]]
name = "dicom"
hostname = "{benchlib.LOOPBACK}"
port = {orthanc.port}
[[remote_device.network_ae]]
ae_title = "{orthanc.ae}"
association_acceptor = true
network_connections = ["dicom"]

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "{orthanc.ae}"
concurrency = {ASSOCS}
retry_initial_secs = 1
retry_max_secs = 2

[admin]
listen = "{benchlib.LOOPBACK}:{pm.admin_port}"
"""
    if json_log:
        pm.global_args = ["--log-format", "json"]
        pm.extra_env = {"RUST_LOG": "info,pacs_mirror_agent::replicate=debug"}
    return pm


def admin_target(pm: receivers.PacsMirror) -> dict:
    """The mirror target's figures from the running agent's admin /status
    (what `pacs-mirror status --json` prints)."""
    st = http_get_json(f"http://{benchlib.LOOPBACK}:{pm.admin_port}/status", timeout=5)
    return st["targets"]["mirror"]


def cli_status(pm: receivers.PacsMirror) -> dict:
    r = benchlib.run([str(pm.binary), "status", "--json", "--config", str(pm.config)], timeout=60)
    st = json.loads(r.stdout)
    if st.get("running") is not True:
        raise BenchError(f"pacs-mirror status --json: not from the running agent: {r.stdout[:500]}")
    return st["targets"]["mirror"]


def orthanc_count(o: receivers.Orthanc) -> int:
    return int(http_get_json(o.url("/statistics"), timeout=5)["CountInstances"])


def stop_agent(pm: receivers.PacsMirror) -> None:
    if pm.proc.poll() is not None:
        raise BenchError(f"pacs-mirror died (status {pm.proc.returncode}); log {pm.log_path}")
    rc = stop(pm.proc, signal.SIGTERM, pm.stop_grace)
    if rc != 0:
        raise BenchError(f"pacs-mirror exited {rc} after SIGTERM; log {pm.log_path}")


def poll_until(pred, what: str, timeout: float, procs=()) -> float:
    """Poll `pred` every POLL s; return the perf_counter time it first held."""
    deadline = time.perf_counter() + timeout
    last_err = None
    while True:
        for p, name in procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise BenchError(f"{what}: {name} exited ({p.proc.returncode}); log {p.log_path}:\n"
                                 f"{benchlib.tail(p.log_path)}")
        try:
            if pred():
                return time.perf_counter()
        except Exception as e:  # an endpoint not up yet
            last_err = e
        if time.perf_counter() > deadline:
            raise BenchError(f"{what}: not reached after {timeout:.0f}s (last error: {last_err})")
        time.sleep(POLL)


def cpu_secs(proc) -> float:
    """utime + stime of a running process (all its threads), in seconds."""
    import os
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nearest_rank(sorted_vals: list[float], pct: float) -> float:
    k = max(1, math.ceil(pct / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


# ---------------------------------------------------------------- the runs

def run_direct(files, nbytes, tag, args, ctx) -> float:
    sync_disks()
    o = receivers.Orthanc(ctx.workdir, f"direct-{tag}")
    ok = False
    try:
        o.start()
        warm(files)
        log(f"direct: storescu x{ASSOCS} -> orthanc, {len(files)} files")
        import resource
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = send(o.ae, o.port, files, ASSOCS, o.dir, f"direct-{tag}", env=receivers.DCMTK_ENV)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        scu_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        check_send(res, f"direct {tag}")
        t1 = poll_until(lambda: orthanc_count(o) == len(files), "direct: orthanc CountInstances",
                        args.timeout, [(o, "orthanc")])
        secs = t1 - t0
        ocpu = cpu_secs(o.proc)
        info = o.finish(len(files), nbytes)
        log(f"direct {tag}: {secs:.3f}s ({res.seconds:.3f}s storescu), {len(files) / secs:.1f} files/s; "
            f"orthanc holds {info['stored']}, {info['stored_bytes'] / 1e6:.1f} MB; CPU storescu x{ASSOCS} {scu_cpu:.2f}s, orthanc {ocpu:.2f}s (orthanc's includes start-up)")
        ok = True
        return secs
    finally:
        if not ok:
            o.kill()
            log(f"direct: logs kept in {o.dir}")
        elif not ctx.keep:
            o.remove()


def run_replay(files, nbytes, tag, args, ctx, binary) -> tuple[float, float]:
    """Fill the spool with the mirror down, then time the drain into a fresh
    Orthanc. Returns (drain seconds, fill seconds, seconds until
    the first instance showed in Orthanc)."""
    n = len(files)
    o = receivers.Orthanc(ctx.workdir, f"mirror-{tag}")  # port reserved, not started yet
    pm = mirror_agent(binary, ctx.workdir, f"mirror-{tag}", o)
    ok = False
    try:
        # 1) fill, mirror down
        sync_disks()
        pm.start()
        warm(files)
        log(f"pacs-mirror fill: {n} files into the agent, mirror (port {o.port}) down")
        res = send(pm.ae, pm.port, files, ASSOCS, pm.dir, f"fill-{tag}", env=receivers.DCMTK_ENV)
        check_send(res, f"pacs-mirror fill {tag}")
        poll_until(lambda: admin_target(pm)["pending"] >= n, f"pacs-mirror: pending == {n}",
                   args.timeout, [(pm, "pacs-mirror")])
        time.sleep(0.5)  # would more rows appear?
        t = cli_status(pm)
        if t["delivered"] != 0:
            raise BenchError(f"pacs-mirror after the fill: delivered with the mirror down? {t}")
        if t["pending"] != n:
            anomaly(f"fill {tag}: status pending {t['pending']} for {n} objects stored (spool "
                    f"{sum(1 for _ in (pm.data / 'spool' / 'objects').rglob('*.dcm'))} .dcm files)")
        log(f"pacs-mirror fill: {res.seconds:.3f}s; queued {t['pending']}, circuit_open {t.get('circuit_open')}")
        stop_agent(pm)

        # 2) the mirror comes up; time the agent's drain from its start
        o.start()
        sync_disks()
        log(f"pacs-mirror: restarting the agent; draining {n} into orthanc")
        t0 = time.perf_counter()
        pm.proc = spawn(pm.argv(), log_path=pm.log_path, env=pm.env(), cwd=pm.dir)
        seen = {}

        def done() -> bool:
            if "orthanc" not in seen:
                c = orthanc_count(o)
                if c > 0 and "first" not in seen:
                    seen["first"] = time.perf_counter()
                if c == n:
                    seen["orthanc"] = time.perf_counter()
            if "orthanc" in seen and admin_target(pm)["pending"] == 0:
                return True
            return False

        t1 = poll_until(done, "pacs-mirror drain: orthanc == count and pending == 0", args.timeout,
                        [(pm, "pacs-mirror"), (o, "orthanc")])
        secs = t1 - t0
        pcpu, ocpu = cpu_secs(pm.proc), cpu_secs(o.proc)
        t = cli_status(pm)
        if t["pending"] != 0 or t["dead_letters"] != 0:
            raise BenchError(f"pacs-mirror after the drain: pending {t['pending']}, delivered "
                             f"{t['delivered']}, dead_letters {t['dead_letters']} (want 0, {n}, 0): {t}")
        if t["delivered"] != n:
            anomaly(f"drain {tag}: status delivered {t['delivered']} for {n} objects")
        info = o.finish(n, nbytes)
        stop_agent(pm)
        log(f"pacs-mirror {tag}: {secs:.3f}s (first instance in orthanc at {seen['first'] - t0:.3f}s, "
            f"all at {seen['orthanc'] - t0:.3f}s), "
            f"{n / secs:.1f} files/s; delivered {t['delivered']}, dead_letters {t['dead_letters']}; "
            f"orthanc holds {info['stored']}, {info['stored_bytes'] / 1e6:.1f} MB; CPU agent {pcpu:.2f}s, "
            f"orthanc {ocpu:.2f}s (orthanc's includes start-up)")
        ok = True
        return secs, res.seconds, seen["first"] - t0
    finally:
        if not ok:
            o.kill()
            pm.kill()
            log(f"pacs-mirror: logs kept in {pm.dir} and {o.dir}")
        elif not ctx.keep:
            o.remove()
            pm.remove()


def run_lag(files, args, ctx, binary, tag: str = "lag") -> dict:
    n = len(files)
    group = max(1, args.lag_rate // 10)
    o = receivers.Orthanc(ctx.workdir, tag)
    pm = mirror_agent(binary, ctx.workdir, tag, o, json_log=True)
    ok = False
    try:
        sync_disks()
        o.start()
        pm.start()
        warm(files)
        groups = [files[i:i + group] for i in range(0, n, group)]
        logdir = pm.dir / f"storescu-{tag}"
        logdir.mkdir()
        log(f"lag: ingesting {n} files paced at {group * 10}/s ({len(groups)} storescu x {group} files, "
            f"one per 100 ms)")
        running: list[tuple[subprocess.Popen, Path, int]] = []
        done: list[tuple[int, Path, int]] = []
        t0 = time.perf_counter()
        last_exit = t0
        late = 0.0

        def reap(block: bool) -> None:
            nonlocal last_exit
            for item in list(running):
                p, lp, k = item
                if block:
                    p.wait()
                if p.poll() is not None:
                    last_exit = max(last_exit, time.perf_counter())
                    stop(p, grace=1.0)  # already exited: reap the group, unregister
                    done.append((p.returncode, lp, k))
                    running.remove(item)

        for i, g in enumerate(groups):
            at = t0 + i * 0.1
            while True:
                now = time.perf_counter()
                if now >= at:
                    break
                reap(False)
                time.sleep(min(0.01, at - now))
            late = max(late, time.perf_counter() - at)
            lp = logdir / f"storescu-{i + 1:04d}.log"
            with open(lp, "wb") as fh:
                p = spawn(benchlib.storescu_argv(pm.ae, pm.port, g), stdout=subprocess.DEVNULL, stderr=fh,
                          env=receivers.DCMTK_ENV)
            running.append((p, lp, len(g)))
            if len(running) > 50:
                raise BenchError("lag: more than 50 storescu in flight; the agent is not keeping up with ingest")
        reap(True)
        ingest_secs = last_exit - t0
        rate = n / ingest_secs
        failures = []
        for rc, lp, k in done:
            text = lp.read_text(errors="replace")
            okn = sum(1 for l in text.splitlines() if l.rstrip().endswith("Received Store Response (Success)"))
            if rc != 0 or okn != k:
                failures.append(f"{lp.name}: exit {rc}, {okn}/{k} Success")
        if failures:
            raise BenchError("lag: stores failed:\n" + "\n".join("  " + f for f in failures[:20]))
        log(f"lag: ingest done in {ingest_secs:.3f}s = {rate:.1f} files/s (latest storescu start "
            f"{late * 1000:.0f} ms behind schedule)")
        poll_until(lambda: orthanc_count(o) == n and admin_target(pm)["pending"] == 0,
                   "lag: all delivered", args.timeout, [(pm, "pacs-mirror"), (o, "orthanc")])
        t = cli_status(pm)
        if t["pending"] != 0 or t["dead_letters"] != 0:
            raise BenchError(f"lag: status after the run: {t}")
        if t["delivered"] != n:
            anomaly(f"lag: status delivered {t['delivered']} for {n} objects")
        nbytes = sum(f.stat().st_size for f in files)
        o.finish(n, nbytes)
        stop_agent(pm)

        lags: dict[str, float] = {}
        twice = 0
        for line in pm.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            f = rec.get("fields", {})
            if f.get("message") == "delivered" and "lag_ms" in f:
                uid = f.get("sop_instance_uid")
                if uid in lags:  # keep the first delivery's lag
                    twice += 1
                    continue
                lags[uid] = float(f["lag_ms"])
        if twice:
            anomaly(f"lag: {twice} `delivered` log lines for an instance already delivered")
        if len(lags) != n:
            raise BenchError(f"lag: {len(lags)} `delivered` log lines with lag_ms for {n} instances "
                             f"(log {pm.log_path})")
        vals = sorted(lags.values())
        result = {"p50": nearest_rank(vals, 50), "p99": nearest_rank(vals, 99), "max": vals[-1],
                  "rate": rate, "secs": ingest_secs, "n": n, "group": group}
        log(f"lag: {n} delivered; lag_ms p50 {result['p50']:.0f} p99 {result['p99']:.0f} max {result['max']:.0f}")
        ok = True
        return result
    finally:
        if not ok:
            o.kill()
            pm.kill()
            log(f"lag: logs kept in {pm.dir} and {o.dir}")
        elif not ctx.keep:
            o.remove()
            pm.remove()


def run_mirror(args, ctx) -> int:
    if args.repeat < 1:
        raise BenchError("--repeat must be >= 1")
    if args.count < ASSOCS:
        raise BenchError(f"--count must be >= {ASSOCS}")
    if args.lag_count < 0:
        raise BenchError("--lag-count must be >= 0")
    if args.lag_rate < 10 or args.lag_rate % 10:
        raise BenchError("--lag-rate must be a positive multiple of 10")
    binary = prepare_binary(args, True, wanted_for_synth=True)
    need = max(args.count, args.lag_count)
    files, how = ct_dataset(args.data, need, args.generator, binary, ctx.workdir)
    tfiles = files[:args.count]
    nbytes = sum(f.stat().st_size for f in tfiles)

    print_context(ctx.workdir, binary)
    out(f"# data: {len(tfiles)} files, {nbytes / 1e6:.1f} MB ({nbytes / len(tfiles) / 1e3:.1f} KB each); {how}")
    out(f"# direct: {ASSOCS} x storescu (TCP_NODELAY=1) -> fresh Orthanc; pacs-mirror: spool filled with the "
        f"mirror down, then agent start -> fresh Orthanc, concurrency {ASSOCS}; Orthanc max PDU 16384 (default)")
    out(f"# order: repeat x (direct, pacs-mirror); statistic: {args.stat} of {args.repeat}")

    base = None
    if args.baseline_bin is not None:
        if not args.baseline_bin.exists():
            raise BenchError("--baseline-bin: no such binary")
        base = args.baseline_bin.resolve()
        out(f"# pacs-mirror-base: {base}")
    direct, mirror, fills, firsts, based = [], [], [], [], []
    for rep in range(args.repeat):
        tag = f"r{rep + 1}"
        log(f"--- repeat {rep + 1}/{args.repeat}: direct")
        direct.append(run_direct(tfiles, nbytes, tag, args, ctx))
        log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror")
        secs, fill, first = run_replay(tfiles, nbytes, tag, args, ctx, binary)
        mirror.append(secs)
        fills.append(fill)
        firsts.append(first)
        if base is not None:
            log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror-base")
            based.append(run_replay(tfiles, nbytes, f"{tag}-base", args, ctx, base)[0])
    lag = base_lag = None
    if args.lag_count:
        log(f"--- lag at {args.lag_rate}/s")
        lag = run_lag(files[:args.lag_count], args, ctx, binary)
        if base is not None:
            log(f"--- lag at {args.lag_rate}/s: pacs-mirror-base")
            base_lag = run_lag(files[:args.lag_count], args, ctx, base, "lag-base")

    d, m = aggregate(direct, args.stat), aggregate(mirror, args.stat)
    out(f"# fill (untimed, storescu x{ASSOCS} into pacs-mirror, mirror down): "
        + " ".join(f"{x:.3f}s" for x in fills))
    out("# pacs-mirror drain: first instance in Orthanc after (agent start = 0): "
        + " ".join(f"{x:.3f}s" for x in firsts))
    out()
    print_table([
        {"system": "storescu", "mode": "direct", "files": len(tfiles), "seconds": d, "bytes": nbytes,
         "samples": direct},
        {"system": "pacs-mirror", "mode": "spool", "files": len(tfiles), "seconds": m, "bytes": nbytes,
         "samples": mirror},
    ] + ([{"system": "pacs-mirror-base", "mode": "spool", "files": len(tfiles),
           "seconds": aggregate(based, args.stat), "bytes": nbytes, "samples": based}] if based else []))
    out()
    rc = 0
    ratio = d / m  # same file count: rate ratio = inverse time ratio
    verdicts = [f"ratio {ratio:.3f} >= {RATIO_TARGET}: {'PASS' if ratio >= RATIO_TARGET else 'FAIL'}"]
    if ratio < RATIO_TARGET:
        rc = 2
    if lag is not None:
        out(f"# lag: {lag['n']} files ingested paced at {lag['group'] * 10}/s ({lag['group']} per storescu every "
            f"100 ms) in {lag['secs']:.3f}s; lag_ms = delivery - queued at ingest, nearest rank")
        out(f"lag_ms p50 {lag['p50']:.0f}")
        out(f"lag_ms p99 {lag['p99']:.0f}")
        out(f"lag_ms max {lag['max']:.0f}")
        out(f"lag_ingest_files_per_s {lag['rate']:.1f}")
        good = lag["p99"] < P99_TARGET_MS
        verdicts.append(f"lag p99 {lag['p99']:.0f} ms < {P99_TARGET_MS:.0f} ms: {'PASS' if good else 'FAIL'}")
        if not good:
            rc = 2
    out("# acceptance: " + "; ".join(verdicts))
    for a in ANOMALIES:
        out(f"# WARNING (count mismatch, exit 1): {a}")
    if base_lag is not None:
        out(f"lag_ms_base p50 {base_lag['p50']:.0f}")
        out(f"lag_ms_base p99 {base_lag['p99']:.0f}")
        out(f"lag_ms_base max {base_lag['max']:.0f}")
    ratio_line("mirror_vs_direct", ratio)
    if based:
        ratio_line("mirror_vs_baseline", aggregate(based, args.stat) / m)
    return 1 if ANOMALIES else rc


SCENARIOS = [
    Scenario("mirror", "replication: pacs-mirror spool -> Orthanc vs storescu -> Orthanc, and lag at 50/s",
             MIRROR_DOC, add_args, run_mirror),
]
