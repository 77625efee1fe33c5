//! The per-target delivery queue, kept in the index.
//!
//! # Keys
//! ```text
//! q/<target>\0<next attempt ms:u64 BE>\0<blake3:32> -> OutboxRecord    (pending, time-ordered)
//! d/<target>\0<blake3:32>                           -> DeliveryRecord  (delivered)
//! x/<target>\0<blake3:32>                           -> DeadLetter      (refused for good)
//! ```
//! Because the attempt time leads the key, the rows due now are a prefix scan
//! that stops at the first row in the future; a sender never scans the whole
//! backlog.
//!
//! # Order: today's arrivals first
//! A sender takes the **live** rows first ([`Index::due_live_first`]): due
//! rows whose object arrived within the target's live window
//! (`live_window_secs`, default [`LIVE_WINDOW_MS`]), oldest
//! first, found by a scan that starts at that window's first key (so it
//! costs what arrived lately, not the backlog). The rest of a claim comes
//! from the **backlog**, oldest first: rows queued before the window (an
//! outage's backlog, a resync). So while a backlog of hours
//! drains, what arrives now waits only for the claims in flight, and a
//! backlog row still never waits behind more than the live window.
//! `status` shows pending as live and backlog.
//!
//! # Invariants
//! - An object is in exactly one state for a target (pending, delivered,
//!   dead letter, or for a target with storage commitment stored,
//!   `super::commitment`) at any moment a batch has been applied: every move (reschedule, delivered,
//!   dead-letter, retry of a dead letter) writes the new row and removes the
//!   old one in **one atomic batch**. Were the engine not atomic, the new row
//!   would have to be written before the old one is removed: a crash between
//!   the two must leave a duplicate row (the object is sent again; targets are
//!   idempotent) and never no row (a replication silently lost).
//! - Rows are written by ingest (the group committer) for every new object
//!   and every configured target once the object is durable: they wait in
//!   its pending marker (`super::pending`), written in the same atomic
//!   batch as its index rows, and are written by the finalize that removes
//!   the marker. A requeue or resync skips an object whose marker holds its
//!   row.
//!
//! - A move to delivered is written only after the target confirmed the
//!   object. A sender may collect the confirmations of one batch and record
//!   them together ([`Index::mark_delivered_many`]: one atomic batch holding
//!   each object's whole move) before it flushes and releases its claims.
//! - `m/delivered\0<target>` counts the `d/<target>` rows, so that status
//!   and metrics read one row instead of one per object ever delivered.
//!   Every batch that adds or removes a delivered row carries the new count
//!   (same atomic batch), under one lock, so the two never disagree. An
//!   index without the count (older than it) is counted once, by a scan, the
//!   first time the count is read.
//! - `m/last_delivered\0<target>` holds the latest `delivered_at_ms` of the
//!   target's delivered rows (u64 BE), written by the same batches that add
//!   delivered rows and never moved back: `status` of a stopped agent reads
//!   "last success" from it.
//!
//! # Crash behaviour
//! Queue moves are flushed lazily (with the next ingest batch or the sender's
//! own flush). A crash can lose the latest moves, including confirmations a
//! sender collected but had not recorded yet: a delivered object is then
//! still pending and is sent again; it is never lost.

use super::records::{self, OutboxRecord};
use super::{Index, IndexError, ObjectId, Op, decode_at, key};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

pub(super) const OUTBOX: &[u8] = b"q/";
const DELIVERED: &[u8] = b"d/";
const DEAD: &[u8] = b"x/";
const COUNTS: &[u8] = b"m/";

fn delivered_count_key(target: &str) -> Vec<u8> {
    key(&[COUNTS, b"delivered", target.as_bytes()])
}

/// How recent a row's arrival must be for it to count as live (and be sent
/// before the backlog) unless the target says otherwise
/// (`live_window_secs`); also the window of [`OutboxSummary::pending_live`].
pub const LIVE_WINDOW_MS: u64 = 5 * 60 * 1000;

fn last_delivered_key(target: &str) -> Vec<u8> {
    key(&[COUNTS, b"last_delivered", target.as_bytes()])
}

pub(super) fn dead_key(target: &str, hash: &ObjectId) -> Vec<u8> {
    let mut k = target_prefix(DEAD, target);
    k.extend_from_slice(hash);
    k
}

pub(super) fn delivered_key(target: &str, hash: &ObjectId) -> Vec<u8> {
    let mut k = target_prefix(DELIVERED, target);
    k.extend_from_slice(hash);
    k
}

/// The key of a pending row.
pub(super) fn outbox_key(target: &str, next_attempt_ms: u64, hash: &ObjectId) -> Vec<u8> {
    let mut k = key(&[OUTBOX, target.as_bytes(), &next_attempt_ms.to_be_bytes()]);
    k.push(0);
    k.extend_from_slice(hash);
    k
}

fn target_prefix(table: &[u8], target: &str) -> Vec<u8> {
    let mut p = key(&[table, target.as_bytes()]);
    p.push(0);
    p
}

/// A delivered object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// When the target confirmed it (Unix ms).
    pub delivered_at_ms: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// When it was first queued (Unix ms): delivered − enqueued is the lag.
    pub enqueued_at_ms: u64,
    /// Object-storage targets: blake3 (hex) of the file the bucket holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_blake3: Option<String>,
}

/// An object the target refused for good, kept for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was given up (Unix ms).
    pub failed_at_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Why (the target's status or the refusal).
    pub reason: String,
    /// When it was first queued (Unix ms).
    pub enqueued_at_ms: u64,
}

/// Where [`Index::evictable`] takes up its scan, and how far one call reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictScan {
    /// The last object read by the previous call (`None`: from the start).
    pub after: Option<ObjectId>,
    /// Object rows read per call at most.
    pub max_rows: usize,
}

/// A pending row that is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The object.
    pub hash: ObjectId,
    /// When it was due.
    pub next_attempt_ms: u64,
    /// Its row.
    pub record: OutboxRecord,
}

/// A confirmed delivery not yet recorded (see [`Index::mark_delivered_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The row that was sent.
    pub due: Due,
    /// When the target confirmed it (Unix ms).
    pub delivered_at_ms: u64,
    /// Object-storage targets: blake3 (hex) of the file the bucket holds.
    pub stored_blake3: Option<String>,
}

/// Lag figures of one target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxSummary {
    /// Objects not yet delivered (dead letters excluded).
    pub pending: u64,
    /// Their bytes.
    pub pending_bytes: u64,
    /// When the oldest of them was queued (Unix ms).
    pub oldest_enqueued_at_ms: Option<u64>,
    /// Objects delivered.
    pub delivered: u64,
    /// Objects refused for good.
    pub dead_letters: u64,
    /// The latest delivery recorded (Unix ms).
    pub last_delivered_at_ms: Option<u64>,
    /// Of `pending`, the live rows (see the module header): arrived within
    /// the target's live window ([`LIVE_WINDOW_MS`] by default) of when the
    /// summary was made.
    pub pending_live: u64,
}

/// A live row: its object arrived at or after `since_ms` (a retry after a
/// glitch stays live: it is not sent behind an outage's backlog).
fn is_live(r: &OutboxRecord, since_ms: u64) -> bool {
    r.enqueued_at_ms >= since_ms
}

fn parse_outbox_key(prefix_len: usize, k: &[u8]) -> Option<(u64, ObjectId)> {
    let rest = k.get(prefix_len..)?;
    let when = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let hash = rest.get(9..41)?.try_into().ok()?;
    Some((when, hash))
}

impl Index {
    /// Up to `limit` pending rows of `target` due at `now_ms`, oldest first.
    pub fn due(&self, target: &str, now_ms: u64, limit: usize) -> Result<Vec<Due>, IndexError> {
        self.due_skipping(target, now_ms, limit, &|_| false)
    }

    /// [`Index::due`] without the rows whose object `skip` names (objects
    /// that workers hold already): `limit` counts only the rows returned.
    pub fn due_skipping(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
        skip: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<Due>, IndexError> {
        self.due_scan(target, None, now_ms, limit, skip, &|_| true)
    }

    /// Up to `limit` due rows of `target` not `skip`ped: the live ones
    /// first, then the backlog's, each oldest first (see the module
    /// header).
    pub fn due_live_first(
        &self,
        target: &str,
        now_ms: u64,
        live_window_ms: u64,
        limit: usize,
        skip: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<Due>, IndexError> {
        let since = now_ms.saturating_sub(live_window_ms);
        let mut out = self.due_scan(target, Some(since), now_ms, limit, skip, &|r| {
            is_live(r, since)
        })?;
        if out.len() < limit {
            let taken: HashSet<ObjectId> = out.iter().map(|d| d.hash).collect();
            let rest = self.due_scan(
                target,
                None,
                now_ms,
                limit - out.len(),
                &|h| skip(h) || taken.contains(h),
                &|_| true,
            )?;
            out.extend(rest);
        }
        Ok(out)
    }

    /// Due rows of `target` from attempt time `from_ms` on (all: None),
    /// oldest first, those `keep` accepts and `skip` does not.
    fn due_scan(
        &self,
        target: &str,
        from_ms: Option<u64>,
        now_ms: u64,
        limit: usize,
        skip: &dyn Fn(&ObjectId) -> bool,
        keep: &dyn Fn(&OutboxRecord) -> bool,
    ) -> Result<Vec<Due>, IndexError> {
        let prefix = target_prefix(OUTBOX, target);
        let start = from_ms
            .filter(|f| *f > 0)
            .map(|f| outbox_key(target, f - 1, &ObjectId([0xff; 32])));
        let mut out = Vec::new();
        let mut err = None;
        self.kv
            .for_each_prefix_after(&prefix, start.as_deref(), &mut |k, v| {
                let Some((when, hash)) = parse_outbox_key(prefix.len(), k) else {
                    err = Some(IndexError::BadHash(String::from_utf8_lossy(k).into()));
                    return false;
                };
                if when > now_ms || out.len() >= limit {
                    return false;
                }
                if skip(&hash) {
                    return true;
                }
                match decode_at::<OutboxRecord>(k, v) {
                    Ok(record) if !keep(&record) => true,
                    Ok(record) => {
                        out.push(Due {
                            hash,
                            next_attempt_ms: when,
                            record,
                        });
                        true
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
        err.map_or(Ok(out), Err)
    }

    /// When the next pending row of `target` is due, if any.
    pub fn next_due_at(&self, target: &str) -> Result<Option<u64>, IndexError> {
        let prefix = target_prefix(OUTBOX, target);
        let mut when = None;
        self.kv.for_each_prefix(&prefix, &mut |k, _| {
            when = parse_outbox_key(prefix.len(), k).map(|(w, _)| w);
            false
        })?;
        Ok(when)
    }

    /// Whether `target` has `hash` as delivered (for a target with storage
    /// commitment: committed).
    pub fn is_delivered(&self, target: &str, hash: &ObjectId) -> Result<bool, IndexError> {
        Ok(self.kv.get(&delivered_key(target, hash))?.is_some())
    }

    /// Whether `due`'s row is still where it was read (not moved since).
    pub fn still_pending(&self, target: &str, due: &Due) -> Result<bool, IndexError> {
        Ok(self
            .kv
            .get(&outbox_key(target, due.next_attempt_ms, &due.hash))?
            .is_some())
    }

    /// Record `hash` as delivered to `target` without a pending row (an
    /// index rebuilt from the target's own copy). A pending row, if any, is
    /// left as it is.
    pub fn record_delivered(
        &self,
        target: &str,
        hash: &ObjectId,
        record: &DeliveryRecord,
    ) -> Result<(), IndexError> {
        let _rows = self.lock_delivered_rows();
        let dkey = delivered_key(target, hash);
        let mut ops = Vec::with_capacity(2);
        if self.kv.get(&dkey)?.is_none() {
            ops.push(self.delivered_count_op(target, 1)?);
        }
        ops.extend(self.last_delivered_op(target, record.delivered_at_ms)?);
        ops.push(Op::Put(dkey, records::encode(record)));
        self.apply(ops)?;
        Ok(())
    }

    /// How many objects `target` has as delivered. Call with the
    /// delivered-rows lock held. Counted by a scan (and stored) only when the
    /// index has no count yet, or an unreadable one.
    fn delivered_count_locked(&self, target: &str) -> Result<u64, IndexError> {
        if let Some(n) = self.delivered_count_stored(target)? {
            return Ok(n);
        }
        let n = self.delivered_rows_scanned(target)?;
        self.apply(vec![Op::Put(
            delivered_count_key(target),
            n.to_be_bytes().to_vec(),
        )])?;
        Ok(n)
    }

    fn delivered_count_stored(&self, target: &str) -> Result<Option<u64>, IndexError> {
        Ok(self
            .kv
            .get(&delivered_count_key(target))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// The latest delivery recorded for `target` (Unix ms).
    fn last_delivered_stored(&self, target: &str) -> Result<Option<u64>, IndexError> {
        Ok(self
            .kv
            .get(&last_delivered_key(target))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// The write that moves `target`'s latest delivery to `at_ms`, if later
    /// than the one stored. Call with the delivered-rows lock held.
    pub(super) fn last_delivered_op(
        &self,
        target: &str,
        at_ms: u64,
    ) -> Result<Option<Op>, IndexError> {
        Ok(match self.last_delivered_stored(target)? {
            Some(t) if t >= at_ms => None,
            _ => Some(Op::Put(
                last_delivered_key(target),
                at_ms.to_be_bytes().to_vec(),
            )),
        })
    }

    fn delivered_rows_scanned(&self, target: &str) -> Result<u64, IndexError> {
        let mut n = 0u64;
        self.kv
            .for_each_prefix(&target_prefix(DELIVERED, target), &mut |_, _| {
                n += 1;
                true
            })?;
        Ok(n)
    }

    /// The write of `target`'s delivered count changed by `delta`, for the
    /// batch that adds or removes that many delivered rows (a missing count
    /// is counted first, and written by that same batch). Call with the
    /// delivered-rows lock held.
    pub(super) fn delivered_count_op(&self, target: &str, delta: i64) -> Result<Op, IndexError> {
        let n = match self.delivered_count_stored(target)? {
            Some(n) => n,
            None => self.delivered_rows_scanned(target)?,
        };
        Ok(Op::Put(
            delivered_count_key(target),
            n.saturating_add_signed(delta).to_be_bytes().to_vec(),
        ))
    }

    /// The target confirmed the object: pending → delivered.
    ///
    /// Every move below is a no-op returning `Ok(false)` when the row is no
    /// longer where `due` says (someone moved it since it was read): writing
    /// the new row then would duplicate the object in the queue.
    /// `stored_blake3`: for object-storage targets, the hash of the file
    /// the bucket holds.
    pub fn mark_delivered(
        &self,
        target: &str,
        due: &Due,
        now_ms: u64,
        stored_blake3: Option<String>,
    ) -> Result<bool, IndexError> {
        let delivery = Delivery {
            due: due.clone(),
            delivered_at_ms: now_ms,
            stored_blake3,
        };
        Ok(self.mark_delivered_many(target, std::slice::from_ref(&delivery))? == 1)
    }

    /// [`Index::mark_delivered`] for several objects in **one** atomic batch
    /// (each object's delivered row and the removal of its pending row are
    /// in it together, so every object is still in exactly one state; the
    /// delivered count is in it too). Rows no longer where their `due` says
    /// are skipped. Returns how many were moved. One batch instead of one
    /// per object: the engine writes its log once for all of them.
    pub fn mark_delivered_many(
        &self,
        target: &str,
        deliveries: &[Delivery],
    ) -> Result<usize, IndexError> {
        let _rows = self.lock_delivered_rows();
        let mut ops = Vec::with_capacity(deliveries.len() * 2 + 1);
        let mut moved = 0;
        let mut fresh = HashSet::new();
        let mut latest = 0u64;
        for d in deliveries {
            let due = &d.due;
            if !self.still_pending(target, due)? {
                continue;
            }
            let delivered = DeliveryRecord {
                delivered_at_ms: d.delivered_at_ms,
                attempts: due.record.attempts + 1,
                enqueued_at_ms: due.record.enqueued_at_ms,
                stored_blake3: d.stored_blake3.clone(),
            };
            let dkey = delivered_key(target, &due.hash);
            if self.kv.get(&dkey)?.is_none() {
                fresh.insert(due.hash);
            }
            ops.push(Op::Put(dkey, records::encode(&delivered)));
            ops.push(Op::Delete(outbox_key(
                target,
                due.next_attempt_ms,
                &due.hash,
            )));
            latest = latest.max(d.delivered_at_ms);
            moved += 1;
        }
        if moved > 0 {
            if !fresh.is_empty() {
                ops.push(self.delivered_count_op(target, fresh.len() as i64)?);
            }
            ops.extend(self.last_delivered_op(target, latest)?);
            self.apply(ops)?;
        }
        Ok(moved)
    }

    /// The attempt failed for now: move the row to `next_attempt_ms`, with
    /// the attempt counted and the error kept.
    pub fn reschedule(
        &self,
        target: &str,
        due: &Due,
        error: &str,
        next_attempt_ms: u64,
    ) -> Result<bool, IndexError> {
        if !self.still_pending(target, due)? {
            return Ok(false);
        }
        let record = OutboxRecord {
            enqueued_at_ms: due.record.enqueued_at_ms,
            attempts: due.record.attempts + 1,
            last_error: Some(error.to_string()),
            file_bytes: due.record.file_bytes,
        };
        let old = outbox_key(target, due.next_attempt_ms, &due.hash);
        let new = outbox_key(target, next_attempt_ms, &due.hash);
        if old == new {
            self.apply(vec![Op::Put(new, records::encode(&record))])?;
            return Ok(true);
        }
        // One atomic batch: the new row and the removal of the old.
        self.apply(vec![
            Op::Put(new, records::encode(&record)),
            Op::Delete(old),
        ])?;
        Ok(true)
    }

    /// The target refused the object for good: pending → dead letter.
    pub fn dead_letter(
        &self,
        target: &str,
        due: &Due,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, IndexError> {
        if !self.still_pending(target, due)? {
            return Ok(false);
        }
        let dead = DeadLetter {
            failed_at_ms: now_ms,
            attempts: due.record.attempts + 1,
            reason: reason.to_string(),
            enqueued_at_ms: due.record.enqueued_at_ms,
        };
        let mut xkey = target_prefix(DEAD, target);
        xkey.extend_from_slice(&due.hash);
        self.apply(vec![
            Op::Put(xkey, records::encode(&dead)),
            Op::Delete(outbox_key(target, due.next_attempt_ms, &due.hash)),
        ])?;
        Ok(true)
    }

    /// The dead letters of `target`.
    pub fn dead_letters(&self, target: &str) -> Result<Vec<(ObjectId, DeadLetter)>, IndexError> {
        let prefix = target_prefix(DEAD, target);
        self.kv
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(k, v)| {
                let hash = k
                    .get(prefix.len()..)
                    .and_then(|h| <ObjectId>::try_from(h).ok())
                    .ok_or_else(|| IndexError::BadHash(String::from_utf8_lossy(&k).into()))?;
                Ok((hash, decode_at(&k, &v)?))
            })
            .collect()
    }

    /// Put every dead letter of `target` back in the queue, due at `now_ms`
    /// with its attempts reset (the operator fixed the cause). Returns how many.
    pub fn retry_dead_letters(&self, target: &str, now_ms: u64) -> Result<usize, IndexError> {
        let _moves = self.lock_queue_moves();
        let dead = self.dead_letters(target)?;
        let prefix = target_prefix(DEAD, target);
        for (hash, letter) in &dead {
            let mut xkey = prefix.clone();
            xkey.extend_from_slice(hash);
            let record = OutboxRecord {
                enqueued_at_ms: letter.enqueued_at_ms,
                attempts: 0,
                last_error: Some(format!("retried after: {}", letter.reason)),
                file_bytes: self.object(hash)?.map(|o| o.file_bytes),
            };
            self.apply(vec![
                Op::Put(outbox_key(target, now_ms, hash), records::encode(&record)),
                Op::Delete(xkey),
            ])?;
        }
        Ok(dead.len())
    }

    /// Queue every object again for `target` (a new or emptied mirror): each
    /// object not already pending gets a row due at `now_ms`, and its
    /// delivered or dead-letter row is removed, in one atomic batch per
    /// object. Returns how many were queued.
    pub fn resync(&self, target: &str, now_ms: u64) -> Result<usize, IndexError> {
        let _moves = self.lock_queue_moves();
        let mut objects = Vec::new();
        // Evicted objects have no file left to send.
        self.for_each_object(&mut |hash, o| {
            if o.evicted_at_ms.is_none() {
                objects.push(hash);
            }
        })?;
        self.requeue_locked(target, &objects, now_ms)
    }

    /// The objects with a pending row for `target`.
    pub fn pending(&self, target: &str) -> Result<HashSet<ObjectId>, IndexError> {
        let prefix = target_prefix(OUTBOX, target);
        let mut pending = HashSet::new();
        self.kv.for_each_prefix(&prefix, &mut |k, _| {
            if let Some((_, hash)) = parse_outbox_key(prefix.len(), k) {
                pending.insert(hash);
            }
            true
        })?;
        Ok(pending)
    }

    /// Queue these objects again for `target` (the target lost them): each
    /// one not already pending gets a row due at `now_ms`, and its delivered
    /// or dead-letter row is removed, in one atomic batch per object. The
    /// caller checks that their files are in the spool. Returns how many
    /// were queued. Serialised with [`Index::resync`] and
    /// [`Index::retry_dead_letters`] (and itself): two concurrent repairs
    /// never both write a row for one object.
    pub fn requeue(
        &self,
        target: &str,
        hashes: &[ObjectId],
        now_ms: u64,
    ) -> Result<usize, IndexError> {
        let _moves = self.lock_queue_moves();
        self.requeue_locked(target, hashes, now_ms)
    }

    /// [`Index::requeue`], the queue-move lock held by the caller.
    fn requeue_locked(
        &self,
        target: &str,
        hashes: &[ObjectId],
        now_ms: u64,
    ) -> Result<usize, IndexError> {
        let pending = self.pending(target)?;
        let mut queued = 0;
        let mut seen = HashSet::new();
        let outbox_prefix = target_prefix(OUTBOX, target);
        for hash in hashes {
            // A commit in flight holds its outbox row back until the object
            // is durable (`super::pending`): that row is its requeue.
            if pending.contains(hash)
                || !seen.insert(*hash)
                || self.marker_holds(hash, &outbox_prefix)?
            {
                continue;
            }
            let dkey = delivered_key(target, hash);
            let mut xkey = target_prefix(DEAD, target);
            xkey.extend_from_slice(hash);
            let record = OutboxRecord {
                enqueued_at_ms: now_ms,
                attempts: 0,
                last_error: None,
                file_bytes: self.object(hash)?.map(|o| o.file_bytes),
            };
            // The lock per object, not for the whole (possibly long) resync:
            // senders record deliveries in between.
            let _rows = self.lock_delivered_rows();
            let mut ops = Vec::with_capacity(5);
            if self.kv.get(&dkey)?.is_some() {
                ops.push(self.delivered_count_op(target, -1)?);
            }
            // Stored, awaiting commitment (`super::commitment`): the
            // target lost it, so it is pending again, not stored.
            ops.extend(self.stored_removal(target, hash)?);
            ops.extend([
                Op::Put(outbox_key(target, now_ms, hash), records::encode(&record)),
                Op::Delete(dkey),
                Op::Delete(xkey),
            ]);
            self.apply(ops)?;
            queued += 1;
        }
        Ok(queued)
    }

    /// Objects whose spool file retention may remove: delivered to every one
    /// of `targets` at least `retain_ms` before `now_ms`, not evicted yet. No
    /// targets: none (the spool is then the only copy).
    ///
    /// One call reads at most `scan.max_rows` object rows, from the one
    /// after `scan.after`, and stops early once it has `limit`; `scan.after`
    /// is left where it stopped (`None` once the end was reached), so that
    /// successive calls go round the whole index at a bounded cost each and
    /// nothing is collected per object held.
    pub fn evictable(
        &self,
        targets: &[String],
        now_ms: u64,
        retain_ms: u64,
        limit: usize,
        scan: &mut EvictScan,
    ) -> Result<Vec<ObjectId>, IndexError> {
        if targets.is_empty() || limit == 0 || scan.max_rows == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut rows = 0;
        let mut last = None;
        let mut ended = true;
        self.try_for_each_object(scan.after.as_ref(), &mut |hash, o| {
            rows += 1;
            last = Some(hash);
            let more = rows < scan.max_rows;
            if o.evicted_at_ms.is_none()
                && self.delivered_everywhere(targets, &hash, now_ms, retain_ms)?
            {
                out.push(hash);
            }
            if out.len() >= limit || !more {
                ended = false;
                return Ok(false);
            }
            Ok(true)
        })?;
        scan.after = if ended { None } else { last };
        Ok(out)
    }

    /// Delivered to every one of `targets` at least `retain_ms` before
    /// `now_ms`?
    fn delivered_everywhere(
        &self,
        targets: &[String],
        hash: &ObjectId,
        now_ms: u64,
        retain_ms: u64,
    ) -> Result<bool, IndexError> {
        for t in targets {
            let dkey = delivered_key(t, hash);
            let Some(v) = self.kv.get(&dkey)? else {
                return Ok(false);
            };
            let d: DeliveryRecord = decode_at(&dkey, &v)?;
            if d.delivered_at_ms.saturating_add(retain_ms) > now_ms {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Lag figures of `target`: the queue and dead letters are read row by
    /// row (both bounded by what is not delivered), the delivered objects
    /// from their maintained count.
    pub fn outbox_summary(&self, target: &str) -> Result<OutboxSummary, IndexError> {
        self.outbox_summary_within(target, LIVE_WINDOW_MS)
    }

    /// [`Index::outbox_summary`] with the target's own live window
    /// (`live_window_secs`) for [`OutboxSummary::pending_live`].
    pub fn outbox_summary_within(
        &self,
        target: &str,
        live_window_ms: u64,
    ) -> Result<OutboxSummary, IndexError> {
        let mut s = self.queue_summary(target, live_window_ms)?;
        let _rows = self.lock_delivered_rows();
        s.delivered = self.delivered_count_locked(target)?;
        s.last_delivered_at_ms = self.last_delivered_stored(target)?;
        Ok(s)
    }

    /// [`Index::outbox_summary`] but for `delivered` (left at 0): a few
    /// rows of tallies ([`super::tally`]), whatever the backlog.
    fn queue_summary(
        &self,
        target: &str,
        live_window_ms: u64,
    ) -> Result<OutboxSummary, IndexError> {
        let live_since = crate::unix_ms().saturating_sub(live_window_ms);
        let t = self.queue_tally(target, live_since)?;
        Ok(OutboxSummary {
            pending: t.rows,
            pending_bytes: t.bytes,
            oldest_enqueued_at_ms: t.oldest_queued_ms,
            dead_letters: t.dead,
            pending_live: t.since,
            ..OutboxSummary::default()
        })
    }
}

/// Capped exponential backoff with full jitter: the n-th retry waits a
/// uniformly random time in `[0, min(max, initial × 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first ceiling.
    pub initial_ms: u64,
    /// The largest ceiling.
    pub max_ms: u64,
}

impl Backoff {
    /// The ceiling after `attempts` failed attempts.
    pub fn ceiling_ms(&self, attempts: u32) -> u64 {
        self.initial_ms
            .saturating_mul(1u64.checked_shl(attempts.min(63)).unwrap_or(u64::MAX))
            .min(self.max_ms)
    }

    /// The delay before the next attempt, drawn with `rng`.
    pub fn delay_ms(&self, attempts: u32, rng: &mut impl rand::Rng) -> u64 {
        rng.random_range(0..=self.ceiling_ms(attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectId;
    use crate::index::{InstanceRecord, Kv, MemKv, hash_hex};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn index_with(objects: &[(u8, u64)]) -> Index {
        let idx = Index::new(Arc::new(MemKv::default()));
        for (b, at) in objects {
            let h = ObjectId([*b; 32]);
            let rec = InstanceRecord {
                sop_instance_uid: format!("1.2.{b}"),
                sop_class_uid: "1.2".into(),
                transfer_syntax_uid: "1.2.840.10008.1.2".into(),
                blake3: hash_hex(&h),
                dataset_bytes: 10,
                file_bytes: 100 + u64::from(*b),
                patient_id: String::new(),
                study_instance_uid: "1.3".into(),
                series_instance_uid: "1.4".into(),
                calling_ae: "A".into(),
                source_ip: "127.0.0.1".into(),
                received_at_ms: *at,
                study_date: String::new(),
                modality: String::new(),
                findings: Vec::new(),
            };
            idx.commit_instance(&rec, &h, &["mirror".into(), "bucket".into()], *at)
                .unwrap();
        }
        idx
    }

    /// A resync while a commit is in flight (rows and pending marker
    /// written, flushes not done) does not queue the object a second time:
    /// its outbox row is held in the marker and written by the finalize.
    /// Once finalized, there is one row per target.
    #[test]
    fn resync_skips_a_commit_in_flight() {
        let idx = index_with(&[(1, 100)]);
        let h = ObjectId([2u8; 32]);
        let mut rec = idx.versions("1.2.1").unwrap().remove(0);
        rec.sop_instance_uid = "1.2.2".into();
        rec.blake3 = hash_hex(&h);
        idx.commit_instance_pending(&rec, &h, &["mirror".into()], 200)
            .unwrap();
        assert!(!idx.pending("mirror").unwrap().contains(&h));
        // Object 1 is queued already: nothing to do for either.
        assert_eq!(idx.resync("mirror", 300).unwrap(), 0);
        idx.finalize_pending(&h).unwrap();
        let rows = idx.due("mirror", u64::MAX, 10).unwrap();
        let of_h: Vec<_> = rows.iter().filter(|d| d.hash == h).collect();
        assert_eq!(of_h.len(), 1, "{rows:?}");
        assert_eq!(of_h[0].next_attempt_ms, 200);
        // A target the commit did not name is queued by the resync.
        assert_eq!(idx.resync("other", 400).unwrap(), 2);
    }

    /// The delivered rows of `target`, counted by a scan.
    fn scanned_delivered(idx: &Index, target: &str) -> u64 {
        let mut n = 0;
        idx.kv
            .for_each_prefix(&target_prefix(DELIVERED, target), &mut |_, _| {
                n += 1;
                true
            })
            .unwrap();
        n
    }

    #[test]
    fn pending_bytes_come_from_each_row_or_for_older_rows_from_the_object() {
        let idx = index_with(&[(1, 100), (2, 100)]);
        let due = idx.due("mirror", 100, 10).unwrap();
        assert_eq!(due[0].record.file_bytes, Some(101), "written at ingest");
        // row 2 as a build from before the size was recorded wrote it
        let older = OutboxRecord {
            file_bytes: None,
            ..due[1].record.clone()
        };
        let k = outbox_key("mirror", due[1].next_attempt_ms, &due[1].hash);
        idx.kv
            .apply(vec![Op::Put(k, records::encode(&older))])
            .unwrap();
        assert_eq!(
            idx.outbox_summary("mirror").unwrap().pending_bytes,
            101 + 102
        );
        // kept by a reschedule; written again by a dead-letter retry and a requeue
        assert!(idx.reschedule("mirror", &due[0], "A700", 50).unwrap());
        let due = idx.due("mirror", 100, 10).unwrap();
        assert_eq!(due[0].record.file_bytes, Some(101));
        assert!(idx.dead_letter("mirror", &due[1], "C000", 60).unwrap());
        assert_eq!(idx.outbox_summary("mirror").unwrap().pending_bytes, 101);
        assert_eq!(idx.retry_dead_letters("mirror", 70).unwrap(), 1);
        let due = idx.due("mirror", 100, 10).unwrap();
        assert_eq!(
            due.iter().map(|d| d.record.file_bytes).collect::<Vec<_>>(),
            [Some(101), Some(102)]
        );
        assert!(idx.mark_delivered("mirror", &due[1], 80, None).unwrap());
        assert_eq!(idx.requeue("mirror", &[due[1].hash], 90).unwrap(), 1);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.pending_bytes), (2, 101 + 102));
    }

    /// Live rows (arrived within the window) come before the backlog, each
    /// oldest first (by when due); a retried live row stays live.
    #[test]
    fn live_rows_first_then_the_backlog() {
        let now = 10 * LIVE_WINDOW_MS;
        let old = now - 2 * LIVE_WINDOW_MS;
        let idx = index_with(&[
            (1, old),
            (2, old + 1),
            (3, now - 1000),
            (4, now - 2000),
            (5, now - 500),
        ]);
        let order = |limit| {
            idx.due_live_first("mirror", now, LIVE_WINDOW_MS, limit, &|_| false)
                .unwrap()
                .iter()
                .map(|d| d.hash[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(order(10), vec![4, 3, 5, 1, 2]);
        assert_eq!(order(2), vec![4, 3]);
        // a retry of a live row stays live (due after its backoff)
        let due = idx.due("mirror", now, 10).unwrap();
        let four = due.iter().find(|d| d.hash[0] == 4).unwrap();
        assert!(idx.reschedule("mirror", four, "A700", now - 100).unwrap());
        assert_eq!(order(10), vec![3, 5, 4, 1, 2]);
        let skip_three = idx
            .due_live_first("mirror", now, LIVE_WINDOW_MS, 3, &|h| h[0] == 3)
            .unwrap()
            .iter()
            .map(|d| d.hash[0])
            .collect::<Vec<_>>();
        assert_eq!(skip_three, vec![5, 4, 1]);
        // counted apart in the summary (the summary's clock is the wall
        // clock: these rows are far in the past, so none is live)
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.pending_live), (5, 0));
        // the target's own window counts what arrived within it
        let wall = crate::unix_ms();
        let idx = index_with(&[
            (1, wall - 10_000),
            (2, wall - 100_000),
            (3, wall - 1_000_000),
        ]);
        let live = |window_ms| {
            idx.outbox_summary_within("mirror", window_ms)
                .unwrap()
                .pending_live
        };
        assert_eq!(
            (live(30_000), live(LIVE_WINDOW_MS), live(2_000_000)),
            (1, 2, 3)
        );
    }

    /// "Last success" of a stopped agent: the latest delivery, kept in the
    /// index by the batches that record deliveries, never moved back.
    #[test]
    fn the_latest_delivery_is_kept_per_target() {
        let idx = index_with(&[(1, 100), (2, 100), (3, 100)]);
        assert_eq!(
            idx.outbox_summary("mirror").unwrap().last_delivered_at_ms,
            None
        );
        let due = idx.due("mirror", 100, 10).unwrap();
        let at = |d: &Due, ms: u64| Delivery {
            due: d.clone(),
            delivered_at_ms: ms,
            stored_blake3: None,
        };
        assert_eq!(
            idx.mark_delivered_many("mirror", &[at(&due[0], 5_000), at(&due[1], 7_000)])
                .unwrap(),
            2
        );
        assert_eq!(
            idx.outbox_summary("mirror").unwrap().last_delivered_at_ms,
            Some(7_000)
        );
        // an earlier confirmation recorded later does not move it back
        assert!(idx.mark_delivered("mirror", &due[2], 6_000, None).unwrap());
        assert_eq!(
            idx.outbox_summary("mirror").unwrap().last_delivered_at_ms,
            Some(7_000)
        );
        // per target
        assert_eq!(
            idx.outbox_summary("bucket").unwrap().last_delivered_at_ms,
            None
        );
        let b = idx.due("bucket", 100, 1).unwrap();
        idx.record_delivered(
            "bucket",
            &b[0].hash,
            &DeliveryRecord {
                delivered_at_ms: 9_000,
                attempts: 1,
                enqueued_at_ms: 100,
                stored_blake3: None,
            },
        )
        .unwrap();
        assert_eq!(
            idx.outbox_summary("bucket").unwrap().last_delivered_at_ms,
            Some(9_000)
        );
        assert_eq!(
            idx.outbox_summary("mirror").unwrap().last_delivered_at_ms,
            Some(7_000)
        );
    }

    #[test]
    fn the_delivered_count_follows_every_move_in_and_out_of_delivered() {
        let idx = index_with(&[(1, 100), (2, 100), (3, 100), (4, 100)]);
        let check = |want: u64| {
            assert_eq!(scanned_delivered(&idx, "mirror"), want, "rows");
            assert_eq!(
                idx.outbox_summary("mirror").unwrap().delivered,
                want,
                "count"
            );
        };
        check(0);
        let due = idx.due("mirror", 100, 10).unwrap();
        for d in &due[..3] {
            assert!(idx.mark_delivered("mirror", d, 150, None).unwrap());
        }
        check(3);
        // a stale `due` moves nothing and counts nothing
        assert!(!idx.mark_delivered("mirror", &due[0], 160, None).unwrap());
        check(3);
        // rebuilt from the target's copy: once per object, however often
        let record = DeliveryRecord {
            delivered_at_ms: 170,
            attempts: 1,
            enqueued_at_ms: 100,
            stored_blake3: None,
        };
        idx.record_delivered("mirror", &due[0].hash, &record)
            .unwrap();
        idx.record_delivered("mirror", &ObjectId([9; 32]), &record)
            .unwrap();
        idx.record_delivered("mirror", &ObjectId([9; 32]), &record)
            .unwrap();
        check(4);
        // requeue: the delivered ones leave the count, the pending one does not
        let hashes: Vec<ObjectId> = due.iter().map(|d| d.hash).collect();
        assert_eq!(idx.requeue("mirror", &hashes[..2], 200).unwrap(), 2);
        check(2);
        assert_eq!(idx.requeue("mirror", &hashes[3..], 200).unwrap(), 0);
        check(2);
        // resync: everything pending again
        idx.resync("mirror", 300).unwrap();
        check(1); // [9; 32] has no object row: resync does not queue it
        // the other target never moved
        assert_eq!(idx.outbox_summary("bucket").unwrap().delivered, 0);
    }

    #[test]
    fn an_index_without_the_count_is_counted_once_then_kept_up() {
        let idx = index_with(&[(1, 100), (2, 100)]);
        // rows written as an index older than the count would have them
        for b in [1u8, 2] {
            let v = records::encode(&DeliveryRecord {
                delivered_at_ms: 1,
                attempts: 1,
                enqueued_at_ms: 1,
                stored_blake3: None,
            });
            idx.kv
                .apply(vec![Op::Put(
                    delivered_key("mirror", &ObjectId([b; 32])),
                    v,
                )])
                .unwrap();
        }
        assert!(
            idx.kv
                .get(&delivered_count_key("mirror"))
                .unwrap()
                .is_none()
        );
        assert_eq!(idx.outbox_summary("mirror").unwrap().delivered, 2);
        assert_eq!(
            idx.kv.get(&delivered_count_key("mirror")).unwrap(),
            Some(2u64.to_be_bytes().to_vec()),
            "the count is stored after the first scan"
        );
        // an unreadable count is counted again
        idx.kv
            .apply(vec![Op::Put(delivered_count_key("mirror"), b"x".to_vec())])
            .unwrap();
        assert_eq!(idx.outbox_summary("mirror").unwrap().delivered, 2);
    }

    #[test]
    fn due_rows_come_oldest_first_and_stop_at_now() {
        let idx = index_with(&[(1, 100), (2, 50), (3, 300)]);
        let due = idx.due("mirror", 200, 10).unwrap();
        let hashes: Vec<u8> = due.iter().map(|d| d.hash[0]).collect();
        assert_eq!(hashes, vec![2, 1]);
        assert_eq!(idx.due("mirror", 200, 1).unwrap().len(), 1);
        // rows held elsewhere are skipped and do not count against the limit
        let rest = idx
            .due_skipping("mirror", 400, 1, &|h: &ObjectId| h[0] == 2)
            .unwrap();
        assert_eq!(rest.iter().map(|d| d.hash[0]).collect::<Vec<_>>(), vec![1]);
        let rest = idx
            .due_skipping("mirror", 400, 10, &|h: &ObjectId| h[0] == 1)
            .unwrap();
        assert_eq!(
            rest.iter().map(|d| d.hash[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(idx.next_due_at("mirror").unwrap(), Some(50));
        assert_eq!(idx.next_due_at("nobody").unwrap(), None);
    }

    #[test]
    fn every_move_keeps_the_object_in_exactly_one_state() {
        let idx = index_with(&[(1, 100), (2, 100), (3, 100)]);
        let due = idx.due("mirror", 100, 10).unwrap();
        idx.mark_delivered("mirror", &due[0], 150, None).unwrap();
        idx.reschedule("mirror", &due[1], "A700 out of resources", 5_000)
            .unwrap();
        idx.dead_letter("mirror", &due[2], "no accepted presentation context", 160)
            .unwrap();
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (1, 1, 1));
        // The queue-only summary: the same but for the delivered figures.
        let q = idx.queue_summary("mirror", LIVE_WINDOW_MS).unwrap();
        assert_eq!(s.last_delivered_at_ms, Some(150));
        assert_eq!(
            q,
            OutboxSummary {
                delivered: 0,
                last_delivered_at_ms: None,
                ..s.clone()
            }
        );
        assert_eq!(s.pending_bytes, 102);
        assert_eq!(s.oldest_enqueued_at_ms, Some(100));
        // the other target is untouched
        let b = idx.outbox_summary("bucket").unwrap();
        assert_eq!((b.pending, b.delivered, b.dead_letters), (3, 0, 0));
        // the rescheduled row is not due before its time, then carries its error
        assert!(idx.due("mirror", 4_999, 10).unwrap().is_empty());
        let again = idx.due("mirror", 5_000, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].record.attempts, 1);
        assert_eq!(
            again[0].record.last_error.as_deref(),
            Some("A700 out of resources")
        );
        // dead letters are listed with their reason and can be retried
        let dead = idx.dead_letters("mirror").unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].1.reason, "no accepted presentation context");
        assert_eq!(idx.retry_dead_letters("mirror", 6_000).unwrap(), 1);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (2, 1, 0));
        // resync queues the delivered one again, and nothing twice
        assert_eq!(idx.resync("mirror", 7_000).unwrap(), 1);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (3, 0, 0));
        assert_eq!(idx.resync("mirror", 8_000).unwrap(), 0);
    }

    #[test]
    fn requeue_moves_only_the_named_objects_and_never_twice() {
        let idx = index_with(&[(1, 100), (2, 100), (3, 100)]);
        let due = idx.due("mirror", 100, 10).unwrap();
        idx.mark_delivered("mirror", &due[0], 150, None).unwrap();
        idx.mark_delivered("mirror", &due[1], 150, None).unwrap();
        idx.dead_letter("mirror", &due[2], "refused", 160).unwrap();
        assert!(idx.pending("mirror").unwrap().is_empty());
        // one delivered, the dead letter, and the delivered one named twice
        let named = [due[0].hash, due[2].hash, due[0].hash];
        assert_eq!(idx.requeue("mirror", &named, 1_000).unwrap(), 2);
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (2, 1, 0));
        let pending = idx.pending("mirror").unwrap();
        assert!(pending.contains(&due[0].hash) && pending.contains(&due[2].hash));
        // already pending: nothing written
        assert_eq!(idx.requeue("mirror", &named, 2_000).unwrap(), 0);
        assert_eq!(idx.outbox_summary("mirror").unwrap().pending, 2);
        // the other target is untouched
        assert_eq!(idx.outbox_summary("bucket").unwrap().pending, 3);
    }

    /// Two repairs at once (and a resync, and a dead-letter retry): every
    /// object ends with exactly one queue row.
    #[test]
    fn concurrent_requeues_write_one_row_per_object() {
        let objects: Vec<(u8, u64)> = (1..=120u8).map(|b| (b, 100)).collect();
        for round in 0..5u64 {
            let idx = index_with(&objects);
            let due = idx.due("mirror", 100, 1_000).unwrap();
            assert_eq!(due.len(), objects.len());
            for (n, d) in due.iter().enumerate() {
                if n % 3 == 0 {
                    idx.dead_letter("mirror", d, "refused", 150).unwrap();
                } else {
                    idx.mark_delivered("mirror", d, 150, None).unwrap();
                }
            }
            let hashes: Vec<ObjectId> = due.iter().map(|d| d.hash).collect();
            let barrier = Arc::new(std::sync::Barrier::new(4));
            let workers: Vec<_> = (0..4u64)
                .map(|w| {
                    let (idx, hashes, barrier) = (idx.clone(), hashes.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        // Distinct due times: unserialised, each would be
                        // its own row.
                        let now = 1_000 + round * 10 + w;
                        match w {
                            0 | 1 => idx.requeue("mirror", &hashes, now),
                            2 => idx.resync("mirror", now),
                            _ => idx.retry_dead_letters("mirror", now),
                        }
                    })
                })
                .collect();
            let queued: usize = workers
                .into_iter()
                .map(|w| w.join().expect("worker").expect("queue move"))
                .sum();
            assert_eq!(queued, objects.len(), "round {round}: each queued once");
            let mut rows: HashMap<ObjectId, usize> = HashMap::new();
            idx.kv
                .for_each_prefix(&target_prefix(OUTBOX, "mirror"), &mut |k, _| {
                    let (_, hash) =
                        parse_outbox_key(target_prefix(OUTBOX, "mirror").len(), k).expect("key");
                    *rows.entry(hash).or_default() += 1;
                    true
                })
                .unwrap();
            assert_eq!(rows.len(), objects.len(), "round {round}");
            assert!(
                rows.values().all(|n| *n == 1),
                "round {round}: an object has several rows: {:?}",
                rows.values().filter(|n| **n > 1).count()
            );
            let s = idx.outbox_summary("mirror").unwrap();
            assert_eq!((s.pending, s.delivered, s.dead_letters), (120, 0, 0));
        }
    }

    /// One full [`Index::evictable`] pass from the start.
    fn evict(
        idx: &Index,
        targets: &[String],
        now: u64,
        retain: u64,
        limit: usize,
    ) -> Vec<ObjectId> {
        let mut scan = EvictScan {
            after: None,
            max_rows: usize::MAX,
        };
        idx.evictable(targets, now, retain, limit, &mut scan)
            .unwrap()
    }

    #[test]
    fn only_objects_delivered_everywhere_long_enough_are_evictable() {
        let idx = index_with(&[(1, 100), (2, 100)]);
        let targets = vec!["mirror".to_string(), "bucket".to_string()];
        assert!(evict(&idx, &[], 1_000_000, 0, 10).is_empty());
        let m = idx.due("mirror", 100, 10).unwrap();
        let b = idx.due("bucket", 100, 10).unwrap();
        idx.mark_delivered("mirror", &m[0], 1_000, None).unwrap();
        idx.mark_delivered("mirror", &m[1], 1_000, None).unwrap();
        idx.mark_delivered("bucket", &b[0], 2_000, None).unwrap();
        // object 2 is not in the bucket yet; object 1 is, since 2_000
        assert!(evict(&idx, &targets, 2_500, 1_000, 10).is_empty());
        let e = evict(&idx, &targets, 3_000, 1_000, 10);
        assert_eq!(e, vec![m[0].hash]);
        // the limit: the scan stops once it has that many
        idx.mark_delivered("bucket", &b[1], 2_000, None).unwrap();
        assert_eq!(evict(&idx, &targets, 3_000, 1_000, 10).len(), 2);
        assert_eq!(evict(&idx, &targets, 3_000, 1_000, 1), e);
        assert!(evict(&idx, &targets, 3_000, 1_000, 0).is_empty());
        assert!(idx.mark_evicted(&e[0], 3_000).unwrap());
        assert_eq!(
            evict(&idx, &targets, 9_000, 1_000, 10),
            vec![m[1].hash],
            "evicted objects are not offered again"
        );
        let s = idx.stats().unwrap();
        assert_eq!((s.objects, s.evicted, s.bytes), (2, 1, 102));
        // resync does not queue what has no file any more
        assert_eq!(idx.resync("mirror", 9_000).unwrap(), 1);
        idx.unevict(&e[0]).unwrap();
        assert_eq!(idx.stats().unwrap().evicted, 0);
    }

    #[test]
    fn the_evictable_scan_is_bounded_and_goes_round() {
        let idx = index_with(&[(1, 100), (2, 100), (3, 100), (4, 100), (5, 100)]);
        let targets = vec!["mirror".to_string()];
        for d in idx.due("mirror", 100, 10).unwrap() {
            idx.mark_delivered("mirror", &d, 1_000, None).unwrap();
        }
        let mut scan = EvictScan {
            after: None,
            max_rows: 2,
        };
        let mut pass = |limit| {
            let got = idx
                .evictable(&targets, 5_000, 1_000, limit, &mut scan)
                .unwrap();
            (
                got.iter().map(|h| h[0]).collect::<Vec<u8>>(),
                scan.after.map(|h| h[0]),
            )
        };
        assert_eq!(pass(10), (vec![1, 2], Some(2)), "two rows read");
        assert_eq!(
            pass(10),
            (vec![3, 4], Some(4)),
            "taken up after the last one read"
        );
        assert_eq!(
            pass(10),
            (vec![5], None),
            "the end: the next call starts over"
        );
        assert_eq!(pass(1), (vec![1], Some(1)), "the limit stops it too");
        assert_eq!(pass(10), (vec![2, 3], Some(3)));
        // evicted objects are read (they count against max_rows) but not offered
        assert!(idx.mark_evicted(&ObjectId([4; 32]), 5_000).unwrap());
        assert_eq!(pass(10), (vec![5], Some(5)));
        assert_eq!(pass(10), (vec![], None), "nothing after the last row");
    }

    /// A row moved by someone else since it was read is not moved again:
    /// that would leave the object twice in the queue.
    #[test]
    fn a_stale_due_does_not_duplicate_the_row() {
        let idx = index_with(&[(1, 100)]);
        let stale = idx.due("mirror", 100, 10).unwrap().remove(0);
        assert!(idx.reschedule("mirror", &stale, "A700", 500).unwrap());
        assert!(!idx.reschedule("mirror", &stale, "A700", 900).unwrap());
        assert!(!idx.mark_delivered("mirror", &stale, 950, None).unwrap());
        assert!(!idx.dead_letter("mirror", &stale, "x", 950).unwrap());
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (1, 0, 0));
        let fresh = idx.due("mirror", 500, 10).unwrap().remove(0);
        assert!(idx.still_pending("mirror", &fresh).unwrap());
        assert!(idx.mark_delivered("mirror", &fresh, 600, None).unwrap());
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered), (0, 1));
    }

    /// Counts the batches applied to a [`MemKv`].
    #[derive(Default)]
    struct CountingKv {
        inner: MemKv,
        applies: std::sync::atomic::AtomicUsize,
    }

    impl crate::index::Kv for CountingKv {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, crate::index::KvError> {
            self.inner.get(key)
        }
        fn for_each_prefix_after(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), crate::index::KvError> {
            self.inner.for_each_prefix_after(prefix, after, f)
        }
        fn apply(&self, ops: Vec<Op>) -> Result<(), crate::index::KvError> {
            self.applies
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.apply(ops)
        }
        fn flush(&self) -> Result<(), crate::index::KvError> {
            self.inner.flush()
        }
    }

    /// A batch of confirmations is recorded in one engine batch; each object
    /// ends delivered with its own record, a stale row is skipped (never
    /// duplicated), and nothing else moves.
    #[test]
    fn deliveries_are_recorded_in_one_batch() {
        let kv = Arc::new(CountingKv::default());
        let idx = Index::new(kv.clone());
        let seeded = index_with(&[(1, 100), (2, 110), (3, 120), (4, 130)]);
        // Same rows in the counting engine.
        seeded
            .kv
            .for_each_prefix(b"", &mut |k, v| {
                kv.inner
                    .apply(vec![Op::Put(k.to_vec(), v.to_vec())])
                    .unwrap();
                true
            })
            .unwrap();
        let due = idx.due("mirror", 1_000, 10).unwrap();
        assert_eq!(due.len(), 4);
        // Object 3's row moved since it was read (rescheduled elsewhere).
        assert!(idx.reschedule("mirror", &due[2], "A700", 5_000).unwrap());
        let deliveries: Vec<Delivery> = [0usize, 1, 2]
            .iter()
            .map(|&i| Delivery {
                due: due[i].clone(),
                delivered_at_ms: 2_000 + i as u64,
                stored_blake3: (i == 1).then(|| "ab".repeat(32)),
            })
            .collect();
        let before = kv.applies.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(idx.mark_delivered_many("mirror", &deliveries).unwrap(), 2);
        assert_eq!(
            kv.applies.load(std::sync::atomic::Ordering::SeqCst) - before,
            1,
            "one engine batch for the whole set"
        );
        let s = idx.outbox_summary("mirror").unwrap();
        assert_eq!((s.pending, s.delivered, s.dead_letters), (2, 2, 0));
        let pending = idx.pending("mirror").unwrap();
        assert!(pending.contains(&due[2].hash) && pending.contains(&due[3].hash));
        for (i, d) in deliveries.iter().take(2).enumerate() {
            let mut dkey = target_prefix(DELIVERED, "mirror");
            dkey.extend_from_slice(&d.due.hash);
            let rec: DeliveryRecord =
                decode_at(&dkey, &idx.kv.get(&dkey).unwrap().unwrap()).unwrap();
            assert_eq!(rec.delivered_at_ms, 2_000 + i as u64);
            assert_eq!(rec.attempts, 1);
            assert_eq!(rec.enqueued_at_ms, d.due.record.enqueued_at_ms);
            assert_eq!(rec.stored_blake3, d.stored_blake3);
        }
        // Recording the same set again moves nothing and writes nothing.
        let before = kv.applies.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(idx.mark_delivered_many("mirror", &deliveries).unwrap(), 0);
        assert_eq!(kv.applies.load(std::sync::atomic::Ordering::SeqCst), before);
        assert_eq!(idx.mark_delivered_many("mirror", &[]).unwrap(), 0);
        // The other target is untouched.
        assert_eq!(idx.outbox_summary("bucket").unwrap().pending, 4);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            initial_ms: 1_000,
            max_ms: 3_600_000,
        };
        assert_eq!(b.ceiling_ms(0), 1_000);
        assert_eq!(b.ceiling_ms(3), 8_000);
        assert_eq!(b.ceiling_ms(40), 3_600_000);
        assert_eq!(b.ceiling_ms(u32::MAX), 3_600_000);
        let mut rng = rand::rng();
        let draws: Vec<u64> = (0..200).map(|_| b.delay_ms(2, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= 4_000));
        assert!(draws.iter().any(|d| *d < 2_000) && draws.iter().any(|d| *d > 2_000));
    }
}
