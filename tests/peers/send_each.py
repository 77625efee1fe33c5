#!/usr/bin/env python3
"""Send DICOM files one association each with pynetdicom; one JSON line per file.

    send_each.py where CORPUS
        print the folder of a corpus installed in this interpreter's
        environment: pydicom (pydicom's bundled test files), deid-data
        (deid-data's de-identified real-world objects) or nibabel (nibabel's
        Siemens/Philips MR test files).

    send_each.py send --port PORT [--host H] [--called-ae AE]
                      [--calling-ae AE | --calling-ae-prefix P] PATH...
        send every file under each PATH (folders recursively, sorted), each
        on its own association proposing only the file's own SOP Class and
        transfer syntax, and print for each, in order:

        {"index": N, "path": "...", "sent": bool, "status": int | null,
         "reason": "...", "calling_ae": "...", "sop_class_uid": "...",
         "sop_instance_uid": "...", "transfer_syntax": "..."}

        status is the C-STORE response status, or null when nothing was
        answered (the file could not be read as a data set, the association
        was rejected or aborted, no answer came); reason then says why, and
        otherwise carries the response's Error Comment, if any.

What is sent is the file's data set bytes exactly as they are in the file
(never re-encoded by pydicom): a temporary Part-10 file is written with a
fresh meta group naming the data set's own SOP Class and Instance UIDs
((0008,0016)/(0008,0018); the meta group's when the data set has none) and
the file's transfer syntax (the meta group's (0002,0010); for a file without
one, the encoding pydicom recognises), followed by the original data set
bytes, and pynetdicom streams it from that file. A `.gz` file is
decompressed first and each member of a `.zip` is a file of its own
(`archive.zip!member`).

With --calling-ae-prefix P, file number N (from 1) is sent with the calling
AE title P followed by N (zero-padded to 5 digits), so that receivers' records
of the calling AE (DCMTK storescp's #a, pacs-mirror's index) name the file.
"""

import argparse
import gzip
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

import pynetdicom
from pynetdicom import AE, _config
from pynetdicom.status import code_to_category

# Stream the data set from the file as it is; accept what the files carry.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.ENFORCE_UID_CONFORMANCE = False
_config.LOG_HANDLER_LEVEL = "none"

CORPORA = {
    "pydicom": ("pydicom", "data/test_files"),
    "deid-data": ("deid_data", "data"),
    "nibabel": ("nibabel", "nicom/tests/data"),
}


def where(name):
    import importlib.util

    module, sub = CORPORA[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{module} is not installed here: run scripts/test, which installs it")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: run scripts/test, which installs {module}")
    return folder


def expand(paths):
    """(display path, bytes loader) for every file, in order."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            # Python's own files of the package that ships the corpus are not
            # part of it.
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".py", ".pyc")
            )
        else:
            files = [p]
        for f in files:
            if f.suffix == ".zip":
                try:
                    with zipfile.ZipFile(f) as z:
                        names = sorted(n for n in z.namelist() if not n.endswith("/"))
                except (zipfile.BadZipFile, OSError) as e:
                    out.append((str(f), _failing(f"not a zip archive: {e}")))
                    continue
                for n in names:
                    out.append((f"{f}!{n}", _zip_member(f, n)))
            elif f.suffix == ".gz":
                out.append((str(f), lambda f=f: gzip.decompress(f.read_bytes())))
            else:
                out.append((str(f), f.read_bytes))
    return out


def _failing(msg):
    def load():
        raise ValueError(msg)

    return load


def _zip_member(archive, name):
    def load():
        with zipfile.ZipFile(archive) as z:
            return z.read(name)

    return load


def _uid(value):
    return str(value).strip("\0 ") if value is not None else None


def prepare(raw):
    """(SOP Class UID, SOP Instance UID, transfer syntax, data set bytes)."""
    f = io.BytesIO(raw)
    read_preamble(f, True)
    start = f.tell()
    meta = read_dataset(f, is_implicit_VR=False, is_little_endian=True, stop_when=lambda t, vr, ln: t.group != 2)
    offset = f.tell() if len(meta) else start
    dataset = raw[offset:]
    ts = _uid(meta.get("TransferSyntaxUID", None) and meta.TransferSyntaxUID)
    # The data set's own UIDs (pydicom reads only up to them).
    ds = dcmread(io.BytesIO(raw), force=True, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
    if not ts:
        implicit, little = ds.original_encoding
        if implicit is None:
            raise ValueError("neither a transfer syntax in a meta group nor a recognisable encoding")
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    sop_class = _uid(ds.get("SOPClassUID", None)) or _uid(meta.get("MediaStorageSOPClassUID", None) and meta.MediaStorageSOPClassUID)
    sop_instance = _uid(ds.get("SOPInstanceUID", None)) or _uid(
        meta.get("MediaStorageSOPInstanceUID", None) and meta.MediaStorageSOPInstanceUID
    )
    if not sop_class:
        raise ValueError("no SOP Class UID in the data set or the meta group")
    if not sop_instance:
        raise ValueError("no SOP Instance UID in the data set or the meta group")
    return sop_class, sop_instance, str(ts), dataset


def part10(sop_class, sop_instance, ts, dataset):
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.write(dataset)
    return buf.getvalue()


def send_one(host, port, called, calling, sop_class, ts, path, timeout):
    ae = AE(ae_title=calling)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        if assoc.is_rejected:
            rj = assoc.acceptor.primitive
            why = f"result {rj.result}, source {rj.result_source}, reason {rj.diagnostic}" if rj else ""
            return None, f"association rejected ({why})"
        if assoc.is_aborted:
            return None, "association aborted during negotiation (or accepted with no presentation context)"
        return None, "association not established"
    try:
        cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
        if not cx:
            return None, "presentation context not accepted"
        try:
            rsp = assoc.send_c_store(path)
        except Exception as e:  # pynetdicom refusing to send it
            return None, f"not sent: {type(e).__name__}: {e}"
        if rsp is None or "Status" not in rsp:
            return None, "no C-STORE response (association aborted or timed out)"
        status = int(rsp.Status)
        comment = str(rsp.get("ErrorComment", "") or "")
        category = code_to_category(status)
        return status, (f"{category}: {comment}" if comment else category)
    finally:
        if assoc.is_established:
            assoc.release()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("where")
    w.add_argument("corpus", choices=sorted(CORPORA))
    s = sub.add_parser("send")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--called-ae", default="ANY-SCP")
    s.add_argument("--calling-ae", default="PYNETDICOM")
    s.add_argument("--calling-ae-prefix")
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("paths", nargs="+")
    a = ap.parse_args()
    if a.cmd == "where":
        print(where(a.corpus))
        return
    tmp = tempfile.mkdtemp(prefix="send-each-")
    try:
        for n, (shown, load) in enumerate(expand(a.paths), start=1):
            calling = f"{a.calling_ae_prefix}{n:05d}" if a.calling_ae_prefix else a.calling_ae
            line = {"index": n, "path": shown, "sent": False, "status": None, "reason": "", "calling_ae": calling}
            try:
                sop_class, sop_instance, ts, dataset = prepare(load())
            except Exception as e:
                line["reason"] = f"unreadable: {type(e).__name__}: {e}"
                print(json.dumps(line), flush=True)
                continue
            line.update(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=ts)
            path = os.path.join(tmp, f"{n}.dcm")
            with open(path, "wb") as f:
                f.write(part10(sop_class, sop_instance, ts, dataset))
            try:
                status, reason = send_one(a.host, a.port, a.called_ae, calling, sop_class, ts, path, a.timeout)
            except Exception as e:
                status, reason = None, f"send failed: {type(e).__name__}: {e}"
            finally:
                os.remove(path)
            line.update(sent=status is not None, status=status, reason=reason)
            print(json.dumps(line), flush=True)
    finally:
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    main()
