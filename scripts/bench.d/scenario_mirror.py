"""Scenario `mirror`: replication throughput (pacs-mirror draining its spool
into Orthanc versus DCMTK storescu sending the same files straight into
Orthanc) and the steady-state replication lag at a paced ingest rate.

With --tls every association of the measured transfers is DICOM TLS
(certificates made with the openssl CLI in the work dir, see dicomtls.py):
the agent replicates to Orthanc with DicomTlsEnabled and to DCMTK storescp
+tls (--mirrors, default both with --tls), presenting its certificate and
verifying theirs; storescu +tls is the reference sender and also fills the
agent through its TLS listener. Each round also runs the plaintext direct
and pacs-mirror transfers into the same kind of fresh mirror, so the output
adds `ratio tls_vs_plain_<mirror>` (agent TLS rate / agent plaintext rate,
target >= 0.8) to the usual ratios, which then compare TLS to TLS, and
`# tls:` lines: what was negotiated (echoscu -d, storescp's DCMTK TLS log,
rustls' log of `pacs-mirror echo`), the agent's and the mirror's CPU per
drain in both modes.
--tls-key rsa lets DCMTK/Orthanc speak TLS 1.2 as well; --tls-suites picks
the agent's tls_cipher_suites toward the mirror (e.g. only a TLS 1.2 suite)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import benchlib
import dicomtls
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

--mirrors orthanc,storescp: also (or only) DCMTK storescp --fork as the
mirror (direct and drain; done when storescp wrote N files and the agent's
pending == 0); one table per mirror; the storescp ratios are named
mirror_vs_direct_storescp, mirror_vs_baseline_storescp. The lag uses the
first mirror listed.

--tls: every association of the timed transfers over DICOM TLS, mutual
(certificates from a CA made with `openssl` in the work dir; leaves EC P-256,
or RSA 2048 with --tls-key rsa; SAN IP:127.0.0.1, EKU serverAuth+clientAuth):
  mirrors      Orthanc with DicomTlsEnabled (+ DicomTlsCertificate,
               DicomTlsPrivateKey, DicomTlsTrustedCertificates,
               DicomTlsRemoteCertificateRequired true); storescp +tls KEY CERT
               +cf CA --profile-bcp195-nd --require-peer-cert (-lc: DCMTK's TLS
               details of each association in its log)
  direct-tls   storescu +tls (same options, a client certificate)
  spool-tls    the agent: [device.tls] certificate/private_key/trusted_ca, the
               mirror's connection with tls_cipher_suites (--tls-suites,
               default BCP195-ND); its listener TLS with
               require_client_certificate (the fill and the lag's ingest use
               storescu +tls)
Default mirrors with --tls: orthanc,storescp. Each round runs, per mirror:
direct, direct-tls, pacs-mirror (plaintext), pacs-mirror-tls (then
pacs-mirror-base over TLS: OLD must support it); the lag runs over TLS.
The table shows all four rows; mirror_vs_direct[_storescp] and
mirror_vs_baseline compare TLS to TLS, and
  ratio tls_vs_plain_<mirror> X  (pacs-mirror TLS files/s / plaintext files/s,
                                  same rounds; target >= 0.8, else exit 2)
'# tls:' lines say what was negotiated (echoscu -d to each TLS peer; the
agent's suite from rustls' debug log of `pacs-mirror echo --config`; what
storescp logged for the timed associations) and the CPU seconds of the agent
and of the mirror (storescp: parent and forked children) per drain.
"""

POLL = 0.05
RATIO_TARGET = 0.9
P99_TARGET_MS = 2000.0
ASSOCS = 2  # pacs-mirror's default / configured concurrency
TLS_RATIO_TARGET = 0.8  # pacs-mirror over TLS / pacs-mirror plaintext
MIRRORS = ("orthanc", "storescp")
LABEL = {"orthanc": "Orthanc", "storescp": "storescp"}

# Queue-count mismatches seen on the way (more pending/delivered rows than
# objects, an instance delivered twice): the figures are still measured and
# printed, then the run exits 1 ("a count did not match").
ANOMALIES: list[str] = []

# --tls: what each kind of association negotiated (first probe of each), and
# the DCMTK TLS log storescp wrote during each timed run, by sender.
TLS_NOTES: dict[str, str] = {}
TLS_SEEN: dict[str, list[str]] = {}


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
    g.add_argument("--mirrors", metavar="LIST",
                   help="the mirror(s) replicated to, comma-separated: orthanc, storescp (default: orthanc; "
                        "with --tls: orthanc,storescp)")
    g.add_argument("--tls", action="store_true",
                   help="every timed association over DICOM TLS (mutual, certificates made with openssl in "
                        "the work dir), plus the plaintext runs in the same rounds: `ratio "
                        "tls_vs_plain_<mirror>`")
    g.add_argument("--tls-key", choices=dicomtls.KEY_KINDS, default="ec",
                   help="--tls leaves' keys: ec = EC P-256 (DCMTK and Orthanc then speak TLS 1.3 only), "
                        "rsa = RSA 2048 (TLS 1.2 possible too) (default ec)")
    g.add_argument("--tls-suites", default=dicomtls.BCP195_ND, metavar="LIST",
                   help="--tls: the agent's tls_cipher_suites toward the mirror, comma-separated (default "
                        "BCP195-ND; e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 with --tls-key rsa for TLS 1.2)")


# ---------------------------------------------------------------- helpers

def new_mirror(kind: str, workdir: Path, tag: str, tls) -> receivers.Receiver:
    """A fresh mirror (port reserved, not started); TLS only if `tls`."""
    r = receivers.Orthanc(workdir, tag) if kind == "orthanc" else receivers.StoreScp(workdir, tag)
    r.tls = tls
    return r


def held(r: receivers.Receiver) -> int:
    """Instances the running mirror holds (Orthanc: REST /statistics;
    storescp: files in its output folder, each written before Success)."""
    if isinstance(r, receivers.Orthanc):
        return orthanc_count(r)
    return sum(1 for _ in os.scandir(r.out))


def mirror_cpu(r: receivers.Receiver) -> float:
    """The running mirror's CPU seconds so far, start-up included."""
    if isinstance(r, receivers.Orthanc):
        return cpu_secs(r.proc)
    return group_cpu_secs(r.proc.pid)


def log_mark(r: receivers.Receiver) -> int:
    return r.log_path.stat().st_size if r.log_path.exists() else 0


def note_tls(key: str, probe) -> None:
    """Record what one kind of TLS association negotiated (first probe only)."""
    if key not in TLS_NOTES:
        TLS_NOTES[key] = probe()
        log(f"tls: {key}: {TLS_NOTES[key]}")


def note_storescp_sessions(r: receivers.Receiver, mark: int, who: str) -> None:
    """The TLS sessions storescp logged since `mark` (its log offset)."""
    if isinstance(r, receivers.StoreScp) and r.tls is not None:
        with open(r.log_path, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        TLS_SEEN.setdefault(who, []).append(text)


def mirror_agent(binary: Path, workdir: Path, tag: str, orthanc: receivers.Receiver,
                 json_log: bool = False, tls=None, suites: list[str] | None = None) -> receivers.PacsMirror:
    """An agent replicating to `orthanc` (any mirror); with `tls` its
    listener and its connection to the mirror are TLS."""
    pm = receivers.PacsMirror(binary, workdir, tag)
    pm.tls = tls
    pm.admin_port = free_port()
    pm.ae_extra = "association_initiator = true\n"
    tls_conn = dicomtls.connection_toml(suites or [dicomtls.BCP195_ND]) if tls is not None else ""
    pm.extra_toml = f"""
[[remote_device]]
name = "mirror"
[[remote_device.network_connection]]
name = "dicom"
hostname = "{benchlib.LOOPBACK}"
port = {orthanc.port}
{tls_conn}[[remote_device.network_ae]]
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


def group_cpu_secs(pgid: int) -> float:
    """CPU seconds of a process group so far (storescp --fork: the parent and
    its children): utime + stime + cutime + cstime of every member (a reaped
    child is in its parent's cutime/cstime, an unreaped one in its own stat)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def nearest_rank(sorted_vals: list[float], pct: float) -> float:
    k = max(1, math.ceil(pct / 100 * len(sorted_vals)))
    return sorted_vals[k - 1]


# ---------------------------------------------------------------- the runs

def run_direct(files, nbytes, tag, args, ctx, kind: str = "orthanc", tls=None) -> float:
    sync_disks()
    o = new_mirror(kind, ctx.workdir, f"direct-{tag}", tls)
    ok = False
    try:
        o.start()
        if tls is not None:
            note_tls(f"storescu -> {kind}", lambda: dicomtls.echo_session(o.ae, o.port, tls) + " (echoscu -d)")
        mark = log_mark(o)
        warm(files)
        log(f"direct: storescu x{ASSOCS} -> {o.system}{' over TLS' if tls else ''}, {len(files)} files")
        import resource
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        res = send(o.ae, o.port, files, ASSOCS, o.dir, f"direct-{tag}", extra=o.scu_args(),
                   env=receivers.DCMTK_ENV)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        scu_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        check_send(res, f"direct {tag}")
        what = "direct: orthanc CountInstances" if kind == "orthanc" else f"direct: {kind} files"
        t1 = poll_until(lambda: held(o) == len(files), what, args.timeout, [(o, o.system)])
        secs = t1 - t0
        ocpu = mirror_cpu(o)
        note_storescp_sessions(o, mark, f"storescu x{ASSOCS} (direct-tls)")
        info = o.finish(len(files), nbytes)
        log(f"direct {tag}: {secs:.3f}s ({res.seconds:.3f}s storescu), {len(files) / secs:.1f} files/s; "
            f"{o.system} holds {info['stored']}, {info['stored_bytes'] / 1e6:.1f} MB; CPU storescu x{ASSOCS} {scu_cpu:.2f}s, {o.system} {ocpu:.2f}s ({o.system}'s includes start-up)")
        ok = True
        return secs
    finally:
        if not ok:
            o.kill()
            log(f"direct: logs kept in {o.dir}")
        elif not ctx.keep:
            o.remove()


def run_replay(files, nbytes, tag, args, ctx, binary, kind: str = "orthanc", tls=None) -> dict:
    """Fill the spool with the mirror down, then time the drain into a fresh
    mirror (Orthanc or storescp; over TLS if `tls`). Returns drain seconds
    (secs), fill seconds (fill), seconds until the first instance showed in
    the mirror (first) and the CPU seconds of the agent (cpu) and of the
    mirror (mirror_cpu), start-up included."""
    n = len(files)
    o = new_mirror(kind, ctx.workdir, f"mirror-{tag}", tls)  # port reserved, not started yet
    pm = mirror_agent(binary, ctx.workdir, f"mirror-{tag}", o, tls=tls, suites=args.tls_suites_list)
    ok = False
    try:
        # 1) fill, mirror down
        sync_disks()
        pm.start()
        if tls is not None:
            note_tls("storescu -> pacs-mirror (fill, lag ingest)",
                     lambda: dicomtls.echo_session(pm.ae, pm.port, tls) + " (echoscu -d)")
        warm(files)
        log(f"pacs-mirror fill: {n} files into the agent, mirror (port {o.port}) down")
        res = send(pm.ae, pm.port, files, ASSOCS, pm.dir, f"fill-{tag}", extra=pm.scu_args(),
                   env=receivers.DCMTK_ENV)
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
        if tls is not None:
            note_tls(f"pacs-mirror -> {kind}", lambda: dicomtls.agent_session(pm.binary, pm.config, o.ae)
                     + " (rustls log of `pacs-mirror echo`)")
        mark = log_mark(o)
        sync_disks()
        log(f"pacs-mirror: restarting the agent; draining {n} into {o.system}{' over TLS' if tls else ''}")
        t0 = time.perf_counter()
        pm.proc = spawn(pm.argv(), log_path=pm.log_path, env=pm.env(), cwd=pm.dir)
        seen = {}

        def done() -> bool:
            if "all" not in seen:
                c = held(o)
                if c > 0 and "first" not in seen:
                    seen["first"] = time.perf_counter()
                if c == n:
                    seen["all"] = time.perf_counter()
            if "all" in seen and admin_target(pm)["pending"] == 0:
                return True
            return False

        t1 = poll_until(done, f"pacs-mirror drain: {o.system} == count and pending == 0", args.timeout,
                        [(pm, "pacs-mirror"), (o, o.system)])
        secs = t1 - t0
        pcpu, ocpu = cpu_secs(pm.proc), mirror_cpu(o)
        note_storescp_sessions(o, mark, "pacs-mirror-base (spool-tls)" if tag.endswith("-base")
                               else "pacs-mirror (spool-tls)")
        t = cli_status(pm)
        if t["pending"] != 0 or t["dead_letters"] != 0:
            raise BenchError(f"pacs-mirror after the drain: pending {t['pending']}, delivered "
                             f"{t['delivered']}, dead_letters {t['dead_letters']} (want 0, {n}, 0): {t}")
        if t["delivered"] != n:
            anomaly(f"drain {tag}: status delivered {t['delivered']} for {n} objects")
        info = o.finish(n, nbytes)
        stop_agent(pm)
        log(f"pacs-mirror {tag}: {secs:.3f}s (first instance in {o.system} at {seen['first'] - t0:.3f}s, "
            f"all at {seen['all'] - t0:.3f}s), "
            f"{n / secs:.1f} files/s; delivered {t['delivered']}, dead_letters {t['dead_letters']}; "
            f"{o.system} holds {info['stored']}, {info['stored_bytes'] / 1e6:.1f} MB; CPU agent {pcpu:.2f}s, "
            f"{o.system} {ocpu:.2f}s ({o.system}'s includes start-up)")
        ok = True
        return {"secs": secs, "fill": res.seconds, "first": seen["first"] - t0, "cpu": pcpu, "mirror_cpu": ocpu}
    finally:
        if not ok:
            o.kill()
            pm.kill()
            log(f"pacs-mirror: logs kept in {pm.dir} and {o.dir}")
        elif not ctx.keep:
            o.remove()
            pm.remove()


def run_lag(files, args, ctx, binary, tag: str = "lag", kind: str = "orthanc", tls=None) -> dict:
    n = len(files)
    group = max(1, args.lag_rate // 10)
    o = new_mirror(kind, ctx.workdir, tag, tls)
    pm = mirror_agent(binary, ctx.workdir, tag, o, json_log=True, tls=tls, suites=args.tls_suites_list)
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
                p = spawn(benchlib.storescu_argv(pm.ae, pm.port, g, pm.scu_args()), stdout=subprocess.DEVNULL,
                          stderr=fh, env=receivers.DCMTK_ENV)
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
        poll_until(lambda: held(o) == n and admin_target(pm)["pending"] == 0,
                   "lag: all delivered", args.timeout, [(pm, "pacs-mirror"), (o, o.system)])
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


def parse_mirrors(args) -> list[str]:
    if args.mirrors is None:
        return list(MIRRORS) if args.tls else ["orthanc"]
    found: list[str] = []
    for m in (x.strip() for x in args.mirrors.split(",")):
        if m and m not in found:
            found.append(m)
    bad = [m for m in found if m not in MIRRORS]
    if bad or not found:
        raise BenchError(f"--mirrors: unknown {bad}; choose from {','.join(MIRRORS)}")
    return found


def ratio_suffix(m: str) -> str:
    """Orthanc keeps the historical ratio names; other mirrors add _<name>."""
    return "" if m == "orthanc" else f"_{m}"


def round_tag(rep: int, m: str, tls) -> str:
    return f"r{rep + 1}" + ("" if m == "orthanc" else f"-{m}") + ("-tls" if tls is not None else "")


def print_tls_notes(results: dict, mirrors: list[str], stat: str) -> None:
    """The `# tls:` lines learned during the runs."""
    for key, value in TLS_NOTES.items():
        out(f"# tls: {key}: {value}")
    for who, texts in TLS_SEEN.items():
        sessions = [x for t in texts for x in dicomtls.dcmtk_sessions(t)]
        out(f"# tls: storescp logged for {who}: {dicomtls.summarize(sessions)} in {len(texts)} run(s)")
    for m in mirrors:
        r = results[m]
        direct = aggregate(r["direct"][False], stat) / aggregate(r["direct"][True], stat)
        plain = aggregate(r["direct"][False], stat) / aggregate(r["spool"][False], stat)
        cpu = {who: "; ".join(f"{name} " + " ".join(f"{x:.2f}" for x in r[key][k])
                              for name, k in (("plaintext", False), ("TLS", True)))
               for who, key in (("pacs-mirror", "cpu"), (m, "mirror_cpu"))}
        out(f"# tls: {m}: storescu TLS/plaintext rate {direct:.3f}; plaintext mirror_vs_direct {plain:.3f}")
        out(f"# tls: {m}: CPU s per drain, start-up included: pacs-mirror {cpu['pacs-mirror']} | {m} {cpu[m]}")


def run_mirror(args, ctx) -> int:
    if args.repeat < 1:
        raise BenchError("--repeat must be >= 1")
    if args.count < ASSOCS:
        raise BenchError(f"--count must be >= {ASSOCS}")
    if args.lag_count < 0:
        raise BenchError("--lag-count must be >= 0")
    if args.lag_rate < 10 or args.lag_rate % 10:
        raise BenchError("--lag-rate must be a positive multiple of 10")
    if not args.tls and (args.tls_key != "ec" or args.tls_suites != dicomtls.BCP195_ND):
        raise BenchError("--tls-key and --tls-suites need --tls")
    args.tls_suites_list = [x.strip() for x in args.tls_suites.split(",") if x.strip()]
    if not args.tls_suites_list:
        raise BenchError("--tls-suites: empty")
    mirrors = parse_mirrors(args)
    default = mirrors == ["orthanc"] and not args.tls  # the historical output, line for line
    binary = prepare_binary(args, True, wanted_for_synth=True)
    need = max(args.count, args.lag_count)
    files, how = ct_dataset(args.data, need, args.generator, binary, ctx.workdir)
    tfiles = files[:args.count]
    nbytes = sum(f.stat().st_size for f in tfiles)
    certs = dicomtls.make(ctx.workdir / "tls", args.tls_key) if args.tls else None
    modes = [None, certs] if certs is not None else [None]
    measured = certs is not None  # the mode the usual ratios compare: TLS with --tls

    print_context(ctx.workdir, binary)
    out(f"# data: {len(tfiles)} files, {nbytes / 1e6:.1f} MB ({nbytes / len(tfiles) / 1e3:.1f} KB each); {how}")
    names = " / ".join(LABEL[m] for m in mirrors)
    pdus = "; ".join(f"{LABEL[m]} max PDU 16384 (default)" for m in mirrors)
    out(f"# direct: {ASSOCS} x storescu (TCP_NODELAY=1) -> fresh {names}; pacs-mirror: spool filled with the "
        f"mirror down, then agent start -> fresh {names}, concurrency {ASSOCS}; {pdus}")
    steps = ["direct", "pacs-mirror"] if certs is None else ["direct", "direct-tls", "pacs-mirror", "pacs-mirror-tls"]
    per_mirror = "" if len(mirrors) == 1 else f"mirror ({', '.join(mirrors)}) x "
    out(f"# order: repeat x {per_mirror}({', '.join(steps)}); statistic: {args.stat} of {args.repeat}")
    if certs is not None:
        out(f"# tls: certificates: {certs.describe()}")
        out(f"# tls: storescp/storescu/echoscu +tls {dicomtls.DCMTK_PROFILE} --require-peer-cert; Orthanc "
            f"DicomTlsEnabled, DicomTlsRemoteCertificateRequired true; pacs-mirror tls_cipher_suites "
            f"{json.dumps(args.tls_suites_list)} toward the mirror, listener [{dicomtls.BCP195_ND}] + require_client_certificate")

    base = None
    if args.baseline_bin is not None:
        if not args.baseline_bin.exists():
            raise BenchError("--baseline-bin: no such binary")
        base = args.baseline_bin.resolve()
        out(f"# pacs-mirror-base: {base}")
    results = {m: {"direct": {False: [], True: []}, "spool": {False: [], True: []}, "cpu": {False: [], True: []},
                   "mirror_cpu": {False: [], True: []}, "based": [], "fills": [], "firsts": []} for m in mirrors}

    def where(m: str, tls) -> str:
        return "" if default else f" ({m}{', TLS' if tls is not None else ''})"

    for rep in range(args.repeat):
        for m in mirrors:
            r = results[m]
            for tls in modes:
                log(f"--- repeat {rep + 1}/{args.repeat}: direct{where(m, tls)}")
                r["direct"][tls is not None].append(run_direct(tfiles, nbytes, round_tag(rep, m, tls), args, ctx,
                                                               m, tls))
            for tls in modes:
                log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror{where(m, tls)}")
                x = run_replay(tfiles, nbytes, round_tag(rep, m, tls), args, ctx, binary, m, tls)
                r["spool"][tls is not None].append(x["secs"])
                r["cpu"][tls is not None].append(x["cpu"])
                r["mirror_cpu"][tls is not None].append(x["mirror_cpu"])
                if (tls is not None) == measured:
                    r["fills"].append(x["fill"])
                    r["firsts"].append(x["first"])
            if base is not None:
                log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror-base{where(m, certs)}")
                r["based"].append(run_replay(tfiles, nbytes, f"{round_tag(rep, m, certs)}-base", args, ctx, base,
                                             m, certs)["secs"])
    lag = base_lag = None
    if args.lag_count:
        log(f"--- lag at {args.lag_rate}/s{where(mirrors[0], certs)}")
        lag = run_lag(files[:args.lag_count], args, ctx, binary, kind=mirrors[0], tls=certs)
        if base is not None:
            log(f"--- lag at {args.lag_rate}/s: pacs-mirror-base")
            base_lag = run_lag(files[:args.lag_count], args, ctx, base, "lag-base", kind=mirrors[0], tls=certs)

    for m in mirrors:
        r = results[m]
        label = "" if default else f" [{m}{', TLS' if certs is not None else ''}]"
        out(f"# fill (untimed, storescu x{ASSOCS} into pacs-mirror, mirror down){label}: "
            + " ".join(f"{x:.3f}s" for x in r["fills"]))
        out(f"# pacs-mirror drain: first instance in {LABEL[m]} after (agent start = 0){label}: "
            + " ".join(f"{x:.3f}s" for x in r["firsts"]))
    if certs is not None:
        print_tls_notes(results, mirrors, args.stat)
    out()
    for m in mirrors:
        r = results[m]
        if not default:
            out(f"# mirror: {LABEL[m]}" + (" (the -tls rows: DICOM TLS on every association)" if certs else ""))
        rows = []
        for system, mode, key in (("storescu", "direct", "direct"), ("pacs-mirror", "spool", "spool")):
            for tls in modes:
                samples = r[key][tls is not None]
                rows.append({"system": system, "mode": mode + ("-tls" if tls is not None else ""),
                             "files": len(tfiles), "seconds": aggregate(samples, args.stat), "bytes": nbytes,
                             "samples": samples})
        if r["based"]:
            rows.append({"system": "pacs-mirror-base", "mode": "spool" + ("-tls" if certs is not None else ""),
                         "files": len(tfiles), "seconds": aggregate(r["based"], args.stat), "bytes": nbytes,
                         "samples": r["based"]})
        print_table(rows)
        out()
    rc = 0
    verdicts = []
    ratios: list[tuple[str, float]] = []
    for m in mirrors:
        r = results[m]
        d, s = aggregate(r["direct"][measured], args.stat), aggregate(r["spool"][measured], args.stat)
        ratio = d / s  # same file count: rate ratio = inverse time ratio
        name = "ratio" if default else f"mirror_vs_direct{ratio_suffix(m)}"
        verdicts.append(f"{name} {ratio:.3f} >= {RATIO_TARGET}: {'PASS' if ratio >= RATIO_TARGET else 'FAIL'}")
        if ratio < RATIO_TARGET:
            rc = 2
        ratios.append((f"mirror_vs_direct{ratio_suffix(m)}", ratio))
    if certs is not None:
        for m in mirrors:
            r = results[m]
            tvp = aggregate(r["spool"][False], args.stat) / aggregate(r["spool"][True], args.stat)
            verdicts.append(f"tls_vs_plain_{m} {tvp:.3f} >= {TLS_RATIO_TARGET}: "
                            f"{'PASS' if tvp >= TLS_RATIO_TARGET else 'FAIL'}")
            if tvp < TLS_RATIO_TARGET:
                rc = 2
            ratios.append((f"tls_vs_plain_{m}", tvp))
    for m in mirrors:
        r = results[m]
        if r["based"]:
            ratios.append((f"mirror_vs_baseline{ratio_suffix(m)}",
                           aggregate(r["based"], args.stat) / aggregate(r["spool"][measured], args.stat)))
    if lag is not None:
        over = "" if default else f" into {mirrors[0]}" + (" over TLS" if certs is not None else "")
        out(f"# lag: {lag['n']} files ingested{over} paced at {lag['group'] * 10}/s ({lag['group']} per storescu every "
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
    for name, value in ratios:
        ratio_line(name, value)
    return 1 if ANOMALIES else rc


SCENARIOS = [
    Scenario("mirror", "replication: pacs-mirror spool -> Orthanc vs storescu -> Orthanc, and lag at 50/s",
             MIRROR_DOC, add_args, run_mirror),
]
