//! The index: what the spool holds, by SOP instance, study and series, plus the
//! per-target outbox rows.
//!
//! # Key layout (one ordered key space, table = first two bytes)
//! ```text
//! o/<blake3:32>                                   -> ObjectRecord   (spool file ↔ instance)
//! i/<sop uid>\0<blake3:32>                        -> InstanceRecord (one row per version)
//! h/<study>\0<series>\0<sop uid>\0<blake3:32>     -> ""             (study → series → instances)
//! c/<sop uid>\0<blake3:32>                        -> ConflictRecord (same UID, other bytes)
//! n/<sop uid>\0<blake3:32>                        -> [FindingClass] (kept, not conformant)
//! q/<target>\0<next attempt ms:u64 BE>\0<blake3>  -> OutboxRecord   (per-target queue, see [`outbox`])
//! d/<target>\0<blake3:32>                          -> DeliveryRecord (delivered to that target)
//! x/<target>\0<blake3:32>                          -> DeadLetter     (refused by that target for good)
//! s/<target>\0<blake3:32>                          -> StoredRecord   (stored, awaiting commitment, see [`commitment`])
//! t/<transaction uid>                              -> Transaction    (storage commitment asked, see [`commitment`])
//! r/<target>\0<started ms:u64 BE>                 -> drill result (see [`studies`])
//! m/<name>                                        -> counters and markers
//! p/<blake3:32>                                   -> PendingRecord  (commit in flight, see [`pending`])
//! m/delivered\0<target>                           -> u64 BE: how many d/<target> rows (see [`outbox`])
//! m/last_delivered\0<target>                      -> u64 BE: the latest delivered_at_ms of them
//! m/clock                                         -> u64 BE: the agent clock's high-water mark (see [`crate::clock`])
//! m/tally\0…, e/…, z/…, m/newest_study             -> tallies kept by every batch (see [`tally`])
//! a/<calling AE title>                            -> last store time (see [`sources`])
//! f/<kind>\0<subject>                              -> a firing alert (see [`sources`])
//! ```
//! An instance kept without a usable Study (or Series) Instance UID has an
//! empty component in its `h/` key: [`Index::studies`] leaves it out and
//! [`Index::without_study`] counts it.
//!
//! UIDs never contain NUL (they are checked before they get here), so `\0`
//! delimits components and a prefix scan of `i/<uid>\0` finds exactly the
//! versions of that UID.
//!
//! # Invariants
//! - Every row of one received object is written by one atomic batch
//!   ([`Kv::apply`]); the batch is durable only after [`Kv::flush`], which the
//!   group committer calls before any C-STORE-RSP Success is sent.
//! - A row written before its object's spool file is durable (the group
//!   committer flushes file, directory and index at the same time) is
//!   covered by a pending marker written in the same atomic batch
//!   ([`pending`]); the object's outbox rows wait in the marker until the
//!   file is known durable.
//! - Rows are never removed by ingest; a second version of a SOP instance adds
//!   rows and a conflict record, it does not replace the first.
//! - Retention (`spool.retain_after_delivery_secs`) marks an object evicted,
//!   flushed, before its file is removed; its rows stay. An identical re-send
//!   brings the file back and clears the mark.
//!
//! # Crash behaviour
//! A crash loses at most the batches applied since the last flush; none of
//! those was acknowledged. Their spool files are found by startup recovery and
//! indexed again. Rows that became durable before their file did are found
//! by their pending marker and undone if the file is missing or torn. The whole index can be rebuilt from the spool
//! (`pacs-mirror reindex`), because each spool file carries its UIDs, the
//! calling AE, source address and receive time.

pub mod commitment;
pub mod kv;
pub mod outbox;
pub mod pending;
pub mod records;
pub mod sources;
pub mod studies;
pub mod tally;

use std::sync::Arc;

use outbox::{OUTBOX, outbox_key};

pub use kv::{DEFAULT_CACHE_BYTES, Kv, KvError, MemKv, Op, SledKv, SledOptions};
pub use pending::PendingRecord;
pub use records::{
    ConflictRecord, Finding, FindingClass, InstanceRecord, ObjectRecord, OutboxRecord, RecordError,
};

/// Index errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The engine failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// A stored record does not decode.
    #[error("index key {key}: {source}")]
    Record {
        key: String,
        #[source]
        source: RecordError,
    },
    /// A hash string that is not 64 hex digits.
    #[error("not a blake3 hex digest: {0:?}")]
    BadHash(String),
}

/// An object's identity: the blake3 digest of its data set bytes as
/// received. The spool file's name, the index's object rows and queue rows,
/// and the bucket's object key all derive from it, never from a UID.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        ObjectId(*blake3::hash(data).as_bytes())
    }

    /// The 32 digest bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::ops::Deref for ObjectId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for ObjectId {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<[u8; 32]> for ObjectId {
    fn from(b: [u8; 32]) -> Self {
        ObjectId(b)
    }
}

impl From<blake3::Hash> for ObjectId {
    fn from(h: blake3::Hash) -> Self {
        ObjectId(*h.as_bytes())
    }
}

impl TryFrom<&[u8]> for ObjectId {
    type Error = std::array::TryFromSliceError;
    fn try_from(b: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(b).map(ObjectId)
    }
}

impl std::fmt::Display for ObjectId {
    /// Lowercase hex, as in file names and the index dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// Lowercase hex of a digest (an [`ObjectId`] or any other).
pub fn hash_hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse a hex digest: 64 hex digits (either case), nothing else.
pub fn parse_hash(s: &str) -> Result<ObjectId, IndexError> {
    let bad = || IndexError::BadHash(s.to_string());
    // `from_str_radix` alone would also take a sign: "+f" is 15.
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(ObjectId(out))
}

/// What committing a received object did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// A new object (and a new version of its SOP instance).
    New,
    /// The same bytes were already indexed for this SOP instance: nothing written.
    Duplicate,
    /// A new version of a SOP instance already held with other bytes; both kept.
    Conflict {
        /// blake3 of the versions held before.
        other_versions: Vec<String>,
    },
}

/// Counts over the whole index.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Instance versions (rows of `index dump`).
    pub instances: u64,
    /// Distinct objects (spool files).
    pub objects: u64,
    /// Bytes of all spool files.
    pub bytes: u64,
    /// Objects whose spool file retention removed (delivered everywhere).
    pub evicted: u64,
    /// SOP instances received with differing contents.
    pub conflicts: u64,
    /// Studies.
    pub studies: u64,
    /// Series.
    pub series: u64,
    /// Outbox rows per target.
    pub outbox: std::collections::BTreeMap<String, u64>,
}

const OBJ: &[u8] = b"o/";
/// The agent clock's high-water mark (u64 BE).
const CLOCK_MARK: &[u8] = b"m/clock";
const INST: &[u8] = b"i/";
const HIER: &[u8] = b"h/";
const CONFLICT: &[u8] = b"c/";
const FINDINGS: &[u8] = b"n/";

fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 1 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// The typed index over a [`Kv`] engine.
#[derive(Clone)]
pub struct Index {
    kv: Arc<dyn Kv>,
    /// Held by the moves of rows into the queue that read it first
    /// ([`Index::requeue`], [`Index::resync`], [`Index::retry_dead_letters`]),
    /// so that two of them never both see an object unqueued and each
    /// write it a row. Shared by the clones.
    queue_moves: Arc<std::sync::Mutex<()>>,
    /// Held by every write of a delivered row (`d/`) together with the
    /// per-target count of them (`m/delivered`), a read-modify-write that
    /// must see every other one. Shared by the clones.
    delivered_rows: Arc<std::sync::Mutex<()>>,
    /// Held by every batch that writes a tallied row while its tallies are
    /// derived and applied with it ([`tally`]). Shared by the clones.
    tallies: Arc<std::sync::Mutex<()>>,
    /// Who waits for rows in a target's queue. Shared by the clones.
    watchers: Arc<QueueWatchers>,
}

/// The wake-ups of the queue's readers: every batch that writes a row into
/// `q/<target>` wakes the watchers of that target (a permit is kept for a
/// watcher that is not waiting yet, so no write is missed).
#[derive(Debug, Default)]
struct QueueWatchers(
    std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<Arc<tokio::sync::Notify>>>>,
);

impl QueueWatchers {
    /// Wake the watchers of each of `targets`.
    fn wake(&self, targets: &[&[u8]]) {
        let watchers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in targets {
            for n in watchers.get(*t).into_iter().flatten() {
                n.notify_one();
            }
        }
    }
}

/// The targets whose queue `ops` write a row into.
fn queues_written(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        if let Op::Put(k, _) = op
            && let Some(rest) = k.strip_prefix(OUTBOX)
        {
            let target = rest.split(|b| *b == 0).next().unwrap_or_default();
            if !out.iter().any(|t| t == target) {
                out.push(target.to_vec());
            }
        }
    }
    out
}

impl Index {
    /// Wrap an engine.
    pub fn new(kv: Arc<dyn Kv>) -> Self {
        Index {
            kv,
            queue_moves: Arc::default(),
            delivered_rows: Arc::default(),
            tallies: Arc::default(),
            watchers: Arc::default(),
        }
    }

    /// A wake-up for a reader of `target`'s queue: notified (a permit kept
    /// if it is not waiting) after every batch that writes a row into the
    /// queue — a new object durable here, a retry rescheduled, a requeue.
    pub fn watch_queue(&self, target: &str) -> Arc<tokio::sync::Notify> {
        let n = Arc::new(tokio::sync::Notify::new());
        self.watchers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(target.as_bytes().to_vec())
            .or_default()
            .push(n.clone());
        n
    }

    /// Apply one atomic batch, with the tallies it changes ([`tally`]), then
    /// wake the readers of any queue it wrote into. Every write of the index
    /// goes through here.
    fn apply(&self, mut ops: Vec<Op>) -> Result<(), KvError> {
        if ops.is_empty() {
            return Ok(());
        }
        let queues = queues_written(&ops);
        if tally::batch_is_tallied(&ops) {
            let _tally = self.lock_tallies();
            let tallies = tally::derive(&*self.kv, &ops)?;
            ops.extend(tallies);
            self.kv.apply(ops)?;
        } else {
            self.kv.apply(ops)?;
        }
        if !queues.is_empty() {
            let targets: Vec<&[u8]> = queues.iter().map(Vec::as_slice).collect();
            self.watchers.wake(&targets);
        }
        Ok(())
    }

    /// Take the queue-move lock (a panic while it was held left no partial
    /// batch: each batch is atomic, so a poisoned lock is taken as is).
    fn lock_queue_moves(&self) -> std::sync::MutexGuard<'_, ()> {
        self.queue_moves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take the tally lock (poisoning as in [`Index::lock_queue_moves`]).
    fn lock_tallies(&self) -> std::sync::MutexGuard<'_, ()> {
        self.tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Take the delivered-rows lock (poisoning as in
    /// [`Index::lock_queue_moves`]).
    fn lock_delivered_rows(&self) -> std::sync::MutexGuard<'_, ()> {
        self.delivered_rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Open the sled index in `dir` (with the default [`SledOptions`]).
    pub fn open(dir: &std::path::Path) -> Result<Self, IndexError> {
        Index::open_with(dir, &SledOptions::default())
    }

    /// Open the sled index in `dir` with `options` (the page cache bound
    /// of `[index] cache_bytes`).
    /// An index without tallies (written by an older build) has them
    /// rebuilt first ([`Index::ensure_tallies`]).
    pub fn open_with(dir: &std::path::Path, options: &SledOptions) -> Result<Self, IndexError> {
        let index = Index::new(Arc::new(SledKv::open_with(dir, options)?));
        if index.ensure_tallies()? {
            tracing::info!(index = %dir.display(), "index tallies rebuilt (first open by this version)");
        }
        Ok(index)
    }

    /// The latest time of the agent's clock the index recorded (Unix ms):
    /// the clock never starts before it ([`crate::clock::rebase`]).
    pub fn clock_high_water(&self) -> Result<Option<u64>, IndexError> {
        Ok(self
            .kv
            .get(CLOCK_MARK)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// Record the agent's clock (the running agent, every few seconds).
    pub fn put_clock_high_water(&self, ms: u64) -> Result<(), IndexError> {
        Ok(self.apply(vec![Op::Put(
            CLOCK_MARK.to_vec(),
            ms.to_be_bytes().to_vec(),
        )])?)
    }

    /// Make all applied batches durable.
    pub fn flush(&self) -> Result<(), IndexError> {
        Ok(self.kv.flush()?)
    }

    /// The object record of a spool file, if indexed.
    pub fn object(&self, hash: &ObjectId) -> Result<Option<ObjectRecord>, IndexError> {
        let k = key(&[OBJ, hash]);
        self.kv.get(&k)?.map(|v| decode_at(&k, &v)).transpose()
    }

    /// Every version held of a SOP instance.
    pub fn versions(&self, sop_instance_uid: &str) -> Result<Vec<InstanceRecord>, IndexError> {
        let mut prefix = key(&[INST, sop_instance_uid.as_bytes()]);
        prefix.push(0);
        self.kv
            .scan_prefix(&prefix)?
            .iter()
            .map(|(k, v)| decode_at(k, v))
            .collect()
    }

    /// Index a received object, atomically (not yet durable: call
    /// [`Index::flush`]). `targets` get an outbox row each when the object is
    /// new.
    pub fn commit_instance(
        &self,
        rec: &InstanceRecord,
        hash: &ObjectId,
        targets: &[String],
        now_ms: u64,
    ) -> Result<CommitOutcome, IndexError> {
        let (outcome, plan) = self.plan_instance(rec, hash, targets, now_ms)?;
        let mut ops = plan.rows;
        ops.extend(plan.outbox);
        if !ops.is_empty() {
            self.apply(ops)?;
        }
        Ok(outcome)
    }

    /// [`Index::commit_instance`] for an object whose file may not be
    /// durable yet: its rows are written with a pending marker, in one
    /// atomic batch, and its outbox rows are held in the marker until
    /// [`Index::finalize_pending`] (or reverted by
    /// [`Index::undo_pending`]). See [`pending`].
    pub fn commit_instance_pending(
        &self,
        rec: &InstanceRecord,
        hash: &ObjectId,
        targets: &[String],
        now_ms: u64,
    ) -> Result<CommitOutcome, IndexError> {
        self.commit_instance_pending_after(rec, hash, targets, now_ms, Vec::new())
    }

    /// [`Index::commit_instance_pending`], with `before` applied first in
    /// the same atomic batch (finalize operations of earlier objects, see
    /// [`Index::finalize_ops`]). On error nothing is applied, `before`
    /// included.
    pub fn commit_instance_pending_after(
        &self,
        rec: &InstanceRecord,
        hash: &ObjectId,
        targets: &[String],
        now_ms: u64,
        before: Vec<Op>,
    ) -> Result<CommitOutcome, IndexError> {
        let (outcome, plan) = self.plan_instance(rec, hash, targets, now_ms)?;
        self.apply_pending(hash, plan, before)?;
        Ok(outcome)
    }

    /// The rows indexing a received object writes, and what they create
    /// or replace.
    fn plan_instance(
        &self,
        rec: &InstanceRecord,
        hash: &ObjectId,
        targets: &[String],
        now_ms: u64,
    ) -> Result<(CommitOutcome, pending::Plan), IndexError> {
        let mut plan = pending::Plan::default();
        let held = self.versions(&rec.sop_instance_uid)?;
        let hex = hash_hex(hash);
        if held.iter().any(|r| r.blake3 == hex) {
            // Re-sent after retention removed it: the file is back.
            let obj_key = key(&[OBJ, hash]);
            if let Some(old) = self.kv.get(&obj_key)? {
                let mut obj: ObjectRecord = decode_at(&obj_key, &old)?;
                if obj.evicted_at_ms.is_some() {
                    obj.evicted_at_ms = None;
                    plan.rows
                        .push(Op::Put(obj_key.clone(), records::encode(&obj)));
                    plan.replaced.push((obj_key, old));
                }
            }
            return Ok((CommitOutcome::Duplicate, plan));
        }
        let sop = rec.sop_instance_uid.as_bytes();
        let inst_key = key(&[INST, sop, hash]);
        let hier_key = key(&[
            HIER,
            rec.study_instance_uid.as_bytes(),
            rec.series_instance_uid.as_bytes(),
            sop,
            hash,
        ]);
        plan.created.push(inst_key.clone());
        plan.rows.push(Op::Put(inst_key, records::encode(rec)));
        plan.created.push(hier_key.clone());
        plan.rows.push(Op::Put(hier_key, Vec::new()));
        // The object row may exist already when the same bytes were indexed
        // under another SOP instance UID (impossible for well-formed DICOM,
        // as the UID is inside the bytes) — then it is kept as it is.
        let obj_key = key(&[OBJ, hash]);
        let new_object = self.kv.get(&obj_key)?.is_none();
        if new_object {
            plan.created.push(obj_key.clone());
            plan.rows.push(Op::Put(
                obj_key,
                records::encode(&ObjectRecord {
                    sop_instance_uid: rec.sop_instance_uid.clone(),
                    dataset_bytes: rec.dataset_bytes,
                    file_bytes: rec.file_bytes,
                    sop_class_uid: rec.sop_class_uid.clone(),
                    transfer_syntax_uid: rec.transfer_syntax_uid.clone(),
                    evicted_at_ms: None,
                }),
            ));
            for target in targets {
                let k = outbox_key(target, now_ms, hash);
                plan.created.push(k.clone());
                plan.outbox.push(Op::Put(
                    k,
                    records::encode(&OutboxRecord {
                        enqueued_at_ms: now_ms,
                        attempts: 0,
                        last_error: None,
                        file_bytes: Some(rec.file_bytes),
                    }),
                ));
            }
        }
        if !rec.findings.is_empty() {
            let classes: Vec<FindingClass> = rec.findings.iter().map(|f| f.class).collect();
            let findings_key = key(&[FINDINGS, sop, hash]);
            plan.created.push(findings_key.clone());
            plan.rows
                .push(Op::Put(findings_key, records::encode(&classes)));
        }
        let outcome = if held.is_empty() {
            CommitOutcome::New
        } else {
            let other_versions: Vec<String> = held.into_iter().map(|r| r.blake3).collect();
            let conflict_key = key(&[CONFLICT, sop, hash]);
            plan.created.push(conflict_key.clone());
            plan.rows.push(Op::Put(
                conflict_key,
                records::encode(&ConflictRecord {
                    sop_instance_uid: rec.sop_instance_uid.clone(),
                    blake3: hex,
                    other_versions: other_versions.clone(),
                    detected_at_ms: now_ms,
                    calling_ae: rec.calling_ae.clone(),
                }),
            ));
            CommitOutcome::Conflict { other_versions }
        };
        Ok((outcome, plan))
    }

    /// Index an instance version known from `target`'s copy (`reindex
    /// --from`): the same instance, hierarchy, object and conflict rows as
    /// [`Index::commit_instance`], no outbox rows, the object delivered to
    /// `target`, and marked not in the spool unless `in_spool`. Returns
    /// false when the version was indexed already (nothing written).
    pub fn import_delivered(
        &self,
        rec: &InstanceRecord,
        hash: &ObjectId,
        in_spool: bool,
        target: &str,
        stored_blake3: &str,
        now_ms: u64,
    ) -> Result<bool, IndexError> {
        if self
            .versions(&rec.sop_instance_uid)?
            .iter()
            .any(|r| r.blake3 == hash_hex(hash))
        {
            return Ok(false);
        }
        self.commit_instance(rec, hash, &[], now_ms)?;
        if !in_spool {
            self.mark_evicted(hash, now_ms)?;
        }
        self.record_delivered(
            target,
            hash,
            &outbox::DeliveryRecord {
                delivered_at_ms: now_ms,
                attempts: 0,
                enqueued_at_ms: rec.received_at_ms,
                stored_blake3: Some(stored_blake3.to_string()),
            },
        )?;
        Ok(true)
    }

    /// Every instance version kept with findings (ascending by SOP
    /// Instance UID): costs what is flagged, not the archive.
    pub fn flagged(&self) -> Result<Vec<InstanceRecord>, IndexError> {
        let mut wanted: Vec<Vec<u8>> = Vec::new();
        self.kv.for_each_prefix(FINDINGS, &mut |k, _| {
            let mut k2 = INST.to_vec();
            k2.extend_from_slice(&k[FINDINGS.len()..]);
            wanted.push(k2);
            true
        })?;
        let mut out = Vec::with_capacity(wanted.len());
        for k in wanted {
            if let Some(v) = self.kv.get(&k)? {
                out.push(decode_at(&k, &v)?);
            }
        }
        Ok(out)
    }

    /// Whether this instance version was kept with findings.
    pub fn has_findings(
        &self,
        sop_instance_uid: &str,
        hash: &ObjectId,
    ) -> Result<bool, IndexError> {
        Ok(self
            .kv
            .get(&key(&[FINDINGS, sop_instance_uid.as_bytes(), hash]))?
            .is_some())
    }

    /// How many instance versions were kept with findings of each class
    /// (an instance with two findings of one class counts once for it).
    pub fn finding_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<FindingClass, u64>, IndexError> {
        self.finding_tallies()
    }

    /// How many instance versions have no (usable) Study Instance UID: no
    /// study lists them, so study-level checks (drills, `failover check`)
    /// cannot reach them and report them apart.
    pub fn without_study(&self) -> Result<u64, IndexError> {
        self.without_study_tally()
    }

    /// Visit every instance record (ascending by SOP Instance UID).
    pub fn for_each_instance(&self, f: &mut dyn FnMut(InstanceRecord)) -> Result<(), IndexError> {
        let mut err = None;
        self.kv
            .for_each_prefix(INST, &mut |k, v| match decode_at(k, v) {
                Ok(r) => {
                    f(r);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
        err.map_or(Ok(()), Err)
    }

    /// Visit every object record with its hash.
    pub fn for_each_object(
        &self,
        f: &mut dyn FnMut(ObjectId, ObjectRecord),
    ) -> Result<(), IndexError> {
        self.try_for_each_object(None, &mut |h, r| {
            f(h, r);
            Ok(true)
        })
    }

    /// [`Index::for_each_object`] from the object after `after` (ascending
    /// by hash), until `f` returns `Ok(false)` or an error (which is
    /// returned).
    pub(crate) fn try_for_each_object(
        &self,
        after: Option<&ObjectId>,
        f: &mut dyn FnMut(ObjectId, ObjectRecord) -> Result<bool, IndexError>,
    ) -> Result<(), IndexError> {
        let mut err = None;
        let after = after.map(|h| key(&[OBJ, h]));
        self.kv
            .for_each_prefix_after(OBJ, after.as_deref(), &mut |k, v| {
                let Ok(hash) = <ObjectId>::try_from(&k[OBJ.len()..]) else {
                    err = Some(IndexError::BadHash(String::from_utf8_lossy(k).into()));
                    return false;
                };
                match decode_at(k, v).and_then(|r| f(hash, r)) {
                    Ok(more) => more,
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
        err.map_or(Ok(()), Err)
    }

    /// Total bytes of the spool files the index knows (evicted ones excluded).
    pub fn spool_bytes(&self) -> Result<u64, IndexError> {
        Ok(self.spool_tally()?.bytes)
    }

    /// Record that retention is removing an object's spool file (flush
    /// before removing the file).
    pub fn mark_evicted(&self, hash: &ObjectId, now_ms: u64) -> Result<bool, IndexError> {
        let Some(mut obj) = self.object(hash)? else {
            return Ok(false);
        };
        obj.evicted_at_ms = Some(now_ms);
        self.apply(vec![Op::Put(key(&[OBJ, hash]), records::encode(&obj))])?;
        Ok(true)
    }

    /// The file of an evicted object is (still or again) in the spool.
    pub fn unevict(&self, hash: &ObjectId) -> Result<(), IndexError> {
        if let Some(mut obj) = self.object(hash)?
            && obj.evicted_at_ms.take().is_some()
        {
            self.apply(vec![Op::Put(key(&[OBJ, hash]), records::encode(&obj))])?;
        }
        Ok(())
    }

    /// Counts over the whole index.
    pub fn stats(&self) -> Result<Stats, IndexError> {
        let mut s = Stats::default();
        self.for_each_object(&mut |_, r| {
            s.objects += 1;
            if r.evicted_at_ms.is_none() {
                s.bytes += r.file_bytes;
            } else {
                s.evicted += 1;
            }
        })?;
        self.kv.for_each_prefix(INST, &mut |_, _| {
            s.instances += 1;
            true
        })?;
        let mut conflict_uids = std::collections::BTreeSet::new();
        self.kv.for_each_prefix(CONFLICT, &mut |k, _| {
            if let Some(end) = k.iter().skip(CONFLICT.len()).position(|b| *b == 0) {
                conflict_uids.insert(k[CONFLICT.len()..CONFLICT.len() + end].to_vec());
            }
            true
        })?;
        s.conflicts = conflict_uids.len() as u64;
        let (mut last_study, mut last_series) = (Vec::new(), Vec::new());
        self.kv.for_each_prefix(HIER, &mut |k, _| {
            let mut parts = k[HIER.len()..].splitn(3, |b| *b == 0);
            let study = parts.next().unwrap_or_default();
            let series = parts.next().unwrap_or_default();
            if study != last_study.as_slice() {
                s.studies += 1;
                last_study = study.to_vec();
                last_series.clear();
            }
            if series != last_series.as_slice() {
                s.series += 1;
                last_series = series.to_vec();
            }
            true
        })?;
        self.kv.for_each_prefix(OUTBOX, &mut |k, _| {
            let rest = &k[OUTBOX.len()..];
            let name = rest.split(|b| *b == 0).next().unwrap_or_default();
            *s.outbox
                .entry(String::from_utf8_lossy(name).into_owned())
                .or_default() += 1;
            true
        })?;
        Ok(s)
    }
}

fn decode_at<T: serde::de::DeserializeOwned + std::any::Any>(
    k: &[u8],
    v: &[u8],
) -> Result<T, IndexError> {
    records::decode(v).map_err(|source| IndexError::Record {
        key: String::from_utf8_lossy(k).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectId;

    /// "+f" pairs parsed as hex (u8::from_str_radix takes a sign), so a
    /// manifest's `blake3` of 32 "+f" named the object ffff…: a string we
    /// never write read as an address. Found triaging a `bucket_json` fuzz
    /// failure (upper-case hex, which stays accepted).
    #[test]
    fn a_hash_is_hex_digits_only() {
        let h = ObjectId([0xab; 32]);
        assert_eq!(parse_hash(&hash_hex(&h)).unwrap(), h);
        assert_eq!(parse_hash(&hash_hex(&h).to_uppercase()).unwrap(), h);
        assert!(parse_hash(&"+f".repeat(32)).is_err());
        assert!(parse_hash(&"ab".repeat(31)).is_err());
        assert!(parse_hash(&format!("{}é", "a".repeat(62))).is_err());
    }

    fn rec(uid: &str, hash: &ObjectId) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: uid.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            blake3: hash_hex(hash),
            dataset_bytes: 100,
            file_bytes: 400,
            patient_id: "P".into(),
            study_instance_uid: "1.2.9".into(),
            series_instance_uid: format!("1.2.9.{}", hash[0]),
            calling_ae: "SCU".into(),
            source_ip: "127.0.0.1".into(),
            received_at_ms: 1,
            study_date: String::new(),
            modality: String::new(),
            findings: Vec::new(),
        }
    }

    #[test]
    fn new_duplicate_conflict() {
        let idx = Index::new(Arc::new(MemKv::default()));
        let targets = vec!["mirror".to_string(), "backup".to_string()];
        let (h1, h2) = (ObjectId([1u8; 32]), ObjectId([2u8; 32]));
        assert_eq!(
            idx.commit_instance(&rec("1.2.3", &h1), &h1, &targets, 10)
                .unwrap(),
            CommitOutcome::New
        );
        assert_eq!(
            idx.commit_instance(&rec("1.2.3", &h1), &h1, &targets, 11)
                .unwrap(),
            CommitOutcome::Duplicate
        );
        assert_eq!(
            idx.commit_instance(&rec("1.2.3", &h2), &h2, &targets, 12)
                .unwrap(),
            CommitOutcome::Conflict {
                other_versions: vec![hash_hex(&h1)]
            }
        );
        // a UID that is a prefix of another is not confused with it
        let h3 = ObjectId([3u8; 32]);
        assert_eq!(
            idx.commit_instance(&rec("1.2.34", &h3), &h3, &targets, 13)
                .unwrap(),
            CommitOutcome::New
        );
        let versions = idx.versions("1.2.3").unwrap();
        assert_eq!(versions.len(), 2);
        let s = idx.stats().unwrap();
        assert_eq!(s.instances, 3);
        assert_eq!(s.objects, 3);
        assert_eq!(s.bytes, 1200);
        assert_eq!(s.conflicts, 1);
        assert_eq!(s.studies, 1);
        assert_eq!(s.series, 3);
        assert_eq!(s.outbox.get("mirror"), Some(&3));
        assert_eq!(s.outbox.get("backup"), Some(&3));
        assert_eq!(idx.object(&h2).unwrap().unwrap().file_bytes, 400);
    }

    #[test]
    fn hash_hex_round_trip() {
        let h = ObjectId::of(b"x");
        assert_eq!(parse_hash(&hash_hex(&h)).unwrap(), h);
        assert!(parse_hash("zz").is_err());
        assert!(parse_hash(&"g".repeat(64)).is_err());
    }
}
