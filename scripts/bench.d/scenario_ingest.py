"""Scenarios `ingest` and `ingest-large`: C-STORE throughput into pacs-mirror
versus DCMTK storescp and Orthanc, and pacs-mirror's memory on a 1 GiB object."""

from __future__ import annotations

import argparse
from pathlib import Path

import receivers
from benchlib import (BenchError, Scenario, SendResult, aggregate, build_release, check_send, log,
                      out, parse_systems, pm_binary, print_context, print_table, ratio_line, send,
                      sync_disks, warm)
from datasets import add_data_args, ct_dataset, large_instance

INGEST_DOC = """\
Sends the same data set (default 1000 synthetic 512x512x16-bit CT instances,
~525 KB each, 4 studies) with DCMTK storescu to each receiver, over 1
association and over 4 parallel associations (4 storescu processes, one
contiguous quarter of the files each), and reports files/s and MB/s.

Receivers (each started fresh for every timed run, on free 127.0.0.1 ports,
storage under the work dir, stopped and checked afterwards):
  storescp     storescp --fork +xa -od DIR   (TCP_NODELAY=1; writes, no fsync)
  orthanc      /usr/sbin/Orthanc with a private JSON config, SQLite, no plugins
               (TCP_NODELAY=1; SyncStorageArea default = fsync); after the run
               REST /statistics CountInstances must equal the files sent
  pacs-mirror  target/release/pacs-mirror run --config TOML (fsyncs before
               Success); after SIGTERM spool/objects/**/*.dcm must equal the
               files sent
Each receiver uses its own default max PDU unless --pdu is given.

Sender: `storescu -v -aet BENCH -aec <AE> 127.0.0.1 <port> <files…>`, same
flags and TCP_NODELAY=1 for every receiver. A run counts only if every
storescu exits 0 and logs one "Received Store Response (Success)" per file.
Time = first storescu start to last storescu exit (receiver start-up and the
post-run checks are not timed).

Fairness: before each timed run `sync` (so no system pays for an earlier
one's writeback) and every data file is read once (warm sender cache, same
for all). Order: for each repeat, for each mode (1, then 4 associations):
storescp, orthanc, pacs-mirror. With --repeat N the table shows the median
(or, with --stat best, the fastest) of the N runs; samples are listed.

Output ends with, when both sides were measured:
  ratio ingest_1assoc_vs_storescp X   ratio ingest_4assoc_vs_storescp X
  ratio ingest_1assoc_vs_orthanc X    ratio ingest_4assoc_vs_orthanc X
X = pacs-mirror files/s / peer files/s (> 1: pacs-mirror is faster).
"""

LARGE_DOC = """\
Sends one large multi-frame instance (default 2048 frames of 512x512x16-bit:
1 GiB of pixel data, written by scripts/bench.d/dicomgen.py) with storescu over
one association and reports the time, MB/s and each receiver's peak RSS
(VmHWM from /proc/PID/status read just before it is stopped):
  peak_rss_mib ingest_large_pacs_mirror VALUE
Acceptance target: pacs-mirror peak RSS < --rss-limit-mib (150); missing it
makes the exit status 2. --systems pacs-mirror,orthanc also measures Orthanc
and prints `ratio ingest_large_vs_orthanc X`.
"""


def add_common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="timed runs per system and mode (default 1)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="which of the --repeat runs the table shows (default median)")
    p.add_argument("--pdu", type=int, metavar="BYTES",
                   help="set every receiver's max receive PDU to BYTES (4096..131072); default: each "
                        "system's own default (storescp 16384, Orthanc 16384, pacs-mirror 262144)")


def add_ingest_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ingest options")
    add_data_args(g, "send")
    g.add_argument("--assocs", default="1,4", metavar="LIST",
                   help="comma list of parallel association counts (default 1,4)")
    g.add_argument("--systems", default="storescp,orthanc,pacs-mirror", metavar="LIST",
                   help="receivers to measure (default storescp,orthanc,pacs-mirror)")
    g.add_argument("--storescp-bit-preserving", action="store_true",
                   help="run storescp with +B (writes the data set as received, no re-encoding)")
    add_common_run_args(g)


def add_large_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ingest-large options")
    g.add_argument("--frames", type=int, default=2048, metavar="N",
                   help="frames of 512x512x16-bit (512 KiB each; default 2048 = 1 GiB)")
    g.add_argument("--data", type=Path, metavar="FILE",
                   help="send this DICOM file; if FILE does not exist, write the generated one there and keep it")
    g.add_argument("--systems", default="pacs-mirror", metavar="LIST",
                   help="receivers: pacs-mirror and/or orthanc (default pacs-mirror)")
    g.add_argument("--rss-limit-mib", type=float, default=150.0, metavar="MIB",
                   help="pacs-mirror peak RSS acceptance target (default 150; 0 = none)")
    add_common_run_args(g)


def validate(args) -> None:
    if args.repeat < 1:
        raise BenchError("--repeat must be >= 1")
    if args.pdu is not None and not 4096 <= args.pdu <= 131072:
        raise BenchError("--pdu must be within 4096..131072 (storescp's and Orthanc's range)")


def prepare_binary(args, needed: bool, wanted_for_synth: bool) -> Path | None:
    """Build (unless --no-build) and return the pacs-mirror binary. A build
    failure is fatal when pacs-mirror is measured, else only means no synth."""
    binary = pm_binary(args.bin)
    if not (needed or wanted_for_synth):
        return binary if binary.exists() else None
    if not args.no_build and not args.bin:
        try:
            build_release()
        except BenchError:
            if needed:
                raise
            log("NOTE: build failed; pacs-mirror is not measured here (only synth would use it), continuing")
    if needed and not binary.exists():
        raise BenchError(f"{binary} does not exist")
    return binary if binary.exists() else None


def one_run(system: str, mode_tag: str, files: list[Path], assocs: int, args, ctx, binary) -> tuple[SendResult, dict]:
    sync_disks()
    r = receivers.make(system, workdir=ctx.workdir, tag=mode_tag, pdu=args.pdu, binary=binary,
                       storescp_bit_preserving=getattr(args, "storescp_bit_preserving", False))
    ok = False
    try:
        r.start()
        warm(files)
        log(f"{system}: sending {len(files)} files over {assocs} association(s)")
        res = send(r.ae, r.port, files, assocs, r.dir, mode_tag, env=receivers.DCMTK_ENV)
        check_send(res, f"{system} {mode_tag}")
        info = r.finish(len(files), res.bytes)
        hwm = info["peak_rss_kib"]
        log(f"{system} {mode_tag}: {res.seconds:.3f}s, {len(files) / res.seconds:.1f} files/s, "
            f"{res.bytes / res.seconds / 1e6:.1f} MB/s; holds {info['stored']} instances, "
            f"{info['stored_bytes'] / 1e6:.1f} MB; peak RSS "
            + (f"{hwm / 1024:.1f} MiB" if hwm else "n/a"))
        ok = True
        return res, info
    finally:
        if not ok:
            r.kill()
            log(f"{system}: logs kept in {r.dir}")
        elif not ctx.keep:
            r.remove()


def run_ingest(args, ctx) -> int:
    validate(args)
    systems = parse_systems(args.systems, receivers.SYSTEMS)
    try:
        modes = sorted({int(x) for x in args.assocs.split(",") if x.strip()})
    except ValueError:
        raise BenchError("--assocs: comma list of integers")
    if not modes or min(modes) < 1:
        raise BenchError("--assocs: counts must be >= 1")
    if args.count < 1:
        raise BenchError("--count must be >= 1")
    for m in modes:
        if m > args.count:
            raise BenchError(f"--assocs {m} > --count {args.count}")

    need_pm = "pacs-mirror" in systems
    reuse = args.data is not None and args.data.is_dir() and any(args.data.iterdir())
    binary = prepare_binary(args, need_pm, wanted_for_synth=not reuse and args.generator != "python")
    files, how = ct_dataset(args.data, args.count, args.generator, binary, ctx.workdir)
    total = sum(f.stat().st_size for f in files)

    print_context(ctx.workdir, binary)
    out(f"# data: {len(files)} files, {total / 1e6:.1f} MB ({total / len(files) / 1e3:.1f} KB each); {how}")
    notes = []
    for s in systems:
        r = receivers.make(s, workdir=ctx.workdir, tag="probe", pdu=args.pdu, binary=binary,
                           storescp_bit_preserving=args.storescp_bit_preserving)
        notes.append(f"{s}: {r.pdu_note()}")
        r.remove()
    out("# " + "; ".join(notes))
    out(f"# order: repeat x mode({','.join(map(str, modes))} assoc) x {','.join(systems)}; "
        f"statistic: {args.stat} of {args.repeat}")

    samples: dict[tuple[str, int], list[float]] = {}
    rss: dict[tuple[str, int], int] = {}
    nbytes = total
    for rep in range(args.repeat):
        for assocs in modes:
            for system in systems:
                tag = f"{assocs}assoc-r{rep + 1}"
                log(f"--- repeat {rep + 1}/{args.repeat}, {assocs} association(s), {system}")
                res, info = one_run(system, tag, files, assocs, args, ctx, binary)
                samples.setdefault((system, assocs), []).append(res.seconds)
                if info.get("peak_rss_kib"):
                    rss[(system, assocs)] = max(rss.get((system, assocs), 0), info["peak_rss_kib"])

    rows = []
    best: dict[tuple[str, int], float] = {}
    for assocs in modes:
        for system in systems:
            s = samples[(system, assocs)]
            secs = aggregate(s, args.stat)
            best[(system, assocs)] = secs
            rows.append({"system": system, "mode": f"{assocs}assoc", "files": len(files),
                         "seconds": secs, "bytes": nbytes, "samples": s})
    out()
    print_table(rows)
    out()
    for assocs in modes:
        for system in ("orthanc", "pacs-mirror"):
            if (system, assocs) in rss:
                out(f"peak_rss_mib ingest_{assocs}assoc_{system.replace('-', '_')} "
                    f"{rss[(system, assocs)] / 1024:.1f}")
    if not need_pm or len(systems) == 1:
        out("# no ratio lines: pacs-mirror and a peer were not both measured")
    if need_pm:
        for peer in ("storescp", "orthanc"):
            if peer not in systems:
                continue
            for assocs in modes:
                # same file count on both sides: rate ratio = time ratio inverted
                ratio_line(f"ingest_{assocs}assoc_vs_{peer}",
                           best[(peer, assocs)] / best[("pacs-mirror", assocs)])
    return 0


def run_large(args, ctx) -> int:
    validate(args)
    systems = parse_systems(args.systems, ("orthanc", "pacs-mirror"))
    if args.frames < 1:
        raise BenchError("--frames must be >= 1")
    need_pm = "pacs-mirror" in systems
    binary = prepare_binary(args, need_pm, wanted_for_synth=False)
    path, how = large_instance(args.data, args.frames, ctx.workdir)
    size = path.stat().st_size

    print_context(ctx.workdir, binary)
    out(f"# data: 1 file, {size / 2**20:.1f} MiB; {how}")
    samples: dict[str, list[float]] = {}
    rss: dict[str, int] = {}
    for rep in range(args.repeat):
        for system in systems:
            log(f"--- repeat {rep + 1}/{args.repeat}, {system}")
            res, info = one_run(system, f"large-r{rep + 1}", [path], 1, args, ctx, binary)
            samples.setdefault(system, []).append(res.seconds)
            if info.get("peak_rss_kib") is None:
                raise BenchError(f"{system}: could not read VmHWM")
            rss[system] = max(rss.get(system, 0), info["peak_rss_kib"])

    rows = []
    secs = {}
    for system in systems:
        secs[system] = aggregate(samples[system], args.stat)
        rows.append({"system": system, "mode": "1assoc", "files": 1, "seconds": secs[system],
                     "bytes": size, "samples": samples[system]})
    out()
    print_table(rows)
    out()
    rc = 0
    for system in systems:
        out(f"peak_rss_mib ingest_large_{system.replace('-', '_')} {rss[system] / 1024:.1f}")
    if need_pm and args.rss_limit_mib > 0:
        mib = rss["pacs-mirror"] / 1024
        verdict = "PASS" if mib < args.rss_limit_mib else "FAIL"
        out(f"# acceptance: pacs-mirror peak RSS {mib:.1f} MiB < {args.rss_limit_mib:g} MiB: {verdict}")
        if verdict == "FAIL":
            rc = 2
    if need_pm and "orthanc" in systems:
        ratio_line("ingest_large_vs_orthanc", secs["orthanc"] / secs["pacs-mirror"])
    return rc


SCENARIOS = [
    Scenario("ingest", "C-STORE throughput: pacs-mirror vs storescp and Orthanc, 1 and 4 associations",
             INGEST_DOC, add_ingest_args, run_ingest),
    Scenario("ingest-large", "one 1 GiB instance into pacs-mirror: time and peak RSS (target < 150 MiB)",
             LARGE_DOC, add_large_args, run_large),
]
