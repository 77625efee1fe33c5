//! A power-cut simulator for tests: a FUSE filesystem, held in memory,
//! that remembers per file the content as of its last `fsync`/`fdatasync`
//! and per directory the entries as of its last `fsync`, and on command
//! produces the state a power cut would leave (the worst cases of every
//! unsynced write: absent, torn, zero-filled; see [`model`]). It also
//! injects faults: EIO on a file or directory sync (after which what that
//! sync covered never becomes durable, as with Linux's page cache) and
//! ENOSPC or EIO on writes, under a chosen path.
//!
//! The model is LazyFS's (Jepsen's FUSE layer for testing databases)
//! taken further: LazyFS loses unsynced file data, this also loses unsynced
//! directory entries.
//!
//! ```no_run
//! # use pacs_mirror_powercut::*;
//! # use rand::SeedableRng;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(1);
//! let fs = Mounted::mount_new("/tmp/mnt".as_ref()).unwrap();
//! // ... run the system under test in /tmp/mnt, then:
//! let (survivor, report) = fs.power_cut(&mut rng); // everything now fails with EIO
//! // ... kill the system under test, then:
//! fs.unmount();
//! let fs = Mounted::mount(survivor, "/tmp/mnt".as_ref()).unwrap(); // what the disk held
//! ```
//!
//! Mounting needs `/dev/fuse` and root (or `fusermount3`).

mod fs;
pub mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use model::{Counters, CutReport, Fault, FaultOn, FsError, Model};

/// A mounted model.
pub struct Mounted {
    model: Arc<Mutex<Model>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

impl Mounted {
    /// Mount an empty filesystem at `mountpoint` (an existing directory).
    pub fn mount_new(mountpoint: &Path) -> io::Result<Mounted> {
        Mounted::mount(Model::new(), mountpoint)
    }

    /// Mount `model` (e.g. what a power cut left) at `mountpoint`.
    pub fn mount(model: Model, mountpoint: &Path) -> io::Result<Mounted> {
        let model = Arc::new(Mutex::new(model));
        let fs = fs::PowerCutFs {
            model: model.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
        ];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Mounted {
            model,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the power now: from this instant every operation fails with
    /// EIO; returns what the disk holds (to [`Mounted::mount`] after
    /// [`Mounted::unmount`]) and what the cut threw away.
    pub fn power_cut(&self, rng: &mut impl rand::Rng) -> (Model, CutReport) {
        self.model().power_cut(rng)
    }

    /// Cut the power just before changing operation number `after + 1`
    /// (see [`Model::arm_cut`]); poll [`Mounted::is_frozen`], then take
    /// the state with [`Mounted::power_cut`].
    pub fn arm_cut(&self, after: u64) {
        self.model().arm_cut(after)
    }

    pub fn is_frozen(&self) -> bool {
        self.model().is_frozen()
    }

    /// Changing operations so far.
    pub fn ops(&self) -> u64 {
        self.model().ops()
    }

    /// Inject a fault; returns its id for [`Mounted::fired`].
    pub fn inject(&self, fault: Fault) -> usize {
        self.model().add_fault(fault)
    }

    /// How many times fault `id` fired.
    pub fn fired(&self, id: usize) -> u32 {
        self.model().fired(id)
    }

    /// Stop injecting faults.
    pub fn clear_faults(&self) {
        self.model().clear_faults()
    }

    pub fn counters(&self) -> Counters {
        self.model().counters()
    }

    /// Unmount (lazily: a process still holding files sees errors) and
    /// stop the FUSE thread.
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(s) = self.session.take() {
            // A lazy unmount never fails on a busy mount; the thread ends
            // when the kernel closes the channel.
            let _ = s.umount_and_join();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}
