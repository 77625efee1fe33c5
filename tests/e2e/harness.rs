//! Shared helpers: find the peer tools, start and stop the real agent, run
//! DCMTK tools with time limits and parse what they print, read the index
//! dump, and take Part-10 files apart.
//!
//! Every helper panics with a message that says what happened (and, for the
//! agent, the tail of its log): these are tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `pacs-mirror` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pacs-mirror")
}

/// The absolute path of a peer tool; fails the test if it is missing.
pub fn tool(name: &str) -> PathBuf {
    let package = match name {
        "opj_compress" => "libopenjp2-tools",
        "python3" => "python3",
        "strace" => "strace",
        "openssl" => "openssl",
        _ => "dcmtk",
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found: run scripts/test, which installs {package}");
}

/// A TCP port that was free a moment ago on 127.0.0.1. Chosen below the
/// kernel's ephemeral range when it can be, so that a client connection of
/// another test cannot take it while an agent restarts on it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        let span = low - 10_000;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let port = 10_000 + (start + k.wrapping_mul(97)) % span;
            if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
    l.local_addr().expect("local_addr").port()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pacs-mirror-e2e-")
        .tempdir()
        .expect("creating a temp dir")
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Who may call the agent.
#[derive(Clone, Debug)]
pub enum Access {
    /// `accept_any_calling_ae = true`
    AnyCaller,
    /// `allowed_calling_aes = [ae]`, with a remote device sending from
    /// `sources` (CIDR strings).
    Allow { ae: String, sources: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub hostname: String,
    pub port: u16,
    pub ae_title: String,
    pub access: Access,
    pub max_bytes: Option<u64>,
    pub min_free_bytes: u64,
    /// Extra `key = value` lines for the network AE (limits, timeouts).
    pub ae_extra: String,
    /// Extra tables appended to the file (remote devices, targets).
    pub extra_toml: String,
    /// Extra `key = value` lines for `[spool]`.
    pub spool_extra: String,
    /// Extra `key = value` lines for the listener's network connection
    /// (e.g. `tls_cipher_suites`).
    pub conn_extra: String,
    /// More `[[device.network_connection]]` tables, used by the AE too.
    pub more_connections: Vec<(String, String)>,
    /// Extra echoscu arguments for the readiness probe (e.g. TLS options).
    pub probe_extra: Vec<String>,
}

pub const AGENT_AE: &str = "PACS_MIRROR";
pub const SENDER_AE: &str = "STORESCU";

impl AgentConfig {
    /// AE PACS_MIRROR on 127.0.0.1:<free port>, any caller, no quota, no
    /// free-space watermark.
    pub fn new(data_dir: &Path) -> Self {
        AgentConfig {
            data_dir: data_dir.to_path_buf(),
            hostname: "127.0.0.1".into(),
            port: free_port(),
            ae_title: AGENT_AE.into(),
            access: Access::AnyCaller,
            max_bytes: None,
            min_free_bytes: 0,
            ae_extra: String::new(),
            extra_toml: String::new(),
            spool_extra: String::new(),
            conn_extra: String::new(),
            more_connections: Vec::new(),
            probe_extra: Vec::new(),
        }
    }

    /// An AE title the agent accepts from 127.0.0.1 (for readiness probes).
    pub fn probe_calling_ae(&self) -> &str {
        match &self.access {
            Access::AnyCaller => "ECHOSCU",
            Access::Allow { ae, .. } => ae,
        }
    }

    pub fn to_toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("string to JSON");
        let mut t = String::new();
        t.push_str("[device]\nname = \"e2e\"\n");
        t.push_str(&format!(
            "data_dir = {}\n",
            q(&self.data_dir.display().to_string())
        ));
        t.push_str("\n[[device.network_connection]]\nname = \"dicom\"\n");
        t.push_str(&format!(
            "hostname = {}\nport = {}\n",
            q(&self.hostname),
            self.port
        ));
        t.push_str(&self.conn_extra);
        let mut names = vec![q("dicom")];
        for (name, body) in &self.more_connections {
            t.push_str(&format!(
                "\n[[device.network_connection]]\nname = {}\n{body}\n",
                q(name)
            ));
            names.push(q(name));
        }
        t.push_str(&format!(
            "\n[[device.network_ae]]\nae_title = {}\nnetwork_connections = [{}]\n",
            q(&self.ae_title),
            names.join(", ")
        ));
        match &self.access {
            Access::AnyCaller => t.push_str("accept_any_calling_ae = true\n"),
            Access::Allow { ae, .. } => t.push_str(&format!("allowed_calling_aes = [{}]\n", q(ae))),
        }
        t.push_str(&self.ae_extra);
        t.push_str("\n[spool]\n");
        if let Some(m) = self.max_bytes {
            t.push_str(&format!("max_bytes = {m}\n"));
        }
        t.push_str(&format!("min_free_bytes = {}\n", self.min_free_bytes));
        t.push_str(&self.spool_extra);
        if let Access::Allow { ae, sources } = &self.access {
            let list: Vec<String> = sources.iter().map(|s| q(s)).collect();
            t.push_str(&format!(
                "\n[[remote_device]]\nname = \"sender\"\n\n[[remote_device.network_ae]]\nae_title = {}\nassociation_initiator = true\nsource_addresses = [{}]\n",
                q(ae),
                list.join(", ")
            ));
        }
        t.push_str(&self.extra_toml);
        t
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }
}

// ---------------------------------------------------------------------------
// The agent process
// ---------------------------------------------------------------------------

pub struct Agent {
    child: Option<Child>,
    pub config: AgentConfig,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub pid: u32,
}

static LOG_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Agent {
    /// Write the config next to the data dir, start `pacs-mirror run` and
    /// wait until it answers associations (at most 20 s).
    pub fn start(config: &AgentConfig) -> Agent {
        let parent = config.data_dir.parent().expect("data_dir has a parent");
        Agent::start_with_config_dir(config, parent)
    }

    /// As [`Agent::start`], with more arguments after `run` (e.g.
    /// `--log-format json`).
    pub fn start_with_args(config: &AgentConfig, args: &[&str]) -> Agent {
        let parent = config.data_dir.parent().expect("data_dir has a parent");
        Agent::spawn(config, parent, args, &[])
    }

    /// As [`Agent::start`], with more environment variables (e.g.
    /// libfaketime's).
    pub fn start_with_env(config: &AgentConfig, env: &[(&str, &str)]) -> Agent {
        let parent = config.data_dir.parent().expect("data_dir has a parent");
        Agent::spawn(config, parent, &[], env)
    }

    /// As [`Agent::start`], with the config file and log in `parent`.
    pub fn start_with_config_dir(config: &AgentConfig, parent: &Path) -> Agent {
        Agent::spawn(config, parent, &[], &[])
    }

    fn spawn(config: &AgentConfig, parent: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
        let parent = parent.to_path_buf();
        std::fs::create_dir_all(&parent).expect("creating the config dir");
        let config_path = parent.join(format!("pacs-mirror-{}.toml", config.port));
        std::fs::write(&config_path, config.to_toml()).expect("writing the config");
        let seq = LOG_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = parent.join(format!("agent-{}-{seq}.log", config.port));
        let log = std::fs::File::create(&log_path).expect("creating the agent log");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("E2E_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning pacs-mirror run");
        let pid = child.id();
        let mut agent = Agent {
            child: Some(child),
            config: config.clone(),
            config_path,
            log_path,
            pid,
        };
        agent.wait_ready(Duration::from_secs(20));
        agent
    }

    fn wait_ready(&mut self, limit: Duration) {
        let echoscu = tool("echoscu");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "pacs-mirror run exited before it was ready ({status}){}",
                    self.log_tail()
                );
            }
            // A cheap TCP check first, then a real association.
            if TcpStream::connect(("127.0.0.1", self.config.port)).is_ok() {
                let out = run(
                    Command::new(&echoscu)
                        .args([
                            "-to",
                            "5",
                            "-aet",
                            self.config.probe_calling_ae(),
                            "-aec",
                            &self.config.ae_title,
                        ])
                        .args(&self.config.probe_extra)
                        .args(["127.0.0.1", &self.config.port.to_string()]),
                    Duration::from_secs(15),
                );
                if out.status.success() || out.all().contains("Association Rejected") {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "pacs-mirror did not accept an association on port {} within {limit:?}{}",
                    self.config.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Send SIGTERM and return at once (see [`Agent::wait_exit`]).
    pub fn terminate(&self) {
        let st = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.pid)])
            .status()
            .expect("running kill -TERM");
        assert!(st.success(), "kill -TERM {} failed", self.pid);
    }

    /// Wait for the agent to exit by itself; its exit status.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        wait_child(&mut child, limit).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pacs-mirror did not exit within {limit:?}{}",
                self.log_tail()
            )
        })
    }

    /// SIGTERM, then wait (at most 60 s) for a clean exit (status 0).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        // The shell's kill builtin: std can only SIGKILL.
        let st = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.pid)])
            .status()
            .expect("running kill -TERM");
        assert!(st.success(), "kill -TERM {} failed", self.pid);
        let status = wait_child(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pacs-mirror did not exit within 60 s of SIGTERM{}",
                self.log_tail()
            )
        });
        assert!(
            status.success(),
            "pacs-mirror exited with {status} after SIGTERM{}",
            self.log_tail()
        );
    }

    /// SIGKILL: a crash.
    pub fn crash(mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        child.kill().expect("SIGKILL the agent");
        let _ = child.wait();
    }

    /// Peak resident set (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("reading /proc/<pid>/status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last lines of the agent's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

pub fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let start = lines.len().saturating_sub(40);
    format!(
        "\n--- last lines of {} ---\n{}\n---",
        path.display(),
        lines[start..].join("\n")
    )
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Running tools
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A tool started in the background; its output is collected by threads.
pub struct Running {
    child: Child,
    what: String,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

pub fn spawn(cmd: &mut Command) -> Running {
    let what = format!("{cmd:?}");
    let what = if what.len() > 400 {
        format!("{}…", &what[..400])
    } else {
        what
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    Running {
        child,
        what,
        out,
        err,
    }
}

impl Running {
    /// Wait for the tool; kill it and fail the test past `limit`.
    pub fn wait(mut self, limit: Duration) -> Output {
        let status = match wait_child(&mut self.child, limit) {
            Some(s) => s,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.err.join().unwrap_or_default();
                panic!(
                    "{} did not finish within {limit:?}; stderr tail:\n{}",
                    self.what,
                    tail(&stderr, 30)
                );
            }
        };
        Output {
            status,
            stdout: self.out.join().unwrap_or_default(),
            stderr: self.err.join().unwrap_or_default(),
        }
    }
}

pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    spawn(cmd).wait(limit)
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a tool that must succeed.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd, limit);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        tail(&out.stdout, 20),
        tail(&out.stderr, 20)
    );
    out
}

// ---------------------------------------------------------------------------
// storescu
// ---------------------------------------------------------------------------

/// What one storescu run said about each file.
#[derive(Debug)]
pub struct StoreRun {
    pub output: Output,
    /// (file, status text in "Received Store Response (...)"), in order.
    pub responses: Vec<(PathBuf, String)>,
}

impl StoreRun {
    pub fn parse(output: Output) -> StoreRun {
        let mut responses = Vec::new();
        let mut current: Option<PathBuf> = None;
        for line in output.stderr.lines().chain(output.stdout.lines()) {
            if let Some(p) = line.split("Sending file: ").nth(1) {
                current = Some(PathBuf::from(p.trim()));
            } else if let Some(rest) = line.split("Received Store Response (").nth(1) {
                let status = rest.trim_end().trim_end_matches(')').to_string();
                let file = current.take().unwrap_or_else(|| {
                    panic!("storescu printed a response without a file: {line}")
                });
                responses.push((file, status));
            }
        }
        StoreRun { output, responses }
    }

    pub fn with_status(&self, status: &str) -> Vec<PathBuf> {
        self.responses
            .iter()
            .filter(|(_, s)| s == status)
            .map(|(p, _)| p.clone())
            .collect()
    }

    pub fn successes(&self) -> Vec<PathBuf> {
        self.with_status("Success")
    }

    pub fn count(&self, status: &str) -> usize {
        self.responses.iter().filter(|(_, s)| s == status).count()
    }

    pub fn log(&self) -> String {
        format!(
            "storescu exit {}; stderr tail:\n{}",
            self.output.status,
            tail(&self.output.stderr, 30)
        )
    }
}

pub const A700: &str = "Refused: OutOfResources";

pub fn storescu_cmd(
    port: u16,
    calling: &str,
    called: &str,
    extra: &[&str],
    files: &[PathBuf],
) -> Command {
    let mut cmd = Command::new(tool("storescu"));
    cmd.args(["-v", "-aet", calling, "-aec", called])
        .args(extra)
        .args(["127.0.0.1", &port.to_string()])
        .args(files);
    cmd
}

/// Send files with `storescu -v` over one association and parse the
/// responses.
pub fn storescu(port: u16, calling: &str, extra: &[&str], files: &[PathBuf]) -> StoreRun {
    let mut cmd = storescu_cmd(port, calling, AGENT_AE, extra, files);
    StoreRun::parse(run(&mut cmd, Duration::from_secs(600)))
}

/// Send and require a Success response for every file.
pub fn store_all_ok(port: u16, calling: &str, extra: &[&str], files: &[PathBuf]) -> StoreRun {
    let r = storescu(port, calling, extra, files);
    let ok = r.successes();
    assert_eq!(
        ok.len(),
        files.len(),
        "expected {} Success responses, got {} (statuses: {:?})\n{}",
        files.len(),
        ok.len(),
        status_histogram(&r),
        r.log()
    );
    assert_eq!(ok, files, "responses not in the order sent\n{}", r.log());
    assert!(r.output.status.success(), "storescu failed\n{}", r.log());
    r
}

pub fn status_histogram(r: &StoreRun) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, s) in &r.responses {
        *m.entry(s.clone()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// Synthetic data
// ---------------------------------------------------------------------------

/// `pacs-mirror synth --out OUT ARGS…`; returns the files written, sorted.
pub fn synth(out: &Path, args: &[&str]) -> Vec<PathBuf> {
    let o = run_ok(
        Command::new(bin())
            .arg("synth")
            .arg("--out")
            .arg(out)
            .args(args),
        Duration::from_secs(300),
    );
    assert!(
        o.stdout.starts_with("wrote "),
        "unexpected synth summary: {}",
        o.stdout
    );
    let files = dicom_files(out);
    let n: usize = o
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("file count in the synth summary");
    assert_eq!(n, files.len(), "synth summary vs files on disk");
    files
}

/// Every `*.dcm` under `dir`, sorted.
pub fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(dir, &mut |p| {
        if p.extension().is_some_and(|e| e == "dcm") {
            v.push(p.to_path_buf());
        }
    });
    v.sort();
    v
}

pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(dir, &mut |p| v.push(p.to_path_buf()));
    v.sort();
    v
}

/// The shared corpus: 1000 synthetic 512×512×16-bit CT instances (seed 1),
/// generated once per test process under CARGO_TARGET_TMPDIR.
pub fn corpus_1000() -> &'static [PathBuf] {
    static CORPUS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Remove the corpora of earlier test processes that are gone.
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("e2e-corpus-")
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("e2e-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = synth(&dir, &["--instances-per-series", "1000", "--seed", "1"]);
        assert_eq!(files.len(), 1000);
        files
    })
}

// ---------------------------------------------------------------------------
// Part-10 files
// ---------------------------------------------------------------------------

/// Offset of the data set in a Part-10 file: 132 + 12 + (0002,0000).
pub fn dataset_offset(bytes: &[u8]) -> usize {
    assert!(
        bytes.len() >= 144,
        "not a Part-10 file: {} bytes",
        bytes.len()
    );
    assert_eq!(&bytes[128..132], b"DICM", "no DICM magic at offset 128");
    assert_eq!(
        &bytes[132..138],
        &[0x02, 0x00, 0x00, 0x00, b'U', b'L'],
        "the meta group does not start with (0002,0000) UL"
    );
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    144 + len
}

/// The data set bytes of a Part-10 file.
pub fn dataset_bytes(bytes: &[u8]) -> &[u8] {
    &bytes[dataset_offset(bytes)..]
}

fn trim_uid(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).to_string()
}

/// The meta group of a Part-10 file.
#[derive(Debug, Clone)]
pub struct Meta {
    pub transfer_syntax: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub source_ae: Option<String>,
}

/// The meta group of a Part-10 file. Read with the agent's own meta-group
/// reader: dicom-object refuses UIDs that break PS3.5 9.1, which kept
/// objects may carry (issue 14).
pub fn read_meta(bytes: &[u8]) -> Meta {
    let len = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    let m = pacs_mirror_dicom::part10::parse_meta(&bytes[128..144 + len])
        .expect("parsing the file meta group");
    Meta {
        transfer_syntax: trim_uid(&m.transfer_syntax),
        sop_class_uid: trim_uid(&m.media_storage_sop_class_uid),
        sop_instance_uid: trim_uid(&m.media_storage_sop_instance_uid),
        source_ae: m.source_application_entity_title,
    }
}

pub fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// What a sent file says about itself.
#[derive(Debug, Clone)]
pub struct Sent {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub patient_id: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub dataset_len: u64,
    pub blake3: String,
}

/// Parse a sent file with dicom-object (explicit/implicit VR LE files).
pub fn sent_info(path: &Path) -> Sent {
    use dicom_dictionary_std::tags;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let ds = dataset_bytes(&bytes);
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    let s = |tag| -> String {
        trim_uid(
            &obj.element(tag)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_str()
                .expect("string value"),
        )
        .trim()
        .to_string()
    };
    Sent {
        path: path.to_path_buf(),
        sop_instance_uid: s(tags::SOP_INSTANCE_UID),
        sop_class_uid: s(tags::SOP_CLASS_UID),
        transfer_syntax: trim_uid(obj.meta().transfer_syntax()),
        patient_id: s(tags::PATIENT_ID),
        study_instance_uid: s(tags::STUDY_INSTANCE_UID),
        series_instance_uid: s(tags::SERIES_INSTANCE_UID),
        dataset_len: ds.len() as u64,
        blake3: blake3_hex(ds),
    }
}

/// UID and data set hash of any Part-10 file, from its meta group and raw
/// bytes only (works for every transfer syntax).
pub fn raw_info(path: &Path) -> (Meta, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let meta = read_meta(&bytes);
    let ds = dataset_bytes(&bytes).to_vec();
    (meta, ds)
}

// ---------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------

/// One line of `pacs-mirror index dump`.
#[derive(Debug, Clone)]
pub struct Row {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub blake3: String,
    pub dataset_bytes: u64,
    pub file_bytes: u64,
    pub patient_id: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub calling_ae: String,
    pub source_ip: String,
    pub received_at_ms: u64,
    pub path: PathBuf,
    /// Its findings, each as "class: detail" (empty when conformant).
    pub findings: Vec<String>,
}

/// Every field of each row as one line, sorted: what an index rebuild must
/// give back (`with_path: false` when the spool it points into is gone).
pub fn row_keys(rows: &[Row], with_path: bool) -> Vec<String> {
    let mut v: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut k = format!(
                "{} {} {} {} {} {} {} {} {} {} {} {} {:?}",
                r.sop_instance_uid,
                r.sop_class_uid,
                r.transfer_syntax_uid,
                r.blake3,
                r.dataset_bytes,
                r.file_bytes,
                r.patient_id,
                r.study_instance_uid,
                r.series_instance_uid,
                r.calling_ae,
                r.source_ip,
                r.received_at_ms,
                r.findings
            );
            if with_path {
                k.push_str(&format!(" {}", r.path.display()));
            }
            k
        })
        .collect();
    v.sort();
    v
}

fn field_str(v: &Value, k: &str, line: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("index dump line lacks string field {k:?}: {line}"))
        .to_string()
}

fn field_u64(v: &Value, k: &str, line: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("index dump line lacks integer field {k:?}: {line}"))
}

/// The `findings` of an instance record (index dump, `findings list
/// --json`), each as "class: detail".
pub fn finding_strings(record: &Value) -> Vec<String> {
    record
        .get("findings")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|f| {
                    format!(
                        "{}: {}",
                        f["class"].as_str().unwrap_or("?"),
                        f["detail"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `pacs-mirror index dump` (agent stopped).
pub fn index_dump(config_path: &Path) -> Vec<Row> {
    let o = run_ok(
        Command::new(bin())
            .args(["index", "dump", "--config"])
            .arg(config_path),
        Duration::from_secs(120),
    );
    o.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("index dump line is not JSON ({e}): {line}"));
            Row {
                sop_instance_uid: field_str(&v, "sop_instance_uid", line),
                sop_class_uid: field_str(&v, "sop_class_uid", line),
                transfer_syntax_uid: field_str(&v, "transfer_syntax_uid", line),
                blake3: field_str(&v, "blake3", line),
                dataset_bytes: field_u64(&v, "dataset_bytes", line),
                file_bytes: field_u64(&v, "file_bytes", line),
                patient_id: field_str(&v, "patient_id", line),
                study_instance_uid: field_str(&v, "study_instance_uid", line),
                series_instance_uid: field_str(&v, "series_instance_uid", line),
                calling_ae: field_str(&v, "calling_ae", line),
                source_ip: field_str(&v, "source_ip", line),
                received_at_ms: field_u64(&v, "received_at_ms", line),
                path: PathBuf::from(field_str(&v, "path", line)),
                findings: finding_strings(&v),
            }
        })
        .collect()
}

/// `pacs-mirror index stats` (agent stopped).
pub fn index_stats(config_path: &Path) -> Value {
    let o = run_ok(
        Command::new(bin())
            .args(["index", "stats", "--config"])
            .arg(config_path),
        Duration::from_secs(60),
    );
    serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("index stats is not JSON ({e}): {}", o.stdout))
}

pub fn stat_u64(stats: &Value, k: &str) -> u64 {
    stats
        .get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("index stats lacks {k:?}: {stats}"))
}

/// Rows by SOP Instance UID; fails on duplicates.
pub fn rows_by_uid(rows: &[Row]) -> HashMap<String, Row> {
    let mut m = HashMap::new();
    for r in rows {
        if let Some(old) = m.insert(r.sop_instance_uid.clone(), r.clone()) {
            panic!(
                "two index rows for {} ({} and {})",
                r.sop_instance_uid, old.blake3, r.blake3
            );
        }
    }
    m
}

/// Check one spool file against its row: it is where the layout says, it is
/// preamble + DICM + meta + data set, the data set hashes to the row's
/// blake3 and equals `expected_dataset` if given.
pub fn check_spool_file(cfg: &AgentConfig, row: &Row, expected_dataset: Option<&[u8]>) {
    let objects = cfg.spool_dir().join("objects");
    let want = objects
        .join(&row.blake3[..2])
        .join(format!("{}.dcm", row.blake3));
    let got = row.path.canonicalize().unwrap_or_else(|e| {
        panic!(
            "spool file {} of {}: {e}",
            row.path.display(),
            row.sop_instance_uid
        )
    });
    let want = want
        .canonicalize()
        .unwrap_or_else(|e| panic!("spool file {}: {e}", want.display()));
    assert_eq!(got, want, "spool path of {}", row.sop_instance_uid);
    let bytes = std::fs::read(&got).expect("reading the spool file");
    assert_eq!(
        bytes.len() as u64,
        row.file_bytes,
        "file_bytes of {}",
        row.sop_instance_uid
    );
    assert!(bytes[..128].iter().all(|&b| b == 0), "preamble not zero");
    let ds = dataset_bytes(&bytes);
    assert_eq!(
        ds.len() as u64,
        row.dataset_bytes,
        "dataset_bytes of {}",
        row.sop_instance_uid
    );
    assert_eq!(
        blake3_hex(ds),
        row.blake3,
        "blake3 of the spool file of {}",
        row.sop_instance_uid
    );
    if let Some(exp) = expected_dataset {
        assert!(
            ds == exp,
            "spool data set of {} differs from the sent data set",
            row.sop_instance_uid
        );
    }
    let meta = read_meta(&bytes);
    assert_eq!(
        meta.transfer_syntax, row.transfer_syntax_uid,
        "meta TS of {}",
        row.sop_instance_uid
    );
    assert_eq!(
        meta.sop_instance_uid, row.sop_instance_uid,
        "meta SOP instance"
    );
    assert_eq!(meta.sop_class_uid, row.sop_class_uid, "meta SOP class");
    assert_eq!(
        meta.source_ae.as_deref(),
        Some(row.calling_ae.as_str()),
        "meta (0002,0016) of {}",
        row.sop_instance_uid
    );
}

/// Check that the index holds exactly `sent` (one row each, fields as the
/// sent files say, spool files byte-identical) and nothing else.
pub fn check_dump_matches(cfg: &AgentConfig, rows: &[Row], sent: &[Sent], calling_ae: &str) {
    assert_eq!(rows.len(), sent.len(), "index dump rows vs instances sent");
    let by_uid = rows_by_uid(rows);
    for s in sent {
        let r = by_uid.get(&s.sop_instance_uid).unwrap_or_else(|| {
            panic!(
                "{} ({}) is not in the index",
                s.sop_instance_uid,
                s.path.display()
            )
        });
        assert_eq!(r.sop_class_uid, s.sop_class_uid, "{}", s.sop_instance_uid);
        assert_eq!(
            r.transfer_syntax_uid, s.transfer_syntax,
            "{}",
            s.sop_instance_uid
        );
        assert_eq!(r.blake3, s.blake3, "blake3 of {}", s.sop_instance_uid);
        assert_eq!(r.dataset_bytes, s.dataset_len, "{}", s.sop_instance_uid);
        assert_eq!(r.patient_id, s.patient_id, "{}", s.sop_instance_uid);
        assert_eq!(
            r.study_instance_uid, s.study_instance_uid,
            "{}",
            s.sop_instance_uid
        );
        assert_eq!(
            r.series_instance_uid, s.series_instance_uid,
            "{}",
            s.sop_instance_uid
        );
        assert_eq!(r.calling_ae, calling_ae, "{}", s.sop_instance_uid);
        assert_eq!(r.source_ip, "127.0.0.1", "{}", s.sop_instance_uid);
        assert!(
            r.received_at_ms > 1_600_000_000_000,
            "received_at_ms {}",
            r.received_at_ms
        );
        let bytes = std::fs::read(&s.path).expect("re-reading the sent file");
        check_spool_file(cfg, r, Some(dataset_bytes(&bytes)));
    }
}

/// Files under spool/tmp (there must be none when no store is in flight).
pub fn spool_tmp_files(cfg: &AgentConfig) -> Vec<PathBuf> {
    files_under(&cfg.spool_dir().join("tmp"))
}

pub fn spool_object_files(cfg: &AgentConfig) -> Vec<PathBuf> {
    files_under(&cfg.spool_dir().join("objects"))
}

pub fn assert_no_tmp(cfg: &AgentConfig, when: &str) {
    let t = spool_tmp_files(cfg);
    assert!(t.is_empty(), "spool/tmp not empty {when}: {t:?}");
}

// ---------------------------------------------------------------------------
// Orthanc (a real PACS, from Debian's package)
// ---------------------------------------------------------------------------

/// An Orthanc server on loopback with its own storage; killed on drop.
pub struct Orthanc {
    child: Option<Child>,
    pub dir: PathBuf,
    pub ae_title: String,
    pub dicom_port: u16,
    pub http_port: u16,
}

/// A DICOM peer Orthanc knows (an entry of its `DicomModalities`), with
/// every service allowed (echo, store, find, get, move).
#[derive(Clone, Debug)]
pub struct OrthancModality {
    /// Orthanc's name for it (also what the REST API calls it).
    pub name: String,
    pub ae_title: String,
    pub host: String,
    pub port: u16,
    /// `UseDicomTls`: Orthanc opens its SCU associations to this peer over
    /// DICOM TLS (with the global `DicomTlsCertificate`/`DicomTlsPrivateKey`
    /// as its client certificate). Written only when true.
    pub tls: bool,
}

impl OrthancModality {
    /// A peer on 127.0.0.1.
    pub fn local(name: &str, ae_title: &str, port: u16) -> Self {
        OrthancModality {
            name: name.into(),
            ae_title: ae_title.into(),
            host: "127.0.0.1".into(),
            port,
            tls: false,
        }
    }

    /// The same peer reached over DICOM TLS (`"UseDicomTls": true`).
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }
}

/// Extra configuration for [`Orthanc::start_with`].
#[derive(Clone, Debug, Default)]
pub struct OrthancOptions {
    /// Known modalities (C-FIND/C-GET/C-MOVE callers, C-MOVE destinations).
    pub modalities: Vec<OrthancModality>,
    /// More top-level configuration keys (override the defaults).
    pub extra: serde_json::Map<String, Value>,
}

impl Orthanc {
    /// Start Orthanc with storage under `dir` (kept across restarts) and wait
    /// until its REST API answers (at most 30 s).
    pub fn start(dir: &Path, ae_title: &str, dicom_port: u16, http_port: u16) -> Orthanc {
        Orthanc::start_with(
            dir,
            ae_title,
            dicom_port,
            http_port,
            &OrthancOptions::default(),
        )
    }

    /// AE `ae_title` on free ports with storage under `dir`, knowing
    /// `modalities` (C-FIND/C-GET/C-MOVE callers and destinations).
    pub fn start_knowing(dir: &Path, ae_title: &str, modalities: Vec<OrthancModality>) -> Orthanc {
        Orthanc::start_with(
            dir,
            ae_title,
            free_port(),
            free_port(),
            &OrthancOptions {
                modalities,
                ..OrthancOptions::default()
            },
        )
    }

    /// As [`Orthanc::start`], with known modalities and extra settings.
    pub fn start_with(
        dir: &Path,
        ae_title: &str,
        dicom_port: u16,
        http_port: u16,
        options: &OrthancOptions,
    ) -> Orthanc {
        let binary = ["/usr/sbin/Orthanc", "/usr/bin/Orthanc"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!("Orthanc not found: run scripts/test, which installs orthanc")
            });
        std::fs::create_dir_all(dir).expect("creating the Orthanc dir");
        let mut config = serde_json::json!({
            "Name": ae_title,
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            "DicomServerEnabled": true,
            "DicomAet": ae_title,
            "DicomPort": dicom_port,
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomAlwaysAllowStore": true,
            "DicomCheckCalledAet": false,
            "Plugins": [],
        });
        let modalities: serde_json::Map<String, Value> = options
            .modalities
            .iter()
            .map(|m| {
                let mut entry = serde_json::json!({
                    "AET": m.ae_title,
                    "Host": m.host,
                    "Port": m.port,
                    "AllowEcho": true,
                    "AllowStore": true,
                    "AllowFind": true,
                    "AllowGet": true,
                    "AllowMove": true,
                });
                if m.tls
                    && let Some(obj) = entry.as_object_mut()
                {
                    obj.insert("UseDicomTls".into(), Value::Bool(true));
                }
                (m.name.clone(), entry)
            })
            .collect();
        if let Some(obj) = config.as_object_mut() {
            obj.insert("DicomModalities".into(), Value::Object(modalities));
            for (k, v) in &options.extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, config.to_string()).expect("writing orthanc.json");
        let log = std::fs::File::create(dir.join("orthanc.log")).expect("orthanc log");
        let child = Command::new(binary)
            .arg(&config_path)
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting Orthanc");
        let o = Orthanc {
            child: Some(child),
            dir: dir.to_path_buf(),
            ae_title: ae_title.into(),
            dicom_port,
            http_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if o.try_get("/system").is_some() {
                return o;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "Orthanc did not answer on port {http_port} within 30 s: {}",
            log_tail(&dir.join("orthanc.log"))
        );
    }

    /// curl a REST resource (`extra`: e.g. `["-d", body]` to POST).
    fn curl(&self, extra: &[&str], path: &str) -> Option<Vec<u8>> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    fn try_get(&self, path: &str) -> Option<Vec<u8>> {
        self.curl(&[], path)
    }

    /// GET a REST resource (fails the test on error).
    pub fn get(&self, path: &str) -> Vec<u8> {
        self.try_get(path)
            .unwrap_or_else(|| panic!("Orthanc GET {path} failed"))
    }

    /// POST `body` (sent as is; it must not start with `@`, which curl
    /// reads as a file name) to a REST resource; the HTTP status and the
    /// answer's body, whatever the status (an error's body says what
    /// failed).
    pub fn post(&self, path: &str, body: &str) -> (u16, Vec<u8>) {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "120", "-X", "POST", "--data-binary"])
            .arg(body)
            .args(["-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .expect("running curl");
        assert!(
            out.status.success(),
            "curl POST {path} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = out.stdout;
        let split = text.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let code: u16 = String::from_utf8_lossy(&text[split..])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("HTTP status of POST {path} ({e})"));
        text.truncate(split);
        (code, text)
    }

    /// Upload a Part-10 file through the REST API (`POST /instances`); the
    /// file is stored as sent. Returns Orthanc's instance ID.
    pub fn upload(&self, path: &Path) -> String {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "60", "-X", "POST", "--data-binary"])
            .arg(format!("@{}", path.display()))
            .arg(format!("http://127.0.0.1:{}/instances", self.http_port))
            .output()
            .expect("running curl");
        assert!(
            out.status.success(),
            "Orthanc refused the upload of {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("upload answer JSON");
        assert_eq!(
            v["Status"],
            "Success",
            "upload of {} answered {v}",
            path.display()
        );
        v["ID"].as_str().expect("instance ID").to_string()
    }

    /// The tail of Orthanc's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.join("orthanc.log"))
    }

    /// How many instances Orthanc holds.
    pub fn count_instances(&self) -> u64 {
        let v: Value = serde_json::from_slice(&self.get("/statistics")).expect("statistics JSON");
        v["CountInstances"].as_u64().expect("CountInstances")
    }

    /// The Part-10 file Orthanc holds for a SOP Instance UID.
    pub fn instance_file(&self, sop_instance_uid: &str) -> Vec<u8> {
        let out = self
            .curl(&["-d", sop_instance_uid], "/tools/lookup")
            .unwrap_or_else(|| panic!("Orthanc lookup of {sop_instance_uid} failed"));
        let found: Value = serde_json::from_slice(&out).expect("lookup JSON");
        let id = found[0]["ID"]
            .as_str()
            .unwrap_or_else(|| panic!("Orthanc does not hold {sop_instance_uid}"));
        self.get(&format!("/instances/{id}/file"))
    }

    /// Delete what a UID names (a study, series or instance) through the
    /// REST API: `POST /tools/lookup`, then `DELETE` its path.
    pub fn delete_uid(&self, uid: &str) {
        let out = self
            .curl(&["-d", uid], "/tools/lookup")
            .unwrap_or_else(|| panic!("Orthanc lookup of {uid} failed"));
        let found: Value = serde_json::from_slice(&out).expect("lookup JSON");
        let path = found[0]["Path"]
            .as_str()
            .unwrap_or_else(|| panic!("Orthanc does not hold {uid}: {found}"));
        self.curl(&["-X", "DELETE"], path)
            .unwrap_or_else(|| panic!("Orthanc DELETE {path} ({uid}) failed"));
    }

    /// Wait until Orthanc holds `n` instances.
    pub fn wait_for_instances(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = 0;
        while Instant::now() < deadline {
            last = self.count_instances();
            if last >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Orthanc holds {last} instances after {limit:?}, want {n}");
    }

    /// Kill it (the storage stays for a restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// A webhook receiver
// ---------------------------------------------------------------------------

/// A webhook receiver on loopback: every POST body, answered 200.
pub struct Hooks {
    pub port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Hooks {
    pub fn start() -> Hooks {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the webhook receiver");
        let port = listener.local_addr().expect("addr").port();
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let b = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                let body = loop {
                    let Ok(n) = s.read(&mut buf) else { break None };
                    if n == 0 {
                        break None;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).into_owned();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse().ok())
                            })
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            break Some(got[h + 4..h + 4 + len].to_vec());
                        }
                    }
                };
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                if let Some(body) = body
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    b.lock().expect("hooks").push(v);
                }
            }
        });
        Hooks { port, bodies }
    }

    pub fn take(&self) -> Vec<Value> {
        std::mem::take(&mut *self.bodies.lock().expect("hooks"))
    }
}

/// GET `path` from the agent's admin endpoint on 127.0.0.1:`port` (empty on
/// any failure: callers poll or assert on the content).
pub fn admin_get(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "30"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pacs-mirror status --json` of the running agent (fails the test if the
/// answer does not come from it).
pub fn running_status(config_path: &Path) -> Value {
    let out = run(
        Command::new(bin())
            .args(["status", "--json", "--config"])
            .arg(config_path),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "status failed: {}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
    assert_eq!(v["running"], true, "status not from the running agent: {v}");
    v
}

/// The remote device `MIRROR` (an acceptor on 127.0.0.1:`mirror_port`, plus
/// `remote_ae_extra` lines) and a DICOM target `mirror` to it that retries
/// quickly, as TOML to append to an agent's configuration.
pub fn mirror_target_toml(mirror_port: u16, remote_ae_extra: &str) -> String {
    format!(
        "\n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {mirror_port}\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         {remote_ae_extra}\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n"
    )
}

/// `studies` synthetic studies of `per_study` images of `size`×`size`.
pub fn synth_small(out: &Path, studies: usize, per_study: usize, size: usize) -> Vec<PathBuf> {
    synth_small_with(out, studies, per_study, size, &[])
}

/// [`synth_small`] with more `synth` arguments (`--seed`, `--patient-id`…).
pub fn synth_small_with(
    out: &Path,
    studies: usize,
    per_study: usize,
    size: usize,
    extra: &[&str],
) -> Vec<PathBuf> {
    let (studies, per_study, size) = (studies.to_string(), per_study.to_string(), size.to_string());
    let mut args = vec![
        "--studies",
        &studies,
        "--instances-per-series",
        &per_study,
        "--rows",
        &size,
        "--columns",
        &size,
    ];
    args.extend_from_slice(extra);
    synth(out, &args)
}

/// Now, in Unix ms (to compare with the agent's timestamps).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------
// pynetdicom (PyPI, in the venv scripts/test installs)
// ---------------------------------------------------------------------------

/// The Python interpreter of the venv with pydicom, pynetdicom and the
/// public corpora (`PACS_MIRROR_PYNETDICOM_PYTHON`, exported by
/// scripts/test; else its default place). Fails the test when missing.
pub fn pynetdicom_python() -> PathBuf {
    let p = std::env::var_os("PACS_MIRROR_PYNETDICOM_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(
                ".cache/pacs-mirror/pynetdicom-3.0.4-pydicom-3.0.2-deid-0.0.20-nibabel-5.4.2-sqlalchemy-2.0.59/bin/python",
            ))
        })
        .unwrap_or_default();
    assert!(
        p.is_file(),
        "the pynetdicom venv's python is not at {} (PACS_MIRROR_PYNETDICOM_PYTHON): run scripts/test, which installs pydicom and pynetdicom",
        p.display()
    );
    let out = run(
        Command::new(&p).args(["-c", "import pydicom, pynetdicom"]),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{} cannot import pydicom and pynetdicom: run scripts/test, which installs them\n{}",
        p.display(),
        out.stderr
    );
    p
}

/// A script of `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// DCMTK storescp as a mirror: AE `ae` on 127.0.0.1:`port`, writing what it
/// receives into `out`, with `extra` options (`+B` bit-preserving,
/// `--fork`, its fault switches). Started when it listens; killed on drop.
pub struct StoreScp(std::process::Child);

impl StoreScp {
    pub fn start(port: u16, ae: &str, out: &Path, extra: &[&str]) -> StoreScp {
        std::fs::create_dir_all(out).expect("mkdir");
        let mut scp = StoreScp(
            Command::new(tool("storescp"))
                .args(["-aet", ae, "-od"])
                .arg(out)
                .args(extra)
                .arg(port.to_string())
                .env("TCP_NODELAY", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting storescp"),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = scp.0.try_wait() {
                panic!("storescp on port {port} exited at start: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "storescp never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        scp
    }

    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a test sent, read from each file.
pub fn expectations(files: &[PathBuf]) -> HashMap<PathBuf, Expect> {
    files.iter().map(|f| (f.clone(), Expect::of(f))).collect()
}

impl Expect {
    /// A file's instance, data set hash and bytes.
    pub fn of(file: &Path) -> Expect {
        let (meta, ds) = raw_info(file);
        Expect {
            uid: meta.sop_instance_uid,
            blake3: blake3_hex(&ds),
            dataset: ds,
        }
    }
}

/// What a test sent: the instance, the blake3 of its data set and the
/// data set bytes.
pub struct Expect {
    pub uid: String,
    pub blake3: String,
    pub dataset: Vec<u8>,
}

/// Every acknowledged instance is indexed once with its hash and its spool
/// file is intact (the crash and power-cut tests).
pub fn check_acked(cfg: &AgentConfig, rows: &[Row], acked: &[&Expect], when: &str) {
    let mut by_uid: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in rows {
        by_uid
            .entry(r.sop_instance_uid.as_str())
            .or_default()
            .push(r);
    }
    for e in acked {
        let rs = by_uid.get(e.uid.as_str()).unwrap_or_else(|| {
            panic!(
                "{when}: acknowledged instance {} is not in the index",
                e.uid
            )
        });
        assert_eq!(
            rs.len(),
            1,
            "{when}: {} has {} index rows (re-sends are identical)",
            e.uid,
            rs.len()
        );
        assert_eq!(rs[0].blake3, e.blake3, "{when}: blake3 of {}", e.uid);
        check_spool_file(cfg, rs[0], Some(&e.dataset));
    }
}
