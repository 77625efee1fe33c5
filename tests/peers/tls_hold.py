#!/usr/bin/env python3
"""Hold a DICOM TLS association across a certificate reload (SIGHUP).

    tls_hold.py --port P --ca CA --cert CERT --key KEY --go FILE DICOM_FILE

1. Associates with PACS_MIRROR at 127.0.0.1:P over TLS (pynetdicom,
   presenting CERT/KEY, verifying the server against CA), sends a C-ECHO,
   prints {"phase": "held", "sha256": <the server certificate's SHA-256>}.
2. Waits until FILE exists (the test replaces the certificate and sends
   SIGHUP meanwhile).
3. Makes a second, fresh TLS handshake to the same port (no DICOM) and
   notes the certificate presented now; then, on the first association,
   C-STOREs DICOM_FILE and releases. Prints {"phase": "done", "sha256_new":
   ..., "status": <C-STORE status or null>, "released": bool}.
"""
import argparse
import hashlib
import json
import os
import socket
import ssl
import sys
import time

from pydicom import dcmread
from pynetdicom import AE


def context(args):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.check_hostname = False
    return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("file")
    args = p.parse_args()
    ds = dcmread(args.file)
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", args.port, ae_title="PACS_MIRROR",
                         tls_args=(context(args), None))
    if not assoc.is_established:
        print(json.dumps({"phase": "held", "error": "not established"}), flush=True)
        return 1
    echo = assoc.send_c_echo()
    der = assoc.dul.socket.socket.getpeercert(binary_form=True)
    print(json.dumps({"phase": "held", "sha256": hashlib.sha256(der).hexdigest(),
                      "echo": getattr(echo, "Status", None)}), flush=True)
    deadline = time.time() + 60
    while not os.path.exists(args.go):
        if time.time() > deadline:
            print(json.dumps({"phase": "done", "error": "no go file"}), flush=True)
            return 1
        time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", args.port), timeout=10) as raw:
        with context(args).wrap_socket(raw) as tls:
            new = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    status = assoc.send_c_store(ds)
    code = getattr(status, "Status", None)
    assoc.release()
    print(json.dumps({"phase": "done", "sha256_new": new, "status": code,
                      "released": assoc.is_released}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
