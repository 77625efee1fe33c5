//! The spool: received objects as Part-10 files, addressed by content.
//!
//! # Layout
//! ```text
//! <data_dir>/spool/
//!   tmp/<random>.part                  objects being received (never valid)
//!   objects/<hh>/<blake3 hex>.dcm      durable objects; hh = first two hex digits
//!   quarantine/<name>                  files recovery could not account for
//! ```
//! `<blake3 hex>` is the blake3 of the data set bytes (everything after the
//! File Meta Information group), exactly as received. A spool file is
//! `128 zero bytes + "DICM" + file meta group + data set bytes`. No path is ever
//! built from a UID or any other value received from the network.
//!
//! # Invariants
//! 1. A file under `objects/` is complete (in the page cache) before its name
//!    appears there: the bytes are written to `tmp/`, then renamed into
//!    `objects/` with `RENAME_NOREPLACE` (an existing copy is never
//!    overwritten; identical contents leave the temp file to be removed).
//! 2. Before Success is sent, the group committer (`crate::commit`) has
//!    flushed, after the rename, the file's data, the `objects/<hh>`
//!    directory and the index, all three at the same time, once per batch.
//!    Until then its data may not be durable under a durable name: such a
//!    file is either covered by a pending marker in the index (start-up
//!    recovery re-hashes it, `crate::recovery`) or unindexed (never
//!    acknowledged; [`Spool::place`] replaces it when the object arrives
//!    again, `reindex` adopts or quarantines it).
//! 3. Files under `objects/` are never modified. The ingest path removes
//!    only a file it has just placed whose data or directory flush failed
//!    (never acknowledged; its rows are undone). Otherwise only retention
//!    removes files, for objects every target has had for the configured
//!    time, after marking them evicted in the index (`crate::retention`).
//! 4. Quota: the bytes of indexed objects plus the bytes being received stay
//!    under `max_bytes`, and the filesystem keeps `min_free_bytes` free;
//!    otherwise the store is refused (A700) and its temp file removed.
//!
//! # Crash behaviour
//! A crash can leave: temp files (removed at start-up; never acknowledged),
//! objects linked into `objects/` but not indexed (replaced by a re-send,
//! adopted by `reindex`: indexed if good, keeping them loses
//! nothing; quarantined if their data did not survive), and objects of a
//! commit in flight, indexed with a
//! pending marker (re-hashed: kept if good, rows undone if missing or torn).
//! None of these was acknowledged, except pending objects whose file is good.

mod writer;

pub use writer::{ObjectWriter, WrittenObject, create_scratch_file};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::durable_dir;
use crate::index::{ObjectId, hash_hex};

/// Spool errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The spool quota would be exceeded.
    #[error("spool quota of {max_bytes} bytes reached ({used_bytes} bytes used)")]
    QuotaExceeded { max_bytes: u64, used_bytes: u64 },
    /// The filesystem's free space would fall under the watermark.
    #[error("only {free_bytes} bytes free on the spool filesystem (keeping {min_free_bytes})")]
    DiskFull {
        free_bytes: u64,
        min_free_bytes: u64,
    },
    /// The object is larger than the configured maximum.
    #[error("object larger than the {max_object_bytes}-byte limit")]
    ObjectTooLarge { max_object_bytes: u64 },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Object files `(hash from the name, path)`, and files whose name is not a
/// hash address.
pub type ObjectListing = (Vec<(ObjectId, PathBuf)>, Vec<PathBuf>);

/// Space limits of the spool.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolLimits {
    /// Quota on spooled bytes.
    pub max_bytes: Option<u64>,
    /// Free space to keep on the filesystem.
    pub min_free_bytes: u64,
    /// Largest object accepted.
    pub max_object_bytes: Option<u64>,
}

/// Result of linking a received object into `objects/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The object's path.
    pub path: PathBuf,
    /// The directory holding it (fsynced by the committer before Success).
    pub dir: PathBuf,
    /// False when a file with these contents was already there.
    pub created: bool,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    limits: SpoolLimits,
    /// Bytes of objects installed (indexed or being indexed).
    used_bytes: AtomicU64,
    /// Bytes of objects being received.
    reserved_bytes: AtomicU64,
}

impl Spool {
    /// Open or create the spool under `root`, with all fan-out directories
    /// created and made durable up front (no mkdir on the store path).
    pub fn open(root: &Path, limits: SpoolLimits) -> Result<Self, SpoolError> {
        let objects = root.join("objects");
        for dir in [
            root.to_path_buf(),
            root.join("tmp"),
            root.join("quarantine"),
            objects.clone(),
        ] {
            durable_dir::create_all(&dir).map_err(io_err("create", &dir))?;
        }
        for b in 0..=255u8 {
            let d = objects.join(format!("{b:02x}"));
            if !d.is_dir() {
                fs::create_dir(&d).map_err(io_err("create", &d))?;
            }
        }
        sync_dir(&objects)?;
        Ok(Spool {
            root: root.to_path_buf(),
            limits,
            used_bytes: AtomicU64::new(0),
            reserved_bytes: AtomicU64::new(0),
        })
    }

    /// The spool root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The temp directory.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The path of an object.
    pub fn object_path(&self, hash: &ObjectId) -> PathBuf {
        let hex = hash_hex(hash);
        self.root
            .join("objects")
            .join(&hex[..2])
            .join(format!("{hex}.dcm"))
    }

    /// Set the bytes already held (from the index, at start-up).
    pub fn set_used_bytes(&self, bytes: u64) {
        self.used_bytes.store(bytes, Ordering::SeqCst);
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::SeqCst)
    }

    /// Reserve room for `additional` bytes of an object being received, whose
    /// size so far (before this chunk) is `so_far`. On error nothing is reserved.
    pub fn reserve(&self, so_far: u64, additional: u64) -> Result<(), SpoolError> {
        if let Some(max) = self.limits.max_object_bytes
            && so_far + additional > max
        {
            return Err(SpoolError::ObjectTooLarge {
                max_object_bytes: max,
            });
        }
        let reserved = self.reserved_bytes.fetch_add(additional, Ordering::SeqCst) + additional;
        if let Some(max) = self.limits.max_bytes {
            let used = self.used_bytes() + reserved;
            if used > max {
                self.release(additional);
                return Err(SpoolError::QuotaExceeded {
                    max_bytes: max,
                    used_bytes: used - additional,
                });
            }
        }
        let free = free_bytes(&self.root)?;
        if free < additional.saturating_add(self.limits.min_free_bytes) {
            self.release(additional);
            return Err(SpoolError::DiskFull {
                free_bytes: free,
                min_free_bytes: self.limits.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Give back a reservation.
    pub fn release(&self, bytes: u64) {
        // saturating: a reservation is only released by its owner, but a bug
        // here must not wrap the counter and refuse every later store.
        let _ = self
            .reserved_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| {
                Some(r.saturating_sub(bytes))
            });
    }

    /// Turn a reservation into held bytes (object installed).
    pub fn commit_reservation(&self, reserved: u64, file_bytes: u64) {
        self.release(reserved);
        self.used_bytes.fetch_add(file_bytes, Ordering::SeqCst);
    }

    /// A reservation for one object being received, empty so far: grown
    /// chunk by chunk ([`Reservation::grow`]), turned into held bytes when
    /// the object is installed ([`Reservation::commit`]), released when
    /// dropped otherwise (refused, failed, abandoned).
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            spool: self.clone(),
            bytes: 0,
        }
    }

    /// A file of `bytes` left the spool (retention).
    pub fn forget(&self, bytes: u64) {
        let _ = self
            .used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Begin receiving an object: a new temp file.
    pub fn begin(&self) -> Result<(File, PathBuf), SpoolError> {
        let tmp = self.tmp_dir();
        loop {
            let name = format!("{:016x}.part", rand::random::<u64>());
            let path = tmp.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &path)(e)),
            }
        }
    }

    /// Move a complete temp file into `objects/` under its hash. Never
    /// replaces an existing object: the rename is `RENAME_NOREPLACE`; if the
    /// name exists (identical contents, as the name is their hash) the temp
    /// file is removed instead. Nothing is flushed here: before answering
    /// Success the caller flushes the file's data, [`Installed::dir`] and the
    /// index, in both cases (the existing name may be an instant old, its
    /// flushes not yet done).
    ///
    /// Unless `vouched_for(hash)` says the existing name is an object the
    /// index holds (or one placed an instant ago): then a name nobody
    /// vouches for — a file a crash left without rows, whose data may not
    /// have survived — is replaced by the temp file (an atomic rename), and
    /// the result is `created` as for a new name.
    pub fn place(
        &self,
        temp: &Path,
        hash: &ObjectId,
        vouched_for: &mut dyn FnMut(&ObjectId) -> bool,
    ) -> Result<Installed, SpoolError> {
        let path = self.object_path(hash);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        let created = match rustix::fs::renameat_with(
            rustix::fs::CWD,
            temp,
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) if !vouched_for(hash) => {
                fs::rename(temp, &path).map_err(io_err("rename", &path))?;
                tracing::warn!(
                    object = %hash_hex(hash),
                    "an unindexed spool file (left by a crash) was replaced by the object received again"
                );
                true
            }
            Err(rustix::io::Errno::EXIST) => {
                fs::remove_file(temp).map_err(io_err("remove", temp))?;
                false
            }
            Err(e) => return Err(io_err("rename", &path)(e.into())),
        };
        Ok(Installed { path, dir, created })
    }

    /// Remove every temp file (start-up recovery). Returns how many.
    pub fn remove_temp_files(&self) -> Result<usize, SpoolError> {
        let tmp = self.tmp_dir();
        let mut n = 0;
        for entry in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let entry = entry.map_err(io_err("list", &tmp))?;
            let p = entry.path();
            fs::remove_file(&p).map_err(io_err("remove", &p))?;
            n += 1;
        }
        if n > 0 {
            sync_dir(&tmp)?;
        }
        Ok(n)
    }

    /// Every object file: (hash from its name, path). Files whose name is not
    /// a hash are returned in the second list.
    pub fn list_objects(&self) -> Result<ObjectListing, SpoolError> {
        let objects = self.root.join("objects");
        let (mut good, mut odd) = (Vec::new(), Vec::new());
        for b in 0..=255u8 {
            let d = objects.join(format!("{b:02x}"));
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &d)(e)),
            };
            for entry in rd {
                let p = entry.map_err(io_err("list", &d))?.path();
                let hash = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".dcm"))
                    .and_then(|h| crate::index::parse_hash(h).ok());
                match hash {
                    Some(h) if self.object_path(&h) == p => good.push((h, p)),
                    _ => odd.push(p),
                }
            }
        }
        Ok((good, odd))
    }

    /// Move a file that cannot be accounted for into `quarantine/`.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, SpoolError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        let dest = self
            .root
            .join("quarantine")
            .join(format!("{:08x}-{name}", rand::random::<u32>()));
        fs::rename(path, &dest).map_err(io_err("quarantine", path))?;
        Ok(dest)
    }
}

/// fsync a directory so that the names in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    durable_dir::sync(dir).map_err(io_err("fsync dir", dir))
}

/// Room held in the spool for one object being received; released on
/// drop unless committed. See [`Spool::reservation`].
#[derive(Debug)]
pub struct Reservation {
    spool: Arc<Spool>,
    bytes: u64,
}

impl Reservation {
    /// Reserve `additional` bytes more ([`Spool::reserve`]). On error the
    /// reservation is unchanged.
    pub fn grow(&mut self, additional: u64) -> Result<(), SpoolError> {
        self.spool.reserve(self.bytes, additional)?;
        self.bytes += additional;
        Ok(())
    }

    /// Bytes reserved so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The object is installed: `file_bytes` are now held (0 when an
    /// identical copy was there already), the reservation is gone.
    pub fn commit(mut self, file_bytes: u64) {
        self.spool
            .commit_reservation(std::mem::take(&mut self.bytes), file_bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.spool.release(self.bytes);
        }
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, SpoolError> {
    let st = rustix::fs::statvfs(path).map_err(|e| SpoolError::Io {
        op: "statvfs",
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectId;
    use std::io::Write;

    fn spool(limits: SpoolLimits) -> (tempfile::TempDir, Spool) {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(&d.path().join("spool"), limits).unwrap();
        (d, s)
    }

    #[test]
    fn install_never_overwrites() {
        let (_d, s) = spool(SpoolLimits::default());
        let hash = ObjectId([7u8; 32]);
        let (mut f, p) = s.begin().unwrap();
        f.write_all(b"first").unwrap();
        let first = s.place(&p, &hash, &mut |_| true).unwrap();
        assert!(first.created);
        assert!(
            first
                .path
                .ends_with(format!("objects/07/{}.dcm", hash_hex(&hash)))
        );
        let (mut f, p2) = s.begin().unwrap();
        f.write_all(b"second").unwrap();
        let second = s.place(&p2, &hash, &mut |_| true).unwrap();
        assert!(!second.created);
        assert_eq!(fs::read(&first.path).unwrap(), b"first");
        assert!(!p.exists() && !p2.exists());
        let (objs, odd) = s.list_objects().unwrap();
        assert_eq!(objs, vec![(hash, first.path.clone())]);
        assert!(odd.is_empty());
        // A name nobody vouches for (a crash's leftover) is replaced.
        let (mut f, p3) = s.begin().unwrap();
        f.write_all(b"third").unwrap();
        let mut asked = Vec::new();
        let third = s
            .place(&p3, &hash, &mut |h| {
                asked.push(*h);
                false
            })
            .unwrap();
        assert!(third.created);
        assert_eq!(asked, [hash]);
        assert_eq!(fs::read(&first.path).unwrap(), b"third");
        assert!(!p3.exists());
    }

    #[test]
    fn quota_refuses_and_releases() {
        let (_d, s) = spool(SpoolLimits {
            max_bytes: Some(1000),
            min_free_bytes: 0,
            max_object_bytes: Some(800),
        });
        s.reserve(0, 600).unwrap();
        assert!(matches!(
            s.reserve(0, 500),
            Err(SpoolError::QuotaExceeded { .. })
        ));
        assert!(matches!(
            s.reserve(600, 300),
            Err(SpoolError::ObjectTooLarge { .. })
        ));
        s.commit_reservation(600, 650);
        assert_eq!(s.used_bytes(), 650);
        assert!(s.reserve(0, 400).is_err());
        s.reserve(0, 300).unwrap();
        s.release(300);
        s.reserve(0, 350).unwrap();
    }

    #[test]
    fn disk_watermark_refuses() {
        let (_d, s) = spool(SpoolLimits {
            max_bytes: None,
            min_free_bytes: u64::MAX / 2,
            max_object_bytes: None,
        });
        let err = s.reserve(0, 1).unwrap_err();
        assert!(matches!(err, SpoolError::DiskFull { .. }), "{err}");
    }

    #[test]
    fn temp_files_are_removed_and_odd_files_reported() {
        let (_d, s) = spool(SpoolLimits::default());
        let (_f, p) = s.begin().unwrap();
        assert_eq!(s.remove_temp_files().unwrap(), 1);
        assert!(!p.exists());
        let stray = s.root().join("objects/ab/not-a-hash.dcm");
        fs::write(&stray, b"x").unwrap();
        let (_, odd) = s.list_objects().unwrap();
        assert_eq!(odd, vec![stray.clone()]);
        let q = s.quarantine(&stray).unwrap();
        assert!(q.exists() && !stray.exists());
    }
}
