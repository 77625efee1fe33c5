//! Acceptance: out of quota or out of disk, stores are refused with A700
//! (Refused: Out of Resources), nothing is half-written, and stores succeed
//! again once there is room.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;

/// Check the refusals of one storescu run: every response is Success or
/// A700, the successes come first, and return them.
fn successes_then_refusals(r: &StoreRun, files: &[PathBuf]) -> usize {
    assert_eq!(
        r.responses.len(),
        files.len(),
        "one response per file (storescu -nh: the association must go on after A700)\n{}",
        r.log()
    );
    for (f, s) in &r.responses {
        assert!(
            s == "Success" || s == A700,
            "{}: unexpected status {s}\n{}",
            f.display(),
            r.log()
        );
    }
    let k = r.count("Success");
    assert_eq!(
        r.successes(),
        files[..k].to_vec(),
        "after the first refusal every store must be refused too: {:?}",
        r.responses
    );
    k
}

#[test]
fn quota_exceeded_answers_a700_and_nothing_is_half_written() {
    let files: Vec<PathBuf> = corpus_1000()[..30].to_vec();
    let file_size = std::fs::metadata(&files[0]).expect("stat").len();
    let dir = tempdir();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    let max_bytes = 6_000_000u64;
    cfg.max_bytes = Some(max_bytes);
    let agent = Agent::start(&cfg);
    let r = storescu(cfg.port, SENDER_AE, &["-nh"], &files);
    let k = successes_then_refusals(&r, &files);
    eprintln!("quota {max_bytes}: {k} stored, {} refused", files.len() - k);
    assert!(
        k >= 1,
        "nothing was stored under a {max_bytes}-byte quota\n{}",
        r.log()
    );
    assert!(
        k < files.len(),
        "the quota never refused anything\n{}",
        r.log()
    );
    assert_no_tmp(&cfg, "after refused stores (agent running)");
    let config_path = agent.config_path.clone();
    agent.stop();

    let rows = index_dump(&config_path);
    let sent: Vec<Sent> = files[..k].iter().map(|f| sent_info(f)).collect();
    check_dump_matches(&cfg, &rows, &sent, SENDER_AE);
    assert_eq!(
        spool_object_files(&cfg).len(),
        k,
        "spool files beyond the successes"
    );
    let stats = index_stats(&config_path);
    let used = stat_u64(&stats, "bytes");
    assert!(
        used <= max_bytes,
        "{used} bytes stored under a {max_bytes}-byte quota"
    );
    assert!(
        used + file_size > max_bytes,
        "refused although {used} + {file_size} bytes fit in {max_bytes}"
    );

    // A larger quota: the rest goes in.
    cfg.max_bytes = Some(100_000_000);
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files[k..]);
    agent.stop();
    let rows = index_dump(&config_path);
    let sent: Vec<Sent> = files.iter().map(|f| sent_info(f)).collect();
    check_dump_matches(&cfg, &rows, &sent, SENDER_AE);
    assert_no_tmp(&cfg, "after a clean stop");
}

/// A tmpfs mounted for the test, unmounted on drop.
pub(crate) struct Tmpfs(PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        let o = run(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(dir),
            std::time::Duration::from_secs(30),
        );
        assert!(
            o.status.success(),
            "cannot mount a {size} tmpfs on {} for the disk-full test (it needs root, as in CI): {}",
            dir.display(),
            o.all().trim()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_answers_a700_and_recovers_when_space_is_freed() {
    let files: Vec<PathBuf> = corpus_1000()[..30].to_vec();
    let dir = tempdir();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let _tmpfs = Tmpfs::mount(&mnt, "12m");
    // 4 MiB of filler to delete later.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0x5Au8; 4 << 20]).expect("writing the filler");

    let mut cfg = AgentConfig::new(&mnt.join("data"));
    cfg.min_free_bytes = 0;
    // Keep the config and log off the small filesystem.
    let agent = Agent::start_with_config_dir(&cfg, dir.path());
    let r = storescu(cfg.port, SENDER_AE, &["-nh"], &files);
    let k = successes_then_refusals(&r, &files);
    eprintln!("12 MiB tmpfs: {k} stored, {} refused", files.len() - k);
    assert!(
        k >= 1,
        "nothing was stored on the tmpfs\n{}{}",
        r.log(),
        agent.log_tail()
    );
    assert!(k < files.len(), "the disk never filled up\n{}", r.log());
    assert_no_tmp(&cfg, "after disk-full refusals (agent running)");

    // Free 4 MiB (room for about 7 more): the next 3 stores succeed on the
    // same running agent. (Not more: `index dump` needs some free space.)
    std::fs::remove_file(&filler).expect("removing the filler");
    let k2 = 3;
    let r2 = storescu(cfg.port, SENDER_AE, &[], &files[k..k + k2]);
    assert_eq!(
        r2.successes(),
        files[k..k + k2].to_vec(),
        "stores after space was freed: {:?}\n{}{}",
        r2.responses,
        r2.log(),
        agent.log_tail()
    );
    assert_no_tmp(&cfg, "after the second round (agent running)");
    let config_path = agent.config_path.clone();
    agent.stop();

    let rows = index_dump(&config_path);
    let sent: Vec<Sent> = files[..k + k2].iter().map(|f| sent_info(f)).collect();
    check_dump_matches(&cfg, &rows, &sent, SENDER_AE);
    assert_eq!(spool_object_files(&cfg).len(), k + k2);
    assert_no_tmp(&cfg, "after a clean stop");
}
