"""A Storage Commitment Push Model SCU (pynetdicom) that waits for the
report on its own association, and releases only after its answer to the
report was sent.

    python commit_scu.py HOST PORT CALLED_AE CALLING_AE TRANSACTION_UID WAIT_S CLASS:INSTANCE...

Associates, sends one N-ACTION (Action Type 1) with the Referenced SOP
Sequence, keeps the association open up to WAIT_S seconds for the
N-EVENT-REPORT (answered Success), then releases. Prints one JSON object:

    {"action_status": 0, "event_type": 2, "transaction_uid": "...",
     "committed": [[class, instance], ...],
     "failed": [[class, instance, reason], ...]}

"event_type" is null when no report came on the association.
"""

import json
import sys
import threading

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


def main() -> int:
    host, port, called, calling, uid, wait = sys.argv[1:7]
    refs = [a.split(":", 1) for a in sys.argv[7:]]
    got = {}
    done = threading.Event()

    def on_report(event):
        data = event.event_information
        got["event_type"] = int(event.event_type)
        got["transaction_uid"] = str(data.TransactionUID)
        got["committed"] = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
                            for i in data.get("ReferencedSOPSequence", [])]
        got["failed"] = [[str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason)]
                         for i in data.get("FailedSOPSequence", [])]
        return 0x0000, None

    def on_sent(event):
        # Release only once our N-EVENT-REPORT-RSP is on the wire: the
        # handler's return sends it from another thread, and a release
        # that overtakes it leaves the reporter without its answer.
        if type(event.message).__name__ == "N_EVENT_REPORT_RSP":
            done.set()

    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, int(port), ae_title=called, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report),
                                                                    (evt.EVT_DIMSE_SENT, on_sent)])
    if not assoc.is_established:
        print(json.dumps({"error": "association not established"}))
        return 1
    ds = Dataset()
    ds.TransactionUID = uid
    items = []
    for cls, inst in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = inst
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
    action_status = int(status.Status) if status is not None and "Status" in status else None
    done.wait(float(wait))
    assoc.release()
    print(json.dumps({"action_status": action_status, "event_type": got.get("event_type"),
                      "transaction_uid": got.get("transaction_uid"), "committed": got.get("committed", []),
                      "failed": got.get("failed", [])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
