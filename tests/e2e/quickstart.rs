//! The README's quick start, pasted (issue 18, acceptance 3): its two shell
//! blocks run in a shell on a fresh folder, with the binary under test in
//! place of `./target/release/pacs-mirror` (the build is the test's own)
//! and a fresh folder in place of `/tmp/study`. The agent runs the embedded
//! default (127.0.0.1:11112, admin 127.0.0.1:11180); the study arrives and
//! the drill passes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The ```sh blocks of the README's "Quick start" section.
fn quick_start_blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("reading README.md");
    let start = readme
        .find("## Quick start")
        .expect("a Quick start section");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(code), _) = (parts.next(), parts.next()) {
        if let Some(body) = code.strip_prefix("sh\n") {
            blocks.push(body.to_string());
        }
    }
    blocks
}

#[test]
fn the_readme_quick_start_works_when_pasted() {
    let blocks = quick_start_blocks();
    // The first two: run the agent, then use it (the later ones run the
    // tests: this is one of them).
    assert!(blocks.len() >= 2, "{blocks:?}");
    assert!(blocks[0].contains("pacs-mirror run"), "{blocks:?}");
    assert!(blocks[1].contains("storescu"), "{blocks:?}");
    let dir = tempdir();
    let study = dir.path().join("study");
    let paste = |block: &str| {
        block
            .lines()
            .filter(|l| !l.trim().starts_with("cargo build"))
            .map(|l| {
                l.replace("./target/release/pacs-mirror", bin())
                    .replace("/tmp/study", &study.display().to_string())
            })
            .collect::<Vec<_>>()
    };
    // Block 1: the agent, in the foreground of its own shell.
    let run = paste(&blocks[0]);
    assert_eq!(run.len(), 1, "{run:?}");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let mut agent = Command::new("sh")
        .args(["-c", &format!("exec {}", run[0])])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting the agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect("127.0.0.1:11112").is_err() {
        assert!(
            Instant::now() < deadline,
            "the agent did not listen on 11112"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Block 2: each line in turn, as a user pastes them.
    let mut outputs = Vec::new();
    for line in paste(&blocks[1]) {
        let out = crate::harness::run(
            Command::new("sh")
                .args(["-c", &line])
                .current_dir(dir.path()),
            Duration::from_secs(120),
        );
        assert!(out.status.success(), "`{line}` failed: {}", out.all());
        outputs.push((line, out));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let find = |word: &str| {
        outputs
            .iter()
            .find(|(l, _)| l.contains(word))
            .map(|(_, o)| o.all())
            .unwrap_or_else(|| panic!("no `{word}` line in the quick start"))
    };
    assert_eq!(dicom_files(&study).len(), 20);
    assert!(find("echo").contains("Success"), "{}", find("echo"));
    let status = find("status");
    assert!(status.contains("20 stored"), "{status}");
    let drill = find("drill");
    assert!(drill.contains("passed"), "{drill}");
    assert!(drill.contains("20 MATCH"), "{drill}");
}
