//! The filesystem model: what the running system sees, and what a power
//! cut would leave of it.
//!
//! # What is remembered
//! - Each **file** has its current content (what reads return) and its
//!   *durable* content: the content as of its last successful
//!   `fsync`/`fdatasync`, built by replaying onto the previous durable
//!   content the writes and truncations made since (kept in order, with
//!   their data). A sync makes them durable; a sync that fails (an
//!   injected EIO) drops them for good, as Linux does with the dirty pages
//!   of a failed writeback: the content still reads back, a later sync
//!   succeeds, and none of it survives a cut ("fsyncgate").
//! - Each **directory** has its current entries and its *durable* entries:
//!   the entries as of its last successful `fsync`, and the entry
//!   operations made since (create, remove, rename), in order. A rename
//!   inside one directory is one operation; a rename between two
//!   directories is a removal in one and an insertion in the other,
//!   independent of each other (POSIX promises nothing about their order).
//!   A file's sync never makes its name durable.
//!
//! # What a power cut leaves ([`Model::power_cut`])
//! - Each directory keeps its durable entries plus a prefix of the
//!   operations since (none, all, or some: each directory's own metadata
//!   is written in order, and any of it may be lost).
//! - What is reachable from the root through the surviving entries
//!   survives; the rest is gone (a synced file whose name was never synced
//!   is lost with its name, as a directory whose entry in its parent was
//!   never synced is lost with everything in it).
//! - Each surviving file has its durable content with the unsynced
//!   writes replayed by a chosen fate: none of them, all of them, a prefix
//!   and the next one torn, or each one independently absent, applied,
//!   torn (only its first bytes) or zero-filled (a size update that outran
//!   the data: what it appended reads back as zeros; what it overwrote
//!   keeps its old bytes, as allocated blocks never read back as zeros).
//!
//! The state after the cut is clean: everything in it is durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use rand::Rng;

/// An inode number (1 is the root).
pub type Ino = u64;
pub const ROOT: Ino = 1;

/// The largest file the model holds (a test filesystem).
const MAX_FILE: u64 = 1 << 31;

/// Why an operation failed (mapped to errno by the FUSE layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    NotFound,
    Exists,
    NotEmpty,
    NotDir,
    IsDir,
    Invalid,
    TooBig,
    /// The filesystem is frozen (a power cut happened) or a fault was
    /// injected.
    Io,
    NoSpace,
}

/// Which operation a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOn {
    /// `fsync`/`fdatasync` of a regular file.
    FileSync,
    /// `fsync` of a directory.
    DirSync,
    /// `write` (and growing truncation) of a regular file.
    Write,
}

/// An injected fault: operations `on` what lies under `under` (a path
/// relative to the mount point, `""` for everything) fail with `error`,
/// `times` times (`None`: until cleared).
#[derive(Clone, Debug)]
pub struct Fault {
    pub on: FaultOn,
    pub under: String,
    pub error: FsError,
    pub times: Option<u32>,
}

#[derive(Clone, Debug)]
struct ActiveFault {
    fault: Fault,
    fired: u32,
}

#[derive(Clone, Debug)]
enum WriteOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug)]
enum DirOp {
    Insert(OsString, Ino),
    Remove(OsString),
    /// A rename inside this directory (atomic).
    Rename(OsString, OsString, Ino),
}

#[derive(Clone, Debug, Default)]
struct FileState {
    data: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<WriteOp>,
}

#[derive(Clone, Debug, Default)]
struct DirState {
    entries: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    unsynced: Vec<DirOp>,
}

#[derive(Clone, Debug)]
enum Body {
    File(FileState),
    Dir(DirState),
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Where it was last linked (for paths and fault matching).
    parent: Ino,
    name: OsString,
}

/// What `getattr` reports.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// Counts of what the running system did (to show a test reached what it
/// meant to).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub writes: u64,
    pub faults_fired: u64,
}

/// What a power cut threw away (to show a test's cuts were not benign).
#[derive(Clone, Copy, Debug, Default)]
pub struct CutReport {
    /// Unsynced directory operations lost.
    pub dir_ops_lost: usize,
    /// Unsynced directory operations kept.
    pub dir_ops_kept: usize,
    /// Unsynced file writes lost, torn or zero-filled.
    pub writes_damaged: usize,
    /// Unsynced file writes kept whole.
    pub writes_kept: usize,
    /// Files (inodes) that existed before the cut and are gone.
    pub files_lost: usize,
}

/// The whole filesystem.
#[derive(Clone, Debug)]
pub struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    frozen: bool,
    /// Changing operations so far, and the armed cut point.
    ops: u64,
    cut_at: Option<u64>,
    faults: Vec<ActiveFault>,
    counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

fn apply(buf: &mut Vec<u8>, op: &WriteOp) {
    match op {
        WriteOp::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[start..end].copy_from_slice(data);
        }
        WriteOp::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

fn apply_dir(entries: &mut BTreeMap<OsString, Ino>, op: &DirOp) {
    match op {
        DirOp::Insert(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename(from, to, ino) => {
            entries.remove(from);
            entries.insert(to.clone(), *ino);
        }
    }
}

impl Model {
    /// An empty filesystem: the root directory, durable.
    pub fn new() -> Self {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                body: Body::Dir(DirState::default()),
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: SystemTime::now(),
                parent: ROOT,
                name: OsString::new(),
            },
        );
        Model {
            inodes,
            next_ino: ROOT + 1,
            frozen: false,
            ops: 0,
            cut_at: None,
            faults: Vec::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Stop everything: every later operation fails with EIO (the power
    /// is off).
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    pub fn add_fault(&mut self, fault: Fault) -> usize {
        self.faults.push(ActiveFault { fault, fired: 0 });
        self.faults.len() - 1
    }

    /// How many times fault `id` fired.
    pub fn fired(&self, id: usize) -> u32 {
        self.faults.get(id).map_or(0, |f| f.fired)
    }

    /// Stop injecting (fired counts are kept).
    pub fn clear_faults(&mut self) {
        for f in &mut self.faults {
            f.fault.times = Some(0);
        }
    }

    /// Count one changing operation; past the armed cut point, the power
    /// goes off before it happens.
    fn tick(&mut self) -> Result<(), FsError> {
        self.live()?;
        self.ops += 1;
        if self.cut_at.is_some_and(|at| self.ops > at) {
            self.frozen = true;
            return Err(FsError::Io);
        }
        Ok(())
    }

    /// Changing operations so far (creations, removals, renames, writes,
    /// truncations, syncs).
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Cut the power just before changing operation number `after + 1`:
    /// that one and everything later fail with EIO ([`Model::is_frozen`]
    /// then says so; [`Model::power_cut`] gives what the disk holds).
    pub fn arm_cut(&mut self, after: u64) {
        self.cut_at = Some(after);
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    fn live(&self) -> Result<(), FsError> {
        if self.frozen {
            Err(FsError::Io)
        } else {
            Ok(())
        }
    }

    /// The path of `ino` relative to the root, `/`-separated.
    pub fn path(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        let mut guard = 0;
        while at != ROOT && guard < 4096 {
            let Some(node) = self.inodes.get(&at) else {
                break;
            };
            parts.push(node.name.to_string_lossy().into_owned());
            at = node.parent;
            guard += 1;
        }
        parts.reverse();
        parts.join("/")
    }

    /// The error of the first matching fault that still fires, counted.
    fn fault(&mut self, on: FaultOn, ino: Ino) -> Result<(), FsError> {
        if !self.faults.iter().any(|f| f.fault.on == on) {
            return Ok(());
        }
        let path = self.path(ino);
        for f in &mut self.faults {
            let under = f.fault.under.trim_end_matches('/');
            let matches = f.fault.on == on
                && (under.is_empty() || path == under || path.starts_with(&format!("{under}/")));
            if !matches || f.fault.times == Some(0) {
                continue;
            }
            if let Some(t) = &mut f.fault.times {
                *t -= 1;
            }
            f.fired += 1;
            self.counters.faults_fired += 1;
            return Err(f.fault.error);
        }
        Ok(())
    }

    fn node(&self, ino: Ino) -> Result<&Inode, FsError> {
        self.inodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Inode, FsError> {
        self.inodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: Ino) -> Result<&DirState, FsError> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirState, FsError> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileState, FsError> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(FsError::IsDir),
        }
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr, FsError> {
        self.live()?;
        let n = self.node(ino)?;
        let (is_dir, size) = match &n.body {
            Body::File(f) => (false, f.data.len() as u64),
            Body::Dir(d) => (true, d.entries.len() as u64),
        };
        Ok(Attr {
            ino,
            is_dir,
            size,
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
        })
    }

    /// The inode `name` in `parent` names.
    fn entry(&self, parent: Ino, name: &OsStr) -> Result<Ino, FsError> {
        self.dir(parent)?
            .entries
            .get(name)
            .copied()
            .ok_or(FsError::NotFound)
    }

    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, FsError> {
        self.live()?;
        let ino = self.entry(parent, name)?;
        self.attr(ino)
    }

    /// Create a file or directory `name` in `parent`.
    pub fn create(
        &mut self,
        parent: Ino,
        name: &OsStr,
        dir: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<Attr, FsError> {
        self.tick()?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = if dir {
            Body::Dir(DirState::default())
        } else {
            Body::File(FileState::default())
        };
        self.inodes.insert(
            ino,
            Inode {
                body,
                perm,
                uid,
                gid,
                mtime: SystemTime::now(),
                parent,
                name: name.to_os_string(),
            },
        );
        let d = self.dir_mut(parent)?;
        d.entries.insert(name.to_os_string(), ino);
        d.unsynced.push(DirOp::Insert(name.to_os_string(), ino));
        self.attr(ino)
    }

    /// Remove the entry `name` (a file, or an empty directory when `dir`).
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), FsError> {
        self.tick()?;
        let ino = self.entry(parent, name)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(d), true) if !d.entries.is_empty() => return Err(FsError::NotEmpty),
            (Body::Dir(_), false) => return Err(FsError::IsDir),
            (Body::File(_), true) => return Err(FsError::NotDir),
            _ => {}
        }
        let d = self.dir_mut(parent)?;
        d.entries.remove(name);
        d.unsynced.push(DirOp::Remove(name.to_os_string()));
        Ok(())
    }

    /// rename(2); `noreplace` is `RENAME_NOREPLACE`.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), FsError> {
        self.tick()?;
        let ino = self.entry(parent, name)?;
        let moving_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        if let Some(&existing) = self.dir(new_parent)?.entries.get(new_name) {
            if noreplace {
                return Err(FsError::Exists);
            }
            if existing == ino {
                return Ok(());
            }
            match (&self.node(existing)?.body, moving_dir) {
                (Body::Dir(d), true) if !d.entries.is_empty() => return Err(FsError::NotEmpty),
                (Body::Dir(_), false) => return Err(FsError::IsDir),
                (Body::File(_), true) => return Err(FsError::NotDir),
                _ => {}
            }
        }
        if parent == new_parent {
            let d = self.dir_mut(parent)?;
            d.entries.remove(name);
            d.entries.insert(new_name.to_os_string(), ino);
            d.unsynced.push(DirOp::Rename(
                name.to_os_string(),
                new_name.to_os_string(),
                ino,
            ));
        } else {
            let d = self.dir_mut(parent)?;
            d.entries.remove(name);
            d.unsynced.push(DirOp::Remove(name.to_os_string()));
            let d = self.dir_mut(new_parent)?;
            d.entries.insert(new_name.to_os_string(), ino);
            d.unsynced.push(DirOp::Insert(new_name.to_os_string(), ino));
        }
        let n = self.node_mut(ino)?;
        n.parent = new_parent;
        n.name = new_name.to_os_string();
        Ok(())
    }

    /// The entries of a directory, sorted by name.
    pub fn entries(&self, ino: Ino) -> Result<Vec<(OsString, Ino, bool)>, FsError> {
        self.live()?;
        let d = self.dir(ino)?;
        Ok(d.entries
            .iter()
            .map(|(n, i)| {
                let is_dir = matches!(self.inodes.get(i).map(|x| &x.body), Some(Body::Dir(_)));
                (n.clone(), *i, is_dir)
            })
            .collect())
    }

    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        self.live()?;
        match &self.node(ino)?.body {
            Body::File(f) => {
                let start = (offset as usize).min(f.data.len());
                let end = start.saturating_add(size as usize).min(f.data.len());
                Ok(f.data[start..end].to_vec())
            }
            Body::Dir(_) => Err(FsError::IsDir),
        }
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        self.tick()?;
        if offset.saturating_add(data.len() as u64) > MAX_FILE {
            return Err(FsError::TooBig);
        }
        self.fault(FaultOn::Write, ino)?;
        self.counters.writes += 1;
        let op = WriteOp::Write {
            offset,
            data: data.to_vec(),
        };
        let f = self.file_mut(ino)?;
        apply(&mut f.data, &op);
        f.unsynced.push(op);
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(data.len())
    }

    pub fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), FsError> {
        self.tick()?;
        if len > MAX_FILE {
            return Err(FsError::TooBig);
        }
        let grows = match &self.node(ino)?.body {
            Body::File(f) => len > f.data.len() as u64,
            Body::Dir(_) => return Err(FsError::IsDir),
        };
        if grows {
            self.fault(FaultOn::Write, ino)?;
        }
        let op = WriteOp::SetLen(len);
        let f = self.file_mut(ino)?;
        apply(&mut f.data, &op);
        f.unsynced.push(op);
        self.node_mut(ino)?.mtime = SystemTime::now();
        Ok(())
    }

    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), FsError> {
        self.live()?;
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    /// fsync/fdatasync of a file or fsync of a directory. A failure (an
    /// injected fault) drops what it would have made durable.
    pub fn sync(&mut self, ino: Ino) -> Result<(), FsError> {
        self.tick()?;
        let is_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        let on = if is_dir {
            FaultOn::DirSync
        } else {
            FaultOn::FileSync
        };
        let failed = self.fault(on, ino);
        if is_dir {
            self.counters.dir_syncs += 1;
        } else {
            self.counters.file_syncs += 1;
        }
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => {
                let ops = std::mem::take(&mut f.unsynced);
                if failed.is_ok() {
                    for op in &ops {
                        apply(&mut f.durable, op);
                    }
                }
            }
            Body::Dir(d) => {
                let ops = std::mem::take(&mut d.unsynced);
                if failed.is_ok() {
                    for op in &ops {
                        apply_dir(&mut d.durable, op);
                    }
                }
            }
        }
        failed
    }

    /// Bytes held (current contents).
    pub fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.data.len() as u64,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    /// The state a power cut at this instant leaves (see the module
    /// header), clean and unfrozen; `self` is frozen.
    pub fn power_cut(&mut self, rng: &mut impl Rng) -> (Model, CutReport) {
        self.frozen = true;
        let mut report = CutReport::default();

        // 1. Each directory: durable entries and a prefix of the rest.
        let mut dirs: HashMap<Ino, BTreeMap<OsString, Ino>> = HashMap::new();
        let mut dir_inos: Vec<Ino> = self
            .inodes
            .iter()
            .filter(|(_, n)| matches!(n.body, Body::Dir(_)))
            .map(|(i, _)| *i)
            .collect();
        dir_inos.sort_unstable();
        for ino in dir_inos {
            let Some(Inode {
                body: Body::Dir(d), ..
            }) = self.inodes.get(&ino)
            else {
                continue;
            };
            let n = d.unsynced.len();
            let keep = match rng.random_range(0..3) {
                0 => 0,
                1 => n,
                _ => rng.random_range(0..=n),
            };
            report.dir_ops_kept += keep;
            report.dir_ops_lost += n - keep;
            let mut entries = d.durable.clone();
            for op in &d.unsynced[..keep] {
                apply_dir(&mut entries, op);
            }
            dirs.insert(ino, entries);
        }

        // 2. What the root still reaches.
        let reached = self.reachable(|ino| dirs.get(&ino));
        let seen: HashSet<Ino> = reached.iter().map(|(i, _, _)| *i).collect();

        // 3. Each surviving file: durable content and a fate for the rest.
        let mut inodes = HashMap::new();
        for (ino, parent, name) in reached {
            let Some(old) = self.inodes.get(&ino) else {
                continue;
            };
            let body = match &old.body {
                Body::Dir(_) => {
                    let entries: BTreeMap<OsString, Ino> = dirs
                        .remove(&ino)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|(_, c)| seen.contains(c))
                        .collect();
                    Body::Dir(DirState {
                        durable: entries.clone(),
                        entries,
                        unsynced: Vec::new(),
                    })
                }
                Body::File(f) => {
                    let data = survive(f, rng, &mut report);
                    Body::File(FileState {
                        durable: data.clone(),
                        data,
                        unsynced: Vec::new(),
                    })
                }
            };
            inodes.insert(
                ino,
                Inode {
                    body,
                    perm: old.perm,
                    uid: old.uid,
                    gid: old.gid,
                    mtime: old.mtime,
                    parent,
                    name,
                },
            );
        }
        // Files the running system could reach (removed ones are not
        // counted) that the cut took.
        report.files_lost = self
            .reachable(|ino| match self.inodes.get(&ino).map(|n| &n.body) {
                Some(Body::Dir(d)) => Some(&d.entries),
                _ => None,
            })
            .iter()
            .filter(|(i, _, _)| {
                matches!(self.inodes.get(i).map(|n| &n.body), Some(Body::File(_)))
                    && !inodes.contains_key(i)
            })
            .count();
        (
            Model {
                inodes,
                next_ino: self.next_ino,
                frozen: false,
                ops: 0,
                cut_at: None,
                faults: Vec::new(),
                counters: Counters::default(),
            },
            report,
        )
    }
}

/// A write whose size update outran its data: the part beyond the file's
/// length reads back as zeros, the part over existing bytes keeps them (an
/// overwrite of allocated blocks never reads back as zeros).
fn zero_filled(buf: &mut Vec<u8>, op: &WriteOp) {
    match op {
        WriteOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
        }
        other => apply(buf, other),
    }
}

impl Model {
    /// Every inode the root reaches through `entries` (each directory's
    /// entries, current or surviving), with the parent and name it was
    /// first reached by; the root first.
    fn reachable<'a>(
        &self,
        entries: impl Fn(Ino) -> Option<&'a BTreeMap<OsString, Ino>>,
    ) -> Vec<(Ino, Ino, OsString)> {
        let mut reached: Vec<(Ino, Ino, OsString)> = vec![(ROOT, ROOT, OsString::new())];
        let mut seen: HashSet<Ino> = HashSet::from([ROOT]);
        let mut i = 0;
        while i < reached.len() {
            let ino = reached[i].0;
            if let Some(children) = entries(ino) {
                for (name, child) in children {
                    if self.inodes.contains_key(child) && seen.insert(*child) {
                        reached.push((*child, ino, name.clone()));
                    }
                }
            }
            i += 1;
        }
        reached
    }
}

/// The first bytes of a write (any number, none to all).
fn torn(op: &WriteOp, rng: &mut impl Rng) -> WriteOp {
    match op {
        WriteOp::Write { offset, data } => WriteOp::Write {
            offset: *offset,
            data: data[..rng.random_range(0..=data.len())].to_vec(),
        },
        other => other.clone(),
    }
}

/// A file's content after a cut: its durable content and its unsynced
/// writes replayed by one chosen fate.
fn survive(f: &FileState, rng: &mut impl Rng, report: &mut CutReport) -> Vec<u8> {
    let mut data = f.durable.clone();
    let n = f.unsynced.len();
    if n == 0 {
        return data;
    }
    match rng.random_range(0..4) {
        // All lost.
        0 => report.writes_damaged += n,
        // All kept.
        1 => {
            for op in &f.unsynced {
                apply(&mut data, op);
            }
            report.writes_kept += n;
        }
        // A prefix, then one torn.
        2 => {
            let k = rng.random_range(0..n);
            for op in &f.unsynced[..k] {
                apply(&mut data, op);
            }
            let t = torn(&f.unsynced[k], rng);
            apply(&mut data, &t);
            report.writes_kept += k;
            report.writes_damaged += n - k;
        }
        // Each on its own: absent, applied, torn or zero-filled.
        _ => {
            for op in &f.unsynced {
                match rng.random_range(0..4) {
                    0 => report.writes_damaged += 1,
                    1 => {
                        apply(&mut data, op);
                        report.writes_kept += 1;
                    }
                    2 => {
                        let t = torn(op, rng);
                        apply(&mut data, &t);
                        report.writes_damaged += 1;
                    }
                    _ => {
                        zero_filled(&mut data, op);
                        report.writes_damaged += 1;
                    }
                }
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(m: &mut Model, parent: Ino, name: &str, data: &[u8]) -> Ino {
        let a = m
            .create(parent, os(name), false, 0o644, 0, 0)
            .expect("create");
        m.write(a.ino, 0, data).expect("write");
        a.ino
    }

    /// A filesystem holding `name` in the root, its data and name synced.
    fn synced_file(name: &str, data: &[u8]) -> (Model, Ino) {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, name, data);
        m.sync(f).expect("sync");
        m.sync(ROOT).expect("sync root");
        (m, f)
    }

    /// What the cut of schedule `seed` leaves.
    fn cut(m: &mut Model, seed: u64) -> Model {
        m.power_cut(&mut rand::rngs::StdRng::seed_from_u64(seed)).0
    }

    fn content(m: &Model, parent: Ino, name: &str) -> Option<Vec<u8>> {
        let a = m.lookup(parent, os(name)).ok()?;
        Some(m.read(a.ino, 0, u32::MAX).expect("read"))
    }

    /// Every seed: what was synced (data and name) survives exactly.
    #[test]
    fn synced_data_and_names_always_survive() {
        for seed in 0..200 {
            let mut m = Model::new();
            let d = m
                .create(ROOT, os("d"), true, 0o755, 0, 0)
                .expect("mkdir")
                .ino;
            m.sync(ROOT).expect("sync root");
            let f = file(&mut m, d, "a", b"hello world");
            m.sync(f).expect("sync file");
            m.sync(d).expect("sync dir");
            // Unsynced afterwards: more data, a new file, a removal.
            m.write(f, 5, b" THERE").expect("write");
            file(&mut m, d, "b", b"unsynced");
            let after = cut(&mut m, seed);
            let got = content(&after, d, "a").expect("a survives");
            assert!(got.starts_with(b"hello"), "seed {seed}: {got:?}");
            assert!(got.len() >= 11, "seed {seed}: synced length kept");
        }
    }

    /// Across seeds, unsynced data and names are sometimes lost, torn or
    /// zero-filled, and sometimes kept: the cuts are not benign.
    #[test]
    fn unsynced_data_and_names_are_lost_torn_or_kept() {
        let (mut lost_name, mut kept_name, mut torn, mut zeros, mut whole) = (0, 0, 0, 0, 0);
        for seed in 0..400 {
            let mut m = Model::new();
            let f = file(&mut m, ROOT, "f", &[7u8; 64]);
            m.sync(f).expect("file synced, its name not");
            m.write(f, 64, &[9u8; 64]).expect("write");
            let after = cut(&mut m, seed);
            match content(&after, ROOT, "f") {
                None => lost_name += 1,
                Some(c) => {
                    kept_name += 1;
                    assert_eq!(&c[..64], &[7u8; 64], "seed {seed}: synced part");
                    let tail = &c[64..];
                    if tail.len() == 64 && tail.iter().all(|b| *b == 9) {
                        whole += 1;
                    } else if !tail.is_empty() && tail.iter().all(|b| *b == 0) {
                        zeros += 1;
                    } else if tail.len() < 64 {
                        torn += 1;
                    }
                }
            }
        }
        assert!(lost_name > 50 && kept_name > 50, "{lost_name} {kept_name}");
        assert!(
            torn > 10 && zeros > 5 && whole > 10,
            "{torn} {zeros} {whole}"
        );
    }

    /// Rewriting synced bytes in place (sled rewrites its `conf` file so on
    /// every open) never leaves zeros or a shorter file, whatever the fate.
    #[test]
    fn an_unsynced_overwrite_of_synced_bytes_leaves_old_or_new_bytes() {
        for seed in 0..300 {
            let (mut m, f) = synced_file("conf", b"AAAAAAAA");
            m.write(f, 0, b"BBBBBBBB").expect("overwrite");
            let after = cut(&mut m, seed);
            let c = content(&after, ROOT, "conf").expect("kept");
            assert_eq!(c.len(), 8, "seed {seed}");
            assert!(
                c.iter().all(|b| *b == b'A' || *b == b'B'),
                "seed {seed}: {c:?}"
            );
        }
    }

    /// A synced file whose directory entry was never synced can vanish; a
    /// directory whose entry was never synced takes its contents with it.
    #[test]
    fn names_need_their_directory_synced() {
        let mut gone_dir = 0;
        for seed in 0..100 {
            let mut m = Model::new();
            let d = m
                .create(ROOT, os("d"), true, 0o755, 0, 0)
                .expect("mkdir")
                .ino;
            let f = file(&mut m, d, "a", b"x");
            m.sync(f).expect("sync");
            m.sync(d).expect("sync d, not root");
            let after = cut(&mut m, seed);
            if after.lookup(ROOT, os("d")).is_err() {
                gone_dir += 1;
                assert!(after.attr(f).is_err(), "seed {seed}: unreachable file kept");
            }
        }
        assert!(gone_dir > 20, "{gone_dir}");
    }

    /// A rename inside one directory is atomic: the file has the old name
    /// or the new one, never neither.
    #[test]
    fn a_rename_in_one_directory_is_atomic() {
        for seed in 0..200 {
            let (mut m, _) = synced_file("tmp", b"data");
            m.rename(ROOT, os("tmp"), ROOT, os("final"), true)
                .expect("rename");
            let after = cut(&mut m, seed);
            let old = content(&after, ROOT, "tmp");
            let new = content(&after, ROOT, "final");
            assert!(old.is_some() != new.is_some(), "seed {seed}");
            assert_eq!(old.or(new).expect("one"), b"data");
        }
    }

    /// After a failed sync the data reads back and a later sync succeeds,
    /// but none of what the failed sync covered survives a cut.
    #[test]
    fn a_failed_sync_loses_its_data_for_good() {
        for seed in 0..50 {
            let (mut m, f) = synced_file("f", b"old!");
            let id = m.add_fault(Fault {
                on: FaultOn::FileSync,
                under: "f".into(),
                error: FsError::Io,
                times: Some(1),
            });
            m.write(f, 0, b"new!").expect("write");
            assert_eq!(m.sync(f), Err(FsError::Io));
            assert_eq!(m.fired(id), 1);
            assert_eq!(m.read(f, 0, 4).expect("read"), b"new!");
            m.sync(f).expect("the second sync succeeds");
            let after = cut(&mut m, seed);
            assert_eq!(content(&after, ROOT, "f").expect("kept"), b"old!");
        }
    }

    #[test]
    fn faults_match_by_path_and_count_down() {
        let mut m = Model::new();
        let d = m
            .create(ROOT, os("index"), true, 0o755, 0, 0)
            .expect("mkdir")
            .ino;
        let a = file(&mut m, d, "db", b"");
        let b = file(&mut m, ROOT, "indexer", b"");
        let id = m.add_fault(Fault {
            on: FaultOn::Write,
            under: "index".into(),
            error: FsError::NoSpace,
            times: Some(2),
        });
        assert_eq!(m.write(b, 0, b"x"), Ok(1), "a sibling with the same prefix");
        assert_eq!(m.write(a, 0, b"x"), Err(FsError::NoSpace));
        assert_eq!(m.set_len(a, 10), Err(FsError::NoSpace));
        assert_eq!(m.write(a, 0, b"x"), Ok(1), "spent");
        assert_eq!(m.fired(id), 2);
    }

    #[test]
    fn an_armed_cut_stops_before_the_next_changing_operation() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"x"); // create + write: 2 ops
        assert_eq!(m.ops(), 2);
        m.arm_cut(3);
        m.write(f, 1, b"y").expect("op 3 happens");
        assert!(!m.is_frozen());
        assert_eq!(m.sync(f), Err(FsError::Io), "op 4 does not");
        assert!(m.is_frozen());
        assert_eq!(m.read(f, 0, 2), Err(FsError::Io));
    }

    #[test]
    fn a_frozen_filesystem_refuses_everything() {
        let mut m = Model::new();
        let f = file(&mut m, ROOT, "f", b"x");
        m.freeze();
        assert_eq!(m.write(f, 0, b"y"), Err(FsError::Io));
        assert_eq!(m.sync(f), Err(FsError::Io));
        assert!(m.lookup(ROOT, os("f")).is_err());
    }
}
