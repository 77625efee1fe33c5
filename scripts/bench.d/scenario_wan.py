"""Scenario `wan`: replication over an emulated WAN link (issue 17).

The link is scripts/bench.d/linkemu.py, a TCP relay in its own process: one
shared link per direction (FIFO over every connection), --mbit Mbit/s of
serialization, RTT/2 of one-way delay, one RTT for each new connection's
handshake, at most --window bytes in flight per connection and direction
(it terminates TCP: TCP's own window, slow start and ACK clocking over the
WAN are not emulated). See its docstring and `linkemu.py --selftest`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from pathlib import Path

import benchlib
import receivers
from benchlib import (BenchError, LinkEmu, Scenario, check_send, free_port, http_get_json, log, out,
                      print_context, ratio_line, send, stop, sync_disks, warm)
from datasets import ct_dataset
from scenario_ingest import prepare_binary
from scenario_s3 import S3_OPTIONS

WAN_DOC = """\
Replication over an emulated WAN link: DCMTK storescu sending straight
through the link versus pacs-mirror replicating the same objects from its
spool through the same link, at several round-trip times.

Link: scripts/bench.d/linkemu.py (a separate Python process, asyncio): every
connection relayed to the mirror shares ONE link per direction (FIFO): each
chunk read is stamped on arrival, cut into 16 KiB segments, each occupies the
link for bytes x 8 / rate after the previous segment of any connection, then
arrives RTT/2 later (+ optional jitter, never reordering a connection); a new
connection's first data leaves no earlier than one RTT after it began (TCP
handshake); per connection and direction at most --window bytes (4 MiB) are
held, beyond which the relay stops reading that socket. It terminates TCP on
both sides, so TCP's own window, slow start and ACK clocking over the WAN are
not emulated (the window bounds what a sender can push); no loss.

Data: --large (default 200) synthetic 512x512x16-bit CT objects of ~525 KB
and --small (default 500) 66x66x16-bit CT objects of ~10 KB (`pacs-mirror
synth`, or the stdlib generator).

For each RTT in --rtts (default 10,50,150 ms) and each set:
storescu     baseline: a fresh DCMTK `storescp --fork` mirror behind a fresh
             link; ONE `storescu` (TCP_NODELAY=1, one association, all files)
             to the link's port; time = storescu start to exit; every
             response must be Success and the mirror must hold every object.
pacs-mirror  the agent drains a backlog of N objects, timed exactly:
             1) fill (untimed): a fresh storescp mirror behind a fresh link
             started with --hold (it accepts connections but neither reads
             them nor connects onward); a fresh agent whose DICOM target's
             connection is the link's port (default target settings:
             concurrency 2, timeout 30 s; --concurrency N sets it). The files
             are ingested over loopback (storescu x2, not through the link)
             until the agent's admin /status says pending == N; the agent's
             first association(s) wait unread in the relay meanwhile, so
             nothing fails and no retry is scheduled (checked: 0 bytes
             crossed the link, 0 delivered).
             2) the agent is stopped with SIGKILL (SIGTERM would wait for the
             batch on the held association: a worker finishes the batch it
             is sending), the relay drops the dead agent's held connections,
             and the agent starts again on the same data: every object was
             acknowledged only once durable, so /status must show pending N,
             delivered 0. Its workers claim their batches from the full
             backlog and connect; the relay holds them. Once it has held at
             least one connection and no new one for 0.5 s, the link is
             released and the timer starts at the release instant (the
             relay's CLOCK_MONOTONIC, the clock of time.monotonic() here):
             the held connections pay their handshake RTT from that instant,
             exactly as connections opened then would; the agent's start-up
             is not timed. The timer stops when /status (polled every 20 ms)
             says pending == 0; the mirror must then hold all N objects and
             the agent show 0 dead letters and N delivered.
orthanc      (--orthanc, default on when /usr/sbin/Orthanc exists) the same
             pacs-mirror run into a fresh Orthanc (SQLite, fsync) instead of
             storescp, at the RTTs of --orthanc-rtts (default 50).
s3           (--s3 SERVER: localbucket, moto or s3s-fs; default off) the same
             pacs-mirror run with an object-store target instead (S3 over
             HTTP through the link to a fresh local S3 server), at the RTTs
             of --s3-rtts (default 50,150): once with the target's default
             concurrency (adaptive uploads in flight) and once with
             `concurrency = --s3-fixed` (default 8: the limiter can then
             neither grow nor start elsewhere: the fixed sender of before);
             the bucket must then list every object. `ratio
             wan_s3_<set>_<rtt>ms X` = adaptive objects/s / fixed objects/s.
             --s3-only skips the DICOM runs.

Per run: objects, data-set bytes, bytes the link delivered toward the mirror
(DICOM PDUs, association set-up and release included) and back, seconds,
objects/s, link utilisation = link bytes toward the mirror / (seconds x
rate). Then `ratio wan_<set>_<rtt>ms X` = pacs-mirror objects/s / storescu
objects/s (storescp mirror, same link, same files).

Acceptance (issue 17), exit 2 if missed: large objects use >= 90 % of the
link at 50 ms and >= 80 % at 150 ms (pacs-mirror into storescp); small objects
reach >= 5x storescu direct at 50 ms. Only targets whose RTT and set were run
are judged.

--quick: RTT 50 ms only, 100 large and 200 small objects (about a minute;
enough that the agent's default two workers both get a batch of up to 64).
"""

POLL = 0.02
SETTLE = 0.5  # the restarted agent opened no new connection for this long: release
MIB = 1024 * 1024
SMALL_SIDE_WAN = 66  # 66x66x16-bit pixels: ~10.0 KB files (8.7 KB of pixels + the header)
FILL_ASSOCS = 2
TARGETS = [  # (set, rtt_ms, kind, threshold)
    ("large", 50, "util", 0.90),
    ("large", 150, "util", 0.80),
    ("small", 50, "ratio", 5.0),
]


def add_args(p) -> None:
    g = p.add_argument_group("wan options")
    g.add_argument("--rtts", default="10,50,150", metavar="LIST", help="round-trip times, ms (default 10,50,150)")
    g.add_argument("--mbit", type=float, default=100.0, metavar="M", help="link rate per direction, Mbit/s (default 100)")
    g.add_argument("--large", type=int, default=None, metavar="N", help="~525 KB CT objects (default 200; --quick 100)")
    g.add_argument("--small", type=int, default=None, metavar="N", help="~10 KB objects (default 500; --quick 200)")
    g.add_argument("--sets", default="large,small", metavar="LIST", help="data sets: large, small (default both)")
    g.add_argument("--concurrency", type=int, metavar="N",
                   help="the agent's target concurrency (default: not set, i.e. the agent's default)")
    g.add_argument("--orthanc", action=argparse.BooleanOptionalAction, default=None,
                   help="also pacs-mirror into Orthanc (default: on if Orthanc is installed)")
    g.add_argument("--orthanc-rtts", default="50", metavar="LIST",
                   help="RTTs (ms) of the Orthanc runs, among --rtts (default 50)")
    g.add_argument("--s3", choices=sorted(receivers.S3_SERVERS), default=None, metavar="SERVER",
                   help="also replicate to an object store behind the link: localbucket, moto or s3s-fs")
    g.add_argument("--s3-rtts", default="50,150", metavar="LIST",
                   help="RTTs (ms) of the object-store runs, among --rtts (default 50,150)")
    g.add_argument("--s3-fixed", type=int, default=8, metavar="N",
                   help="the fixed-concurrency object-store baseline (default 8)")
    g.add_argument("--s3-only", action="store_true", help="only the object-store runs")
    g.add_argument("--window", type=int, default=4 * MIB, metavar="BYTES",
                   help="link emulator: bytes in flight per connection and direction (default 4 MiB)")
    g.add_argument("--jitter-ms", type=float, default=0.0, metavar="J",
                   help="link emulator: extra one-way delay uniform in [0, J] ms (default 0)")
    g.add_argument("--quick", action="store_true", help="RTT 50 ms only, 100 large + 200 small objects")
    g.add_argument("--generator", choices=("auto", "synth", "python"), default="auto",
                   help="data generator (as for the other scenarios; default auto)")
    g.add_argument("--timeout", type=float, default=600.0, metavar="S",
                   help="give up waiting for one transfer after S seconds (default 600)")


def parse_ms(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BenchError(f"{what}: not a list of numbers: {text!r}")
    if not vals or any(v < 0 for v in vals):
        raise BenchError(f"{what}: want non-negative numbers")
    return vals


def fmt_ms(v: float) -> str:
    return f"{v:g}"


# ---------------------------------------------------------------- the runs

def agent_for(binary: Path, workdir: Path, tag: str, link: LinkEmu, mirror: receivers.Receiver,
              concurrency: int | None) -> receivers.PacsMirror:
    """An agent whose one target ("mirror") is `mirror`'s AE, or its bucket
    when it is an S3 server, reached at the link's port."""
    pm = receivers.PacsMirror(binary, workdir, tag)
    pm.admin_port = free_port()
    conc = f"concurrency = {concurrency}\n" if concurrency is not None else ""
    if isinstance(mirror, receivers.MotoS3):
        opts = "".join(f'{k} = "{v}"\n' for k, v in
                       {"endpoint": f"http://{benchlib.LOOPBACK}:{link.port}", **S3_OPTIONS}.items())
        pm.extra_toml = f"""
[[target]]
type = "object_store"
name = "mirror"
url = "s3://{mirror.bucket}/wan"
{conc}
[target.options]
{opts}
[admin]
listen = "{benchlib.LOOPBACK}:{pm.admin_port}"
"""
        return pm
    pm.ae_extra = "association_initiator = true\n"
    pm.extra_toml = f"""
[[remote_device]]
name = "mirror"
[[remote_device.network_connection]]
name = "dicom"
hostname = "{benchlib.LOOPBACK}"
port = {link.port}
[[remote_device.network_ae]]
ae_title = "{mirror.ae}"
association_acceptor = true
network_connections = ["dicom"]

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "{mirror.ae}"
{conc}
[admin]
listen = "{benchlib.LOOPBACK}:{pm.admin_port}"
"""
    return pm


def admin_target(pm: receivers.PacsMirror) -> dict:
    st = http_get_json(f"http://{benchlib.LOOPBACK}:{pm.admin_port}/status", timeout=5)
    return st["targets"]["mirror"]


def cpu_secs(pid: int) -> float:
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(pred, what: str, timeout: float, procs) -> float:
    """Poll `pred` every POLL s; return the time.monotonic() it first held."""
    deadline = time.monotonic() + timeout
    last_err = None
    while True:
        for p, name in procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise BenchError(f"{what}: {name} exited ({p.proc.returncode}); log {p.log_path}:\n"
                                 f"{benchlib.tail(p.log_path)}")
        try:
            if pred():
                return time.monotonic()
        except BenchError:
            raise
        except Exception as e:  # endpoint not up yet
            last_err = e
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not reached after {timeout:.0f}s (last error: {last_err})")
        time.sleep(POLL)


def link_summary(st: dict) -> dict:
    return {"up": st["up"]["bytes_out"], "down": st["down"]["bytes_out"], "cpu": st["cpu_s"],
            "late_max": st["lateness"]["max_ms"], "late_mean": st["lateness"]["mean_ms"],
            "conns": st["relayed"], "late_over_2ms": st["lateness"]["over_2ms"],
            "writes": st["lateness"]["writes"], "dropped": st["up"]["dropped"] + st["down"]["dropped"]}


def new_mirror(kind: str, workdir: Path, tag: str) -> receivers.Receiver:
    if kind == "orthanc":
        return receivers.Orthanc(workdir, tag)
    if kind in receivers.S3_SERVERS:
        return receivers.S3_SERVERS[kind](workdir, tag, "pacs-mirror-wan")
    return receivers.StoreScp(workdir, tag)


def finish_mirror(o: receivers.Receiver, n: int, nbytes: int) -> dict:
    """Stop the mirror and check it holds the n objects (a bucket: n objects
    under the target's objects/ prefix, about nbytes in all)."""
    if not isinstance(o, receivers.MotoS3):
        return o.finish(n, nbytes)
    objs = o.list_objects("wan/objects/")
    total = sum(size for _, size in objs)
    o.stop_server()
    if len(objs) != n or total < nbytes - 4096 * n:
        raise BenchError(f"{o.system}: the bucket lists {len(objs)} objects ({total} bytes) under wan/objects/, "
                         f"expected {n} (about {nbytes} bytes)")
    return {"stored": f"{len(objs)} objects, {total / 1e6:.1f} MB"}


def run_direct(files, nbytes, rtt, args, ctx, tag: str) -> dict:
    """storescu (one association) -> link -> fresh storescp."""
    n = len(files)
    sync_disks()
    o = receivers.StoreScp(ctx.workdir, f"direct-{tag}")
    link = LinkEmu(ctx.workdir, f"direct-{tag}", o.port, rtt_ms=rtt, mbit=args.mbit, window=args.window,
                   jitter_ms=args.jitter_ms)
    ok = False
    try:
        o.start()
        link.start()
        warm(files)
        log(f"direct {tag}: storescu x1 -> link ({fmt_ms(rtt)} ms, {args.mbit:g} Mbit/s) -> storescp, {n} files")
        res = send(o.ae, link.port, files, 1, o.dir, f"direct-{tag}", env=receivers.DCMTK_ENV)
        check_send(res, f"direct {tag}")
        ls = link_summary(link.stop())
        info = o.finish(n, nbytes)
        log(f"direct {tag}: {res.seconds:.3f}s, {n / res.seconds:.1f} objects/s; link {ls['up'] / 1e6:.1f} MB up "
            f"({ls['up'] * 8 / res.seconds / 1e6:.1f} Mbit/s), {ls['down'] / 1e3:.0f} KB down; storescp holds "
            f"{info['stored']}; linkemu CPU {ls['cpu']:.2f}s, timer late max {ls['late_max']:.1f} ms "
            f"({ls['late_over_2ms']}/{ls['writes']} writes > 2 ms)")
        ok = True
        return {"secs": res.seconds, "link": ls}
    finally:
        if not ok:
            link.kill()
            o.kill()
            log(f"direct: logs kept in {o.dir} and {link.log_path}")
        elif not ctx.keep:
            o.remove()


def run_agent(files, nbytes, rtt, args, ctx, binary, kind: str, tag: str,
              concurrency: int | None = None) -> dict:
    """Fill the agent over loopback with the link held, release it, time the
    drain through the link into a fresh mirror."""
    n = len(files)
    sync_disks()
    o = new_mirror(kind, ctx.workdir, f"{kind}-{tag}")
    link = LinkEmu(ctx.workdir, f"pm-{kind}-{tag}", o.port, rtt_ms=rtt, mbit=args.mbit, window=args.window,
                   jitter_ms=args.jitter_ms, hold=True)
    pm = agent_for(binary, ctx.workdir, f"{kind}-{tag}", link, o,
                   concurrency if concurrency is not None else args.concurrency)
    ok = False
    try:
        o.start()
        link.start()
        pm.start()
        warm(files)
        log(f"pacs-mirror {kind} {tag}: filling {n} files over loopback (storescu x{FILL_ASSOCS}), link held")
        t_fill = time.monotonic()
        res = send(pm.ae, pm.port, files, FILL_ASSOCS, pm.dir, f"fill-{tag}", env=receivers.DCMTK_ENV)
        check_send(res, f"pacs-mirror fill {tag}")
        wait_for(lambda: admin_target(pm)["pending"] >= n, f"pacs-mirror {tag}: pending == {n}", args.timeout,
                 [(pm, "pacs-mirror")])
        fill_secs = time.monotonic() - t_fill
        before = admin_target(pm)
        st = link.stats()
        if before["delivered"] != 0 or st["up"]["bytes_out"] != 0:
            raise BenchError(f"pacs-mirror {tag}: something crossed the held link before the release: {before}, "
                             f"link up {st['up']['bytes_out']} bytes")
        if before["pending"] != n:
            raise BenchError(f"pacs-mirror {tag}: pending {before['pending']} after storing {n} objects")
        if fill_secs > 25:
            log(f"WARNING: the fill took {fill_secs:.1f}s; a held association may have timed out (30 s)")
        # 2) the agent restarts with the backlog; its workers connect to the held link
        stop(pm.proc, signal.SIGKILL, 10.0)
        dropped = link.drop_held()
        log(f"pacs-mirror {tag}: filled in {fill_secs:.2f}s ({dropped} connection(s) held at the link); "
            f"agent killed, restarting it on the backlog")
        pm.proc = benchlib.spawn(pm.argv(), log_path=pm.log_path, env=pm.env(), cwd=pm.dir)
        seen: list[tuple[float, int]] = []

        def settled() -> bool:
            t = admin_target(pm)
            if t["pending"] != n or t["delivered"] != 0:
                raise BenchError(f"pacs-mirror {tag}: after the restart: {t} (want pending {n}, delivered 0)")
            held = link.stats()["held"]
            now = time.monotonic()
            if not seen or seen[-1][1] != held:
                seen.append((now, held))
            return held >= 1 and now - seen[-1][0] >= SETTLE

        wait_for(settled, f"pacs-mirror {tag}: the restarted agent's connections held at the link", 60,
                 [(pm, "pacs-mirror"), (link, "linkemu")])
        held = seen[-1][1]
        log(f"pacs-mirror {tag}: {held} connection(s) held, none for {SETTLE:.1f}s more; releasing the link")
        cpu0 = cpu_secs(pm.proc.pid)
        t0 = link.release()
        t1 = wait_for(lambda: admin_target(pm)["pending"] == 0, f"pacs-mirror {tag}: pending 0", args.timeout,
                      [(pm, "pacs-mirror"), (o, o.system), (link, "linkemu")])
        secs = t1 - t0
        pcpu = cpu_secs(pm.proc.pid) - cpu0
        after = admin_target(pm)
        raw = link.stats()
        last_down = raw["down"]["last_out"]
        if after["dead_letters"] != 0 or after["delivered"] != n:
            raise BenchError(f"pacs-mirror {tag}: after the drain: {after} (want delivered {n}, dead_letters 0)")
        rc = stop(pm.proc, signal.SIGTERM, pm.stop_grace)
        if rc != 0:
            raise BenchError(f"pacs-mirror exited {rc} after SIGTERM; log {pm.log_path}")
        ls = link_summary(link.stop())
        info = finish_mirror(o, n, nbytes)
        log(f"pacs-mirror {kind} {tag}: {secs:.3f}s from the release to pending 0 (last byte back to the agent at "
            f"{(last_down - t0) if last_down else float('nan'):.3f}s), {n / secs:.1f} objects/s; link "
            f"{ls['up'] / 1e6:.1f} MB up ({ls['up'] * 8 / secs / 1e6:.1f} Mbit/s), {ls['down'] / 1e3:.0f} KB down, "
            f"{ls['conns']} connection(s); {o.system} holds {info['stored']}; CPU agent {pcpu:.2f}s, linkemu "
            f"{ls['cpu']:.2f}s, timer late max {ls['late_max']:.1f} ms ({ls['late_over_2ms']}/{ls['writes']} writes > 2 ms)")
        ok = True
        return {"secs": secs, "link": ls, "fill": fill_secs, "cpu": pcpu, "held": held}
    finally:
        if not ok:
            link.kill()
            pm.kill()
            o.kill()
            log(f"pacs-mirror: logs kept in {pm.dir}, {o.dir} and {link.log_path}")
        elif not ctx.keep:
            o.remove()
            pm.remove()


# ---------------------------------------------------------------- main

def run_wan(args, ctx) -> int:
    rtts = parse_ms(args.rtts, "--rtts")
    orthanc_rtts = parse_ms(args.orthanc_rtts, "--orthanc-rtts")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets or any(s not in ("large", "small") for s in sets):
        raise BenchError("--sets: choose from large, small")
    if args.quick:
        rtts = [50.0]
    counts = {"large": args.large if args.large is not None else (100 if args.quick else 200),
              "small": args.small if args.small is not None else (200 if args.quick else 500)}
    for s in sets:
        if counts[s] < 1:
            raise BenchError(f"--{s} must be >= 1")
    if args.mbit <= 0:
        raise BenchError("--mbit must be > 0")
    if args.concurrency is not None and args.concurrency < 1:
        raise BenchError("--concurrency must be >= 1")
    orthanc = args.orthanc
    if orthanc is None:
        orthanc = Path(receivers.Orthanc.BINARY).exists() or shutil.which("Orthanc") is not None
    orthanc_rtts = [r for r in orthanc_rtts if r in rtts] if orthanc else []
    s3_rtts = [r for r in parse_ms(args.s3_rtts, "--s3-rtts") if r in rtts] if args.s3 else []
    if args.s3_only and not args.s3:
        raise BenchError("--s3-only needs --s3 SERVER")
    if args.s3_fixed < 1:
        raise BenchError("--s3-fixed must be >= 1")
    if args.s3_only:
        orthanc_rtts = []
    if args.s3:
        receivers.S3_SERVERS[args.s3](ctx.workdir, "probe").prepare()
    for tool in ("storescu", "storescp", "echoscu"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} (DCMTK) not found")

    binary = prepare_binary(args, True, wanted_for_synth=True)
    data: dict[str, tuple[list[Path], int, str]] = {}
    for s in sets:
        if s == "large":
            files, how = ct_dataset(None, counts[s], args.generator, binary, ctx.workdir, name="data")
        else:
            files, how = ct_dataset(None, counts[s], args.generator, binary, ctx.workdir, side=SMALL_SIDE_WAN,
                                    name="small")
        data[s] = (files, sum(f.stat().st_size for f in files), how)

    print_context(ctx.workdir, binary)
    out(f"# pacs-mirror binary {binary} (built {time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(binary.stat().st_mtime))})")
    out(f"# link: scripts/bench.d/linkemu.py (own process): RTT {', '.join(fmt_ms(r) for r in rtts)} ms, "
        f"{args.mbit:g} Mbit/s per direction, one shared FIFO link per direction, one-way delay RTT/2, "
        f"jitter {args.jitter_ms:g} ms, window {args.window / MIB:g} MiB per connection and direction, "
        f"16 KiB segments, +1 RTT per new connection (handshake); TCP terminated at the relay (no TCP "
        f"window/slow start/ACK clocking over the WAN), no loss")
    for s in sets:
        files, nb, how = data[s]
        out(f"# data {s}: {len(files)} files, {nb / 1e6:.1f} MB ({nb / len(files) / 1e3:.1f} KB each); {how}")
    conc = f"concurrency {args.concurrency}" if args.concurrency is not None else "default target settings"
    out(f"# storescu: 1 x storescu (1 association, TCP_NODELAY=1) -> link -> fresh storescp --fork; time = "
        f"start to exit")
    out(f"# pacs-mirror: fill over loopback (storescu x{FILL_ASSOCS}) with the link held, agent restarted on the "
        f"backlog (its connections held), then time from the link's release to /status pending 0 (polled every "
        f"{POLL * 1000:.0f} ms); {conc}; mirror storescp"
        + (f" (and Orthanc at {', '.join(fmt_ms(r) for r in orthanc_rtts)} ms)" if orthanc_rtts else ""))
    if s3_rtts:
        out(f"# object store: {args.s3} behind the link at {', '.join(fmt_ms(r) for r in s3_rtts)} ms, the same "
            f"fill/restart/release/drain; adaptive = the target's default concurrency, fixed = concurrency "
            f"{args.s3_fixed}")
    out(f"# utilisation = link bytes toward the mirror / (seconds x {args.mbit:g} Mbit/s)")

    rows: list[dict] = []
    for rtt in rtts:
        for s in sets:
            files, nb, _ = data[s]
            tag = f"{s}-{fmt_ms(rtt)}ms"
            if rtt in s3_rtts:
                for label, conc in (("adaptive", None), ("fixed", args.s3_fixed)):
                    log(f"--- {tag}: pacs-mirror -> {args.s3} ({label})")
                    a = run_agent(files, nb, rtt, args, ctx, binary, args.s3, f"{tag}-{label}", conc)
                    rows.append({"system": "pacs-mirror", "mirror": f"s3-{label}", "set": s, "rtt": rtt,
                                 "n": len(files), "bytes": nb, **a})
            if args.s3_only:
                continue
            log(f"--- {tag}: storescu direct")
            d = run_direct(files, nb, rtt, args, ctx, tag)
            rows.append({"system": "storescu", "mirror": "storescp", "set": s, "rtt": rtt, "n": len(files),
                         "bytes": nb, **d})
            log(f"--- {tag}: pacs-mirror -> storescp")
            a = run_agent(files, nb, rtt, args, ctx, binary, "storescp", tag)
            rows.append({"system": "pacs-mirror", "mirror": "storescp", "set": s, "rtt": rtt, "n": len(files),
                         "bytes": nb, **a})
            if rtt in orthanc_rtts:
                log(f"--- {tag}: pacs-mirror -> Orthanc")
                a = run_agent(files, nb, rtt, args, ctx, binary, "orthanc", tag)
                rows.append({"system": "pacs-mirror", "mirror": "orthanc", "set": s, "rtt": rtt, "n": len(files),
                             "bytes": nb, **a})

    rate = args.mbit * 1e6
    late_max = max(r["link"]["late_max"] for r in rows)
    emu_share = max(r["link"]["cpu"] / r["secs"] for r in rows)
    fills = [r["fill"] for r in rows if "fill" in r]
    over = sum(r["link"]["late_over_2ms"] for r in rows)
    writes = sum(r["link"]["writes"] for r in rows)
    out(f"# linkemu: timer lateness max {late_max:.1f} ms over all runs, {over} of {writes} writes > 2 ms late; its CPU at most {emu_share * 100:.0f} % "
        f"of one core (CPU s / run s, start-up included); no bytes dropped: "
        f"{'yes' if all(r['link']['dropped'] == 0 for r in rows) else 'NO'}")
    out(f"# pacs-mirror fills (untimed): {min(fills):.2f}-{max(fills):.2f}s; connections held at the release: "
        f"{', '.join(sorted({str(r['held']) for r in rows if 'held' in r}))}")
    out()
    hdr = (f"{'system':<12} {'mirror':<11} {'set':<6} {'RTT ms':>6} {'objects':>7} {'data MB':>8} {'link MB':>8} "
           f"{'back KB':>8} {'seconds':>8} {'obj/s':>7} {'util':>6}")
    out(hdr)
    out("-" * len(hdr))
    for r in rows:
        util = r["link"]["up"] * 8 / (r["secs"] * rate)
        r["util"] = util
        r["rate"] = r["n"] / r["secs"]
        out(f"{r['system']:<12} {r['mirror']:<11} {r['set']:<6} {fmt_ms(r['rtt']):>6} {r['n']:>7} "
            f"{r['bytes'] / 1e6:>8.1f} {r['link']['up'] / 1e6:>8.1f} {r['link']['down'] / 1e3:>8.0f} "
            f"{r['secs']:>8.3f} {r['rate']:>7.1f} {util * 100:>5.1f}%")
    out()

    def find(system, mirror, s, rtt):
        for r in rows:
            if r["system"] == system and r["mirror"] == mirror and r["set"] == s and r["rtt"] == rtt:
                return r
        return None

    ratios = []
    for rtt in rtts:
        for s in sets:
            d, a = find("storescu", "storescp", s, rtt), find("pacs-mirror", "storescp", s, rtt)
            if d and a:
                ratios.append((f"wan_{s}_{fmt_ms(rtt)}ms", a["rate"] / d["rate"]))
            ad, fx = find("pacs-mirror", "s3-adaptive", s, rtt), find("pacs-mirror", "s3-fixed", s, rtt)
            if ad and fx:
                ratios.append((f"wan_s3_{s}_{fmt_ms(rtt)}ms", ad["rate"] / fx["rate"]))
    verdicts, missed = [], []
    for s, rtt, kind, thr in TARGETS:
        a = find("pacs-mirror", "storescp", s, float(rtt))
        if a is None:
            continue
        if kind == "util":
            v = a["util"]
            text = f"{s} {rtt} ms link utilisation {v * 100:.1f} % >= {thr * 100:.0f} %"
        else:
            v = a["rate"] / find("storescu", "storescp", s, float(rtt))["rate"]
            text = f"{s} {rtt} ms pacs-mirror/storescu {v:.2f} >= {thr:g}"
        good = v >= thr
        verdicts.append(f"{text}: {'PASS' if good else 'FAIL'}")
        if not good:
            missed.append(text)
    out("# acceptance: " + ("; ".join(verdicts) if verdicts else "no target applies to the RTTs/sets run"))
    for m in missed:
        out(f"# MISSED: {m}")
    for name, value in ratios:
        ratio_line(name, value)
    return 2 if missed else 0


SCENARIOS = [
    Scenario("wan", "replication over an emulated WAN link (RTT 10/50/150 ms, 100 Mbit/s) vs storescu",
             WAN_DOC, add_args, run_wan),
]
