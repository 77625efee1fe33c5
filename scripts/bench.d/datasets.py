"""Benchmark data sets: the synthetic CT set (`pacs-mirror synth`, or the
stdlib fallback in dicomgen) and the 1 GiB multi-frame instance."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import dicomgen
from benchlib import BenchError, check_free_space, has_subcommand, list_dicom_files, log

SYNTH_FLAGS = ("--out", "--studies", "--series-per-study", "--instances-per-series")
CT_BYTES = 525_000  # ~ one 512x512x16-bit CT file
# The small-object set: 76x76x16-bit CT images, ~12 KB files (11.5 KB of
# pixels + ~0.6 KB of header), the size of a typical SR / small MR slice.
SMALL_SIDE = 76


def add_data_args(g, what: str) -> None:
    """The data-set options every scenario shares: --count, --data, --generator."""
    g.add_argument("--count", type=int, default=1000, metavar="N", help=f"instances to {what} (default 1000)")
    g.add_argument("--data", type=Path, metavar="DIR",
                   help="use the DICOM files in DIR (first N in path order); if DIR is empty or missing, "
                        "generate the data set there and keep it for later runs")
    g.add_argument("--generator", choices=("auto", "synth", "python"), default="auto",
                   help="data generator: `pacs-mirror synth`, the stdlib one in bench.d, or auto = synth "
                        "if this build has it (default)")


def synth_usable(binary: Path | None) -> tuple[bool, str]:
    if binary is None or not binary.exists():
        return False, f"{binary} not built"
    if not has_subcommand(binary, "synth"):
        return False, "`pacs-mirror synth` does not exist in this build"
    text = subprocess.run([str(binary), "synth", "--help"], capture_output=True, text=True).stdout
    missing = [f for f in SYNTH_FLAGS if f not in text]
    if missing:
        return False, f"`pacs-mirror synth` lacks {' '.join(missing)}"
    return True, ""


def generate_ct(dest: Path, count: int, generator: str, binary: Path | None,
                studies: int | None = None, side: int = 512) -> str:
    """Write `count` CT instances of side x side 16-bit pixels (`studies`
    studies x 1 series; default 4, or 1 below 4 instances) into the empty
    `dest`. Returns a description of how."""
    if studies is None:
        studies = 4 if count >= 4 else 1
    per_series = math.ceil(count / studies)
    est = CT_BYTES * side * side // (512 * 512) + 2048
    check_free_space(dest.parent, count * est * 3, "data set + one receiver's copy")
    geometry = [] if side == 512 else ["--rows", str(side), "--columns", str(side)]
    t0 = time.monotonic()
    if generator in ("auto", "synth"):
        ok, why = synth_usable(binary)
        if ok:
            argv = [str(binary), "synth", "--out", str(dest), "--studies", str(studies),
                    "--series-per-study", "1", "--instances-per-series", str(per_series)] + geometry
            log("generating: " + " ".join(argv))
            r = subprocess.run(argv, capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError(f"pacs-mirror synth failed ({r.returncode}):\n{r.stderr[-2000:]}")
            log(f"generated in {time.monotonic() - t0:.1f}s")
            return (f"pacs-mirror synth --studies {studies} --series-per-study 1 --instances-per-series {per_series}"
                    + "".join(f" {a}" for a in geometry))
        if generator == "synth":
            raise BenchError(f"--generator synth: {why}")
        log(f"NOTE: {why}; using the built-in Python generator instead (same geometry, random pixels)")
    log(f"generating {count} CT instances (python) in {dest}")
    dicomgen.write_ct_dataset(dest, count, studies, rows=side, cols=side)
    log(f"generated in {time.monotonic() - t0:.1f}s")
    return f"scripts/bench.d/dicomgen.py ({studies} studies x 1 series, {side}x{side}x16-bit CT, random pixels)"


def ct_dataset(data: Path | None, count: int, generator: str, binary: Path | None,
               workdir: Path, studies: int | None = None, side: int = 512,
               name: str = "data") -> tuple[list[Path], str]:
    """The files to send. With `data`: reuse its Part-10 files if it has any
    (first `count` in path order), else generate into it (and leave it there
    for the next run). Without: generate into the work dir's `name`
    (side x side pixels: 512 for the CT set, SMALL_SIDE for the small one)."""
    if data is not None:
        data = data.resolve()
        existing = list_dicom_files(data) if data.is_dir() else []
        if existing:
            if len(existing) < count:
                raise BenchError(f"--data {data} holds {len(existing)} DICOM files, --count wants {count}")
            return existing[:count], f"reused {data} ({len(existing)} files there)"
        data.mkdir(parents=True, exist_ok=True)
        dest = data
    else:
        dest = workdir / name
        dest.mkdir(parents=True, exist_ok=True)
    how = generate_ct(dest, count, generator, binary, studies, side)
    files = list_dicom_files(dest)
    if len(files) < count:
        raise BenchError(f"generator wrote {len(files)} DICOM files into {dest}, wanted {count}")
    return files[:count], how


def large_instance(data: Path | None, frames: int, workdir: Path) -> tuple[Path, str]:
    """The multi-frame instance of ingest-large: reuse `data` if it is a Part-10
    file, else write one (frames x 512x512x16-bit) there or in the work dir."""
    if data is not None and data.is_file():
        return data.resolve(), f"reused {data}"
    path = data.resolve() if data is not None else workdir / "large" / "large.dcm"
    size = frames * 512 * 512 * 2
    check_free_space(path.parent if path.parent.exists() else workdir, size * 3, "large instance + copies")
    log(f"writing {frames}-frame 512x512x16-bit instance ({size / 2**30:.2f} GiB of pixel data) to {path}")
    t0 = time.monotonic()
    total = dicomgen.write_multiframe(path, frames)
    log(f"written in {time.monotonic() - t0:.1f}s ({total} bytes)")
    return path, f"dicomgen multi-frame grayscale word SC, {frames} frames"
