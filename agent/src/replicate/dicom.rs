//! The DICOM sender. A worker holds a permit of its target's
//! [`super::adaptive::Limiter`] and one association, and keeps sending on it
//! claim after claim ([`CLAIM`] objects at a time, so one study spreads over
//! every association) while work is due; it opens a new association when a
//! claim needs presentation contexts the open one was not proposed with.
//! Each C-STORE streams its object from the spool file, with its own SOP
//! class and transfer syntax.

use super::adaptive::Trouble;
use super::{Unreachable, Unsendable, Worker};
use pacs_mirror_dicom::dimse::Status;
use pacs_mirror_dicom::scu::{self, Outgoing, Peer, Scu};
use pacs_mirror_store::index::outbox::Due;

/// Objects a DICOM worker claims at a time.
pub const CLAIM: usize = 16;
/// Bytes a DICOM claim holds at most (it ends at the object that crosses
/// it): eight CT slices of 525 KB, or all 16 small objects.
pub const CLAIM_BYTES: u64 = 4 * 1024 * 1024;

/// An open association and the presentation contexts it was proposed with.
pub(super) struct Session {
    scu: Scu,
    proposed: Vec<(String, Vec<String>)>,
}

impl Session {
    /// Release the association (A-RELEASE).
    pub(super) async fn release(self) {
        self.scu.release().await;
    }

    fn carries(&self, contexts: &[(String, Vec<String>)]) -> bool {
        contexts.iter().all(|c| self.proposed.contains(c))
    }
}

/// What a failure says about load: a busy rejection, a timeout or an
/// abort mean fewer associations; a refused connection or a rejection for
/// another reason (the target is down, or misconfigured) say nothing about
/// how many it takes.
fn trouble_of(e: &scu::ScuError) -> Option<Trouble> {
    match e {
        e if e.is_busy() => Some(Trouble::TooManyAssociations),
        scu::ScuError::Timeout { .. } | scu::ScuError::Aborted { .. } => Some(Trouble::Overload),
        _ => None,
    }
}

impl Worker {
    /// Send `due` on `session` (opened, or opened again when it cannot carry
    /// these objects); `Err` when the target became unreachable (the rest of
    /// the claim has been rescheduled and the session dropped).
    pub(super) async fn send_dicom(
        &self,
        peer: &Peer,
        session: &mut Option<Session>,
        due: &[Due],
    ) -> Result<(), Unreachable> {
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
        if let Some(s) = session.take_if(|s| !s.carries(&contexts)) {
            s.release().await;
        }
        if session.is_none() {
            match Scu::connect(peer, &contexts).await {
                Ok(scu) => {
                    *session = Some(Session {
                        scu,
                        proposed: contexts,
                    })
                }
                Err(e) if e.is_transient() => {
                    if let Some(t) = trouble_of(&e) {
                        self.limiter.trouble(t);
                    }
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
            }
        }
        let Some(Session { scu, .. }) = session.as_mut() else {
            return Ok(());
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
                Ok(status) if status.is_stored() => self.accepted(d, o),
                Ok(status @ Status::OutOfResources(_)) if flagged() => self.refused(
                    d,
                    &format!(
                        "{status}, for an object kept with findings (`pacs-mirror findings list`)"
                    ),
                ),
                Ok(status @ Status::OutOfResources(_)) => {
                    self.limiter.trouble(Trouble::Overload);
                    self.retry(d, &status.to_string())
                }
                Ok(status) => self.refused(d, &status.to_string()),
                Err(e) if e.is_transient() => {
                    *session = None;
                    if let Some(t) = trouble_of(&e) {
                        self.limiter.trouble(t);
                    }
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
                    *session = None;
                    tracing::error!(target = %self.target.name, error = %e, "a spool file no longer matches its address");
                    self.refused(d, &e.to_string());
                    return Ok(());
                }
                Err(e) => self.refused(d, &e.to_string()),
            }
        }
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
