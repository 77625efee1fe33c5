//! Pending markers: `p/<blake3:32>` → [`PendingRecord`].
//!
//! The group committer (`crate::commit`) writes an object's index rows and
//! this marker in one atomic batch *before* the object's file, its name and
//! the index are flushed (the three flushes run at the same time). So a
//! marker that survives a crash names an object whose rows may be durable
//! while its file is not (or not under its name). Start-up recovery
//! (`crate::recovery`) checks each marked object by hash: a good file keeps
//! the rows ([`Index::finalize_pending`]); a missing or bad one undoes them
//! ([`Index::undo_pending`]). Such an object was never acknowledged: Success
//! is sent only once all three flushes are done, and then its file is good.
//!
//! The marker also holds back the object's outbox rows: they are written by
//! [`Index::finalize_pending`], once the flushes are done, so nothing is
//! replicated (or recorded delivered) before the object is durable here.
//!
//! # Invariants
//! - Rows and marker of an object are applied together (one atomic batch);
//!   finalize (outbox rows in, marker out) and undo (rows reverted, marker
//!   out) are each one atomic batch too.
//! - Markers live only while their batch is in flight: the committer
//!   finalizes or undoes them right after the batch's flushes, so at most
//!   the objects of the last few batches (≤ a few hundred) are marked, and
//!   the recovery work they cause is proportional to that, not to the
//!   archive.
//!
//! # Crash behaviour
//! Finalize and undo are applied without a flush of their own: they become
//! durable with the next batch's flush. A crash before that leaves the
//! marker, and recovery does the same check again (idempotent).

use serde::{Deserialize, Serialize};

use super::{Index, IndexError, ObjectId, Op, key, records};

/// The table of pending markers.
pub(crate) const PENDING: &[u8] = b"p/";

/// What one in-flight commit wrote, to finish or revert it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Rows to write once the object is durable (its outbox rows): hex key,
    /// hex value.
    pub finalize: Vec<(String, String)>,
    /// Keys the commit created (hex): removed if the file is not good.
    pub undo_delete: Vec<String>,
    /// Rows the commit replaced, with their previous values (hex key, hex
    /// value): restored if the file is not good.
    pub undo_put: Vec<(String, String)>,
}

/// Rows of one commit, split as the committer applies them.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Rows written at once (instance, hierarchy, object, conflict).
    pub rows: Vec<Op>,
    /// Outbox rows (written at once by `commit_instance`; held back in the
    /// marker by `commit_instance_pending`).
    pub outbox: Vec<Op>,
    /// Keys `rows` and `outbox` create.
    pub created: Vec<Vec<u8>>,
    /// Keys `rows` replace, with their previous values.
    pub replaced: Vec<(Vec<u8>, Vec<u8>)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, IndexError> {
    let bad = || IndexError::BadHash(s.to_string());
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..s.len() / 2)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

fn marker_key(hash: &ObjectId) -> Vec<u8> {
    key(&[PENDING, hash])
}

impl Index {
    /// Apply a plan's rows and the object's pending marker (merged with any
    /// marker the object already has) as one atomic batch; the outbox rows
    /// go into the marker. Nothing is written for an empty plan.
    pub(crate) fn apply_pending(
        &self,
        hash: &ObjectId,
        plan: Plan,
        before: Vec<Op>,
    ) -> Result<(), IndexError> {
        if plan.rows.is_empty() && plan.outbox.is_empty() {
            return if before.is_empty() {
                Ok(())
            } else {
                Ok(self.apply(before)?)
            };
        }
        let mk = marker_key(hash);
        let mut marker: PendingRecord = match self.kv.get(&mk)? {
            Some(v) => super::decode_at(&mk, &v)?,
            None => PendingRecord::default(),
        };
        for op in plan.outbox {
            if let Op::Put(k, v) = op {
                marker.finalize.push((hex(&k), hex(&v)));
            }
        }
        marker
            .undo_delete
            .extend(plan.created.iter().map(|k| hex(k)));
        marker
            .undo_put
            .extend(plan.replaced.iter().map(|(k, v)| (hex(k), hex(v))));
        let mut ops = before;
        ops.extend(plan.rows);
        ops.push(Op::Put(mk, records::encode(&marker)));
        Ok(self.apply(ops)?)
    }

    /// The pending marker of an object, if any.
    pub fn pending_marker(&self, hash: &ObjectId) -> Result<Option<PendingRecord>, IndexError> {
        let mk = marker_key(hash);
        self.kv
            .get(&mk)?
            .map(|v| super::decode_at(&mk, &v))
            .transpose()
    }

    /// Whether the object's pending marker holds back a row whose key starts
    /// with `prefix` (an outbox row of one target): it is written when the
    /// commit is finalized, so a requeue must not write a second one.
    pub(crate) fn marker_holds(&self, hash: &ObjectId, prefix: &[u8]) -> Result<bool, IndexError> {
        let Some(marker) = self.pending_marker(hash)? else {
            return Ok(false);
        };
        for (k, _) in &marker.finalize {
            if unhex(k)?.starts_with(prefix) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every object with a pending marker.
    pub fn pending_objects(&self) -> Result<Vec<ObjectId>, IndexError> {
        let mut out = Vec::new();
        let mut err = None;
        self.kv.for_each_prefix(PENDING, &mut |k, _| {
            match <ObjectId>::try_from(&k[PENDING.len()..]) {
                Ok(h) => out.push(h),
                Err(_) => {
                    err = Some(IndexError::BadHash(String::from_utf8_lossy(k).into()));
                    return false;
                }
            }
            true
        })?;
        err.map_or(Ok(out), Err)
    }

    /// The object is durable: write its held-back outbox rows and remove
    /// its marker (one atomic batch; not flushed). Nothing to do without a
    /// marker.
    pub fn finalize_pending(&self, hash: &ObjectId) -> Result<(), IndexError> {
        let ops = self.finalize_ops(hash)?;
        if ops.is_empty() {
            return Ok(());
        }
        Ok(self.apply(ops)?)
    }

    /// The operations of [`Index::finalize_pending`], to be applied later
    /// as one atomic batch, alone or first in another one (the committer
    /// carries them into its next batch's first write, saving the index a
    /// write of its own per batch). Empty without a marker.
    pub fn finalize_ops(&self, hash: &ObjectId) -> Result<Vec<Op>, IndexError> {
        let Some(marker) = self.pending_marker(hash)? else {
            return Ok(Vec::new());
        };
        let mut ops = Vec::with_capacity(marker.finalize.len() + 1);
        for (k, v) in &marker.finalize {
            ops.push(Op::Put(unhex(k)?, unhex(v)?));
        }
        ops.push(Op::Delete(marker_key(hash)));
        Ok(ops)
    }

    /// Apply operations (from [`Index::finalize_ops`]) as one atomic batch.
    pub fn apply_ops(&self, ops: Vec<Op>) -> Result<(), IndexError> {
        if ops.is_empty() {
            return Ok(());
        }
        Ok(self.apply(ops)?)
    }

    /// The object is not (or may not be) durable: revert the rows its
    /// commit wrote and remove its marker (one atomic batch; not flushed).
    /// Nothing to do without a marker.
    pub fn undo_pending(&self, hash: &ObjectId) -> Result<(), IndexError> {
        let Some(marker) = self.pending_marker(hash)? else {
            return Ok(());
        };
        let mut ops = Vec::with_capacity(marker.undo_delete.len() + marker.undo_put.len() + 1);
        // Later operations on a key win. Replaced rows first, the first
        // value recorded for a key last (it is the one from before any of
        // these commits); then created keys go, also when a later commit
        // replaced them.
        for (k, v) in marker.undo_put.iter().rev() {
            ops.push(Op::Put(unhex(k)?, unhex(v)?));
        }
        for k in &marker.undo_delete {
            ops.push(Op::Delete(unhex(k)?));
        }
        ops.push(Op::Delete(marker_key(hash)));
        Ok(self.apply(ops)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = vec![0u8, 1, 0xab, 0xff, b'/'];
        assert_eq!(unhex(&hex(&b)).unwrap(), b);
        assert!(unhex("abc").is_err());
        assert!(unhex("+f").is_err());
    }
}
