//! Through the kernel: what `std::fs` does on the mount reaches the model,
//! syncs make it durable, and a cut keeps exactly what was synced.

use std::fs::{self, File, OpenOptions};
use std::io::Write;

use pacs_mirror_powercut::{Fault, FaultOn, FsError, Mounted};
use rand::SeedableRng;

#[test]
fn synced_files_survive_a_cut_through_the_kernel_and_faults_reach_the_caller() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mountpoint");
    let fs = Mounted::mount_new(&mnt).expect("mount (needs /dev/fuse and root)");

    fs::create_dir(mnt.join("d")).expect("mkdir");
    File::open(&mnt)
        .expect("root")
        .sync_all()
        .expect("fsync root");
    let mut f = File::create(mnt.join("d/kept")).expect("create");
    f.write_all(&[1u8; 100_000]).expect("write");
    f.sync_data().expect("fdatasync");
    File::open(mnt.join("d"))
        .expect("d")
        .sync_all()
        .expect("fsync d");
    fs::rename(mnt.join("d/kept"), mnt.join("d/renamed-unsynced")).expect("rename");
    let mut g = File::create(mnt.join("d/unsynced")).expect("create");
    g.write_all(b"never synced").expect("write");
    assert_eq!(
        fs::read(mnt.join("d/unsynced")).expect("read"),
        b"never synced"
    );

    // An injected EIO on a directory sync reaches the caller.
    let id = fs.inject(Fault {
        on: FaultOn::DirSync,
        under: "d".into(),
        error: FsError::Io,
        times: Some(1),
    });
    let e = File::open(mnt.join("d"))
        .expect("d")
        .sync_all()
        .expect_err("injected EIO");
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    assert_eq!(fs.fired(id), 1);
    // ENOSPC on writes.
    fs.inject(Fault {
        on: FaultOn::Write,
        under: "d/unsynced".into(),
        error: FsError::NoSpace,
        times: None,
    });
    let e = OpenOptions::new()
        .append(true)
        .open(mnt.join("d/unsynced"))
        .expect("open")
        .write_all(b"more")
        .expect_err("ENOSPC");
    assert_eq!(e.raw_os_error(), Some(28), "{e}");
    drop((f, g));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (survivor, report) = fs.power_cut(&mut rng);
    assert!(
        fs::read(mnt.join("d/unsynced")).is_err(),
        "after the cut nothing answers"
    );
    fs.unmount();
    let fs = Mounted::mount(survivor, &mnt).expect("remount");
    // The failed directory sync dropped the rename and the new file's
    // name for good: the synced file is back under its synced name, whole,
    // and the unsynced file is gone.
    assert_eq!(
        fs::read(mnt.join("d/kept")).expect("synced name"),
        vec![1u8; 100_000]
    );
    assert!(!mnt.join("d/renamed-unsynced").exists());
    assert!(!mnt.join("d/unsynced").exists());
    assert_eq!(report.files_lost, 1, "{report:?}");
    fs.unmount();
}
