"""Scenarios `ingest` and `ingest-large`: C-STORE throughput into pacs-mirror
versus DCMTK storescp and Orthanc, and pacs-mirror's memory on a 1 GiB object."""

from __future__ import annotations

import argparse
from pathlib import Path

import receivers
from benchlib import (BenchError, Scenario, SendResult, aggregate, build_release, check_send, log,
                      out, parse_systems, pm_binary, print_context, print_table, ratio_line, send,
                      sync_disks, warm)
from datasets import SMALL_SIDE, add_data_args, ct_dataset, large_instance

INGEST_DOC = """\
Sends a data set with DCMTK storescu to each receiver, over 1 association and
over 4 parallel associations (4 storescu processes, one contiguous quarter of
the files each), and reports files/s and MB/s. Two data sets (--sets):
  ct     --count (default 1000) synthetic 512x512x16-bit CT instances,
         ~525 KB each, 4 studies
  small  --small-count (default 3000) 76x76x16-bit CT instances, ~12 KB
         each, 4 studies: where per-object flushes, not bytes, set the pace

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

storescp+sync: the same storescp run, timed from the first storescu start to
the end of one `sync -f DIR` of its output folder after the last storescu
exit: the same bytes made durable by a single flush. storescp never flushes,
so this, not bare storescp, is the fair reference for a receiver that answers
only once an object is durable. (`sync -f` is syncfs(2): it also writes any
other dirty data of that filesystem; `sync` runs before each timed run so
that is only what other processes write meanwhile.)

Sender: `storescu -v -aet BENCH -aec <AE> 127.0.0.1 <port> <files…>`, same
flags and TCP_NODELAY=1 for every receiver. A run counts only if every
storescu exits 0 and logs one "Received Store Response (Success)" per file.
Time = first storescu start to last storescu exit (receiver start-up and the
post-run checks are not timed).

Fairness: before each timed run `sync` (so no system pays for an earlier
one's writeback) and every data file is read once (warm sender cache, same
for all). Order (interleaved): for each repeat, for each data set, for each
mode (1, then 4 associations): storescp, orthanc, pacs-mirror. With
--repeat N the table shows the median (or, with --stat best, the fastest)
of the N runs; samples are listed. The issue-14 measurements use
`--repeat 4 --stat best`. --baseline-bin OLD also runs that pacs-mirror
binary (as pacs-mirror-base, right after pacs-mirror in every round) and
prints `ratio ..._vs_baseline` lines: before/after from the same rounds.

Output ends with, for each pair measured (X = pacs-mirror files/s / peer
files/s; > 1: pacs-mirror is faster; the small set's lines say ingest_small_):
  ratio ingest_1assoc_vs_storescp X        ratio ingest_4assoc_vs_storescp X
  ratio ingest_1assoc_vs_storescp_sync X   ratio ingest_4assoc_vs_storescp_sync X
  ratio ingest_1assoc_vs_orthanc X         ratio ingest_4assoc_vs_orthanc X
  ratio ingest_small_1assoc_vs_storescp_sync X  … (same six)
  peak_rss_mib ingest_1assoc_pacs_mirror MIB    peak_rss_mib ingest_small_4assoc_pacs_mirror MIB …
and one `# acceptance:` line per target (issue 14): vs storescp+sync, ct
>= 0.9 in both modes, small >= 0.4 over 1 association and >= 0.5 over 4;
vs orthanc >= 1.5 everywhere; pacs-mirror peak RSS <= 32 MiB. A missed
target makes the exit status 2 (--no-targets: report only).
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
    g.add_argument("--sets", default="ct,small", metavar="LIST",
                   help="data sets: ct (--count ~525 KB CT files) and/or small (--small-count ~12 KB "
                        "files; --data does not apply to it) (default ct,small)")
    g.add_argument("--small-count", type=int, default=3000, metavar="N",
                   help="instances of the small set (default 3000)")
    g.add_argument("--no-targets", action="store_true",
                   help="print the acceptance lines but always exit 0")
    g.add_argument("--baseline-bin", type=Path, metavar="PATH",
                   help="also measure this pacs-mirror binary (system pacs-mirror-base, run right "
                        "after pacs-mirror in every round) and print `ratio ..._vs_baseline` lines: "
                        "before/after figures from the same interleaved rounds")
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
    if system == "pacs-mirror-base":
        r = receivers.make("pacs-mirror", workdir=ctx.workdir, tag=f"base-{mode_tag}", pdu=args.pdu,
                           binary=getattr(args, "baseline_bin").resolve())
    else:
        r = receivers.make(system, workdir=ctx.workdir, tag=mode_tag, pdu=args.pdu, binary=binary,
                           storescp_bit_preserving=getattr(args, "storescp_bit_preserving", False))
    ok = False
    try:
        r.start()
        warm(files)
        log(f"{system}: sending {len(files)} files over {assocs} association(s)")
        res = send(r.ae, r.port, files, assocs, r.dir, mode_tag, env=receivers.DCMTK_ENV)
        check_send(res, f"{system} {mode_tag}")
        sync_secs = r.sync_output() if system == "storescp" else None
        info = r.finish(len(files), res.bytes)
        info["sync_seconds"] = sync_secs
        if sync_secs is not None:
            log(f"{system} {mode_tag}: sync -f of its folder took {sync_secs:.3f}s")
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


# Issue-14 acceptance targets: (set, peer, assocs or None for every mode) -> minimum ratio.
TARGETS = [
    ("ct", "storescp_sync", None, 0.9),
    ("small", "storescp_sync", 1, 0.4),
    ("small", "storescp_sync", 4, 0.5),
    ("ct", "orthanc", None, 1.5),
    ("small", "orthanc", None, 1.5),
]
RSS_TARGET_MIB = 32.0
SETS = ("ct", "small")


def run_ingest(args, ctx) -> int:
    validate(args)
    systems = parse_systems(args.systems, receivers.SYSTEMS)
    try:
        modes = sorted({int(x) for x in args.assocs.split(",") if x.strip()})
    except ValueError:
        raise BenchError("--assocs: comma list of integers")
    sets = [x.strip() for x in args.sets.split(",") if x.strip()]
    if not sets or any(x not in SETS for x in sets):
        raise BenchError(f"--sets: choose from {','.join(SETS)}")
    sets = [x for x in SETS if x in sets]
    if not modes or min(modes) < 1:
        raise BenchError("--assocs: counts must be >= 1")
    counts = {"ct": args.count, "small": args.small_count}
    for name in sets:
        if counts[name] < 1:
            raise BenchError(f"the {name} set needs a count >= 1")
        for m in modes:
            if m > counts[name]:
                raise BenchError(f"--assocs {m} > the {name} set's {counts[name]} files")

    need_pm = "pacs-mirror" in systems
    reuse = args.data is not None and args.data.is_dir() and any(args.data.iterdir())
    binary = prepare_binary(args, need_pm,
                            wanted_for_synth=args.generator != "python" and (not reuse or "small" in sets))
    data: dict[str, tuple[list[Path], int]] = {}
    print_context(ctx.workdir, binary)
    for name in sets:
        if name == "ct":
            files, how = ct_dataset(args.data, args.count, args.generator, binary, ctx.workdir)
        else:
            files, how = ct_dataset(None, args.small_count, args.generator, binary, ctx.workdir,
                                    side=SMALL_SIDE, name="small")
        total = sum(f.stat().st_size for f in files)
        data[name] = (files, total)
        out(f"# data {name}: {len(files)} files, {total / 1e6:.1f} MB ({total / len(files) / 1e3:.1f} KB each); {how}")
    notes = []
    for s in systems:
        r = receivers.make(s, workdir=ctx.workdir, tag="probe", pdu=args.pdu, binary=binary,
                           storescp_bit_preserving=args.storescp_bit_preserving)
        notes.append(f"{s}: {r.pdu_note()}")
        r.remove()
    out("# " + "; ".join(notes))
    runs = list(systems)
    if args.baseline_bin is not None:
        if not need_pm or not args.baseline_bin.exists():
            raise BenchError("--baseline-bin needs pacs-mirror measured and an existing binary")
        runs.append("pacs-mirror-base")
        out(f"# pacs-mirror-base: {args.baseline_bin.resolve()}")
    out(f"# order: repeat x set({','.join(sets)}) x mode({','.join(map(str, modes))} assoc) x "
        f"{','.join(runs)}; statistic: {args.stat} of {args.repeat}")

    # (set, system, assocs) -> seconds per run; "storescp+sync" is the storescp
    # run's time plus its one folder sync
    samples: dict[tuple[str, str, int], list[float]] = {}
    rss: dict[tuple[str, int], int] = {}
    for rep in range(args.repeat):
        for name in sets:
            files, _ = data[name]
            for assocs in modes:
                for system in runs:
                    tag = f"{name}-{assocs}assoc-r{rep + 1}"
                    log(f"--- repeat {rep + 1}/{args.repeat}, set {name}, {assocs} association(s), {system}")
                    res, info = one_run(system, tag, files, assocs, args, ctx, binary)
                    samples.setdefault((name, system, assocs), []).append(res.seconds)
                    if info.get("sync_seconds") is not None:
                        samples.setdefault((name, "storescp+sync", assocs), []).append(
                            res.seconds + info["sync_seconds"])
                    if system == "pacs-mirror-base" and info.get("peak_rss_kib"):
                        rss[(name, -assocs)] = max(rss.get((name, -assocs), 0), info["peak_rss_kib"])
                    if system == "pacs-mirror" and info.get("peak_rss_kib"):
                        rss[(name, assocs)] = max(rss.get((name, assocs), 0), info["peak_rss_kib"])

    shown = [s for s in ("storescp", "storescp+sync", "orthanc", "pacs-mirror", "pacs-mirror-base")
             if s in runs or (s == "storescp+sync" and "storescp" in systems)]
    best: dict[tuple[str, str, int], float] = {}
    rows = []
    for name in sets:
        files, nbytes = data[name]
        for assocs in modes:
            for system in shown:
                sm = samples[(name, system, assocs)]
                secs = aggregate(sm, args.stat)
                best[(name, system, assocs)] = secs
                rows.append({"system": system, "mode": f"{name} {assocs}assoc", "files": len(files),
                             "seconds": secs, "bytes": nbytes, "samples": sm})
    out()
    print_table(rows)
    out()

    def prefix(name: str) -> str:
        return "ingest_" if name == "ct" else f"ingest_{name}_"

    rc = 0
    verdicts = []
    for name in sets:
        for assocs in modes:
            if (name, assocs) in rss:
                mib = rss[(name, assocs)] / 1024
                out(f"peak_rss_mib {prefix(name)}{assocs}assoc_pacs_mirror {mib:.1f}")
            if (name, -assocs) in rss:
                out(f"peak_rss_mib {prefix(name)}{assocs}assoc_pacs_mirror_base {rss[(name, -assocs)] / 1024:.1f}")
                verdicts.append((f"pacs-mirror peak RSS, {name} {assocs}assoc: {mib:.1f} MiB <= {RSS_TARGET_MIB:g}",
                                 mib <= RSS_TARGET_MIB))
    if not need_pm or len(systems) == 1:
        out("# no ratio lines: pacs-mirror and a peer were not both measured")
        return 0
    ratios: dict[tuple[str, str, int], float] = {}
    for name in sets:
        for peer, key in (("storescp", "storescp"), ("storescp+sync", "storescp_sync"), ("orthanc", "orthanc"),
                          ("pacs-mirror-base", "baseline")):
            if peer not in shown:
                continue
            for assocs in modes:
                # same file count on both sides: rate ratio = time ratio inverted
                v = best[(name, peer, assocs)] / best[(name, "pacs-mirror", assocs)]
                ratios[(name, key, assocs)] = v
                ratio_line(f"{prefix(name)}{assocs}assoc_vs_{key}", v)
    for name, key, want_assocs, minimum in TARGETS:
        for assocs in modes:
            if want_assocs not in (None, assocs) or (name, key, assocs) not in ratios:
                continue
            v = ratios[(name, key, assocs)]
            verdicts.append((f"{prefix(name)}{assocs}assoc_vs_{key} {v:.3f} >= {minimum}", v >= minimum))
    for text, ok in verdicts:
        out(f"# acceptance: {text}: {'PASS' if ok else 'FAIL'}")
        if not ok and not args.no_targets:
            rc = 2
    return rc


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
