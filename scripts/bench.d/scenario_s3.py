"""Scenario `s3`: backup to object storage (upload rate of the agent's
object-store target into a local S3 server versus a plain sequential
`object_store` put loop) and restore from the bucket into Orthanc (versus
storescu of the same files from disk)."""

from __future__ import annotations

import json
import resource
import subprocess
import time
from pathlib import Path

import benchlib
import receivers
from benchlib import (BenchError, Scenario, aggregate, check_send, free_port, http_get_json, log, out,
                      print_context, print_table, ratio_line, send, spawn, stop, sync_disks, warm)
from datasets import add_data_args, ct_dataset
from scenario_ingest import prepare_binary
from scenario_mirror import cpu_secs, orthanc_count, poll_until, run_direct, stop_agent

S3_DOC = """\
Issue acceptance ("Backup to object storage", 5): the agent uploads N
instances to a local S3 server at >= 1.5x the rate of a plain sequential
`object_store` put loop of the same files in the same run (concurrency), and
`pacs-mirror restore` brings them back from the bucket into Orthanc at
>= 0.8x the rate of DCMTK storescu sending the same files from disk.

S3 server: moto in server mode (the one scripts/test installs:
$PACS_MIRROR_MOTO_SERVER, else ~/.cache/pacs-mirror/moto-5.2.5/bin/moto_server),
`moto_server -H 127.0.0.1 -p PORT`, one bucket created by an unsigned PUT;
objects are kept in RAM; a fresh server for every upload run. Data: the same
synthetic CT set as `ingest` (--count, --data, --generator).
With --s3-server s3s-fs: s3s-fs 0.14.1 from crates.io (Rust, multi-threaded,
checks SigV4; `cargo install`ed on first use, ~2 min), a folder on disk; its
GETs carry ~35 ms of latency each.
With --s3-server localbucket: localbucket 1.2.1 from PyPI (installed into
~/.cache/pacs-mirror/localbucket-1.2.1 on first use), which keeps the bucket
as a folder on disk. It is also one Python process, but spends about a third
of moto's CPU per GET and half per PUT, so the client side (pacs-mirror, the
put loop, Orthanc) shows more of its own speed. Everything else is the same.

put-loop   (baseline) fresh moto; agent/examples/put_loop.rs (built with
           `cargo build --release --example put_loop -p pacs-mirror-agent`):
           one AmazonS3 client, for each file in order: read it, put it
           (one request at a time). Time = the program's own clock around
           the loop (process and client start-up excluded; the whole
           process time is printed as context). Then the bucket must list
           N objects of exactly the files' bytes.
pacs-mirror upload:
           1) fill (untimed): a fresh agent whose object_store target
           (concurrency --concurrency, default 8; retry 1..2 s) points at a
           port where nothing listens yet; storescu (2 associations)
           stores the N files, all Success; wait until the admin /status
           shows pending == N; SIGTERM.
           2) timed: start moto on that port + create the bucket, `sync`,
           start the agent again; time from its start until /status shows
           pending == 0 (polled every 50 ms). Then delivered must be N,
           dead_letters 0, and the bucket must list N objects under
           PREFIX/objects/ holding ~all bytes (each file carries the
           agent's own file meta).
storescu   (restore baseline) fresh Orthanc; 2 parallel storescu
           (TCP_NODELAY=1, half the files each) from disk; time = start
           until both exited and Orthanc's CountInstances == N (as in
           `mirror`).
pacs-mirror restore:
           fresh Orthanc; `pacs-mirror restore --from s3://BUCKET/PREFIX
           --store-option ... --to ORTHANC@127.0.0.1:PORT --quiet --json
           --associations 2`, no config, from a new empty working directory,
           reading only the bucket of the upload run above (scratch: its
           default temporary directory); time = process start until it
           exited 0 and CountInstances == N; its JSON report must say
           planned == stored == N, nothing corrupt, failed or missing.

Order per repeat: put-loop, pacs-mirror upload, storescu, pacs-mirror
restore. Every data file is read once before each timed run (warm cache).
With --repeat N the table shows the median (or --stat best) of N runs.
Per-run details (CPU seconds of the agent / restore, moto, Orthanc, the put
loop; how busy moto was) go to stderr and to '#' lines. moto is one Python
process (GIL): it serves ~1 core's worth of requests whatever the client's
concurrency, so when it shows ~100% busy the server, not pacs-mirror, sets
the rate. All systems share the machine's cores: figures are noisy when
other work runs; prefer --repeat 3.

Output: '#' context lines, the table, then
  ratio s3_upload_vs_sequential_put X  (put-loop seconds / pacs-mirror upload seconds)
  ratio s3_restore_vs_storescu X       (storescu seconds / pacs-mirror restore seconds)
Exit status 2 if X < 1.5 (upload) or X < 0.8 (restore); 1 if a run failed
or a count did not match.
"""

UPLOAD_TARGET = 1.5
RESTORE_TARGET = 0.8
ASSOCS = 2
BUCKET = "pacs-mirror-bench"
TARGET = "backup"
S3_OPTIONS = {"allow_http": "true", "region": "us-east-1", "access_key_id": "test",
              "secret_access_key": "test", "virtual_hosted_style_request": "false"}

ANOMALIES: list[str] = []
S3_SERVER: type = receivers.MotoS3  # --s3-server


def anomaly(msg: str) -> None:
    log(f"WARNING: {msg}")
    ANOMALIES.append(msg)


def add_args(p) -> None:
    g = p.add_argument_group("s3 options")
    add_data_args(g, "back up and restore")
    g.add_argument("--concurrency", type=int, default=8, metavar="N",
                   help="the agent's object-store target concurrency (default 8, the config default)")
    g.add_argument("--put-loop", metavar="PATH",
                   help="put_loop example binary to use as is (default: target/release/examples/put_loop, "
                        "built unless --no-build or --bin)")
    g.add_argument("--s3-server", choices=sorted(receivers.S3_SERVERS), default="moto",
                   help="the local S3 server of every run (default moto, the one the tests use; "
                        "localbucket serves each request with far less CPU, see the scenario text)")
    g.add_argument("--repeat", type=int, default=1, metavar="N", help="timed runs of each (default 1)")
    g.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which of the --repeat runs the table shows (default median)")
    g.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="give up waiting for a transfer after S seconds (default 300)")


# ---------------------------------------------------------------- helpers

def put_loop_binary(args, binary: Path) -> Path:
    """The baseline program: --put-loop as is; else examples/put_loop next to
    the pacs-mirror binary, built first unless --no-build or --bin."""
    if args.put_loop:
        path = Path(args.put_loop).resolve()
    else:
        path = binary.parent / "examples" / "put_loop"
        if not args.no_build and not args.bin:
            argv = ["cargo", "build", "--release", "--example", "put_loop", "-p", "pacs-mirror-agent"]
            log(" ".join(argv) + " (skip with --no-build)")
            if subprocess.run(argv, cwd=benchlib.REPO, stdin=subprocess.DEVNULL).returncode:
                raise BenchError("building the put_loop example failed")
    if not path.is_file():
        raise BenchError(f"{path} does not exist: `cargo build --release --example put_loop -p "
                         "pacs-mirror-agent`, or pass --put-loop")
    return path


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def s3_agent(binary: Path, workdir: Path, tag: str, s3: receivers.MotoS3, prefix: str,
             concurrency: int) -> receivers.PacsMirror:
    pm = receivers.PacsMirror(binary, workdir, tag)
    pm.admin_port = free_port()
    opts = "".join(f'{k} = "{v}"\n' for k, v in {"endpoint": s3.endpoint, **S3_OPTIONS}.items())
    pm.extra_toml = f"""
[[target]]
type = "object_store"
name = "{TARGET}"
url = "s3://{s3.bucket}/{prefix}"
concurrency = {concurrency}
retry_initial_secs = 1
retry_max_secs = 2
[target.options]
{opts}
[admin]
listen = "{benchlib.LOOPBACK}:{pm.admin_port}"
"""
    return pm


def admin_target(pm: receivers.PacsMirror) -> dict:
    st = http_get_json(f"http://{benchlib.LOOPBACK}:{pm.admin_port}/status", timeout=5)
    return st["targets"][TARGET]


def check_listing(s3: receivers.MotoS3, prefix: str, n: int, nbytes: int, exact: bool, what: str) -> int:
    objs = s3.list_objects(prefix)
    total = sum(size for _, size in objs)
    if len(objs) != n:
        raise BenchError(f"{what}: the bucket lists {len(objs)} objects under {prefix}, expected {n}")
    if (exact and total != nbytes) or total < nbytes - 4096 * n:
        raise BenchError(f"{what}: {total} bytes under {prefix}, sent {nbytes}")
    return total


# ---------------------------------------------------------------- the runs

def run_put_loop(files, nbytes, tag, args, ctx, put_loop: Path) -> dict:
    n = len(files)
    s3 = S3_SERVER(ctx.workdir, f"putloop-{tag}", BUCKET)
    ok = False
    try:
        sync_disks()
        s3.start()
        listing = s3.dir / "files.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        prefix = f"putloop-{tag}"
        warm(files)
        log(f"put-loop: {n} files, sequential puts into {s3.system}")
        m0, c0 = s3.cpu_secs(), children_cpu()
        t0 = time.perf_counter()
        with open(s3.dir / "put_loop.out", "wb") as fo, open(s3.dir / "put_loop.log", "wb") as fe:
            p = spawn([str(put_loop), s3.endpoint, BUCKET, prefix, f"@{listing}"], stdout=fo, stderr=fe)
            try:
                p.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"put_loop did not finish in {args.timeout:.0f}s")
        wall = time.perf_counter() - t0
        stop(p, grace=1.0)  # exited: unregister
        ccpu, scpu = children_cpu() - c0, s3.cpu_secs() - m0
        text = (s3.dir / "put_loop.out").read_text()
        if p.returncode != 0:
            raise BenchError(f"put_loop exited {p.returncode}: {(s3.dir / 'put_loop.log').read_text()[-2000:]}")
        vals = dict(line.split(None, 1) for line in text.splitlines() if " " in line)
        secs = float(vals["put_loop_seconds"])
        if int(vals["put_loop_files"]) != n or int(vals["put_loop_bytes"]) != nbytes:
            raise BenchError(f"put_loop: reports {vals}, expected {n} files, {nbytes} bytes")
        check_listing(s3, prefix + "/", n, nbytes, True, "put-loop")
        rss = s3.rss_mib()
        s3.stop_server()
        log(f"put-loop {tag}: {secs:.3f}s in the loop ({wall:.3f}s whole process), {n / secs:.1f} files/s, "
            f"{nbytes / secs / 1e6:.1f} MB/s, {secs / n * 1000:.2f} ms/put; CPU put_loop {ccpu:.2f}s, "
            f"{s3.system} {scpu:.2f}s; {s3.system} RSS {rss or 0:.0f} MiB")
        ok = True
        return {"seconds": secs, "wall": wall, "client_cpu": ccpu, "server_cpu": scpu}
    finally:
        if not ok:
            s3.kill()
            log(f"put-loop: logs kept in {s3.dir}")
        elif not ctx.keep:
            s3.remove()


def run_upload(files, nbytes, tag, args, ctx, binary) -> tuple[dict, receivers.MotoS3, str]:
    """Fill the agent with the S3 server down, then time the drain into a
    fresh moto. Returns the figures and the still-running server (for the
    restore) with the prefix."""
    n = len(files)
    s3 = S3_SERVER(ctx.workdir, f"upload-{tag}", BUCKET)  # port reserved, not started yet
    prefix = f"backup-{tag}"
    pm = s3_agent(binary, ctx.workdir, f"upload-{tag}", s3, prefix, args.concurrency)
    ok = False
    try:
        # 1) fill, S3 down
        sync_disks()
        pm.start()
        warm(files)
        log(f"pacs-mirror fill: {n} files into the agent, S3 (port {s3.port}) down")
        res = send(pm.ae, pm.port, files, ASSOCS, pm.dir, f"fill-{tag}", env=receivers.DCMTK_ENV)
        check_send(res, f"pacs-mirror fill {tag}")
        poll_until(lambda: admin_target(pm)["pending"] >= n, f"pacs-mirror: pending == {n}",
                   args.timeout, [(pm, "pacs-mirror")])
        time.sleep(0.5)  # would more rows appear?
        t = admin_target(pm)
        if t["delivered"] != 0:
            raise BenchError(f"pacs-mirror after the fill: delivered with S3 down? {t}")
        if t["pending"] != n:
            anomaly(f"fill {tag}: status pending {t['pending']} for {n} objects stored")
        log(f"pacs-mirror fill: {res.seconds:.3f}s; queued {t['pending']}, circuit_open {t.get('circuit_open')}")
        stop_agent(pm)

        # 2) S3 comes up; time the agent's drain from its start
        s3.start()
        sync_disks()
        log(f"pacs-mirror: restarting the agent; uploading {n} objects")
        m0 = s3.cpu_secs()
        t0 = time.perf_counter()
        pm.proc = spawn(pm.argv(), log_path=pm.log_path, env=pm.env(), cwd=pm.dir)
        seen = {}

        def done() -> bool:
            t = admin_target(pm)
            if t["delivered"] > 0 and "first" not in seen:
                seen["first"] = time.perf_counter()
            return t["pending"] == 0

        t1 = poll_until(done, "pacs-mirror upload: pending == 0", args.timeout, [(pm, "pacs-mirror"), (s3, s3.system)])
        secs = t1 - t0
        pcpu, scpu = cpu_secs(pm.proc), s3.cpu_secs() - m0
        t = admin_target(pm)
        if t["dead_letters"] != 0:
            raise BenchError(f"pacs-mirror after the upload: dead_letters {t['dead_letters']}: {t}")
        if t["delivered"] != n:
            anomaly(f"upload {tag}: status delivered {t['delivered']} for {n} objects")
        stored = check_listing(s3, f"{prefix}/objects/", n, nbytes, False, "pacs-mirror upload")
        manifests = [k for k, _ in s3.list_objects(f"{prefix}/studies/") if k.endswith("/manifest.json")]
        stop_agent(pm)
        log(f"pacs-mirror upload {tag}: {secs:.3f}s (first delivered at {seen.get('first', t1) - t0:.3f}s), "
            f"{n / secs:.1f} files/s, {nbytes / secs / 1e6:.1f} MB/s; delivered {t['delivered']}; bucket: {n} "
            f"objects, {stored / 1e6:.1f} MB, {len(manifests)} study manifests; CPU agent {pcpu:.2f}s "
            f"(start-up included), {s3.system} {scpu:.2f}s; {s3.system} RSS {s3.rss_mib() or 0:.0f} MiB")
        ok = True
        return ({"seconds": secs, "fill": res.seconds, "agent_cpu": pcpu, "server_cpu": scpu,
                 "first": seen.get("first", t1) - t0}, s3, prefix)
    finally:
        if not ok:
            pm.kill()
            s3.kill()
            log(f"pacs-mirror upload: logs kept in {pm.dir} and {s3.dir}")
        elif not ctx.keep:
            pm.remove()


def run_restore(files, nbytes, tag, args, ctx, binary, s3: receivers.MotoS3, prefix: str) -> dict:
    n = len(files)
    o = receivers.Orthanc(ctx.workdir, f"restore-{tag}")
    wd = ctx.workdir / f"restore-cwd-{tag}"
    wd.mkdir()
    ok = False
    try:
        sync_disks()
        o.start()
        argv = [str(binary), "restore", "--from", f"s3://{s3.bucket}/{prefix}"]
        for k, v in {"endpoint": s3.endpoint, **S3_OPTIONS}.items():
            argv += ["--store-option", f"{k}={v}"]
        argv += ["--to", f"{o.ae}@{benchlib.LOOPBACK}:{o.port}", "--quiet", "--json",
                 "--associations", str(ASSOCS)]
        log(f"pacs-mirror restore: {n} objects from s3://{s3.bucket}/{prefix} -> orthanc")
        report_path, log_path = o.dir / "restore.json", o.dir / "restore.log"
        m0, c0 = s3.cpu_secs(), children_cpu()
        t0 = time.perf_counter()
        with open(report_path, "wb") as fo, open(log_path, "wb") as fe:
            p = spawn(argv, stdout=fo, stderr=fe, cwd=wd)
            try:
                p.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(f"pacs-mirror restore did not finish in {args.timeout:.0f}s")
        t_exit = time.perf_counter()
        stop(p, grace=1.0)  # exited: unregister
        if p.returncode != 0:
            raise BenchError(f"pacs-mirror restore exited {p.returncode}; {log_path}:\n{benchlib.tail(log_path)}\n"
                             f"{report_path.read_text()[-1500:]}")
        t1 = poll_until(lambda: orthanc_count(o) == n, "restore: orthanc CountInstances", args.timeout,
                        [(o, "orthanc")])
        secs = t1 - t0
        rcpu, scpu, ocpu = children_cpu() - c0, s3.cpu_secs() - m0, cpu_secs(o.proc)
        rep = json.loads(report_path.read_text())
        bad = {k: rep.get(k) for k in ("corrupt", "failed", "missing_blobs") if rep.get(k)}
        if rep.get("stored") != n or rep.get("planned") != n or bad:
            raise BenchError(f"pacs-mirror restore report: planned {rep.get('planned')}, stored "
                             f"{rep.get('stored')} (want {n}); {json.dumps(bad)[:1500]}")
        info = o.finish(n, nbytes)
        log(f"pacs-mirror restore {tag}: {secs:.3f}s (process {t_exit - t0:.3f}s, its report "
            f"{rep['seconds']:.3f}s after planning), {n / secs:.1f} files/s; stored {rep['stored']}; "
            f"orthanc holds {info['stored']}, {info['stored_bytes'] / 1e6:.1f} MB; CPU restore {rcpu:.2f}s, "
            f"{s3.system} {scpu:.2f}s, orthanc {ocpu:.2f}s (orthanc's includes start-up)")
        ok = True
        return {"seconds": secs, "process": t_exit - t0, "report": rep["seconds"], "restore_cpu": rcpu,
                "server_cpu": scpu, "orthanc_cpu": ocpu}
    finally:
        if not ok:
            o.kill()
            log(f"pacs-mirror restore: logs kept in {o.dir}")
        elif not ctx.keep:
            o.remove()
            benchlib.drop_tree(wd)


def run_s3(args, ctx) -> int:
    if args.repeat < 1:
        raise BenchError("--repeat must be >= 1")
    if args.count < ASSOCS:
        raise BenchError(f"--count must be >= {ASSOCS}")
    if args.concurrency < 1:
        raise BenchError("--concurrency must be >= 1")
    global S3_SERVER
    S3_SERVER = receivers.S3_SERVERS[args.s3_server]
    if S3_SERVER is not receivers.MotoS3:
        S3_SERVER.install()
    if not S3_SERVER.binary().is_file():
        raise BenchError(f"the S3 test server is not at {S3_SERVER.binary()} (for moto set "
                         "$PACS_MIRROR_MOTO_SERVER, or run scripts/test, which installs moto there)")
    binary = prepare_binary(args, True, wanted_for_synth=True)
    put_loop = put_loop_binary(args, binary)
    files, how = ct_dataset(args.data, args.count, args.generator, binary, ctx.workdir)
    n = len(files)
    nbytes = sum(f.stat().st_size for f in files)

    print_context(ctx.workdir, binary)
    out(f"# data: {n} files, {nbytes / 1e6:.1f} MB ({nbytes / n / 1e3:.1f} KB each); {how}")
    where = "objects in RAM" if S3_SERVER is receivers.MotoS3 else "objects in folders on disk"
    out(f"# S3: {S3_SERVER.system} {S3_SERVER.VERSION} on loopback ({S3_SERVER.binary()}), "
        f"{where}, fresh server per upload run")
    out(f"# upload: put-loop = agent/examples/put_loop (object_store, 1 put at a time; time measured inside "
        f"the program around the loop); pacs-mirror = spool filled with S3 down, then agent start -> {S3_SERVER.system}, "
        f"object_store target concurrency {args.concurrency}")
    out(f"# restore: storescu = {ASSOCS} x storescu (TCP_NODELAY=1) from disk -> fresh Orthanc; pacs-mirror = "
        f"`pacs-mirror restore --associations {ASSOCS}` from the bucket -> fresh Orthanc (max PDU 16384)")
    out(f"# order: repeat x (put-loop, pacs-mirror upload, storescu, pacs-mirror restore); statistic: "
        f"{args.stat} of {args.repeat}")

    loops, uploads, directs, restores = [], [], [], []
    for rep in range(args.repeat):
        tag = f"r{rep + 1}"
        log(f"--- repeat {rep + 1}/{args.repeat}: put-loop")
        loops.append(run_put_loop(files, nbytes, tag, args, ctx, put_loop))
        log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror upload")
        up, s3, prefix = run_upload(files, nbytes, tag, args, ctx, binary)
        uploads.append(up)
        try:
            log(f"--- repeat {rep + 1}/{args.repeat}: storescu -> orthanc")
            directs.append(run_direct(files, nbytes, tag, args, ctx))
            log(f"--- repeat {rep + 1}/{args.repeat}: pacs-mirror restore")
            restores.append(run_restore(files, nbytes, tag, args, ctx, binary, s3, prefix))
            s3.stop_server()
        except BaseException:
            s3.kill()
            raise
        if not ctx.keep:
            s3.remove()

    def agg(rows, key="seconds"):
        return aggregate([r[key] for r in rows], args.stat)

    def fmt(rows, key):
        return " ".join(f"{r[key]:.2f}" for r in rows)

    lp, up, d, rs = agg(loops), agg(uploads), aggregate(directs, args.stat), agg(restores)
    out(f"# put-loop whole process (start-up included): {fmt(loops, 'wall')} s; in the loop: "
        f"{fmt(loops, 'seconds')} s")
    out(f"# CPU s per run: put-loop client {fmt(loops, 'client_cpu')} / {S3_SERVER.system} {fmt(loops, 'server_cpu')}; "
        f"upload agent {fmt(uploads, 'agent_cpu')} / {S3_SERVER.system} {fmt(uploads, 'server_cpu')}; restore "
        f"pacs-mirror {fmt(restores, 'restore_cpu')} / {S3_SERVER.system} {fmt(restores, 'server_cpu')} / orthanc "
        f"{fmt(restores, 'orthanc_cpu')}")
    out(f"# {S3_SERVER.system} busy (its CPU s / timed s{S3_SERVER.BUSY_NOTE}): put-loop "
        + " ".join(f"{r['server_cpu'] / r['seconds']:.0%}" for r in loops) + "; upload "
        + " ".join(f"{r['server_cpu'] / r['seconds']:.0%}" for r in uploads) + "; restore "
        + " ".join(f"{r['server_cpu'] / r['seconds']:.0%}" for r in restores))
    out(f"# fill (untimed, storescu x{ASSOCS} into pacs-mirror, S3 down): {fmt(uploads, 'fill')} s; first "
        f"object delivered after the agent start: {fmt(uploads, 'first')} s")
    out(f"# restore process exit after: {fmt(restores, 'process')} s (its own report, planning excluded: "
        f"{fmt(restores, 'report')} s)")
    out()
    print_table([
        {"system": "put-loop", "mode": "seq-put", "files": n, "seconds": lp, "bytes": nbytes,
         "samples": [r["seconds"] for r in loops]},
        {"system": "pacs-mirror", "mode": "upload", "files": n, "seconds": up, "bytes": nbytes,
         "samples": [r["seconds"] for r in uploads]},
        {"system": "storescu", "mode": "direct", "files": n, "seconds": d, "bytes": nbytes, "samples": directs},
        {"system": "pacs-mirror", "mode": "restore", "files": n, "seconds": rs, "bytes": nbytes,
         "samples": [r["seconds"] for r in restores]},
    ])
    out()
    upload_ratio, restore_ratio = lp / up, d / rs  # same file count: rate ratio = inverse time ratio
    rc = 0
    verdicts = []
    for name, value, target in (("upload", upload_ratio, UPLOAD_TARGET), ("restore", restore_ratio, RESTORE_TARGET)):
        good = value >= target
        verdicts.append(f"{name} ratio {value:.3f} >= {target}: {'PASS' if good else 'FAIL'}")
        if not good:
            rc = 2
    out("# acceptance: " + "; ".join(verdicts))
    for a in ANOMALIES:
        out(f"# WARNING (count mismatch, exit 1): {a}")
    ratio_line("s3_upload_vs_sequential_put", upload_ratio)
    ratio_line("s3_restore_vs_storescu", restore_ratio)
    return 1 if ANOMALIES else rc


SCENARIOS = [
    Scenario("s3", "backup to S3 (moto or localbucket): agent upload vs sequential put loop; restore vs storescu",
             S3_DOC, add_args, run_s3),
]
