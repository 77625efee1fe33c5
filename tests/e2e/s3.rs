//! Backup to a real S3-compatible server (moto in server mode, on loopback)
//! and restore from the bucket alone into a real Orthanc: byte-exact blobs
//! under their content address, manifests, two agents on one bucket,
//! outages, kill -9.
//!
//! The bucket is read here with `object_store` directly, not through the
//! agent's code, so a layout bug cannot hide behind itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::Value;

use crate::harness::*;

pub const BUCKET: &str = "dicom-test";

/// A moto S3 server on loopback with the bucket [`BUCKET`]; killed on drop.
/// Its state is in memory: a restart starts empty.
pub struct S3Server {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

fn moto_binary() -> PathBuf {
    let p = std::env::var_os("PACS_MIRROR_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cache/pacs-mirror/moto-5.2.5/bin/moto_server"))
        })
        .unwrap_or_default();
    assert!(
        p.is_file(),
        "the S3 test server (moto_server) is not at {}: run scripts/test, which installs it",
        p.display()
    );
    p
}

fn curl_ok(args: &[&str]) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "5"])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl S3Server {
    /// Start on a free port and create the bucket.
    pub fn start(dir: &Path) -> S3Server {
        Self::start_on(dir, free_port())
    }

    /// Start on `port` (a restart) and create the bucket.
    pub fn start_on(dir: &Path, port: u16) -> S3Server {
        std::fs::create_dir_all(dir).expect("creating the S3 server dir");
        let log = dir.join(format!("moto-{port}.log"));
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log"))
            .spawn()
            .expect("starting moto_server");
        let s = S3Server {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = s.endpoint();
        while !curl_ok(&[&format!("{base}/moto-api/")]) {
            assert!(
                Instant::now() < deadline,
                "moto did not answer on {base} within 30 s: {}",
                log_tail(&s.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            curl_ok(&["-X", "PUT", &format!("{base}/{BUCKET}")]),
            "creating the bucket failed"
        );
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `[[target]]` of an agent backing up to `prefix` in the bucket.
    pub fn target_toml(&self, name: &str, prefix: &str) -> String {
        format!(
            "\n[[target]]\ntype = \"object_store\"\nname = \"{name}\"\nurl = \"s3://{BUCKET}/{prefix}\"\n\
             retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n\
             [target.options]\nendpoint = \"{}\"\nallow_http = \"true\"\nregion = \"us-east-1\"\n\
             access_key_id = \"test\"\nsecret_access_key = \"test\"\nvirtual_hosted_style_request = \"false\"\n",
            self.endpoint()
        )
    }

    /// Kill it (all its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client of our own for the checks.
    pub fn reader(&self) -> S3Reader {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("S3 client");
        S3Reader {
            store,
            rt: tokio::runtime::Runtime::new().expect("runtime"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct S3Reader {
    store: AmazonS3,
    rt: tokio::runtime::Runtime,
}

impl S3Reader {
    pub fn list(&self, prefix: &str) -> Vec<ObjectMeta> {
        self.rt
            .block_on(
                self.store
                    .list(Some(&Key::from(prefix)))
                    .try_collect::<Vec<_>>(),
            )
            .expect("listing the bucket")
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt
            .block_on(async { self.store.get(&Key::from(key)).await?.bytes().await })
            .unwrap_or_else(|e| panic!("GET {key}: {e}"))
            .to_vec()
    }
}

impl S3Reader {
    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        self.rt
            .block_on(self.store.put(&Key::from(key), bytes.into()))
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
    }
}

/// What the bucket holds under `prefix`, checked against the layout:
/// every object's data set hashes to its key; every manifest entry names
/// an object that exists, with the file hash of its bytes. Returns the
/// objects (data set hash → file bytes) and the manifest entries by SOP
/// Instance UID.
pub struct Held {
    pub objects: BTreeMap<String, Vec<u8>>,
    pub entries: BTreeMap<String, Value>,
    pub manifests: usize,
}

pub fn check_bucket(reader: &S3Reader, prefix: &str) -> Held {
    let mut objects = BTreeMap::new();
    let mut manifests = Vec::new();
    let mut descriptor = false;
    for meta in reader.list(prefix) {
        let key = meta.location.to_string();
        let rel = key
            .strip_prefix(&format!("{prefix}/"))
            .unwrap_or_else(|| panic!("{key} is outside {prefix}/"));
        if rel == "pacs-mirror-bucket.json" {
            descriptor = true;
        } else if let Some(name) = rel.strip_prefix("objects/") {
            let (dir, file) = name.split_once('/').expect("objects/<hh>/<hash>.dcm");
            let hash = file.strip_suffix(".dcm").expect(".dcm").to_string();
            assert_eq!(&hash[..2], dir, "{key}");
            let bytes = reader.get(&key);
            assert_eq!(meta.size, bytes.len() as u64);
            assert_eq!(
                blake3_hex(dataset_bytes(&bytes)),
                hash,
                "{key}: the data set does not hash to the key"
            );
            objects.insert(hash, bytes);
        } else if rel.starts_with("studies/") && rel.ends_with("/manifest.json") {
            manifests.push(key);
        } else {
            panic!("unexpected key {key} (staging left behind?)");
        }
    }
    assert!(descriptor, "no pacs-mirror-bucket.json under {prefix}");
    let mut entries = BTreeMap::new();
    for key in &manifests {
        let m: Value = serde_json::from_slice(&reader.get(key)).expect("manifest JSON");
        assert_eq!(m["format"], "pacs-mirror/study-manifest/1");
        let study = m["study_instance_uid"].as_str().expect("study uid");
        assert_eq!(
            key.as_str(),
            format!(
                "{prefix}/studies/{}/manifest.json",
                blake3::hash(study.as_bytes()).to_hex()
            ),
            "manifest key"
        );
        for e in m["instances"].as_array().expect("instances") {
            assert_eq!(e["study_instance_uid"], study);
            let hash = e["blake3"].as_str().expect("blake3").to_string();
            assert_eq!(
                e["key"],
                format!("objects/{}/{hash}.dcm", &hash[..2]),
                "entry key"
            );
            let blob = objects
                .get(&hash)
                .unwrap_or_else(|| panic!("manifest entry {hash} has no object"));
            assert_eq!(e["file_blake3"], blake3_hex(blob), "file hash of {hash}");
            assert_eq!(e["file_bytes"], blob.len() as u64);
            let sop = e["sop_instance_uid"].as_str().expect("sop").to_string();
            assert!(
                entries.insert(sop.clone(), e.clone()).is_none(),
                "{sop} listed twice"
            );
        }
    }
    Held {
        objects,
        entries,
        manifests: manifests.len(),
    }
}

/// `status --json` of the running agent: the target `name`.
pub fn target_status(config_path: &Path, name: &str) -> Value {
    running_status(config_path)["targets"][name].clone()
}

pub fn wait_target(
    config_path: &Path,
    name: &str,
    what: &str,
    limit: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let t = target_status(config_path, name);
        if ok(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status never showed it: {t}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_with_s3(data: &Path, s3: &S3Server, prefix: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new(data);
    cfg.extra_toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        s3.target_toml("backup", prefix),
        free_port()
    );
    cfg
}

fn write_config(cfg: &AgentConfig, path: &Path) -> PathBuf {
    std::fs::write(path, cfg.to_toml()).expect("writing a config");
    path.to_path_buf()
}

/// Acceptance 1 and 2: 1000 instances reach the bucket byte-exact under
/// their content address, with manifests listing exactly them; then, with
/// a new empty data folder, `restore` brings all 1000 back into an empty
/// Orthanc (data set bytes identical) and `reindex --from` rebuilds the
/// same index.
#[test]
fn backs_up_1000_to_s3_and_restores_from_the_bucket_alone() {
    let dir = tempdir();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let cfg = agent_with_s3(&dir.path().join("data"), &s3, "site-a");
    let agent = Agent::start(&cfg);
    let files = corpus_1000();
    store_all_ok(cfg.port, SENDER_AE, &[], files);
    let t = wait_target(
        &agent.config_path,
        "backup",
        "all 1000 uploaded",
        Duration::from_secs(300),
        |t| t["pending"] == 0 && t["delivered"] == 1000,
    );
    assert_eq!(t["dead_letters"], 0, "{t}");
    // The uploads took permits of the adaptive limiter: all given back,
    // its limit between 1 and the default maximum (32).
    assert_eq!(t["uploads"]["in_use"], 0, "{t}");
    assert_eq!(t["uploads"]["max"], 32, "{t}");
    let limit = t["uploads"]["limit"].as_u64().expect("upload limit");
    assert!((1..=32).contains(&limit), "{t}");
    assert!(t.get("associations").is_none(), "{t}");
    let config_path = agent.config_path.clone();
    agent.stop();

    let sent: HashMap<String, (Meta, Vec<u8>)> = files
        .iter()
        .map(|f| {
            let (meta, ds) = raw_info(f);
            (meta.sop_instance_uid.clone(), (meta, ds))
        })
        .collect();
    let held = check_bucket(&s3.reader(), "site-a");
    assert_eq!(held.objects.len(), 1000, "one object per instance");
    assert_eq!(held.entries.len(), 1000, "manifests list every instance");
    let sent_uids: BTreeSet<&String> = sent.keys().collect();
    let listed_uids: BTreeSet<&String> = held.entries.keys().collect();
    assert_eq!(
        sent_uids, listed_uids,
        "manifests list exactly what was received"
    );
    let rows = index_dump(&config_path);
    for row in &rows {
        let (_, ds) = &sent[&row.sop_instance_uid];
        let blob = &held.objects[&row.blake3];
        assert_eq!(dataset_bytes(blob), &ds[..], "{}", row.sop_instance_uid);
        let spool = std::fs::read(&row.path).expect("spool file");
        assert_eq!(blob, &spool, "the bucket holds the spool file as received");
        let e = &held.entries[&row.sop_instance_uid];
        assert_eq!(e["blake3"], row.blake3);
        assert_eq!(e["series_instance_uid"], row.series_instance_uid);
        assert_eq!(e["sop_class_uid"], row.sop_class_uid);
        assert_eq!(e["calling_ae"], SENDER_AE);
    }
    assert_eq!(held.manifests, 1, "the corpus is one study");

    // The agent's machine is gone: a new, empty data folder, the same
    // configuration of the target, and an empty Orthanc.
    let orthanc = Orthanc::start(
        &dir.path().join("orthanc"),
        "RESTORED",
        free_port(),
        free_port(),
    );
    let new_cfg = agent_with_s3(&dir.path().join("new-data"), &s3, "site-a");
    let new_config = write_config(&new_cfg, &dir.path().join("new.toml"));
    let out = run_ok(
        Command::new(bin())
            .args(["restore", "--quiet", "--json", "--from", "backup", "--to"])
            .arg(format!("RESTORED@127.0.0.1:{}", orthanc.dicom_port))
            .arg("--config")
            .arg(&new_config),
        Duration::from_secs(600),
    );
    let report: Value = serde_json::from_str(&out.stdout).expect("restore report JSON");
    assert_eq!(report["stored"], 1000, "{report}");
    assert_eq!(report["planned"], 1000, "{report}");
    assert!(
        !new_cfg.data_dir.join("index").exists(),
        "restore needs no local index and makes none"
    );
    assert_eq!(orthanc.count_instances(), 1000);
    for (uid, (_, ds)) in &sent {
        let held = orthanc.instance_file(uid);
        assert_eq!(dataset_bytes(&held), &ds[..], "restored {uid} differs");
    }

    // reindex --from: the same index as the original.
    let out = run_ok(
        Command::new(bin())
            .args(["reindex", "--from", "backup", "--config"])
            .arg(&new_config),
        Duration::from_secs(300),
    );
    let r: Value = serde_json::from_str(&out.stdout).expect("reindex report");
    assert_eq!(r["instances"], 1000, "{r}");
    assert_eq!(r["not_in_spool"], 1000, "{r}");
    let rebuilt = index_dump(&new_config);
    assert_eq!(row_keys(&rebuilt, false), row_keys(&rows, false));
}

/// Acceptance 3: two agents writing the same instances into one bucket:
/// each blob stored once, by whichever agent came first, never
/// overwritten; a re-send and a full resync are no-ops.
#[test]
fn two_agents_one_bucket_store_each_blob_once_and_never_overwrite() {
    let dir = tempdir();
    let s3 = S3Server::start(&dir.path().join("s3"));
    let reader = s3.reader();
    let files = &corpus_1000()[..120];
    let cfg_a = agent_with_s3(&dir.path().join("a"), &s3, "shared");
    let cfg_b = agent_with_s3(&dir.path().join("b"), &s3, "shared");
    let a = Agent::start(&cfg_a);
    let b = Agent::start(&cfg_b);
    // Both at once: the races are real.
    let send_b = {
        let port = cfg_b.port;
        let files = files.to_vec();
        std::thread::spawn(move || store_all_ok(port, "SENDER_B", &[], &files))
    };
    store_all_ok(cfg_a.port, "SENDER_A", &[], files);
    send_b.join().expect("sending to B");
    for (agent, name) in [(&a, "A"), (&b, "B")] {
        wait_target(
            &agent.config_path,
            "backup",
            &format!("agent {name} delivered"),
            Duration::from_secs(120),
            |t| t["pending"] == 0 && t["delivered"] == 120,
        );
    }
    let held = check_bucket(&reader, "shared");
    assert_eq!(held.objects.len(), 120, "each blob once");
    assert_eq!(held.entries.len(), 120);
    // Every blob is one agent's spool file, and its manifest entry names
    // the sender of exactly those bytes.
    let (a_cfg_path, b_cfg_path) = (a.config_path.clone(), b.config_path.clone());
    let snapshot = |reader: &S3Reader| -> BTreeMap<String, (String, Option<String>)> {
        reader
            .list("shared")
            .into_iter()
            .map(|m| {
                (
                    m.location.to_string(),
                    (m.last_modified.to_rfc3339(), m.e_tag.clone()),
                )
            })
            .collect()
    };
    let before = snapshot(&reader);

    // A re-send to A is a duplicate: nothing is written.
    store_all_ok(cfg_a.port, "SENDER_A", &[], &files[..20]);
    std::thread::sleep(Duration::from_secs(2));
    a.stop();
    b.stop();
    let rows_a = rows_by_uid(&index_dump(&a_cfg_path));
    let rows_b = rows_by_uid(&index_dump(&b_cfg_path));
    let mut from = [0usize; 2];
    for (uid, e) in &held.entries {
        let hash = e["blake3"].as_str().expect("hash");
        let blob = &held.objects[hash];
        let spool_a = std::fs::read(&rows_a[uid].path).expect("A spool");
        let spool_b = std::fs::read(&rows_b[uid].path).expect("B spool");
        assert_ne!(spool_a, spool_b, "the agents' file metas differ");
        if *blob == spool_a {
            from[0] += 1;
            assert_eq!(e["calling_ae"], "SENDER_A");
        } else {
            assert_eq!(*blob, spool_b, "{uid}: the blob is neither agent's file");
            from[1] += 1;
            assert_eq!(e["calling_ae"], "SENDER_B");
        }
    }
    assert_eq!(from[0] + from[1], 120);

    // A full resync of A: every object is found, verified, not rewritten.
    let out = run_ok(
        Command::new(bin())
            .args(["resync", "--target", "backup", "--config"])
            .arg(&a_cfg_path),
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains("120 object"), "{}", out.stdout);
    let a = Agent::start(&cfg_a);
    wait_target(
        &a.config_path,
        "backup",
        "resync done",
        Duration::from_secs(120),
        |t| t["pending"] == 0 && t["delivered"] == 120,
    );
    a.stop();
    assert_eq!(
        snapshot(&reader),
        before,
        "nothing in the bucket was rewritten"
    );
}

/// Acceptance 4: with the S3 server down, stores still succeed and the lag
/// grows; once it is back, everything arrives. kill -9 of the agent during
/// uploads: nothing lost, nothing corrupt, nothing left in staging.
#[test]
fn s3_outage_and_kill_9_lose_nothing() {
    let dir = tempdir();
    let mut s3 = S3Server::start(&dir.path().join("s3"));
    let port = s3.port;
    let cfg = agent_with_s3(&dir.path().join("data"), &s3, "site-b");
    let corpus = corpus_1000();
    let (first, rest) = (&corpus[..200], &corpus[200..500]);

    s3.stop();
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], first);
    let t = wait_target(
        &agent.config_path,
        "backup",
        "lag during the outage",
        Duration::from_secs(60),
        |t| t["pending"] == 200 && t["circuit_open"] == true,
    );
    assert!(
        t["pending_bytes"].as_u64().unwrap_or(0) > 200 * 500_000,
        "{t}"
    );
    assert!(
        t["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{t}"
    );
    let s3 = S3Server::start_on(&dir.path().join("s3"), port);
    wait_target(
        &agent.config_path,
        "backup",
        "delivered after the outage",
        Duration::from_secs(120),
        |t| t["pending"] == 0 && t["delivered"] == 200 && t["circuit_open"] == false,
    );
    assert!(agent.log().contains("resuming"), "{}", agent.log_tail());
    agent.stop();

    // kill -9 at random moments while objects are received and uploaded.
    let seed = std::env::var("E2E_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7u64);
    let mut rng = seed;
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for round in 0..3 {
        let agent = Agent::start(&cfg);
        let chunk = &rest[round * 100..(round + 1) * 100];
        let sender = spawn(&mut storescu_cmd(cfg.port, SENDER_AE, AGENT_AE, &[], chunk));
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (rng >> 33) % 2500));
        agent.crash();
        let run = StoreRun::parse(sender.wait(Duration::from_secs(120)));
        for f in run.successes() {
            acknowledged.insert(raw_info(&f).0.sop_instance_uid);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "no store was acknowledged before the kills"
    );
    // Restart; the sender re-sends what was not acknowledged.
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], rest);
    wait_target(
        &agent.config_path,
        "backup",
        "everything uploaded after the kills",
        Duration::from_secs(300),
        |t| t["pending"] == 0 && t["delivered"] == 500,
    );
    let config_path = agent.config_path.clone();
    agent.stop();
    let held = check_bucket(&s3.reader(), "site-b");
    assert_eq!(held.objects.len(), 500);
    assert_eq!(held.entries.len(), 500);
    for f in first.iter().chain(rest) {
        let (meta, ds) = raw_info(f);
        let e = &held.entries[&meta.sop_instance_uid];
        let blob = &held.objects[e["blake3"].as_str().expect("hash")];
        assert_eq!(dataset_bytes(blob), &ds[..], "{}", meta.sop_instance_uid);
    }
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 500);
    for uid in &acknowledged {
        assert!(
            held.entries.contains_key(uid),
            "acknowledged {uid} not in the bucket"
        );
    }
}
