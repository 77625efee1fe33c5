"""A pynetdicom Storage SCP that admits at most N associations at once
(beyond that it rejects, transient, "local limit exceeded", PS3.8 9.3.4) and
writes what it saw, one JSON object per line, to a log file:

    {"event": "established", "assoc": ID, "open": K}
    {"event": "store", "assoc": ID, "sop": UID, "study": UID, "file": NAME}
    {"event": "closed", "assoc": ID, "open": K}
    {"event": "rejected"}

Each received data set is written byte for byte (as received, in the
negotiated transfer syntax) to OUT/<n>.bin.

    python count_scp.py PORT AE_TITLE MAX_ASSOCIATIONS OUT_DIR LOG_FILE
"""

import json
import sys
import threading
from pathlib import Path

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

port, ae_title, limit, out, log_path = (
    int(sys.argv[1]),
    sys.argv[2],
    int(sys.argv[3]),
    Path(sys.argv[4]),
    sys.argv[5],
)
out.mkdir(parents=True, exist_ok=True)
lock = threading.Lock()
log = open(log_path, "a", buffering=1)
state = {"open": 0, "n": 0, "seq": 0}
# Python ids are reused after an association is gone: number them instead.
numbers = {}


def write(record):
    with lock:
        log.write(json.dumps(record) + "\n")


def established(event):
    with lock:
        state["open"] += 1
        state["seq"] += 1
        numbers[id(event.assoc)] = state["seq"]
        k, n = state["open"], state["seq"]
    write({"event": "established", "assoc": n, "open": k})


def closed(event):
    with lock:
        state["open"] -= 1
        k = state["open"]
        n = numbers.pop(id(event.assoc), None)
    write({"event": "closed", "assoc": n, "open": k})


def rejected(event):
    write({"event": "rejected"})


def store(event):
    with lock:
        state["n"] += 1
        name = f"{state['n']}.bin"
        n = numbers.get(id(event.assoc))
    raw = event.request.DataSet.getvalue()
    (out / name).write_bytes(raw)
    ds = event.dataset
    write(
        {
            "event": "store",
            "assoc": n,
            "sop": str(event.request.AffectedSOPInstanceUID),
            "study": str(ds.get("StudyInstanceUID", "")),
            "file": name,
        }
    )
    return 0x0000


ae = AE(ae_title=ae_title)
ae.maximum_associations = limit
ae.maximum_pdu_size = 0
syntaxes = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
ae.add_supported_context(Verification)
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, syntaxes)
ae.start_server(
    ("127.0.0.1", port),
    block=True,
    evt_handlers=[
        (evt.EVT_ESTABLISHED, established),
        (evt.EVT_RELEASED, closed),
        (evt.EVT_ABORTED, closed),
        (evt.EVT_REJECTED, rejected),
        (evt.EVT_C_STORE, store),
    ],
)
