//! The DICOM sender: a batch goes over one association (C-STORE of each
//! object streamed from its spool file, with its own SOP class and transfer
//! syntax).

use super::{Unreachable, Unsendable, Worker};
use pacs_mirror_dicom::dimse::Status;
use pacs_mirror_dicom::scu::{self, Outgoing, Peer, Scu};
use pacs_mirror_store::index::outbox::Due;

impl Worker {
    /// Send `due`; `Err` when the target became unreachable (the rest of the
    /// batch has been rescheduled).
    pub(super) async fn send_dicom(&self, peer: &Peer, due: &[Due]) -> Result<(), Unreachable> {
        let mut objects = Vec::with_capacity(due.len());
        for d in due {
            match self.outgoing(d) {
                Ok(o) => objects.push((d, o)),
                Err(reason) => self.refused(d, &reason.to_string()),
            }
        }
        if objects.is_empty() {
            return Ok(());
        }
        let outgoing: Vec<Outgoing> = objects.iter().map(|(_, o)| o.clone()).collect();
        let contexts = scu::contexts_for(&outgoing);
        let mut scu = match Scu::connect(peer, &contexts).await {
            Ok(s) => s,
            Err(e) if e.is_transient() => {
                for (d, _) in &objects {
                    self.retry(d, &e.to_string());
                }
                return Err(e.into());
            }
            Err(e) => {
                for (d, _) in &objects {
                    self.refused(d, &e.to_string());
                }
                return Ok(());
            }
        };
        for (i, (d, o)) in objects.iter().enumerate() {
            if let Some((_, next)) = objects.get(i + 1) {
                scu.read_ahead(next);
            }
            // A non-conformant object (kept with findings) that the mirror
            // answers A7xx for, or that its association fails on, is most
            // likely one the mirror cannot take (Orthanc answers A700 to a
            // data set it cannot parse): counted as a refusal, so it is
            // dead-lettered with the mirror's own answer instead of being
            // retried forever.
            let flagged = || {
                self.r
                    .index
                    .has_findings(&o.sop_instance_uid, &d.hash)
                    .unwrap_or(false)
            };
            match scu.store(o).await {
                Ok(status) if status.is_stored() => self.delivered(d, &o.sop_instance_uid, None),
                Ok(status @ Status::OutOfResources(_)) if flagged() => self.refused(
                    d,
                    &format!(
                        "{status}, for an object kept with findings (`pacs-mirror findings list`)"
                    ),
                ),
                Ok(status @ Status::OutOfResources(_)) => self.retry(d, &status.to_string()),
                Ok(status) => self.refused(d, &status.to_string()),
                Err(e) if e.is_transient() => {
                    if flagged() {
                        self.refused(
                            d,
                            &format!("{e}, while sending an object kept with findings (`pacs-mirror findings list`)"),
                        );
                    } else {
                        self.retry(d, &e.to_string());
                    }
                    for (rest, _) in &objects[i + 1..] {
                        self.retry(rest, &e.to_string());
                    }
                    return Err(e.into());
                }
                Err(e @ scu::ScuError::Corrupt { aborted: true, .. }) => {
                    // The association is gone; the rest stay due as they
                    // are (no attempt counted) for the next pass.
                    tracing::error!(target = %self.target.name, error = %e, "a spool file no longer matches its address");
                    self.refused(d, &e.to_string());
                    return Ok(());
                }
                Err(e) => self.refused(d, &e.to_string()),
            }
        }
        scu.release().await;
        Ok(())
    }

    fn outgoing(&self, d: &Due) -> Result<Outgoing, Unsendable> {
        let record = self.object_record(d)?;
        let path = self.r.spool.object_path(&d.hash);
        // Sent only if the spool file still hashes to its address.
        if record.sop_class_uid.is_empty() || record.transfer_syntax_uid.is_empty() {
            // Older index records: read the identity from the file.
            return Ok(scu::outgoing(&path).map(|o| Outgoing {
                dataset_blake3: Some(d.hash.0),
                ..o
            })?);
        }
        Ok(Outgoing {
            path,
            memory: None,
            sop_class_uid: record.sop_class_uid,
            sop_instance_uid: record.sop_instance_uid,
            transfer_syntax_uid: record.transfer_syntax_uid,
            dataset_blake3: Some(d.hash.0),
        })
    }
}
