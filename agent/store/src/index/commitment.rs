//! Storage commitment, SCU role: objects a DICOM target has stored but not
//! yet committed, and the requests (transactions) that asked it to.
//!
//! # Keys
//! ```text
//! s/<target>\0<blake3:32>   -> StoredRecord  (stored, awaiting commitment)
//! t/<transaction uid>       -> Transaction   (a request sent, its report not applied)
//! ```
//!
//! # States
//! For a target with storage commitment an object goes pending (`q/`) →
//! **stored** (`s/`) when the mirror answers its C-STORE with Success →
//! delivered (`d/`) only when the mirror reports it committed. Reported
//! failed, it goes back to pending (due at once, the attempt counted) or,
//! after the target's `refused_attempts`, to the dead letters. So "delivered"
//! (retention, failover check, drills, the delivered figures) means the
//! mirror took responsibility.
//!
//! # Invariants
//! - The outbox's: an object is in exactly one state per target once a
//!   batch has been applied; every move writes the new row and removes the
//!   old one in one atomic batch ([`super::outbox`]).
//! - A stored row names the open transaction that asks for it, if any; a
//!   transaction lists its objects (hash, SOP class, SOP instance). Opening
//!   one writes it and marks its rows in one batch; applying its report
//!   removes it and moves every object it lists in one batch; an object the
//!   report does not mention goes back to stored without a transaction, to
//!   be asked again.
//! - Nothing becomes delivered except by a report that lists it committed,
//!   under a transaction this index opened for that target.
//!
//! # Crash behaviour
//! Flushed lazily like the queue. A crash can lose a move to stored (the
//! object is pending again: sent again, the mirror keeps one copy), an
//! opened transaction (its objects are asked again under a new one; a
//! report for the lost one names no transaction and is refused), or an
//! applied report (the transaction is still open: it is re-requested after
//! the target's timeout and the mirror answers again). Open transactions
//! survive a restart: they are in the index.

use super::outbox::{Delivery, DeliveryRecord};
use super::records::{self, OutboxRecord};
use super::{Index, IndexError, ObjectId, Op, decode_at, hash_hex, key, parse_hash};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const STORED: &[u8] = b"s/";
const TRANSACTIONS: &[u8] = b"t/";

/// An object the target stored, awaiting its commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// When the target answered the C-STORE (Unix ms).
    pub stored_at_ms: u64,
    /// Attempts so far (the store that succeeded included).
    pub attempts: u32,
    /// When it was first queued (Unix ms).
    pub enqueued_at_ms: u64,
    /// The file's size.
    pub file_bytes: Option<u64>,
    /// Its SOP class, as the request names it.
    pub sop_class_uid: String,
    /// Its SOP instance.
    pub sop_instance_uid: String,
    /// The open transaction asking for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

/// One object of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionObject {
    /// blake3 (hex) of the object.
    pub hash: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
}

/// A storage commitment request sent, its report not applied yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The target asked.
    pub target: String,
    /// When it was first asked (Unix ms).
    pub opened_at_ms: u64,
    /// When it was last asked (Unix ms).
    pub requested_at_ms: u64,
    /// How many times it was asked (a request without report is asked
    /// again under the same objects, a new transaction UID).
    pub requests: u32,
    /// What it asks for.
    pub objects: Vec<TransactionObject>,
}

/// A C-STORE the target answered with Success, to move pending → stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The delivery (its row, when).
    pub delivery: Delivery,
    /// SOP Class UID sent.
    pub sop_class_uid: String,
    /// SOP Instance UID sent.
    pub sop_instance_uid: String,
}

/// What applying a report did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Committed: now delivered.
    pub committed: usize,
    /// Failed: pending again, to be sent again.
    pub resent: usize,
    /// Failed for the last allowed time: dead letters.
    pub dead: usize,
    /// Not mentioned by the report: stored, asked again.
    pub unmentioned: usize,
}

/// Commitment figures of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CommitmentSummary {
    /// Objects stored, awaiting commitment.
    pub awaiting: u64,
    /// When the oldest of them was stored (Unix ms).
    pub oldest_stored_at_ms: Option<u64>,
    /// Open transactions.
    pub transactions: u64,
    /// The earliest first request among them (Unix ms).
    pub oldest_transaction_at_ms: Option<u64>,
    /// The most times one of them was asked without a report.
    pub most_requests: u32,
}

fn stored_key(target: &str, hash: &ObjectId) -> Vec<u8> {
    let mut k = stored_prefix(target);
    k.extend_from_slice(hash);
    k
}

fn stored_prefix(target: &str) -> Vec<u8> {
    let mut p = key(&[STORED, target.as_bytes()]);
    p.push(0);
    p
}

fn transaction_key(uid: &str) -> Vec<u8> {
    key(&[TRANSACTIONS, uid.as_bytes()])
}

impl Index {
    /// The target answered these C-STOREs with Success and commits later:
    /// pending → stored, one atomic batch (rows no longer where their `due`
    /// says are skipped). Returns how many were moved.
    pub fn mark_stored_many(&self, target: &str, stored: &[Stored]) -> Result<usize, IndexError> {
        let mut ops = Vec::with_capacity(stored.len() * 2);
        let mut moved = 0;
        for s in stored {
            let due = &s.delivery.due;
            if !self.still_pending(target, due)? {
                continue;
            }
            let record = StoredRecord {
                stored_at_ms: s.delivery.delivered_at_ms,
                attempts: due.record.attempts + 1,
                enqueued_at_ms: due.record.enqueued_at_ms,
                file_bytes: due.record.file_bytes,
                sop_class_uid: s.sop_class_uid.clone(),
                sop_instance_uid: s.sop_instance_uid.clone(),
                transaction: None,
            };
            ops.push(Op::Put(
                stored_key(target, &due.hash),
                records::encode(&record),
            ));
            ops.push(Op::Delete(super::outbox::outbox_key(
                target,
                due.next_attempt_ms,
                &due.hash,
            )));
            moved += 1;
        }
        self.apply(ops)?;
        Ok(moved)
    }

    /// Up to `limit` stored objects of `target` that no open transaction
    /// asks for, in hash order.
    pub fn awaiting_request(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(ObjectId, StoredRecord)>, IndexError> {
        let prefix = stored_prefix(target);
        let mut out = Vec::new();
        let mut err = None;
        self.kv.for_each_prefix(&prefix, &mut |k, v| {
            let hash = match k
                .get(prefix.len()..)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
            {
                Some(h) => ObjectId(h),
                None => {
                    err = Some(IndexError::BadHash(String::from_utf8_lossy(k).into()));
                    return false;
                }
            };
            match decode_at::<StoredRecord>(k, v) {
                Ok(r) if r.transaction.is_none() => out.push((hash, r)),
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    return false;
                }
            }
            out.len() < limit
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Open transaction `uid` asking `target` for `objects` (stored rows no
    /// transaction asks for; others are left out): the transaction and the
    /// rows' mark in one batch. Returns the objects it asks for.
    pub fn open_transaction(
        &self,
        target: &str,
        uid: &str,
        objects: &[ObjectId],
        now_ms: u64,
    ) -> Result<Vec<TransactionObject>, IndexError> {
        let _rows = self.lock_delivered_rows();
        let mut ops = Vec::with_capacity(objects.len() + 1);
        let mut listed = Vec::with_capacity(objects.len());
        for hash in objects {
            let k = stored_key(target, hash);
            let Some(v) = self.kv.get(&k)? else {
                continue;
            };
            let mut r: StoredRecord = decode_at(&k, &v)?;
            if r.transaction.is_some() {
                continue;
            }
            listed.push(TransactionObject {
                hash: hash_hex(hash),
                sop_class_uid: r.sop_class_uid.clone(),
                sop_instance_uid: r.sop_instance_uid.clone(),
            });
            r.transaction = Some(uid.to_string());
            ops.push(Op::Put(k, records::encode(&r)));
        }
        if listed.is_empty() {
            return Ok(listed);
        }
        let t = Transaction {
            target: target.to_string(),
            opened_at_ms: now_ms,
            requested_at_ms: now_ms,
            requests: 1,
            objects: listed.clone(),
        };
        ops.push(Op::Put(transaction_key(uid), records::encode(&t)));
        self.apply(ops)?;
        Ok(listed)
    }

    /// The open transaction `uid`, if any.
    pub fn transaction(&self, uid: &str) -> Result<Option<Transaction>, IndexError> {
        let k = transaction_key(uid);
        self.kv.get(&k)?.map(|v| decode_at(&k, &v)).transpose()
    }

    /// Every open transaction of `target`: (UID, transaction).
    pub fn open_transactions(
        &self,
        target: &str,
    ) -> Result<Vec<(String, Transaction)>, IndexError> {
        let mut out = Vec::new();
        let mut err = None;
        self.kv.for_each_prefix(TRANSACTIONS, &mut |k, v| {
            match decode_at::<Transaction>(k, v) {
                Ok(t) if t.target == target => out.push((
                    String::from_utf8_lossy(&k[TRANSACTIONS.len()..]).into_owned(),
                    t,
                )),
                Ok(_) => {}
                Err(e) => {
                    err = Some(e);
                    return false;
                }
            }
            true
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Ask again: transaction `old` becomes `new` (its request count up,
    /// asked at `now_ms`), its rows re-marked, in one batch. A report for
    /// `old` then names no transaction.
    pub fn reissue_transaction(
        &self,
        old: &str,
        new: &str,
        now_ms: u64,
    ) -> Result<bool, IndexError> {
        let _rows = self.lock_delivered_rows();
        let Some(mut t) = self.transaction(old)? else {
            return Ok(false);
        };
        let mut ops = Vec::with_capacity(t.objects.len() + 2);
        for o in &t.objects {
            let Ok(hash) = parse_hash(&o.hash) else {
                continue;
            };
            let k = stored_key(&t.target, &hash);
            if let Some(v) = self.kv.get(&k)? {
                let mut r: StoredRecord = decode_at(&k, &v)?;
                if r.transaction.as_deref() == Some(old) {
                    r.transaction = Some(new.to_string());
                    ops.push(Op::Put(k, records::encode(&r)));
                }
            }
        }
        t.requests = t.requests.saturating_add(1);
        t.requested_at_ms = now_ms;
        ops.push(Op::Delete(transaction_key(old)));
        ops.push(Op::Put(transaction_key(new), records::encode(&t)));
        self.apply(ops)?;
        Ok(true)
    }

    /// Apply the report of transaction `uid` from `target`: committed
    /// instances → delivered; failed ones → pending, due at `now_ms` (or
    /// dead letters once `refused_attempts` is reached); the rest back to
    /// stored without a transaction; the transaction removed. One atomic
    /// batch. None when `uid` is not an open transaction of `target`.
    pub fn apply_report(
        &self,
        target: &str,
        uid: &str,
        committed: &[String],
        failed: &[(String, u16)],
        now_ms: u64,
        refused_attempts: u32,
    ) -> Result<Option<Applied>, IndexError> {
        let _rows = self.lock_delivered_rows();
        let Some(t) = self.transaction(uid)? else {
            return Ok(None);
        };
        if t.target != target {
            return Ok(None);
        }
        let committed: std::collections::HashSet<&str> =
            committed.iter().map(String::as_str).collect();
        let failed: HashMap<&str, u16> = failed.iter().map(|(i, r)| (i.as_str(), *r)).collect();
        let mut ops = Vec::with_capacity(t.objects.len() * 2 + 3);
        let mut applied = Applied::default();
        let mut fresh = 0i64;
        let mut latest = 0u64;
        for o in &t.objects {
            let Ok(hash) = parse_hash(&o.hash) else {
                continue;
            };
            let k = stored_key(target, &hash);
            let Some(v) = self.kv.get(&k)? else {
                continue; // moved since (requeued by an operator)
            };
            let r: StoredRecord = decode_at(&k, &v)?;
            if r.transaction.as_deref() != Some(uid) {
                continue;
            }
            if committed.contains(o.sop_instance_uid.as_str()) {
                let dkey = super::outbox::delivered_key(target, &hash);
                if self.kv.get(&dkey)?.is_none() {
                    fresh += 1;
                }
                ops.push(Op::Put(
                    dkey,
                    records::encode(&DeliveryRecord {
                        delivered_at_ms: now_ms,
                        attempts: r.attempts,
                        enqueued_at_ms: r.enqueued_at_ms,
                        stored_blake3: None,
                    }),
                ));
                ops.push(Op::Delete(k));
                latest = now_ms;
                applied.committed += 1;
            } else if let Some(why) = failed.get(o.sop_instance_uid.as_str()) {
                let reason = format!("the mirror did not commit it (failure reason {why:04X}H)");
                if r.attempts >= refused_attempts.max(1) {
                    let dead = super::outbox::DeadLetter {
                        failed_at_ms: now_ms,
                        attempts: r.attempts,
                        reason,
                        enqueued_at_ms: r.enqueued_at_ms,
                    };
                    ops.push(Op::Put(
                        super::outbox::dead_key(target, &hash),
                        records::encode(&dead),
                    ));
                    applied.dead += 1;
                } else {
                    let row = OutboxRecord {
                        enqueued_at_ms: r.enqueued_at_ms,
                        attempts: r.attempts,
                        last_error: Some(reason),
                        file_bytes: r.file_bytes,
                    };
                    ops.push(Op::Put(
                        super::outbox::outbox_key(target, now_ms, &hash),
                        records::encode(&row),
                    ));
                    applied.resent += 1;
                }
                ops.push(Op::Delete(k));
            } else {
                let back = StoredRecord {
                    transaction: None,
                    ..r
                };
                ops.push(Op::Put(k, records::encode(&back)));
                applied.unmentioned += 1;
            }
        }
        if fresh > 0 {
            ops.push(self.delivered_count_op(target, fresh)?);
        }
        if latest > 0 {
            ops.extend(self.last_delivered_op(target, latest)?);
        }
        ops.push(Op::Delete(transaction_key(uid)));
        self.apply(ops)?;
        Ok(Some(applied))
    }

    /// Commitment figures of `target` (a scan of what awaits commitment and
    /// of the open transactions).
    pub fn commitment_summary(&self, target: &str) -> Result<CommitmentSummary, IndexError> {
        let mut s = CommitmentSummary::default();
        let mut err = None;
        self.kv.for_each_prefix(
            &stored_prefix(target),
            &mut |k, v| match decode_at::<StoredRecord>(k, v) {
                Ok(r) => {
                    s.awaiting += 1;
                    s.oldest_stored_at_ms = Some(
                        s.oldest_stored_at_ms
                            .map_or(r.stored_at_ms, |o| o.min(r.stored_at_ms)),
                    );
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = err {
            return Err(e);
        }
        for (_, t) in self.open_transactions(target)? {
            s.transactions += 1;
            s.oldest_transaction_at_ms = Some(
                s.oldest_transaction_at_ms
                    .map_or(t.opened_at_ms, |o| o.min(t.opened_at_ms)),
            );
            s.most_requests = s.most_requests.max(t.requests);
        }
        Ok(s)
    }

    /// The target no longer asks for commitment: what it stored counts as
    /// delivered (its C-STORE Success is then the delivery), and its open
    /// transactions are closed; one batch. Returns how many objects moved.
    pub fn settle_stored(&self, target: &str, now_ms: u64) -> Result<usize, IndexError> {
        let _rows = self.lock_delivered_rows();
        let prefix = stored_prefix(target);
        let rows = self.kv.scan_prefix(&prefix)?;
        let mut ops = Vec::with_capacity(rows.len() * 2 + 3);
        let mut fresh = 0i64;
        let mut latest = 0u64;
        for (k, v) in &rows {
            let Some(hash) = k
                .get(prefix.len()..)
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .map(ObjectId)
            else {
                continue;
            };
            let r: StoredRecord = decode_at(k, v)?;
            let dkey = super::outbox::delivered_key(target, &hash);
            if self.kv.get(&dkey)?.is_none() {
                fresh += 1;
            }
            latest = latest.max(r.stored_at_ms);
            ops.push(Op::Put(
                dkey,
                records::encode(&DeliveryRecord {
                    delivered_at_ms: r.stored_at_ms,
                    attempts: r.attempts,
                    enqueued_at_ms: r.enqueued_at_ms,
                    stored_blake3: None,
                }),
            ));
            ops.push(Op::Delete(k.clone()));
        }
        for (uid, _) in self.open_transactions(target)? {
            ops.push(Op::Delete(transaction_key(&uid)));
        }
        if fresh > 0 {
            ops.push(self.delivered_count_op(target, fresh)?);
        }
        if latest > 0 {
            ops.extend(self.last_delivered_op(target, latest.min(now_ms))?);
        }
        self.apply(ops)?;
        Ok(rows.len())
    }

    /// The stored row of `hash` for `target`.
    #[cfg(test)]
    pub fn stored_row(
        &self,
        target: &str,
        hash: &ObjectId,
    ) -> Result<Option<StoredRecord>, IndexError> {
        let k = stored_key(target, hash);
        self.kv.get(&k)?.map(|v| decode_at(&k, &v)).transpose()
    }

    /// The write removing `hash`'s stored row for `target`, if it has one
    /// (a requeue: the target lost it).
    pub(super) fn stored_removal(
        &self,
        target: &str,
        hash: &ObjectId,
    ) -> Result<Option<Op>, IndexError> {
        let k = stored_key(target, hash);
        Ok(self.kv.get(&k)?.map(|_| Op::Delete(k)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv::MemKv;
    use super::super::outbox::Due;
    use super::super::records::InstanceRecord;
    use super::*;
    use std::sync::Arc;

    fn index_with(n: u8) -> (Index, Vec<Due>) {
        let idx = Index::new(Arc::new(MemKv::default()));
        for b in 1..=n {
            let h = ObjectId([b; 32]);
            let rec = InstanceRecord {
                sop_instance_uid: format!("1.2.{b}"),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2".into(),
                blake3: hash_hex(&h),
                dataset_bytes: 10,
                file_bytes: 100,
                patient_id: String::new(),
                study_instance_uid: "1.3".into(),
                series_instance_uid: "1.4".into(),
                calling_ae: "A".into(),
                source_ip: "127.0.0.1".into(),
                received_at_ms: 1000,
                study_date: String::new(),
                modality: String::new(),
                findings: Vec::new(),
            };
            idx.commit_instance(&rec, &h, &["mirror".into()], 1000)
                .unwrap();
        }
        let due = idx.due("mirror", 2000, 100).unwrap();
        (idx, due)
    }

    fn store_all(idx: &Index, due: &[Due]) {
        let stored: Vec<Stored> = due
            .iter()
            .map(|d| Stored {
                delivery: Delivery {
                    due: d.clone(),
                    delivered_at_ms: 3000,
                    stored_blake3: None,
                },
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("1.2.{}", d.hash[0]),
            })
            .collect();
        assert_eq!(idx.mark_stored_many("mirror", &stored).unwrap(), due.len());
    }

    #[test]
    fn stored_objects_become_delivered_only_when_committed() {
        let (idx, due) = index_with(4);
        store_all(&idx, &due);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered), (0, 0), "stored is neither");
        assert_eq!(idx.commitment_summary("mirror").unwrap().awaiting, 4);
        let all: Vec<ObjectId> = due.iter().map(|d| d.hash).collect();
        let asked = idx
            .open_transaction("mirror", "2.25.1", &all, 4000)
            .unwrap();
        assert_eq!(asked.len(), 4);
        // asked once only
        assert!(
            idx.open_transaction("mirror", "2.25.2", &all, 4000)
                .unwrap()
                .is_empty()
        );
        assert!(idx.awaiting_request("mirror", 10).unwrap().is_empty());
        // a report for another target, or an unknown transaction: nothing
        assert_eq!(
            idx.apply_report("backup", "2.25.1", &[], &[], 5000, 3)
                .unwrap(),
            None
        );
        assert_eq!(
            idx.apply_report("mirror", "2.25.9", &[], &[], 5000, 3)
                .unwrap(),
            None
        );
        // 1 and 2 committed, 3 failed, 4 not mentioned
        let applied = idx
            .apply_report(
                "mirror",
                "2.25.1",
                &["1.2.1".into(), "1.2.2".into()],
                &[("1.2.3".into(), 0x0112)],
                5000,
                3,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            applied,
            Applied {
                committed: 2,
                resent: 1,
                dead: 0,
                unmentioned: 1
            }
        );
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered), (1, 2));
        assert_eq!(s.last_delivered_at_ms, Some(5000));
        let again = idx.due("mirror", 5000, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].hash, ObjectId([3; 32]));
        assert_eq!(again[0].record.attempts, 1);
        assert!(
            again[0]
                .record
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("0112H")
        );
        let waiting = idx.awaiting_request("mirror", 10).unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(waiting[0].0, ObjectId([4; 32]));
        assert!(idx.transaction("2.25.1").unwrap().is_none());
        // a report applied twice does nothing the second time
        assert_eq!(
            idx.apply_report("mirror", "2.25.1", &["1.2.4".into()], &[], 6000, 3)
                .unwrap(),
            None
        );
        let c = idx.commitment_summary("mirror").unwrap();
        assert_eq!((c.awaiting, c.transactions), (1, 0));
    }

    #[test]
    fn a_reissued_request_moves_its_objects_and_a_failure_at_the_limit_dead_letters() {
        let (idx, due) = index_with(2);
        store_all(&idx, &due);
        let all: Vec<ObjectId> = due.iter().map(|d| d.hash).collect();
        idx.open_transaction("mirror", "2.25.1", &all, 4000)
            .unwrap();
        assert!(idx.reissue_transaction("2.25.1", "2.25.2", 9000).unwrap());
        assert!(idx.transaction("2.25.1").unwrap().is_none());
        let t = idx.transaction("2.25.2").unwrap().unwrap();
        assert_eq!(
            (t.requests, t.opened_at_ms, t.requested_at_ms),
            (2, 4000, 9000)
        );
        assert_eq!(
            idx.stored_row("mirror", &all[0])
                .unwrap()
                .unwrap()
                .transaction
                .as_deref(),
            Some("2.25.2")
        );
        // the old UID's report is refused; the new one's applies
        assert_eq!(
            idx.apply_report("mirror", "2.25.1", &["1.2.1".into()], &[], 9500, 1)
                .unwrap(),
            None
        );
        let applied = idx
            .apply_report(
                "mirror",
                "2.25.2",
                &[],
                &[("1.2.1".into(), 0x0110), ("1.2.2".into(), 0x0110)],
                9500,
                1,
            )
            .unwrap()
            .unwrap();
        assert_eq!(applied.dead, 2, "refused_attempts 1: dead letters at once");
        assert_eq!(idx.dead_letters("mirror").unwrap().len(), 2);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (0, 0, 2));
    }

    #[test]
    fn turning_commitment_off_settles_what_the_mirror_stored() {
        let (idx, due) = index_with(3);
        store_all(&idx, &due);
        let all: Vec<ObjectId> = due.iter().map(|d| d.hash).collect();
        idx.open_transaction("mirror", "2.25.1", &all[..1], 4000)
            .unwrap();
        assert_eq!(idx.settle_stored("mirror", 9000).unwrap(), 3);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered), (0, 3));
        assert_eq!(
            s.last_delivered_at_ms,
            Some(3000),
            "when the mirror stored them"
        );
        let c = idx.commitment_summary("mirror").unwrap();
        assert_eq!((c.awaiting, c.transactions), (0, 0));
        assert_eq!(idx.settle_stored("mirror", 9000).unwrap(), 0);
    }
}
