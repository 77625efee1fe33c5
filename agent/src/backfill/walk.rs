//! Walking the source folder of a backfill: every regular file below it, in
//! a stable order (names sorted within each directory), one at a time, so
//! that a tree of millions of files is never held in memory.
//!
//! Directories are descended into; symbolic links to files are read (the
//! file they point to); symbolic links to directories are not followed (no
//! loops) and are reported, like anything else that is not a regular file
//! and every directory that cannot be listed. One directory is never
//! descended into: the agent's own data directory, should it lie below the
//! source folder.

use std::fs;
use std::path::{Path, PathBuf};

/// One thing found under the source folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file (or a symbolic link to one) and its length.
    File {
        /// Its path.
        path: PathBuf,
        /// Its length in bytes when listed.
        bytes: u64,
    },
    /// Something that is not imported, with the reason.
    Unusable {
        /// Its path.
        path: PathBuf,
        /// Why it is not imported.
        reason: String,
    },
}

/// Visit every entry under `root`, depth first, names sorted; stop early
/// when `visit` returns false. `exclude` (canonical paths) are not descended
/// into.
pub fn walk(root: &Path, exclude: &[PathBuf], visit: &mut dyn FnMut(Entry) -> bool) {
    let _ = walk_dir(root, exclude, visit);
}

/// Files and bytes under `root` (what [`walk`] would visit as files).
pub fn count(root: &Path, exclude: &[PathBuf]) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    walk(root, exclude, &mut |e| {
        if let Entry::File { bytes: b, .. } = e {
            files += 1;
            bytes += b;
        }
        true
    });
    (files, bytes)
}

/// `Err(())` means "stop".
fn walk_dir(
    dir: &Path,
    exclude: &[PathBuf],
    visit: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), ()> {
    let listing = fs::read_dir(dir).and_then(|rd| {
        let mut names: Vec<PathBuf> = rd.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    });
    let names = match listing {
        Ok(n) => n,
        Err(e) => {
            return keep_going(visit(Entry::Unusable {
                path: dir.to_path_buf(),
                reason: format!("cannot list this directory: {e}"),
            }));
        }
    };
    for path in names {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                keep_going(visit(Entry::Unusable {
                    reason: format!("cannot read its metadata: {e}"),
                    path,
                }))?;
                continue;
            }
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let excluded = fs::canonicalize(&path).is_ok_and(|c| exclude.contains(&c));
            if !excluded {
                walk_dir(&path, exclude, visit)?;
            }
            continue;
        }
        let entry = if ft.is_file() {
            Entry::File {
                path,
                bytes: meta.len(),
            }
        } else if ft.is_symlink() {
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => Entry::File {
                    path,
                    bytes: m.len(),
                },
                Ok(m) if m.is_dir() => Entry::Unusable {
                    path,
                    reason: "symbolic link to a directory: not followed".into(),
                },
                Ok(_) => Entry::Unusable {
                    path,
                    reason: "symbolic link to something that is not a regular file".into(),
                },
                Err(e) => Entry::Unusable {
                    path,
                    reason: format!("dangling symbolic link: {e}"),
                },
            }
        } else {
            Entry::Unusable {
                path,
                reason: "not a regular file (device, FIFO or socket)".into(),
            }
        };
        keep_going(visit(entry))?;
    }
    Ok(())
}

fn keep_going(go_on: bool) -> Result<(), ()> {
    if go_on { Ok(()) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_depth_first_with_links_and_exclusions() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::create_dir_all(root.join("data/spool")).unwrap();
        fs::write(root.join("b/inner/z.dcm"), b"zz").unwrap();
        fs::write(root.join("b/a.dcm"), b"a").unwrap();
        fs::write(root.join("c.txt"), b"ccc").unwrap();
        fs::write(root.join("data/spool/x.dcm"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("c.txt"), root.join("d-link")).unwrap();
        std::os::unix::fs::symlink(root.join("b"), root.join("e-dirlink")).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("f-dangling")).unwrap();
        let exclude = vec![fs::canonicalize(root.join("data")).unwrap()];
        let mut seen = Vec::new();
        walk(root, &exclude, &mut |e| {
            seen.push(e);
            true
        });
        let rel = |e: &Entry| match e {
            Entry::File { path, bytes } => {
                format!("F {} {bytes}", path.strip_prefix(root).unwrap().display())
            }
            Entry::Unusable { path, .. } => {
                format!("U {}", path.strip_prefix(root).unwrap().display())
            }
        };
        let got: Vec<String> = seen.iter().map(rel).collect();
        assert_eq!(
            got,
            [
                "F b/a.dcm 1",
                "F b/inner/z.dcm 2",
                "F c.txt 3",
                "F d-link 3",
                "U e-dirlink",
                "U f-dangling"
            ]
        );
        assert_eq!(count(root, &exclude), (4, 9));
        // stopping early
        let mut n = 0;
        walk(root, &exclude, &mut |_| {
            n += 1;
            n < 2
        });
        assert_eq!(n, 2);
    }
}
