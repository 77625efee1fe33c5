//! Tallies: the figures status, metrics, start-up and drills need, kept up
//! to date by every batch that changes what they count, so that reading one
//! costs a few rows, never a scan of the archive.
//!
//! # Keys
//! ```text
//! m/tally\0v                                 -> u32 BE: TALLY_VERSION (absent: rebuilt when the index opens)
//! m/tally\0spool                             -> objects, bytes held (not evicted), evicted (3 × u64 BE) of o/
//! m/tally\0queue\0<target>                   -> rows, bytes (2 × u64 BE) of q/<target>
//! m/tally\0dead\0<target>                    -> rows (u64 BE) of x/<target>
//! m/tally\0findings\0<class>                  -> instance versions kept with that finding class (n/)
//! m/tally\0without_study                      -> instance versions with no usable Study Instance UID (h/\0…)
//! m/tally\0arrived\0<target>\0<slot:u64 BE>  -> rows (u64 BE) of q/<target> whose object was queued in that
//!                                               SLOT_MS slot of time (the live/backlog split)
//! e/<target>\0<queued ms:u64 BE>\0<blake3>   -> rows (u32 BE) of q/<target> of that object queued then
//!                                               (the oldest pending row is the first key)
//! z/<study key:u64 BE><study uid>            -> "": every study, in the order of [`study_key`]
//!                                               (random samples, rotation slices)
//! m/newest_study                             -> received ms (u64 BE) + study uid: the study of the
//!                                               latest instance received
//! ```
//!
//! # Invariants
//! - Every write of the index goes through `Index::apply`, which, under one
//!   lock, reads the old value of each key the batch writes in a tallied
//!   table (`q/`, `x/`, `o/`, `h/`, `i/`), derives the change of each tally
//!   from the old and the new values, and appends the new tallies to **the
//!   same atomic batch**. So a tally never disagrees with its rows, whatever
//!   the writer (ingest, senders, requeue, retention, recovery, reindex),
//!   and a crash loses both or neither.
//! - The change is derived from what the rows held, not from what the
//!   writer meant: writing a row that exists replaces it (its old value is
//!   taken out first), removing a row that is absent changes nothing.
//! - `z/` rows are added with the first instance row of a study and never
//!   removed (an undone commit can leave a study with no instance: a reader
//!   skips it).
//!
//! # Crash behaviour, upgrade
//! Nothing beyond the batch's atomicity. An index written by a build
//! without tallies (no `m/tally\0v`) gets them rebuilt by one scan when it
//! opens ([`Index::ensure_tallies`]); a crash during that rebuild leaves no
//! marker, and the next open starts it again from scratch. An index written
//! by an older build after a newer one had tallied it has stale tallies:
//! `pacs-mirror index retally` rebuilds them.

use std::collections::{BTreeMap, HashMap};

use super::records::{self, FindingClass, InstanceRecord, ObjectRecord, OutboxRecord};
use super::{Index, IndexError, KvError, Op, key};
use crate::index::kv::Kv;

/// The tally encoding this build writes.
const TALLY_VERSION: u32 = 1;
/// Width of an arrival slot.
pub const SLOT_MS: u64 = 10_000;

const M: &[u8] = b"m/";
const ARRIVED_BY_TIME: &[u8] = b"e/";
const STUDIES: &[u8] = b"z/";
const NEWEST_STUDY: &[u8] = b"m/newest_study";

fn version_key() -> Vec<u8> {
    key(&[M, b"tally", b"v"])
}
fn spool_key() -> Vec<u8> {
    key(&[M, b"tally", b"spool"])
}
fn queue_key(target: &[u8]) -> Vec<u8> {
    key(&[M, b"tally", b"queue", target])
}
fn dead_key(target: &[u8]) -> Vec<u8> {
    key(&[M, b"tally", b"dead", target])
}
fn findings_prefix() -> Vec<u8> {
    let mut k = key(&[M, b"tally", b"findings"]);
    k.push(0);
    k
}
fn without_study_key() -> Vec<u8> {
    key(&[M, b"tally", b"without_study"])
}
fn arrived_prefix(target: &[u8]) -> Vec<u8> {
    let mut k = key(&[M, b"tally", b"arrived", target]);
    k.push(0);
    k
}
fn arrived_key(target: &[u8], slot: u64) -> Vec<u8> {
    let mut k = arrived_prefix(target);
    k.extend_from_slice(&slot.to_be_bytes());
    k
}
fn by_time_prefix(target: &[u8]) -> Vec<u8> {
    let mut k = key(&[ARRIVED_BY_TIME, target]);
    k.push(0);
    k
}
fn by_time_key(target: &[u8], queued_ms: u64, hash: &[u8]) -> Vec<u8> {
    let mut k = by_time_prefix(target);
    k.extend_from_slice(&queued_ms.to_be_bytes());
    k.push(0);
    k.extend_from_slice(hash);
    k
}

/// Where a study sorts among the `z/` rows: the first 8 bytes of the
/// blake3 of its UID, big-endian. Uniform over `u64`, so a random point
/// finds a random study and a range of it is a rotation slice.
pub fn study_key(study_instance_uid: &str) -> u64 {
    let h = blake3::hash(study_instance_uid.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

fn study_row(study: &[u8]) -> Vec<u8> {
    let uid = String::from_utf8_lossy(study);
    let mut k = STUDIES.to_vec();
    k.extend_from_slice(&study_key(&uid).to_be_bytes());
    k.extend_from_slice(study);
    k
}

/// The tables whose rows are tallied.
fn tallied(k: &[u8]) -> bool {
    [b"q/", b"x/", b"o/", b"h/", b"i/", b"n/"]
        .iter()
        .any(|t| k.starts_with(*t))
}

/// Whether a batch writes a tallied row (and so needs the tally lock).
pub(super) fn batch_is_tallied(ops: &[Op]) -> bool {
    ops.iter().any(|op| match op {
        Op::Put(k, _) | Op::Delete(k) => tallied(k),
    })
}

fn u64s<const N: usize>(v: Option<&[u8]>) -> [u64; N] {
    let mut out = [0u64; N];
    if let Some(v) = v {
        for (i, c) in v.chunks_exact(8).take(N).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            out[i] = u64::from_be_bytes(b);
        }
    }
    out
}

fn encode_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// `<target>` and the blake3 of a `q/<target>\0<ms:8>\0<hash:32>` key.
fn parse_queue_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = k.get(2..)?;
    if rest.len() < 8 + 1 + 1 + 32 {
        return None;
    }
    let target = &rest[..rest.len() - 42];
    let hash = &rest[rest.len() - 32..];
    Some((target, hash))
}

/// `<target>` of a `x/<target>\0<hash:32>` key.
fn parse_target_hash_key(k: &[u8]) -> Option<&[u8]> {
    let rest = k.get(2..)?;
    rest.get(..rest.len().checked_sub(33)?)
}

/// The changes one batch makes to the tallies.
#[derive(Default)]
struct Changes {
    /// Summed signed changes by tally key (up to 3 figures each).
    sums: BTreeMap<Vec<u8>, [i128; 3]>,
    /// Rows per `e/` key.
    by_time: BTreeMap<Vec<u8>, i64>,
    /// `z/` rows to add.
    studies: BTreeMap<Vec<u8>, ()>,
    /// The latest instance received, if later than stored.
    newest: Option<(u64, String)>,
}

impl Changes {
    fn add(&mut self, k: Vec<u8>, d: [i128; 3]) {
        let e = self.sums.entry(k).or_default();
        for i in 0..3 {
            e[i] += d[i];
        }
    }

    /// Count (`sign` +1) or uncount (−1) one row's value.
    fn account(
        &mut self,
        kv: &dyn Kv,
        overlay: &HashMap<Vec<u8>, Option<Vec<u8>>>,
        k: &[u8],
        v: &[u8],
        sign: i128,
    ) -> Result<(), KvError> {
        if k.starts_with(b"q/") {
            let Some((target, hash)) = parse_queue_key(k) else {
                return Ok(());
            };
            let rec: Option<OutboxRecord> = records::decode(v).ok();
            let queued = rec.as_ref().map_or(0, |r| r.enqueued_at_ms);
            let bytes = match rec.as_ref().and_then(|r| r.file_bytes) {
                Some(b) => b,
                // A row older than `file_bytes`: the object row has it.
                None => {
                    let ok = key(&[b"o/", hash]);
                    let v = match overlay.get(&ok) {
                        Some(v) => v.clone(),
                        None => kv.get(&ok)?,
                    };
                    v.and_then(|v| records::decode::<ObjectRecord>(&v).ok())
                        .map_or(0, |o| o.file_bytes)
                }
            };
            self.add(queue_key(target), [sign, sign * i128::from(bytes), 0]);
            self.add(arrived_key(target, queued / SLOT_MS), [sign, 0, 0]);
            *self
                .by_time
                .entry(by_time_key(target, queued, hash))
                .or_default() += sign as i64;
        } else if k.starts_with(b"x/") {
            if let Some(target) = parse_target_hash_key(k) {
                self.add(dead_key(target), [sign, 0, 0]);
            }
        } else if k.starts_with(b"o/") {
            if let Ok(o) = records::decode::<ObjectRecord>(v) {
                let (held, evicted) = match o.evicted_at_ms {
                    None => (i128::from(o.file_bytes), 0),
                    Some(_) => (0, 1),
                };
                self.add(spool_key(), [sign, sign * held, sign * evicted]);
            }
        } else if k.starts_with(b"h/") {
            let study = k[2..].split(|b| *b == 0).next().unwrap_or_default();
            if study.is_empty() {
                self.add(without_study_key(), [sign, 0, 0]);
            } else if sign > 0 {
                self.studies.insert(study_row(study), ());
            }
        } else if k.starts_with(b"n/") {
            if let Ok(mut classes) = records::decode::<Vec<FindingClass>>(v) {
                classes.sort();
                classes.dedup();
                for c in classes {
                    let mut k = findings_prefix();
                    k.extend_from_slice(c.name().as_bytes());
                    self.add(k, [sign, 0, 0]);
                }
            }
        } else if k.starts_with(b"i/")
            && sign > 0
            && let Ok(r) = records::decode::<InstanceRecord>(v)
            && !r.study_instance_uid.is_empty()
            && self
                .newest
                .as_ref()
                .is_none_or(|(t, uid)| (r.received_at_ms, &r.study_instance_uid) > (*t, uid))
        {
            self.newest = Some((r.received_at_ms, r.study_instance_uid));
        }
        Ok(())
    }

    /// The writes that bring the stored tallies up to date.
    fn into_ops(self, kv: &dyn Kv) -> Result<Vec<Op>, KvError> {
        let mut ops = Vec::new();
        for (k, d) in self.sums {
            if d == [0; 3] {
                continue;
            }
            let old = u64s::<3>(kv.get(&k)?.as_deref());
            let arity = if k.starts_with(&spool_key()) {
                3
            } else if k.starts_with(&key(&[M, b"tally", b"queue"])) {
                2
            } else {
                1
            };
            let new: Vec<u64> = (0..arity)
                .map(|i| {
                    let n = i128::from(old[i]) + d[i];
                    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
                })
                .collect();
            // A tally of nothing is no row (as a rebuild leaves it).
            if new.iter().all(|n| *n == 0) {
                ops.push(Op::Delete(k));
            } else {
                ops.push(Op::Put(k, encode_u64s(&new)));
            }
        }
        for (k, d) in self.by_time {
            if d == 0 {
                continue;
            }
            let old = kv
                .get(&k)?
                .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
                .map_or(0, u32::from_be_bytes);
            let n = (i64::from(old) + d).max(0);
            if n == 0 {
                ops.push(Op::Delete(k));
            } else {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                ops.push(Op::Put(k, n.to_be_bytes().to_vec()));
            }
        }
        for (k, ()) in self.studies {
            if kv.get(&k)?.is_none() {
                ops.push(Op::Put(k, Vec::new()));
            }
        }
        if let Some((t, study)) = self.newest {
            let stored = kv.get(NEWEST_STUDY)?;
            let stored = stored
                .as_deref()
                .map(|v| (u64s::<1>(Some(v))[0], v.get(8..).unwrap_or_default()));
            // The latest, and of two at the same time the greater UID: a
            // rebuild, reading them in another order, picks the same.
            if stored.is_none_or(|s| (t, study.as_bytes()) > s) {
                let mut v = t.to_be_bytes().to_vec();
                v.extend_from_slice(study.as_bytes());
                ops.push(Op::Put(NEWEST_STUDY.to_vec(), v));
            }
        }
        Ok(ops)
    }
}

/// The tally writes to append to `ops` (call with the tally lock held, and
/// apply both in one batch).
pub(super) fn derive(kv: &dyn Kv, ops: &[Op]) -> Result<Vec<Op>, KvError> {
    let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut changes = Changes::default();
    for op in ops {
        let (k, new) = match op {
            Op::Put(k, v) => (k, Some(v)),
            Op::Delete(k) => (k, None),
        };
        if !tallied(k) {
            continue;
        }
        let old = match overlay.get(k) {
            Some(v) => v.clone(),
            None => kv.get(k)?,
        };
        // An `i/` or `h/` row rewritten with the same value changes nothing.
        if old.as_ref() == new {
            continue;
        }
        if let Some(old) = &old {
            changes.account(kv, &overlay, k, old, -1)?;
        }
        if let Some(new) = new {
            changes.account(kv, &overlay, k, new, 1)?;
        }
        overlay.insert(k.clone(), new.cloned());
    }
    changes.into_ops(kv)
}

/// Lag figures read from the tallies of one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTally {
    /// Pending rows.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Of them, queued at or after the `since` asked.
    pub since: u64,
    /// When the oldest was queued.
    pub oldest_queued_ms: Option<u64>,
    /// Dead letters.
    pub dead: u64,
}

/// The spool's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolTally {
    /// Object rows.
    pub objects: u64,
    /// Bytes of the files held (evicted ones excluded).
    pub bytes: u64,
    /// Objects whose file retention removed.
    pub evicted: u64,
}

/// How many rows a rebuild writes per batch.
const REBUILD_BATCH: usize = 10_000;

impl Index {
    /// The tallies of `target`'s queue: counts from their rows, the oldest
    /// from the first `e/` key, those queued since `since_ms` from the
    /// arrival slots after it plus the rows of the slot it falls in.
    pub fn queue_tally(&self, target: &str, since_ms: u64) -> Result<QueueTally, IndexError> {
        let t = target.as_bytes();
        let [rows, bytes] = u64s::<2>(self.kv.get(&queue_key(t))?.as_deref());
        let [dead] = u64s::<1>(self.kv.get(&dead_key(t))?.as_deref());
        let by_time = by_time_prefix(t);
        let mut oldest_queued_ms = None;
        self.kv.for_each_prefix(&by_time, &mut |k, _| {
            oldest_queued_ms = k
                .get(by_time.len()..by_time.len() + 8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            false
        })?;
        // Whole slots from the one `since_ms` falls in ...
        let slot = since_ms / SLOT_MS;
        let arrived = arrived_prefix(t);
        let after = slot.checked_sub(1).map(|s| arrived_key(t, s));
        let mut since = 0u64;
        self.kv
            .for_each_prefix_after(&arrived, after.as_deref(), &mut |_, v| {
                since += u64s::<1>(Some(v))[0];
                true
            })?;
        // ... less the rows of that slot queued before `since_ms`.
        let slot_start = slot * SLOT_MS;
        if slot_start < since_ms {
            let after = slot_start.checked_sub(1).map(|ms| {
                let mut k = by_time_prefix(t);
                k.extend_from_slice(&ms.to_be_bytes());
                k.push(1);
                k
            });
            self.kv
                .for_each_prefix_after(&by_time, after.as_deref(), &mut |k, v| {
                    let at = k
                        .get(by_time.len()..by_time.len() + 8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(u64::MAX, u64::from_be_bytes);
                    if at >= since_ms {
                        return false;
                    }
                    let n = <[u8; 4]>::try_from(v).map_or(0, u32::from_be_bytes);
                    since = since.saturating_sub(u64::from(n));
                    true
                })?;
        }
        Ok(QueueTally {
            rows,
            bytes,
            since,
            oldest_queued_ms,
            dead,
        })
    }

    /// The spool's figures (one row).
    pub fn spool_tally(&self) -> Result<SpoolTally, IndexError> {
        let [objects, bytes, evicted] = u64s::<3>(self.kv.get(&spool_key())?.as_deref());
        Ok(SpoolTally {
            objects,
            bytes,
            evicted,
        })
    }

    /// Instance versions kept with each finding class (those with none
    /// left out).
    pub fn finding_tallies(
        &self,
    ) -> Result<std::collections::BTreeMap<FindingClass, u64>, IndexError> {
        let prefix = findings_prefix();
        let mut out = std::collections::BTreeMap::new();
        self.kv.for_each_prefix(&prefix, &mut |k, v| {
            let name = &k[prefix.len()..];
            if let Some(c) = FindingClass::ALL
                .iter()
                .find(|c| c.name().as_bytes() == name)
            {
                out.insert(*c, u64s::<1>(Some(v))[0]);
            }
            true
        })?;
        Ok(out)
    }

    /// Instance versions with no usable Study Instance UID.
    pub fn without_study_tally(&self) -> Result<u64, IndexError> {
        Ok(u64s::<1>(self.kv.get(&without_study_key())?.as_deref())[0])
    }

    /// The study whose instance was received last (by its receive time), if
    /// any was.
    pub fn newest_study(&self) -> Result<Option<(u64, String)>, IndexError> {
        Ok(self.kv.get(NEWEST_STUDY)?.and_then(|v| {
            let t = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
            Some((t, String::from_utf8_lossy(&v[8..]).into_owned()))
        }))
    }

    /// Up to `limit` studies from the first at or after `from` in
    /// [`study_key`] order (wrapping round to the first once), each with
    /// its key.
    pub fn studies_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, String)>, IndexError> {
        let mut out = Vec::new();
        let visit = |after: Option<&[u8]>, out: &mut Vec<(u64, String)>| {
            self.kv.for_each_prefix_after(STUDIES, after, &mut |k, _| {
                if out.len() >= limit {
                    return false;
                }
                if let Some(at) = k.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                    out.push((
                        u64::from_be_bytes(at),
                        String::from_utf8_lossy(&k[10..]).into_owned(),
                    ));
                }
                out.len() < limit
            })
        };
        let after = from.checked_sub(1).map(|f| {
            let mut k = STUDIES.to_vec();
            k.extend_from_slice(&f.to_be_bytes());
            k.push(0xff);
            k
        });
        visit(after.as_deref(), &mut out)?;
        if out.len() < limit && from > 0 {
            let mut wrapped = Vec::new();
            visit(None, &mut wrapped)?;
            for s in wrapped {
                if s.0 >= from || out.len() >= limit {
                    break;
                }
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The studies whose [`study_key`] is from `start` up to `end`
    /// (excluded; `None`: to the last), in that order, until `f` returns
    /// false (a rotation slice).
    pub fn studies_in(
        &self,
        start: u64,
        end: Option<u64>,
        f: &mut dyn FnMut(String) -> bool,
    ) -> Result<(), IndexError> {
        let after = start.checked_sub(1).map(|s| {
            let mut k = STUDIES.to_vec();
            k.extend_from_slice(&s.to_be_bytes());
            k.push(0xff);
            k
        });
        self.kv
            .for_each_prefix_after(STUDIES, after.as_deref(), &mut |k, _| {
                let Some(at) = k.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                    return true;
                };
                if end.is_some_and(|end| u64::from_be_bytes(at) >= end) {
                    return false;
                }
                f(String::from_utf8_lossy(&k[10..]).into_owned())
            })?;
        Ok(())
    }

    /// Make sure the tallies exist: an index without the marker (new, or
    /// written by a build without tallies) has them rebuilt by one scan.
    /// Returns whether it rebuilt. Run before any other writer starts.
    pub fn ensure_tallies(&self) -> Result<bool, IndexError> {
        let marker = self.kv.get(&version_key())?;
        if marker.as_deref() == Some(&TALLY_VERSION.to_be_bytes()[..]) {
            return Ok(false);
        }
        self.retally()?;
        Ok(true)
    }

    /// Rebuild every tally from the rows (`pacs-mirror index retally`; also
    /// the upgrade of an index without them). Run with no other writer.
    pub fn retally(&self) -> Result<(), IndexError> {
        let _tally = self.lock_tallies();
        // Remove what a previous (maybe interrupted) rebuild left.
        self.kv.apply(vec![Op::Delete(version_key())])?;
        for prefix in [
            key(&[M, b"tally"]),
            ARRIVED_BY_TIME.to_vec(),
            STUDIES.to_vec(),
            NEWEST_STUDY.to_vec(),
        ] {
            self.delete_prefix(&prefix)?;
        }
        // Derive the tallies of every tallied row, a page at a time; each
        // page's tally changes are applied on top of the previous ones.
        for table in [&b"o/"[..], b"q/", b"x/", b"h/", b"i/", b"n/"] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let mut page: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                self.kv
                    .for_each_prefix_after(table, after.as_deref(), &mut |k, v| {
                        page.push((k.to_vec(), v.to_vec()));
                        page.len() < REBUILD_BATCH
                    })?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let mut changes = Changes::default();
                let overlay = HashMap::new();
                for (k, v) in &page {
                    changes.account(&*self.kv, &overlay, k, v, 1)?;
                }
                let ops = changes.into_ops(&*self.kv)?;
                self.kv.apply(ops)?;
                if page.len() < REBUILD_BATCH {
                    break;
                }
            }
        }
        self.kv.apply(vec![Op::Put(
            version_key(),
            TALLY_VERSION.to_be_bytes().to_vec(),
        )])?;
        self.kv.flush()?;
        Ok(())
    }

    fn delete_prefix(&self, prefix: &[u8]) -> Result<(), IndexError> {
        loop {
            let mut keys = Vec::new();
            self.kv.for_each_prefix(prefix, &mut |k, _| {
                keys.push(Op::Delete(k.to_vec()));
                keys.len() < REBUILD_BATCH
            })?;
            if keys.is_empty() {
                return Ok(());
            }
            self.kv.apply(keys)?;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::index::outbox::Due;
    use crate::index::{MemKv, ObjectId, hash_hex};
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    const TARGETS: [&str; 2] = ["backup", "mirror"];

    fn rec(i: u32, hash: &ObjectId, at: u64) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: format!("1.2.3.{i}"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: hash_hex(hash),
            dataset_bytes: 100,
            file_bytes: 400 + u64::from(i),
            patient_id: "P".into(),
            // Some without a study, some with findings.
            study_instance_uid: if i % 11 == 5 {
                String::new()
            } else {
                format!("1.2.9.{}", i % 7)
            },
            series_instance_uid: "1.2.9.1".into(),
            calling_ae: "SCU".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: at,
            study_date: String::new(),
            modality: String::new(),
            findings: (0..i % 3)
                .map(|k| records::Finding {
                    class: FindingClass::ALL[(i as usize + k as usize) % 7],
                    detail: "test".into(),
                })
                .collect(),
        }
    }

    /// Every tally row, as stored.
    fn tally_rows(idx: &Index) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for p in [&b"m/tally"[..], b"e/", b"z/", NEWEST_STUDY] {
            for (k, v) in idx.kv.scan_prefix(p).unwrap() {
                if k != version_key() {
                    out.push((k, v));
                }
            }
        }
        out
    }

    /// What the tallies must say, counted from the rows themselves.
    fn counted(idx: &Index, target: &str, since_ms: u64) -> QueueTally {
        let mut t = QueueTally::default();
        let mut p = key(&[b"q/", target.as_bytes()]);
        p.push(0);
        for (_, v) in idx.kv.scan_prefix(&p).unwrap() {
            let r: OutboxRecord = records::decode(&v).unwrap();
            t.rows += 1;
            t.bytes += r.file_bytes.unwrap();
            t.since += u64::from(r.enqueued_at_ms >= since_ms);
            t.oldest_queued_ms = Some(
                t.oldest_queued_ms
                    .map_or(r.enqueued_at_ms, |o: u64| o.min(r.enqueued_at_ms)),
            );
        }
        let mut p = key(&[b"x/", target.as_bytes()]);
        p.push(0);
        t.dead = idx.kv.scan_prefix(&p).unwrap().len() as u64;
        t
    }

    /// Random ingest, deliveries, retries, dead letters, retries of dead
    /// letters, evictions: after every step the tallies say what a count
    /// of the rows says, and a rebuild from scratch writes the same rows.
    #[test]
    fn tallies_agree_with_the_rows_and_with_a_rebuild() {
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let idx = Index::new(Arc::new(MemKv::default()));
            let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
            let mut now = 1_000_000u64;
            let mut objects = Vec::new();
            for step in 0..150u32 {
                now += rng.random_range(0..30_000);
                match rng.random_range(0..10) {
                    0..=3 => {
                        let hash = ObjectId(*blake3::hash(&step.to_le_bytes()).as_bytes());
                        // Sometimes a second version or a duplicate.
                        let i = if rng.random_bool(0.2) { step / 2 } else { step };
                        idx.commit_instance(&rec(i, &hash, now), &hash, &targets, now)
                            .unwrap();
                        objects.push(hash);
                    }
                    4..=7 => {
                        let target = TARGETS[rng.random_range(0..2)];
                        let due: Vec<Due> = idx.due(target, u64::MAX, 3).unwrap();
                        for d in due {
                            match rng.random_range(0..4) {
                                0 | 1 => {
                                    idx.mark_delivered(target, &d, now, None).unwrap();
                                }
                                2 => {
                                    idx.reschedule(target, &d, "busy", now + 60_000).unwrap();
                                }
                                _ => {
                                    idx.dead_letter(target, &d, "refused", now).unwrap();
                                }
                            }
                        }
                    }
                    8 => {
                        idx.retry_dead_letters(TARGETS[rng.random_range(0..2)], now)
                            .unwrap();
                    }
                    _ => {
                        if let Some(h) = objects.get(rng.random_range(0..objects.len().max(1))) {
                            if rng.random_bool(0.5) {
                                idx.mark_evicted(h, now).unwrap();
                            } else {
                                idx.unevict(h).unwrap();
                            }
                        }
                    }
                }
                for target in TARGETS {
                    let since = now.saturating_sub(rng.random_range(0..200_000));
                    assert_eq!(
                        idx.queue_tally(target, since).unwrap(),
                        counted(&idx, target, since),
                        "seed {seed} step {step} {target}"
                    );
                }
                let mut spool = SpoolTally::default();
                for (_, v) in idx.kv.scan_prefix(b"o/").unwrap() {
                    let o: ObjectRecord = records::decode(&v).unwrap();
                    spool.objects += 1;
                    match o.evicted_at_ms {
                        None => spool.bytes += o.file_bytes,
                        Some(_) => spool.evicted += 1,
                    }
                }
                assert_eq!(idx.spool_tally().unwrap(), spool, "seed {seed} step {step}");
                let mut findings = std::collections::BTreeMap::new();
                for (_, v) in idx.kv.scan_prefix(b"n/").unwrap() {
                    let mut classes: Vec<FindingClass> = records::decode(&v).unwrap();
                    classes.sort();
                    classes.dedup();
                    for c in classes {
                        *findings.entry(c).or_insert(0u64) += 1;
                    }
                }
                assert_eq!(idx.finding_tallies().unwrap(), findings);
                assert_eq!(
                    idx.without_study_tally().unwrap(),
                    idx.kv.scan_prefix(b"h/\0").unwrap().len() as u64
                );
            }
            let (_, newest) = idx.newest_study().unwrap().unwrap();
            let before = tally_rows(&idx);
            idx.retally().unwrap();
            let after = tally_rows(&idx);
            let differ: Vec<_> = before
                .iter()
                .filter(|r| !after.contains(r))
                .chain(after.iter().filter(|r| !before.contains(r)))
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect();
            assert!(
                differ.is_empty(),
                "seed {seed}: a rebuild writes other rows: {differ:?}"
            );
            assert_eq!(idx.newest_study().unwrap().unwrap().1, newest);
            assert!(!idx.ensure_tallies().unwrap(), "the marker is written");
        }
    }

    /// Studies come back in hashed order from any point, wrapping round;
    /// a slice is a range of it.
    #[test]
    fn studies_from_a_point_and_in_a_range() {
        let idx = Index::new(Arc::new(MemKv::default()));
        let targets = vec!["backup".to_string()];
        // Seven studies (1.2.9.0 to 1.2.9.6), each with an instance.
        for i in [0u32, 1, 2, 3, 4, 12, 6] {
            let hash = ObjectId([i as u8 + 1; 32]);
            idx.commit_instance(&rec(i, &hash, 5), &hash, &targets, 5)
                .unwrap();
        }
        let all = idx.studies_from(0, 100).unwrap();
        assert_eq!(all.len(), 7);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");
        for (k, uid) in &all {
            assert_eq!(*k, study_key(uid));
        }
        // From just after the third: the fourth, ..., then the first ones.
        let from = idx.studies_from(all[2].0 + 1, 5).unwrap();
        let want: Vec<_> = all[3..].iter().chain(&all[..1]).cloned().collect();
        assert_eq!(from, want);
        let mut inside = Vec::new();
        idx.studies_in(all[1].0, Some(all[4].0), &mut |s| {
            inside.push(s);
            true
        })
        .unwrap();
        let want: Vec<_> = all[1..4].iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(inside, want);
        let mut tail = Vec::new();
        idx.studies_in(all[5].0, None, &mut |s| {
            tail.push(s);
            true
        })
        .unwrap();
        assert_eq!(tail.len(), 2);
    }
}
