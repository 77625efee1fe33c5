//! The key-value engine behind the index, as a small trait.
//!
//! Invariants every engine must keep (checked by `kv_conformance` below):
//! - `apply` is atomic: after a crash either every operation of a batch is
//!   visible or none is.
//! - after `flush` returns `Ok`, every batch applied before the call survives a
//!   crash (process kill or power loss).
//! - `for_each_prefix_after` (under every scan) yields keys in ascending byte
//!   order, only keys under the prefix, and only those after `after`.
//!
//! sled keeps writes in memory; nothing is durable until `flush` returns (its
//! 500 ms background flusher is turned off: every write path flushes
//! explicitly). The group committer (`crate::commit`) is the only caller of
//! `flush` on the ingest path.
//!
//! sled's own flush is not enough for power loss: on Linux it ends with
//! `sync_file_range(2)` on its log file, which (its man page) neither flushes
//! the device's write cache nor writes the file's metadata, so "there are no
//! guarantees that the data will be available after a crash"; the only
//! `fsync` sled does on the log is in the background flusher turned off
//! above. So [`SledKv::flush`] also fdatasyncs sled's log file (`db`).
//!
//! sled's page cache is bounded by [`SledOptions::cache_bytes`] (`[index]
//! cache_bytes`); sled 0.34 keeps per-page state outside it, which still
//! grows with the archive. A new index writes its log zstd-compressed, in
//! sled's own 512 KiB segments: sled is log-structured and rewrites a leaf
//! (at most 16 rows) every few writes to it, so most of its log is dead
//! until its segment is cleaned, and compression cuts what an instance
//! costs on disk (`examples/index_size`; 8 MiB segments cut it further, but
//! sled then needs a whole segment of free space to open the index, which
//! a full disk does not have). sled records both parameters
//! in `<dir>/conf` and refuses to open an index with others, so an
//! existing index is opened with its own ([`SledKv::open_with`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

/// Errors of the key-value engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The engine reported an error (I/O, corruption).
    #[error("index engine: {0}")]
    Engine(String),
    /// The database is held by another process (a running agent).
    #[error("the index at {path} is in use by another process (is the agent running?)")]
    Locked { path: String },
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// Key-value pairs from a scan.
pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The engine interface.
pub trait Kv: Send + Sync {
    /// Read a key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// All pairs whose key starts with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvPairs, KvError> {
        let mut out = Vec::new();
        self.for_each_prefix(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }
    /// Visit pairs whose key starts with `prefix`, ascending, until `f` returns false.
    fn for_each_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        self.for_each_prefix_after(prefix, None, f)
    }
    /// [`Kv::for_each_prefix`] over the keys after `after` only (all of
    /// them for `None`): a long scan can be taken up where it stopped.
    fn for_each_prefix_after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError>;
    /// Apply a batch atomically (not yet durable).
    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError>;
    /// Make everything applied so far durable.
    fn flush(&self) -> Result<(), KvError>;
}

/// Where a scan of `prefix` after `after` starts: after `after`, or at the
/// prefix when `after` is `None` or sorts before it.
fn scan_start(prefix: &[u8], after: Option<&[u8]>) -> Bound<Vec<u8>> {
    match after {
        Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
        _ => Bound::Included(prefix.to_vec()),
    }
}

/// How long [`SledKv::open`] waits for a lock to be let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The production engine: one sled tree.
pub struct SledKv {
    db: sled::Db,
    /// sled's log file (`<dir>/db`), fdatasynced after each flush.
    log: std::fs::File,
}

/// Default bound on sled's page cache (64 MiB): what the index keeps in
/// memory, whatever the size of the archive.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// Default segment size of a new index's log: sled's own 512 KiB (larger
/// segments leave less dead space behind, but an open then needs a whole
/// segment free: on a full disk the index could not be opened).
pub const DEFAULT_SEGMENT_SIZE: usize = 512 << 10;

/// Default zstd level of a compressed index (sled's own is 5, no smaller
/// on the index's rows and slower to write).
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 1;

/// How [`SledKv::open_with`] opens sled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SledOptions {
    /// Bound on sled's page cache, in bytes (sled's own default is 1 GiB).
    pub cache_bytes: u64,
    /// Whether an index created by this open compresses its log (zstd).
    /// An existing index keeps what it was created with (sled refuses to
    /// open it otherwise).
    pub compression: bool,
    /// The log segment size of an index created by this open (a power of
    /// two); an existing index keeps its own.
    pub segment_size: usize,
    /// zstd's level (1 to 22) for what a compressed index writes.
    pub compression_level: i32,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            compression: true,
            segment_size: DEFAULT_SEGMENT_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
        }
    }
}

/// The storage parameters sled recorded in `<dir>/conf` when it created the
/// index (compression, segment size), if it did: sled refuses to open an
/// index with others, so an existing index is opened with its own.
fn created_with(dir: &Path) -> Option<(bool, usize)> {
    // Text lines, then a 4-byte checksum.
    let conf = std::fs::read(dir.join("conf")).ok()?;
    let conf = String::from_utf8_lossy(&conf);
    let value = |name: &str| {
        conf.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    Some((
        value("use_compression")?.parse().ok()?,
        value("segment_size")?.parse().ok()?,
    ))
}

impl SledKv {
    /// Open (or create) the database in `dir`, with the default
    /// [`SledOptions`].
    pub fn open(dir: &Path) -> Result<Self, KvError> {
        SledKv::open_with(dir, &SledOptions::default())
    }

    /// Open (or create) the database in `dir`: with `options`' cache
    /// bound, and, for an index created by this call, its compression and
    /// segment size (an existing index keeps those it was created with).
    pub fn open_with(dir: &Path, options: &SledOptions) -> Result<Self, KvError> {
        // The directory and, once sled made them, its files' names are
        // made durable here: sled syncs its log, never its directory.
        let durable =
            |e: std::io::Error| KvError::Engine(format!("making {} durable: {e}", dir.display()));
        crate::durable_dir::create_all(dir).map_err(durable)?;
        let (compression, segment_size) =
            created_with(dir).unwrap_or((options.compression, options.segment_size));
        let open = || {
            sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(options.cache_bytes)
                .use_compression(compression)
                .compression_factor(options.compression_level)
                .segment_size(segment_size)
                // Durability comes from explicit flushes (the group committer,
                // recovery, shutdown); the background flusher only competes
                // with them for the disk.
                .flush_every_ms(None)
                .open()
                .map_err(|e| match e {
                    sled::Error::Io(ref io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                        KvError::Locked {
                            path: dir.display().to_string(),
                        }
                    }
                    sled::Error::Io(ref io) if io.to_string().contains("lock") => KvError::Locked {
                        path: dir.display().to_string(),
                    },
                    e => KvError::Engine(e.to_string()),
                })
        };
        // A handle just dropped in this process releases its lock only when
        // sled's I/O pool lets go of the file, a moment later: a lock held
        // past LOCK_WAIT is another process's (a second agent, a CLI).
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match open() {
                Err(KvError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => break r?,
            }
        };
        let log_path = dir.join("db");
        let log = std::fs::File::open(&log_path).map_err(|e| {
            KvError::Engine(format!("opening the index log {}: {e}", log_path.display()))
        })?;
        // sled rewrites `conf` in place on every open and never syncs it:
        // a cut after the first open would leave it empty or torn, and
        // sled would refuse the index.
        std::fs::File::open(dir.join("conf"))
            .and_then(|f| f.sync_all())
            .map_err(durable)?;
        crate::durable_dir::sync(dir).map_err(durable)?;
        Ok(SledKv { db, log })
    }
}

impl SledKv {
    /// What sled's files take on disk, in bytes (its own figure: the log
    /// and any blobs).
    pub fn size_on_disk(&self) -> Result<u64, KvError> {
        self.db.size_on_disk().map_err(engine)
    }
}

fn engine(e: sled::Error) -> KvError {
    KvError::Engine(e.to_string())
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.db.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn for_each_prefix_after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        for item in self.db.range((scan_start(prefix, after), Bound::Unbounded)) {
            let (k, v) = item.map_err(engine)?;
            if !k.starts_with(prefix) || !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k, v),
                Op::Delete(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), KvError> {
        self.db.flush().map_err(engine)?;
        // See the module doc: sled's flush only sync_file_range()s the log.
        self.log
            .sync_data()
            .map_err(|e| KvError::Engine(format!("fdatasync of the index log: {e}")))
    }
}

/// An in-memory engine for unit tests; `flush` is a no-op.
#[derive(Default)]
pub struct MemKv {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemKv {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned lock only means another test thread panicked; the map is
        // still consistent because every mutation is a single call.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.lock().get(key).cloned())
    }

    fn for_each_prefix_after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), KvError> {
        // Copied out first: `f` may read the map.
        let pairs: KvPairs = self
            .lock()
            .range((scan_start(prefix, after), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in pairs {
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), KvError> {
        let mut map = self.lock();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    map.insert(k, v);
                }
                Op::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), KvError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv_conformance(kv: &dyn Kv) {
        kv.apply(vec![
            Op::Put(b"a/2".to_vec(), b"two".to_vec()),
            Op::Put(b"a/1".to_vec(), b"one".to_vec()),
            Op::Put(b"b/1".to_vec(), b"other".to_vec()),
            Op::Put(b"a".to_vec(), b"not under a/".to_vec()),
        ])
        .unwrap();
        kv.flush().unwrap();
        assert_eq!(kv.get(b"a/1").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(kv.get(b"zz").unwrap(), None);
        let keys: Vec<_> = kv
            .scan_prefix(b"a/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![b"a/1".to_vec(), b"a/2".to_vec()]);
        kv.apply(vec![
            Op::Delete(b"a/1".to_vec()),
            Op::Put(b"a/2".to_vec(), b"TWO".to_vec()),
        ])
        .unwrap();
        assert_eq!(kv.get(b"a/1").unwrap(), None);
        assert_eq!(kv.get(b"a/2").unwrap().as_deref(), Some(&b"TWO"[..]));
        let mut seen = 0;
        kv.for_each_prefix(b"", &mut |_, _| {
            seen += 1;
            seen < 2
        })
        .unwrap();
        assert_eq!(seen, 2);
        // taken up after a key: that key's successors under the prefix only
        kv.apply(vec![
            Op::Put(b"a/3".to_vec(), b"three".to_vec()),
            Op::Put(b"a/4".to_vec(), b"four".to_vec()),
        ])
        .unwrap();
        let after = |after: Option<&[u8]>, stop_after: usize| {
            let mut keys = Vec::new();
            kv.for_each_prefix_after(b"a/", after, &mut |k, _| {
                keys.push(String::from_utf8(k.to_vec()).unwrap());
                keys.len() < stop_after
            })
            .unwrap();
            keys
        };
        assert_eq!(after(None, 9), ["a/2", "a/3", "a/4"]);
        assert_eq!(after(Some(b"a/2"), 9), ["a/3", "a/4"]);
        assert_eq!(after(Some(b"a/25"), 9), ["a/3", "a/4"], "a key not held");
        assert_eq!(after(Some(b"a/2"), 1), ["a/3"], "stops when told");
        assert!(after(Some(b"a/4"), 9).is_empty(), "never into b/");
        assert!(after(Some(b"a/9"), 9).is_empty());
        assert_eq!(
            after(Some(b"a"), 9),
            ["a/2", "a/3", "a/4"],
            "`after` before the prefix"
        );
    }

    #[test]
    fn mem_conforms() {
        kv_conformance(&MemKv::default());
    }

    #[test]
    fn sled_conforms_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledKv::open(dir.path()).unwrap();
            kv_conformance(&kv);
            kv.flush().unwrap();
        }
        let kv = SledKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"a/2").unwrap().as_deref(), Some(&b"TWO"[..]));
        assert_eq!(
            created_with(dir.path()),
            Some((true, DEFAULT_SEGMENT_SIZE)),
            "a new index is compressed"
        );
    }

    /// An index created with other storage parameters (an index of an
    /// earlier release: not compressed) opens with its own: sled would
    /// refuse any change.
    #[test]
    fn an_index_keeps_the_parameters_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        let old = SledOptions {
            compression: false,
            segment_size: 1 << 20,
            ..SledOptions::default()
        };
        {
            let kv = SledKv::open_with(dir.path(), &old).unwrap();
            kv.apply(vec![Op::Put(b"k".to_vec(), b"v".to_vec())])
                .unwrap();
            kv.flush().unwrap();
        }
        let kv = SledKv::open(dir.path()).unwrap();
        assert_eq!(kv.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(kv);
        assert_eq!(created_with(dir.path()), Some((false, 1 << 20)));
    }
}
