//! Durability (test catalogue T24, T30): the order of the system calls that
//! make a store durable, seen from outside with strace on the real agent;
//! and an index damaged beyond sled's own recovery, rebuilt from the spool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// One system call from an `strace -f -y` log, with the lines where it
/// started and ended (a call interrupted by another thread's is printed
/// `<unfinished ...>`, then `<... name resumed>`).
#[derive(Debug, Clone)]
struct Call {
    start: usize,
    end: usize,
    name: String,
    text: String,
    ok: bool,
}

fn parse_strace(log: &str) -> Vec<Call> {
    let mut pending: HashMap<String, (usize, String)> = HashMap::new();
    let mut calls = Vec::new();
    for (i, line) in log.lines().enumerate() {
        let Some((pid, rest)) = line.trim_start().split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(call) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), (i, call.to_string()));
            continue;
        }
        let (start, text) = if rest.starts_with("<... ") {
            match pending.remove(pid) {
                Some((start, call)) => (start, format!("{call}{rest}")),
                None => continue,
            }
        } else {
            (i, rest.to_string())
        };
        let Some(name) = text.split('(').next() else {
            continue;
        };
        // `) = 0`; strace pads a resumed call's result: `)          = 0`.
        let ok = text.rsplit_once('=').is_some_and(|(call, r)| {
            call.trim_end().ends_with(')') && !r.trim_start().starts_with('-')
        });
        calls.push(Call {
            start,
            end: i,
            name: name.to_string(),
            text,
            ok,
        });
    }
    calls
}

/// T24: for every instance, the C-STORE-RSP naming it is sent only after
/// three flushes have ended, each started after the file was renamed into
/// `objects/<hh>/<blake3>.dcm` (so each covers the rename and the index
/// rows written after it): the file's data (fdatasync of the object, by
/// its new name; or of the temp file before the rename), that directory
/// (fsync), and the index's log file (fdatasync: sled's own flush only
/// calls sync_file_range, which persists neither the device cache nor the
/// file's metadata). Their order among themselves is free (the committer
/// flushes the index first, `commit.rs`; rows durable before their file are
/// covered by a pending marker that start-up recovery checks): what matters
/// is that all three end before Success starts. Observed with strace attached to the running agent while
/// DCMTK storescu sends 20 instances over one association.
#[test]
fn every_success_follows_file_directory_and_index_syncs() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("src"), 1, 20, 64);
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let trace = dir.path().join("strace.log");
    let mut strace = Command::new(tool("strace"))
        .args([
            "-f",
            "-y",
            "-s",
            "512",
            "-e",
            "trace=fsync,fdatasync,sync_file_range,renameat2,rename,renameat,sendto,write,writev",
            "-o",
        ])
        .arg(&trace)
        .args(["-p", &agent.pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting strace");
    // strace says "Process <pid> attached with <n> threads" once it holds
    // every thread (-f follows the ones started later): wait for it.
    {
        use std::io::Read;
        let mut err = strace.stderr.take().expect("strace stderr");
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains(&format!("Process {} attached", agent.pid)) {
            let n = err.read(&mut buf).expect("reading strace's stderr");
            assert!(
                n > 0,
                "strace exited before attaching (it needs ptrace: root, as in CI): {seen}"
            );
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        // Keep draining so strace never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
    }
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    // SIGTERM: strace detaches and writes out its log.
    let st = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", strace.id())])
        .status()
        .expect("kill");
    assert!(st.success());
    let _ = strace.wait();
    agent.stop();

    let log = std::fs::read_to_string(&trace).expect("strace log");
    let calls = parse_strace(&log);
    // strace -y prints each descriptor's path as <path>; only this agent is
    // traced, so the ends of the paths are enough.
    let index_log = "/index/db>";
    let mut checked = 0;
    for f in &files {
        let s = sent_info(f);
        let hh = &s.blake3[..2];
        let object = format!("/spool/objects/{hh}/{}.dcm\"", s.blake3);
        let object_dir = format!("/spool/objects/{hh}>");
        // The C-STORE-RSP: a P-DATA-TF sent on the association naming the
        // instance (strace prints the UID's ASCII bytes as they are).
        let rsp = calls
            .iter()
            .find(|c| {
                (c.name == "sendto" || c.name == "write" || c.name == "writev")
                    && c.text.contains("socket:")
                    && c.text.contains("\"\\4\\0")
                    && c.text.contains(&s.sop_instance_uid)
            })
            .unwrap_or_else(|| panic!("no C-STORE-RSP for {} in the trace", s.sop_instance_uid));
        let rename = calls
            .iter()
            .find(|c| c.name.starts_with("rename") && c.ok && c.text.contains(&object))
            .unwrap_or_else(|| panic!("no rename to {object} in the trace"));
        let temp = rename
            .text
            .split('"')
            .find_map(|p| p.split_once("/spool/tmp/").map(|(_, name)| name))
            .unwrap_or_else(|| panic!("the rename does not come from spool/tmp: {}", rename.text));
        // Ended before the response started; started after the rename
        // ended (for a flush that must see the new name or the rows).
        let before_rsp = |c: &Call| c.ok && c.end < rsp.start;
        let after_rename = |c: &Call| before_rsp(c) && c.start > rename.end;
        let is_sync = |c: &Call| c.name == "fdatasync" || c.name == "fsync";
        let object_fd = format!("/spool/objects/{hh}/{}.dcm>", s.blake3);
        let temp_fd = format!("/spool/tmp/{temp}>");
        calls
            .iter()
            .find(|c| {
                is_sync(c)
                    && ((c.text.contains(&object_fd) && after_rename(c))
                        || (c.text.contains(&temp_fd) && before_rsp(c) && c.end < rename.start))
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}: the data of {temp} was not fdatasynced before the C-STORE-RSP (line {}): \
                     neither as {object_fd} after the rename (line {}) nor as the temp file before it; \
                     syncs of it in the trace: {:#?}",
                    s.sop_instance_uid,
                    rsp.start,
                    rename.end,
                    calls
                        .iter()
                        .filter(|c| is_sync(c)
                            && (c.text.contains(&object_fd) || c.text.contains(&temp_fd)))
                        .map(|c| format!("{}-{} {}", c.start, c.end, c.text))
                        .collect::<Vec<_>>()
                )
            });
        calls
            .iter()
            .find(|c| c.name == "fsync" && c.text.contains(&object_dir) && after_rename(c))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no fsync of {object_dir} between the rename (line {}) and the C-STORE-RSP (line {})",
                    s.sop_instance_uid, rename.end, rsp.start
                )
            });
        calls
            .iter()
            .find(|c| is_sync(c) && c.text.contains(index_log) && after_rename(c))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no fdatasync/fsync of the index log {index_log} between the rename (line {}) and the C-STORE-RSP (line {}); index syncs in the trace: {:#?}",
                    s.sop_instance_uid,
                    rename.end,
                    rsp.start,
                    calls
                        .iter()
                        .filter(|c| c.text.contains(index_log))
                        .map(|c| format!("{} {}", c.start, c.text))
                        .take(6)
                        .collect::<Vec<_>>()
                )
            });
        checked += 1;
    }
    assert_eq!(checked, 20);
}

fn index_files(cfg: &AgentConfig) -> Vec<PathBuf> {
    files_under(&cfg.data_dir.join("index"))
}

/// T30: sled's snapshot files deleted: sled rebuilds from its log and the
/// index is whole. sled's log overwritten with random bytes, or truncated:
/// `pacs-mirror run` and `index dump` refuse at once with an error naming
/// the index (no panic, no hang, and never an empty index served as if it
/// were the real one); `reindex` rebuilds every row from the spool alone,
/// keeping the damaged index aside; the agent then starts and stores again.
#[test]
fn a_damaged_index_is_refused_then_rebuilt_from_the_spool() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("src"), 2, 10, 64);
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files[..19]);
    let config_path = agent.config_path.clone();
    agent.stop();
    let before = row_keys(&index_dump(&config_path), true);
    assert_eq!(before.len(), 19);

    // Snapshots gone: sled replays its log.
    let snaps: Vec<PathBuf> = index_files(&cfg)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
        .collect();
    for s in &snaps {
        std::fs::remove_file(s).expect("removing a snapshot");
    }
    assert_eq!(
        row_keys(&index_dump(&config_path), true),
        before,
        "after deleting {snaps:?}"
    );

    let log = cfg.data_dir.join("index").join("db");
    let len = std::fs::metadata(&log).expect("index log").len() as usize;
    for damage in ["random bytes", "truncated"] {
        match damage {
            "random bytes" => {
                let mut junk = vec![0u8; len];
                use rand::{RngCore, SeedableRng};
                rand::rngs::StdRng::seed_from_u64(30).fill_bytes(&mut junk);
                std::fs::write(&log, junk).expect("damaging the index log");
            }
            _ => std::fs::write(&log, b"").expect("truncating the index log"),
        }
        let t = Instant::now();
        let out = run(
            Command::new(bin())
                .args(["run", "--config"])
                .arg(&config_path),
            Duration::from_secs(60),
        );
        eprintln!(
            "run on an index with {damage}: {:?} in {:?}: {}",
            out.status,
            t.elapsed(),
            out.stderr.trim()
        );
        assert!(
            !out.status.success(),
            "the agent started on an index with {damage}"
        );
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("error: index") && l.contains("corrupt"))
                && !out.stderr.contains("panicked"),
            "run on an index with {damage}: want one error line naming the corrupt index: {}",
            out.stderr
        );
        let dump = run(
            Command::new(bin())
                .args(["index", "dump", "--config"])
                .arg(&config_path),
            Duration::from_secs(60),
        );
        assert!(
            !dump.status.success() && dump.stdout.trim().is_empty(),
            "index dump of an index with {damage} must fail, not list nothing: {}",
            dump.all()
        );

        let out = run(
            Command::new(bin())
                .args(["reindex", "--config"])
                .arg(&config_path),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "reindex after {damage}: {}",
            out.all()
        );
        assert!(out.stderr.contains("old index kept at"), "{}", out.all());
        assert_eq!(
            row_keys(&index_dump(&config_path), true),
            before,
            "the index rebuilt after {damage} differs from the one before"
        );
    }
    let aside: Vec<String> = std::fs::read_dir(&cfg.data_dir)
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("index.old-"))
        .collect();
    assert_eq!(aside.len(), 2, "each damaged index kept aside: {aside:?}");
    let verify = run(
        Command::new(bin())
            .args(["verify", "spool", "--config"])
            .arg(&config_path),
        Duration::from_secs(60),
    );
    assert!(
        verify.status.success(),
        "verify spool after the rebuild: {}",
        verify.all()
    );

    // The agent starts on the rebuilt index; an identical re-send is a
    // duplicate (the rows are real), the last file is new.
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files[18..]);
    agent.stop();
    let stats = index_stats(&config_path);
    assert_eq!(stat_u64(&stats, "instances"), 20, "{stats}");
    assert_eq!(stat_u64(&stats, "objects"), 20, "{stats}");
    assert_eq!(stat_u64(&stats, "conflicts"), 0, "{stats}");
    assert_no_tmp(&cfg, "after a clean stop");
}

/// `reindex` does not send again what a target holds: the deliveries the
/// old index recorded are carried over (a delivered row, not a queue row),
/// a target the old index never delivered to gets every object queued, and
/// the new index replaces the old one (no copy left behind unless
/// `--keep-old`). Started again, the agent uploads nothing twice: the
/// bucket's files keep their inode and modification time.
#[test]
fn reindex_keeps_what_targets_hold() {
    let dir = tempdir();
    let files = synth_small(&dir.path().join("src"), 2, 6, 64);
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    let bucket = dir.path().join("bucket");
    let second = dir.path().join("second");
    let target = |name: &str, at: &std::path::Path| {
        format!(
            "\n[[target]]\ntype = \"object_store\"\nname = \"{name}\"\nurl = \"file://{}\"\n",
            at.display()
        )
    };
    // `status` asks the running agent on its admin endpoint.
    let admin = format!("\n[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
    cfg.extra_toml = target("backup", &bucket) + &admin;
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let config_path = agent.config_path.clone();
    let status = |config: &std::path::Path| -> serde_json::Value {
        let out = run_ok(
            Command::new(bin())
                .args(["status", "--json", "--config"])
                .arg(config),
            Duration::from_secs(30),
        );
        serde_json::from_str(&out.stdout).expect("status JSON")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&config_path)["targets"]["backup"]["delivered"] != 12 {
        assert!(
            Instant::now() < deadline,
            "never delivered: {}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    let blobs = |root: &std::path::Path| -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<_> = files_under(&root.join("objects"))
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(&p).expect("blob");
                let modified = m.modified().expect("mtime");
                (p, m.ino(), modified)
            })
            .collect();
        v.sort();
        v
    };
    let uploaded = blobs(&bucket);
    assert_eq!(uploaded.len(), 12);

    // A second target is configured; then the index is rebuilt.
    cfg.extra_toml = target("backup", &bucket) + &target("second", &second) + &admin;
    std::fs::write(&config_path, cfg.to_toml()).expect("config");
    let before = row_keys(&index_dump(&config_path), true);
    let out = run(
        Command::new(bin())
            .args(["reindex", "--config"])
            .arg(&config_path),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "reindex: {}", out.all());
    assert!(
        out.stderr
            .contains("old index replaced (12 deliveries carried over)"),
        "{}",
        out.all()
    );
    let report: serde_json::Value = serde_json::from_str(
        out.stdout
            .split("\n}\n")
            .next()
            .map(|s| format!("{s}\n}}"))
            .as_deref()
            .unwrap_or_default(),
    )
    .expect("recovery report");
    assert_eq!(report["reindexed"], 12, "{report}");
    assert_eq!(report["deliveries_kept"], 12, "{report}");
    let names: Vec<String> = std::fs::read_dir(&cfg.data_dir)
        .expect("data dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("index"))
        .collect();
    assert_eq!(names, ["index"], "the old index is replaced, not kept");
    assert_eq!(row_keys(&index_dump(&config_path), true), before);
    let s = status(&config_path);
    assert_eq!(s["targets"]["backup"]["pending"], 0, "{s}");
    assert_eq!(s["targets"]["backup"]["delivered"], 12, "{s}");
    assert_eq!(s["targets"]["second"]["pending"], 12, "{s}");
    assert_eq!(s["targets"]["second"]["delivered"], 0, "{s}");

    // The agent sends the second target everything, the first nothing.
    let agent = Agent::start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&config_path)["targets"]["second"]["delivered"] != 12 {
        assert!(
            Instant::now() < deadline,
            "second never filled: {}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    assert_eq!(
        blobs(&bucket),
        uploaded,
        "the first bucket was written again"
    );
    assert_eq!(blobs(&second).len(), 12);

    // --keep-old keeps the replaced index beside the new one.
    let out = run(
        Command::new(bin())
            .args(["reindex", "--keep-old", "--config"])
            .arg(&config_path),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "reindex --keep-old: {}", out.all());
    assert!(
        out.stderr
            .contains("old index replaced (24 deliveries carried over), kept at"),
        "{}",
        out.all()
    );
    let kept = std::fs::read_dir(&cfg.data_dir)
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("index.old-"))
        .count();
    assert_eq!(kept, 1);
}
