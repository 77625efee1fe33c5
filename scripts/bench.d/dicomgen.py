"""Minimal DICOM Part-10 writer (Python stdlib only) for benchmark data.

Used for
  * the 1 GiB multi-frame instance of `ingest-large` (always), and
  * the `ingest` data set when `pacs-mirror synth` is not available
    (`--generator python`, or `auto` falling back).

Files are Explicit VR Little Endian with a complete file meta group.
Pixel values are pseudo-random (uncompressed transfer, so content does not
matter to any receiver); the attribute set is a plausible CT / multi-frame
secondary capture header, not a validated IOD.
"""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
# DCMTK's OFFIS root is not ours to use; 2.25 (UUID-derived) needs no registration.
IMPLEMENTATION_CLASS_UID = "2.25.164807536185402347390592618434306048731"
IMPLEMENTATION_VERSION = "PM_BENCH_1"

# VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"}


def new_uid() -> str:
    return "2.25." + str(uuid.uuid4().int)


def _pad(vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    return value


def element(group: int, elem: int, vr: str, value) -> bytes:
    """Encode one explicit-VR-LE element. `value`: str, bytes, int or list of ints."""
    if isinstance(value, str):
        raw = value.encode("ascii")
    elif isinstance(value, bytes):
        raw = value
    elif vr == "US":
        vals = value if isinstance(value, (list, tuple)) else [value]
        raw = b"".join(struct.pack("<H", v) for v in vals)
    elif vr == "UL":
        vals = value if isinstance(value, (list, tuple)) else [value]
        raw = b"".join(struct.pack("<I", v) for v in vals)
    elif vr == "AT":
        raw = struct.pack("<HH", *value)
    else:
        raise ValueError(f"cannot encode {vr} from {type(value)}")
    raw = _pad(vr, raw)
    head = struct.pack("<HH", group, elem) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(raw)) + raw
    if len(raw) > 0xFFFF:
        raise ValueError(f"value too long for {vr}")
    return head + struct.pack("<H", len(raw)) + raw


def pixel_header(length: int) -> bytes:
    """(7FE0,0010) OW header with an explicit length; the value follows."""
    if length % 2 or length > 0xFFFFFFFE:
        raise ValueError("bad pixel data length")
    return struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<I", length)


def file_meta(sop_class: str, sop_instance: str) -> bytes:
    body = b"".join(
        [
            element(0x0002, 0x0001, "OB", b"\x00\x01"),
            element(0x0002, 0x0002, "UI", sop_class),
            element(0x0002, 0x0003, "UI", sop_instance),
            element(0x0002, 0x0010, "UI", EXPLICIT_VR_LE),
            element(0x0002, 0x0012, "UI", IMPLEMENTATION_CLASS_UID),
            element(0x0002, 0x0013, "SH", IMPLEMENTATION_VERSION),
        ]
    )
    return b"\x00" * 128 + b"DICM" + element(0x0002, 0x0000, "UL", len(body)) + body


def _ds(x: float) -> str:
    s = f"{x:.6g}"
    return s[:16]


def ct_header(*, study_uid, series_uid, sop_uid, frame_uid, patient_id, study_no,
              series_no, instance_no, rows, cols) -> bytes:
    """Data set elements of a single-frame 16-bit CT, up to (not including) pixel data."""
    z = -200.0 + instance_no * 1.25
    return b"".join(
        [
            element(0x0008, 0x0008, "CS", "ORIGINAL\\PRIMARY\\AXIAL"),
            element(0x0008, 0x0016, "UI", CT_IMAGE_STORAGE),
            element(0x0008, 0x0018, "UI", sop_uid),
            element(0x0008, 0x0020, "DA", "20240101"),
            element(0x0008, 0x0030, "TM", "120000"),
            element(0x0008, 0x0050, "SH", f"BENCH{study_no:05d}"),
            element(0x0008, 0x0060, "CS", "CT"),
            element(0x0008, 0x0070, "LO", "pacs-mirror bench"),
            element(0x0008, 0x0090, "PN", ""),
            element(0x0010, 0x0010, "PN", f"BENCH^PATIENT{study_no:03d}"),
            element(0x0010, 0x0020, "LO", patient_id),
            element(0x0010, 0x0030, "DA", ""),
            element(0x0010, 0x0040, "CS", "O"),
            element(0x0018, 0x0050, "DS", "1.25"),
            element(0x0018, 0x0060, "DS", "120"),
            element(0x0020, 0x000D, "UI", study_uid),
            element(0x0020, 0x000E, "UI", series_uid),
            element(0x0020, 0x0010, "SH", str(study_no)),
            element(0x0020, 0x0011, "IS", str(series_no)),
            element(0x0020, 0x0013, "IS", str(instance_no)),
            element(0x0020, 0x0032, "DS", f"-160\\-160\\{_ds(z)}"),
            element(0x0020, 0x0037, "DS", "1\\0\\0\\0\\1\\0"),
            element(0x0020, 0x0052, "UI", frame_uid),
            element(0x0020, 0x1041, "DS", _ds(z)),
            element(0x0028, 0x0002, "US", 1),
            element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            element(0x0028, 0x0010, "US", rows),
            element(0x0028, 0x0011, "US", cols),
            element(0x0028, 0x0030, "DS", "0.625\\0.625"),
            element(0x0028, 0x0100, "US", 16),
            element(0x0028, 0x0101, "US", 16),
            element(0x0028, 0x0102, "US", 15),
            element(0x0028, 0x0103, "US", 1),
            element(0x0028, 0x1050, "DS", "40"),
            element(0x0028, 0x1051, "DS", "400"),
            element(0x0028, 0x1052, "DS", "-1024"),
            element(0x0028, 0x1053, "DS", "1"),
        ]
    )


def write_ct_dataset(out: Path, count: int, studies: int = 4, rows: int = 512,
                     cols: int = 512) -> list[Path]:
    """`count` single-frame CT instances spread over `studies` studies (1 series each).

    Layout: out/study<k>/series1/img<nnnn>.dcm. Returns the paths in send order.
    """
    out.mkdir(parents=True, exist_ok=True)
    studies = max(1, min(studies, count))
    per = [count // studies + (1 if k < count % studies else 0) for k in range(studies)]
    npix = rows * cols * 2
    paths: list[Path] = []
    for k in range(studies):
        study_uid, series_uid, frame_uid = new_uid(), new_uid(), new_uid()
        d = out / f"study{k + 1}" / "series1"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per[k]):
            sop_uid = new_uid()
            p = d / f"img{i + 1:05d}.dcm"
            with open(p, "wb") as f:
                f.write(file_meta(CT_IMAGE_STORAGE, sop_uid))
                f.write(ct_header(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                                  frame_uid=frame_uid, patient_id=f"BENCH{k + 1:03d}",
                                  study_no=k + 1, series_no=1, instance_no=i + 1,
                                  rows=rows, cols=cols))
                f.write(pixel_header(npix))
                f.write(os.urandom(npix))
            paths.append(p)
    return paths


def write_multiframe(path: Path, frames: int, rows: int = 512, cols: int = 512,
                     chunk_frames: int = 16) -> int:
    """One Multi-frame Grayscale Word Secondary Capture instance, 16-bit, written
    in chunks (constant memory). Returns the file size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sop_uid = new_uid()
    frame_bytes = rows * cols * 2
    total = frame_bytes * frames
    header = b"".join(
        [
            element(0x0008, 0x0008, "CS", "DERIVED\\SECONDARY"),
            element(0x0008, 0x0016, "UI", MF_GRAYSCALE_WORD_SC),
            element(0x0008, 0x0018, "UI", sop_uid),
            element(0x0008, 0x0020, "DA", "20240101"),
            element(0x0008, 0x0030, "TM", "120000"),
            element(0x0008, 0x0050, "SH", "BENCHLARGE"),
            element(0x0008, 0x0060, "CS", "OT"),
            element(0x0008, 0x0064, "CS", "WSD"),
            element(0x0008, 0x0070, "LO", "pacs-mirror bench"),
            element(0x0008, 0x0090, "PN", ""),
            element(0x0010, 0x0010, "PN", "BENCH^LARGE"),
            element(0x0010, 0x0020, "LO", "BENCHLARGE"),
            element(0x0010, 0x0030, "DA", ""),
            element(0x0010, 0x0040, "CS", "O"),
            element(0x0018, 0x1063, "DS", "33.3"),
            element(0x0020, 0x000D, "UI", new_uid()),
            element(0x0020, 0x000E, "UI", new_uid()),
            element(0x0020, 0x0010, "SH", "1"),
            element(0x0020, 0x0011, "IS", "1"),
            element(0x0020, 0x0013, "IS", "1"),
            element(0x0028, 0x0002, "US", 1),
            element(0x0028, 0x0004, "CS", "MONOCHROME2"),
            element(0x0028, 0x0008, "IS", str(frames)),
            element(0x0028, 0x0009, "AT", (0x0018, 0x1063)),
            element(0x0028, 0x0010, "US", rows),
            element(0x0028, 0x0011, "US", cols),
            element(0x0028, 0x0100, "US", 16),
            element(0x0028, 0x0101, "US", 16),
            element(0x0028, 0x0102, "US", 15),
            element(0x0028, 0x0103, "US", 0),
            element(0x0028, 0x1050, "DS", "32768"),
            element(0x0028, 0x1051, "DS", "65536"),
            element(0x0028, 0x1052, "DS", "0"),
            element(0x0028, 0x1053, "DS", "1"),
            element(0x0028, 0x1054, "LO", "US"),
        ]
    )
    tmp = path.with_name(path.name + ".part")
    block = os.urandom(frame_bytes * chunk_frames)
    with open(tmp, "wb") as f:
        f.write(file_meta(MF_GRAYSCALE_WORD_SC, sop_uid))
        f.write(header)
        f.write(pixel_header(total))
        left = total
        n = 0
        while left:
            # vary each chunk a little so no two chunks are byte-identical
            piece = struct.pack("<Q", n) + block[8:]
            piece = piece[: min(left, len(piece))]
            f.write(piece)
            left -= len(piece)
            n += 1
    os.replace(tmp, path)
    return path.stat().st_size
