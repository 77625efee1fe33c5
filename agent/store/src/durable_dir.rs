//! Directories whose names survive a power cut.
//!
//! # Invariant
//! A directory made by [`create_all`] is durable when it returns: each
//! directory it created is named in a parent that was fsynced after the
//! creation (the parent of the topmost one included), and the directory
//! itself is fsynced. A file's fsync never makes its name durable, nor a
//! directory's fsync the directory's own name (POSIX; the power-cut tests
//! drop every name whose directory was not synced).
//!
//! # Crash behaviour
//! A crash inside [`create_all`] leaves some of the directories, each
//! empty; calling it again finishes the job. A crash inside [`replace`]
//! leaves either name pointing at a whole directory: the exchange is one
//! step.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// fsync a directory so that the names in it are durable.
pub fn sync(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `mkdir -p dir`, durably (see the module header): `dir` itself is
/// synced, and the parent of every level that was missing. The parent of a
/// directory that already existed is not touched (it may be a mount point,
/// or not ours to open).
pub fn create_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    // Bottom-up: each directory's entries, then its name in its parent.
    sync(dir)?;
    for d in &missing {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync(parent)?;
    }
    Ok(())
}

/// Put the directory `new` in the place of `live`, in one atomic step, and
/// make it durable: with `live` present the two names are exchanged
/// (`RENAME_EXCHANGE`: at every instant `live` names a whole directory, the
/// old one or the new) and `new` then names the old directory, returned for
/// the caller to remove or keep; without `live`, `new` is renamed to it.
/// Both must be in the same directory, which is fsynced.
pub fn replace(new: &Path, live: &Path) -> io::Result<Option<std::path::PathBuf>> {
    let parent = match live.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let old = if live.exists() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            new,
            rustix::fs::CWD,
            live,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(io::Error::from)?;
        Some(new.to_path_buf())
    } else {
        fs::rename(new, live)?;
        None
    };
    sync(parent)?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_existing_ones() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_all(&deep).unwrap();
        let f = t.path().join("file");
        fs::write(&f, b"x").unwrap();
        assert!(create_all(&f.join("under")).is_err(), "a file in the way");
    }

    #[test]
    fn replace_exchanges_whole_directories() {
        let t = tempfile::tempdir().unwrap();
        let (live, new) = (t.path().join("index"), t.path().join("index.new"));
        create_all(&new).unwrap();
        fs::write(new.join("v"), b"1").unwrap();
        assert_eq!(replace(&new, &live).unwrap(), None, "nothing to exchange");
        assert_eq!(fs::read(live.join("v")).unwrap(), b"1");
        create_all(&new).unwrap();
        fs::write(new.join("v"), b"2").unwrap();
        let old = replace(&new, &live).unwrap().unwrap();
        assert_eq!(fs::read(live.join("v")).unwrap(), b"2");
        assert_eq!(
            fs::read(old.join("v")).unwrap(),
            b"1",
            "the old one, for the caller"
        );
    }
}
