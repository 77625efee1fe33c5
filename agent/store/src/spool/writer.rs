//! Writing one received object into a temp file, hashing the data set bytes
//! as they pass. Blocking I/O: run it on a blocking thread.
//!
//! Drop without [`ObjectWriter::finish`] removes the temp file, so an
//! abandoned or failed store never leaves a partial file behind (and a crash
//! leaves only a temp file, which start-up recovery removes).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{SpoolError, io_err};
use crate::index::ObjectId;

/// A temp file being written.
#[derive(Debug)]
pub struct ObjectWriter {
    file: Option<File>,
    path: PathBuf,
    hasher: blake3::Hasher,
    header_bytes: u64,
    dataset_bytes: u64,
    /// Early writeback while writing and fsync in [`ObjectWriter::finish`]
    /// (off only for throw-away scratch files, see [`ObjectWriter::scratch`]).
    durable: bool,
}

/// A complete temp file (fsynced unless written by a scratch writer).
#[derive(Debug)]
pub struct WrittenObject {
    /// The temp file (still in `tmp/`); removed on drop unless installed.
    pub temp: TempGuard,
    /// blake3 of the data set bytes.
    pub hash: ObjectId,
    /// Bytes of the file meta header (preamble + DICM + group 0002).
    pub header_bytes: u64,
    /// Bytes of the data set.
    pub dataset_bytes: u64,
}

impl WrittenObject {
    /// Total file length.
    pub fn file_bytes(&self) -> u64 {
        self.header_bytes + self.dataset_bytes
    }
}

/// Removes a temp file on drop unless [`TempGuard::keep`] was called.
#[derive(Debug)]
pub struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    /// The temp path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The file has been moved or linked away: do not remove it.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Create a new scratch file `<dir>/<tag>-<prefix>-<n>.dcm`, taking `n`
/// from `next`; never an existing file (up to 64 names are tried). Names
/// never contain a UID.
pub fn create_scratch_file(
    dir: &Path,
    tag: &str,
    prefix: u32,
    next: &mut dyn FnMut() -> u64,
) -> std::io::Result<(File, PathBuf)> {
    let mut attempts = 0;
    loop {
        let path = dir.join(format!("{tag}-{prefix:08x}-{:06}.dcm", next()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => return Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 64 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

impl ObjectWriter {
    /// Start with the file meta header (not hashed: the address is the data set's).
    pub fn new(mut file: File, path: PathBuf, header: &[u8]) -> Result<Self, SpoolError> {
        if let Err(e) = file.write_all(header) {
            let _ = fs::remove_file(&path);
            return Err(io_err("write", &path)(e));
        }
        Ok(ObjectWriter {
            file: Some(file),
            path,
            hasher: blake3::Hasher::new(),
            header_bytes: header.len() as u64,
            dataset_bytes: 0,
            durable: true,
        })
    }

    /// For a file that is only read back and removed soon (a restore
    /// drill's scratch copy): no early writeback while writing and no fsync
    /// in [`ObjectWriter::finish`], so that its pages can be dropped with the
    /// file without ever reaching the disk. Never for the spool.
    pub fn scratch(mut self) -> Self {
        self.durable = false;
        self
    }

    /// Append data set bytes.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(data).map_err(io_err("write", &self.path))?;
        self.hasher.update(data);
        let offset = self.header_bytes + self.dataset_bytes;
        self.dataset_bytes += data.len() as u64;
        if !self.durable {
            return Ok(());
        }
        // Start writing these pages back now, while later chunks are still on
        // the wire, so that the final fsync has little left to wait for.
        // (POSIX_FADV_DONTNEED initiates writeback of dirty pages; it drops
        // only pages already clean.) Advisory: failure is harmless.
        let _ = rustix::fs::fadvise(
            &*file,
            offset,
            std::num::NonZeroU64::new(data.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        Ok(())
    }

    /// fsync what has been written so far, on the caller's thread, so that
    /// the committer's own fsync in [`ObjectWriter::finish`] (which still
    /// happens: it is what durability rests on) finds little left to do.
    /// Backfill readers call it to spread that wait over several threads.
    pub fn sync_early(&self) -> Result<(), SpoolError> {
        match &self.file {
            Some(file) => file.sync_data().map_err(io_err("fsync", &self.path)),
            None => Ok(()),
        }
    }

    /// Data set bytes so far.
    pub fn dataset_bytes(&self) -> u64 {
        self.dataset_bytes
    }

    /// The temp file path (readable while writing, e.g. to parse the header).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync the file data (unless [`ObjectWriter::scratch`]) and return the
    /// finished object.
    pub fn finish(mut self) -> Result<WrittenObject, SpoolError> {
        let file = self.file.take();
        let temp = TempGuard {
            path: std::mem::take(&mut self.path),
            armed: true,
        };
        if self.durable
            && let Some(file) = file
        {
            // sync_data also makes the file length durable (what is needed to
            // read it back); name durability is the directory fsync's job.
            file.sync_data().map_err(io_err("fsync", temp.path()))?;
        }
        Ok(WrittenObject {
            hash: ObjectId::from(self.hasher.finalize()),
            header_bytes: self.header_bytes,
            dataset_bytes: self.dataset_bytes,
            temp,
        })
    }
}

impl ObjectWriter {
    /// Return the finished object without flushing it, with the descriptor
    /// that wrote it: the group committer renames the file into place first
    /// and flushes its data by this descriptor (it sees any writeback error)
    /// at the same time as the directory and the index; see `crate::commit`.
    pub fn finish_unsynced(mut self) -> Result<(WrittenObject, File), SpoolError> {
        let file = self.file.take();
        let temp = TempGuard {
            path: std::mem::take(&mut self.path),
            armed: true,
        };
        let file = file.ok_or_else(|| {
            io_err("finish", temp.path())(std::io::Error::other("already finished"))
        })?;
        Ok((
            WrittenObject {
                hash: ObjectId::from(self.hasher.finalize()),
                header_bytes: self.header_bytes,
                dataset_bytes: self.dataset_bytes,
                temp,
            },
            file,
        ))
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectId;

    #[test]
    fn scratch_files_never_reuse_a_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("get-0000002a-000000.dcm"), b"held").unwrap();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n - 1
        };
        let (_, path) = create_scratch_file(d.path(), "get", 42, &mut next).unwrap();
        assert_eq!(path, d.path().join("get-0000002a-000001.dcm"));
        assert_eq!(
            std::fs::read(d.path().join("get-0000002a-000000.dcm")).unwrap(),
            b"held"
        );
    }

    #[test]
    fn hashes_dataset_only_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.part");
        let f = File::create(&p).unwrap();
        let mut w = ObjectWriter::new(f, p.clone(), b"HEADER").unwrap();
        w.write_chunk(b"abc").unwrap();
        w.write_chunk(b"def").unwrap();
        let done = w.finish().unwrap();
        assert_eq!(done.hash, ObjectId::of(b"abcdef"));
        assert_eq!(done.file_bytes(), 12);
        assert_eq!(fs::read(&p).unwrap(), b"HEADERabcdef");
        drop(done);
        assert!(!p.exists(), "an uninstalled temp file is removed on drop");

        let p2 = d.path().join("b.part");
        let mut w = ObjectWriter::new(File::create(&p2).unwrap(), p2.clone(), b"H").unwrap();
        w.write_chunk(b"x").unwrap();
        drop(w);
        assert!(!p2.exists(), "an abandoned writer removes its temp file");
    }

    #[test]
    fn a_scratch_writer_writes_and_hashes_the_same() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.dcm");
        let f = File::create(&p).unwrap();
        let mut w = ObjectWriter::new(f, p.clone(), b"HEADER")
            .unwrap()
            .scratch();
        w.write_chunk(b"abc").unwrap();
        w.write_chunk(b"def").unwrap();
        let done = w.finish().unwrap();
        assert_eq!(done.hash, ObjectId::of(b"abcdef"));
        assert_eq!(done.file_bytes(), 12);
        done.temp.keep();
        assert_eq!(fs::read(&p).unwrap(), b"HEADERabcdef");

        let p2 = d.path().join("b.dcm");
        let mut w = ObjectWriter::new(File::create(&p2).unwrap(), p2.clone(), b"H")
            .unwrap()
            .scratch();
        w.write_chunk(b"x").unwrap();
        drop(w);
        assert!(!p2.exists(), "an abandoned scratch writer removes its file");
    }
}
