//! DICOM TLS on the agent's associations, against real peers with
//! certificates the tests make (`tls_certs`): DCMTK storescu/echoscu into a
//! TLS listener (mutual TLS, refusals, plaintext/TLS mix-ups), replication
//! to DCMTK storescp +tls and to Orthanc with DicomTlsEnabled (byte-exact;
//! a foreign CA or a wrong pin gets nothing and the target says why),
//! drills and the failover check over TLS, the expiry alert and SIGHUP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::tls_certs::{CertKey, TlsCerts, fingerprint};
use crate::tls_peers::{DcmtkTls, PeerCert, TlsStorescp, echoscu_tls, storescu_tls};

/// `[device.tls]` presenting `own`, trusting `ca`.
fn device_tls(own: &CertKey, ca: &Path) -> String {
    format!(
        "\n[device.tls]\ncertificate = {:?}\nprivate_key = {:?}\ntrusted_ca = {:?}\n",
        own.cert.display().to_string(),
        own.key.display().to_string(),
        ca.display().to_string()
    )
}

const DRILL_AE: &str = "PM_DRILL";

const TLS_SUITES: &str = "tls_cipher_suites = [\"BCP195-ND\"]\n";

/// An agent whose listener is TLS (mutual TLS when `require_client`),
/// presenting `own` and trusting the test CA; the readiness probe calls
/// with the client certificate. An admin endpoint for `/metrics`.
fn tls_agent(dir: &Path, certs: &TlsCerts, require_client: bool) -> (AgentConfig, u16) {
    let mut cfg = AgentConfig::new(&dir.join("data"));
    cfg.conn_extra = format!("{TLS_SUITES}require_client_certificate = {require_client}\n");
    let admin = free_port();
    cfg.extra_toml = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        device_tls(&certs.server, &certs.ca)
    );
    cfg.probe_extra = DcmtkTls::scu(Some(&certs.client), &[&certs.ca]).args();
    (cfg, admin)
}

/// Every sent object is in the spool, its data set byte for byte.
fn assert_spooled(cfg: &AgentConfig, files: &[PathBuf]) {
    for f in files {
        let sent = std::fs::read(f).expect("reading a sent file");
        let ds = dataset_bytes(&sent);
        let hash = blake3_hex(ds);
        let path = cfg
            .spool_dir()
            .join("objects")
            .join(&hash[..2])
            .join(format!("{hash}.dcm"));
        let held = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{} not in the spool ({}): {e}", f.display(), path.display())
        });
        assert_eq!(dataset_bytes(&held), ds, "spooled copy of {}", f.display());
    }
}

fn metric(admin: u16, line_start: &str) -> Option<u64> {
    admin_get(admin, "/metrics")
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wait until the agent's log has a line containing every one of `parts`.
fn wait_log(agent: &Agent, parts: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = agent.log();
        if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?} within {limit:?}{}",
            agent.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn storescu_over_mutual_tls_is_stored_byte_exact_and_the_tls_port_refuses_the_rest() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let (mut cfg, admin) = tls_agent(dir.path(), &certs, true);
    // One slot only: every refused connection must give it back at once.
    cfg.ae_extra = "max_associations = 1\n".into();
    let plain_port = free_port();
    cfg.more_connections = vec![(
        "plain".into(),
        format!("hostname = \"127.0.0.1\"\nport = {plain_port}\n"),
    )];
    let agent = Agent::start(&cfg);
    let files = synth_small(&dir.path().join("in"), 2, 3, 4096);

    // 1. storescu +tls with a client certificate: Success, byte-exact.
    let with_cert = DcmtkTls::scu(Some(&certs.client), &[&certs.ca]);
    let run = storescu_tls(cfg.port, AGENT_AE, &with_cert, &files);
    assert_eq!(run.successes().len(), files.len(), "{}", run.log());
    assert_spooled(&cfg, &files);
    // (That port speaks TLS only: step 3 shows plaintext is refused there.)

    // 2. Without a client certificate: refused at the handshake, logged
    //    with the peer's address and the reason.
    let t = Instant::now();
    let anonymous = DcmtkTls::scu(None, &[&certs.ca]);
    let out = echoscu_tls(cfg.port, AGENT_AE, Some(&anonymous));
    assert!(
        !out.status.success(),
        "anonymous TLS was let in: {}",
        out.all()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let line = wait_log(
        &agent,
        &["TLS handshake failed", "no_client_certificate"],
        Duration::from_secs(5),
    );
    assert!(line.contains("127.0.0.1:"), "no peer address: {line}");
    assert!(line.contains("presented no certificate"), "{line}");

    // 3. Plaintext DICOM to the TLS port: refused quickly.
    let t = Instant::now();
    let out = echoscu_tls(cfg.port, AGENT_AE, None);
    assert!(
        !out.status.success(),
        "plaintext on the TLS port: {}",
        out.all()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    wait_log(
        &agent,
        &["TLS handshake failed", "not_tls"],
        Duration::from_secs(5),
    );

    // 4. TLS to the plaintext port: refused quickly.
    let t = Instant::now();
    let out = echoscu_tls(plain_port, AGENT_AE, Some(&with_cert));
    assert!(
        !out.status.success(),
        "TLS on the plaintext port: {}",
        out.all()
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    wait_log(&agent, &["tls_on_plaintext_port"], Duration::from_secs(5));

    // 5. A client certificate from another CA: refused, and said so.
    let foreign = DcmtkTls::scu(Some(&certs.other_server), &[&certs.ca]);
    let out = echoscu_tls(cfg.port, AGENT_AE, Some(&foreign));
    assert!(
        !out.status.success(),
        "a foreign client certificate: {}",
        out.all()
    );
    let line = wait_log(
        &agent,
        &["TLS handshake failed", "unknown_ca"],
        Duration::from_secs(5),
    );
    assert!(
        line.contains("pacs-mirror other CA"),
        "the issuer is not named: {line}"
    );

    // None of them kept the one slot: a good association still gets it.
    let out = echoscu_tls(cfg.port, AGENT_AE, Some(&with_cert));
    assert!(
        out.status.success(),
        "the slot was not given back: {}",
        out.all()
    );

    // Counted by reason in /metrics.
    for reason in [
        "no_client_certificate",
        "not_tls",
        "tls_on_plaintext_port",
        "unknown_ca",
    ] {
        let n = metric(
            admin,
            &format!("pacs_mirror_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(n, Some(1), "{reason} not counted once");
    }
    let left = metric(admin, "pacs_mirror_tls_certificate_expiry_seconds").expect("expiry gauge");
    assert!(left > 300 * 86_400, "server certificate expiry {left} s");
    agent.stop();
}

/// `storescp +tls` requiring our client certificate, as the mirror.
fn tls_storescp(dir: &Path, certs: &TlsCerts, own: &CertKey) -> (TlsStorescp, u16) {
    let port = free_port();
    let scp = TlsStorescp::start(
        &dir.join(format!("storescp-{port}")),
        "MIRROR",
        port,
        &DcmtkTls::scp(own, &[&certs.ca], PeerCert::Require),
    );
    (scp, port)
}

/// An agent (plaintext loopback listener) replicating to `MIRROR` at
/// `port` over TLS; `ae_extra`: lines for the remote AE (certificate
/// identity).
fn replicating_agent(
    dir: &Path,
    certs: &TlsCerts,
    port: u16,
    ae_extra: &str,
) -> (AgentConfig, u16) {
    let mut cfg = AgentConfig::new(&dir.join("data"));
    cfg.ae_extra = "association_initiator = true\n".into();
    let admin = free_port();
    cfg.extra_toml = format!(
        "{}\n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {port}\n{TLS_SUITES}\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n{ae_extra}\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        device_tls(&certs.server, &certs.ca),
    );
    (cfg, admin)
}

fn target_status(admin: u16) -> serde_json::Value {
    let s: serde_json::Value =
        serde_json::from_str(&admin_get(admin, "/status")).expect("/status is JSON");
    s["targets"]["mirror"].clone()
}

fn wait_delivered(admin: u16, n: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let t = target_status(admin);
        if t["pending"].as_u64() == Some(0) && t["delivered"].as_u64() == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within {limit:?}: {t}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replication_over_tls_to_storescp_is_byte_exact() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let (scp, port) = tls_storescp(dir.path(), &certs, &certs.server);
    let (cfg, admin) = replicating_agent(dir.path(), &certs, port, "");
    let agent = Agent::start(&cfg);
    let files = synth_small(&dir.path().join("in"), 2, 4, 8192);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait_delivered(admin, files.len() as u64, Duration::from_secs(60));
    let received = scp.received();
    assert_eq!(received.len(), files.len(), "{}", scp.log_tail());
    for f in &files {
        let (meta, ds) = raw_info(f);
        let got = received
            .get(&meta.sop_instance_uid)
            .unwrap_or_else(|| panic!("{} not received", meta.sop_instance_uid));
        assert_eq!(got, &ds, "{}", meta.sop_instance_uid);
    }
    // storescp saw our certificate over TLS.
    assert!(scp.log().contains("CN=localhost"), "{}", scp.log_tail());
    agent.stop();
}

#[test]
fn a_mirror_with_a_foreign_certificate_or_the_wrong_pin_gets_nothing_and_the_target_says_why() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let files = synth_small(&dir.path().join("in"), 1, 2, 4096);

    // A certificate from another CA.
    let (foreign, port) = tls_storescp(&dir.path().join("a"), &certs, &certs.other_server);
    let (cfg, admin) = replicating_agent(&dir.path().join("a"), &certs, port, "");
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let error = wait_error(admin, Duration::from_secs(30));
    assert!(error.contains("unknown CA"), "{error}");
    assert!(
        error.contains("pacs-mirror other CA"),
        "the issuer is not named: {error}"
    );
    assert!(
        foreign.received().is_empty(),
        "the foreign mirror got objects"
    );
    assert_eq!(
        target_status(admin)["pending"].as_u64(),
        Some(files.len() as u64)
    );
    agent.stop();

    // The right CA, but not the pinned certificate.
    let pin = fingerprint(&certs.self_signed.cert).colon_upper;
    let (good_ca, port) = tls_storescp(&dir.path().join("b"), &certs, &certs.server);
    let (cfg, admin) = replicating_agent(
        &dir.path().join("b"),
        &certs,
        port,
        &format!("certificate_sha256 = \"{pin}\"\n"),
    );
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    let error = wait_error(admin, Duration::from_secs(30));
    assert!(error.contains("not the pinned one"), "{error}");
    assert!(
        good_ca.received().is_empty(),
        "a mirror with the wrong pin got objects"
    );
    agent.stop();

    // The pinned self-signed certificate: delivered without a CA.
    let (pinned, port) = tls_storescp(&dir.path().join("c"), &certs, &certs.self_signed);
    let (cfg, admin) = replicating_agent(
        &dir.path().join("c"),
        &certs,
        port,
        &format!("certificate_sha256 = \"{pin}\"\n"),
    );
    let agent = Agent::start(&cfg);
    store_all_ok(cfg.port, SENDER_AE, &[], &files);
    wait_delivered(admin, files.len() as u64, Duration::from_secs(60));
    assert_eq!(pinned.received().len(), files.len());
    agent.stop();
}

fn wait_error(admin: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let t = target_status(admin);
        if let Some(e) = t["last_error"].as_str() {
            return e.to_string();
        }
        assert!(Instant::now() < deadline, "no error within {limit:?}: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn orthanc_over_tls_replication_drills_by_c_get_and_c_move_and_failover_check() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let agent_port = free_port();
    // Orthanc with DICOM TLS only, requiring client certificates; it calls
    // the agent's drill receiver over TLS for C-MOVE.
    let orthanc = crate::tls_peers::start_tls_orthanc(
        &dir.path().join("orthanc"),
        "MIRROR",
        &certs.server,
        &certs.ca,
        true,
        vec![
            OrthancModality::local("agent", AGENT_AE, agent_port).with_tls(),
            OrthancModality::local("drill", DRILL_AE, agent_port).with_tls(),
        ],
    );
    let (mut cfg, admin) = tls_agent(dir.path(), &certs, true);
    cfg.port = agent_port;
    cfg.ae_extra = "association_initiator = true\n".into();
    // MIRROR is held to its certificate's name both ways: the server
    // certificate we connect to, and the client certificate it calls the
    // drill receiver with.
    let mirror = format!(
        "\n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {}\n{TLS_SUITES}\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         association_initiator = true\nsource_addresses = [\"127.0.0.1\"]\ncertificate_name = \"localhost\"\n",
        orthanc.dicom_port
    );
    let target = |name: &str| {
        format!(
            "\n[[target]]\ntype = \"dicom\"\nname = \"{name}\"\nremote_ae = \"MIRROR\"\n\
             retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 10\n"
        )
    };
    cfg.extra_toml = format!(
        "{}\n[[device.network_ae]]\nae_title = \"{DRILL_AE}\"\nnetwork_connections = [\"dicom\"]\n\
         drill_receiver = true\nallowed_calling_aes = [\"MIRROR\"]\n\
         {mirror}{}{}\
         \n[[drill]]\ntarget = \"mirror\"\nrandom_studies = 3\nnewest_study = false\ntimeout_secs = 20\n\
         \n[[drill]]\ntarget = \"mirror_move\"\nrandom_studies = 3\nnewest_study = false\ntimeout_secs = 20\n\
         retrieve = \"c-move\"\nmove_destination = \"{DRILL_AE}\"\n\
         \n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        device_tls(&certs.server, &certs.ca),
        target("mirror"),
        target("mirror_move"),
    );
    let agent = Agent::start(&cfg);
    let files = synth_small(&dir.path().join("in"), 3, 4, 64);
    let with_cert = DcmtkTls::scu(Some(&certs.client), &[&certs.ca]);
    let run = storescu_tls(cfg.port, AGENT_AE, &with_cert, &files);
    assert_eq!(run.successes().len(), files.len(), "{}", run.log());
    for t in ["mirror", "mirror_move"] {
        crate::s3::wait_target(
            &agent.config_path,
            t,
            "delivered",
            Duration::from_secs(120),
            |s| s["pending"] == 0 && s["delivered"] == files.len() as u64,
        );
    }
    // Replicated over TLS, byte-exact.
    for f in &files {
        let (meta, ds) = raw_info(f);
        let held = orthanc.instance_file(&meta.sop_instance_uid);
        assert_eq!(dataset_bytes(&held), &ds[..], "{}", meta.sop_instance_uid);
    }
    let drill = |target: &str| -> serde_json::Value {
        let out = crate::harness::run(
            std::process::Command::new(bin())
                .args(["drill", "--json", "--target", target, "--config"])
                .arg(&agent.config_path),
            Duration::from_secs(300),
        );
        assert!(
            out.status.success(),
            "drill of {target}: {}\n{}",
            out.all(),
            agent.log_tail()
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("drill JSON ({e}): {}", out.all()));
        v[0].clone()
    };
    // C-GET, on our own TLS association.
    let r = drill("mirror");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["counts"]["MATCH"], files.len() as u64, "{r}");
    // C-MOVE: Orthanc calls the drill receiver over TLS, with its
    // certificate bound to MIRROR.
    let r = drill("mirror_move");
    assert_eq!(r["ok"], true, "{r}\n{}", agent.log_tail());
    assert_eq!(r["retrieve"], "c-move", "{r}");
    assert_eq!(r["counts"]["MATCH"], files.len() as u64, "{r}");
    // failover check: complete.
    let out = crate::harness::run(
        std::process::Command::new(bin())
            .args([
                "failover", "check", "--json", "--target", "mirror", "--config",
            ])
            .arg(&agent.config_path),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("failover JSON");
    assert_eq!(v["complete"], true, "{v}");
    // `pacs-mirror echo MIRROR --config`: over TLS, as configured.
    let out = crate::harness::run(
        std::process::Command::new(bin())
            .args(["echo", "MIRROR", "--config"])
            .arg(&agent.config_path),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", out.all());
    assert!(out.stdout.contains("Success"), "{}", out.all());
    agent.stop();
}

#[test]
fn an_expiring_certificate_alerts_and_sighup_swaps_it_for_the_next_association_only() {
    use std::io::{BufRead, BufReader};
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    // The device's certificate files, replaced in place later.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).expect("live dir");
    let own = CertKey {
        cert: live.join("agent.pem"),
        key: live.join("agent.key"),
    };
    let put = |from: &CertKey| {
        std::fs::copy(&from.cert, &own.cert).expect("copy cert");
        std::fs::copy(&from.key, &own.key).expect("copy key");
    };
    put(&certs.short_lived);
    let (mut cfg, admin) = tls_agent(dir.path(), &certs, true);
    cfg.extra_toml = format!(
        "{}\n[alerts]\ncheck_interval_secs = 1\nspool_headroom_min_bytes = 1\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        device_tls(&own, &certs.ca)
    );
    let agent = Agent::start(&cfg);

    // 1. Ten days left: the alert fires, the gauge says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let alert = loop {
        let s: serde_json::Value =
            serde_json::from_str(&admin_get(admin, "/status")).expect("status JSON");
        if let Some(a) = s["alerts"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["kind"] == "certificate_expiring"))
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no certificate_expiring alert: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = alert["text"].as_str().unwrap_or_default();
    assert!(
        text.contains("expires in 9 d") || text.contains("expires in 10 d"),
        "{text}"
    );
    assert!(text.contains("CN=short-lived"), "{text}");
    let left = metric(admin, "pacs_mirror_tls_certificate_expiry_seconds").expect("gauge");
    assert!((9 * 86_400..=10 * 86_400).contains(&left), "{left}");

    // 2. An association held open across the reload.
    let go = dir.path().join("go");
    let object = synth_small(&dir.path().join("in"), 1, 1, 32);
    let mut holder = std::process::Command::new(pynetdicom_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/tls_hold.py"))
        .args(["--port", &cfg.port.to_string()])
        .arg("--ca")
        .arg(&certs.ca)
        .arg("--cert")
        .arg(&certs.client.cert)
        .arg("--key")
        .arg(&certs.client.key)
        .arg("--go")
        .arg(&go)
        .arg(&object[0])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting tls_hold.py");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let held: serde_json::Value = serde_json::from_str(
        &lines
            .next()
            .expect("a first line")
            .expect("reading tls_hold.py"),
    )
    .expect("JSON");
    assert_eq!(
        held["sha256"].as_str(),
        Some(crate::tls_certs::sha256_hex(&certs.short_lived.cert).as_str()),
        "{held}"
    );

    // 3. New certificate, SIGHUP.
    put(&certs.server);
    let st = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(st.success());
    wait_log(
        &agent,
        &["DICOM TLS files reloaded", "CN=localhost"],
        Duration::from_secs(10),
    );
    std::fs::write(&go, b"").expect("go file");

    // 4. The next association gets the new certificate; the held one
    //    stores and releases normally.
    let done: serde_json::Value = serde_json::from_str(
        &lines
            .next()
            .expect("a second line")
            .expect("reading tls_hold.py"),
    )
    .expect("JSON");
    let _ = holder.wait();
    assert_eq!(
        done["sha256_new"].as_str(),
        Some(crate::tls_certs::sha256_hex(&certs.server.cert).as_str()),
        "{done}"
    );
    assert_eq!(done["status"], 0, "{done}\n{}", agent.log_tail());
    assert_eq!(done["released"], true, "{done}");
    assert_spooled(&cfg, &object);
    // The monitor's next check sees the new certificate.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = metric(admin, "pacs_mirror_tls_certificate_expiry_seconds").expect("gauge");
        if left > 300 * 86_400 {
            break;
        }
        assert!(Instant::now() < deadline, "expiry gauge still {left}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 5. A bad file on the next SIGHUP keeps the current certificate.
    std::fs::write(&own.key, b"not a key").expect("spoil the key");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(st.success());
    let line = wait_log(&agent, &["NOT reloaded"], Duration::from_secs(10));
    assert!(line.contains("agent.key"), "{line}");
    let out = echoscu_tls(
        cfg.port,
        AGENT_AE,
        Some(&DcmtkTls::scu(Some(&certs.client), &[&certs.ca])),
    );
    assert!(out.status.success(), "{}", out.all());
    agent.stop();
}

/// A config with `MIRROR` at `port` over TLS (and `ae_extra` for it), the
/// device's `[device.tls]` as given.
fn echo_config(dir: &Path, port: u16, device_tls_toml: &str) -> PathBuf {
    let text = format!(
        "[device]\nname = \"echo\"\ndata_dir = {:?}\n\
         \n[[device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {}\n\
         \n[[device.network_ae]]\nae_title = \"PACS_MIRROR\"\nnetwork_connections = [\"dicom\"]\n\
         accept_any_calling_ae = true\nassociation_initiator = true\n\
         {device_tls_toml}\
         \n[[remote_device]]\nname = \"mirror\"\n\
         [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = {port}\n{TLS_SUITES}\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n",
        dir.join("data").display().to_string(),
        free_port(),
    );
    let path = dir.join(format!("echo-{port}.toml"));
    std::fs::write(&path, text).expect("writing the config");
    path
}

fn echo(config: &Path) -> Output {
    crate::harness::run(
        std::process::Command::new(bin())
            .args(["echo", "MIRROR", "--timeout-secs", "5", "--config"])
            .arg(config),
        Duration::from_secs(60),
    )
}

#[test]
fn echo_explains_tls_failures_in_plain_words() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let ours = device_tls(&certs.server, &certs.ca);

    // The mirror's certificate is from another CA.
    let (_foreign, port) = tls_storescp(&dir.path().join("a"), &certs, &certs.other_server);
    let out = echo(&echo_config(dir.path(), port, &ours));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains("FAILED: TLS with 127.0.0.1:"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("not issued by a trusted CA (unknown CA)"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("issued by \"CN=pacs-mirror other CA\""),
        "{}",
        out.all()
    );

    // The mirror does not trust our CA.
    let port = free_port();
    let _picky = TlsStorescp::start(
        &dir.path().join("b"),
        "MIRROR",
        port,
        &DcmtkTls::scp(&certs.server, &[&certs.other_ca], PeerCert::Require),
    );
    let out = echo(&echo_config(dir.path(), port, &ours));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains("refused our certificate")
            || out
                .stdout
                .contains("most likely refused our client certificate"),
        "{}",
        out.all()
    );

    // We have no certificate, and the mirror requires one.
    let (_strict, port) = tls_storescp(&dir.path().join("c"), &certs, &certs.server);
    let only_ca = format!(
        "\n[device.tls]\ntrusted_ca = {:?}\n",
        certs.ca.display().to_string()
    );
    let out = echo(&echo_config(dir.path(), port, &only_ca));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains("requires a client certificate"),
        "{}",
        out.all()
    );

    // The mirror speaks plaintext DICOM.
    let port = free_port();
    std::fs::create_dir_all(dir.path().join("d")).expect("dir");
    let mut plain = std::process::Command::new(tool("storescp"))
        .args(["-aet", "MIRROR", "-od"])
        .arg(dir.path().join("d"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("storescp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crate::tls_peers::listening(port) {
        assert!(Instant::now() < deadline, "storescp did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = echo(&echo_config(dir.path(), port, &ours));
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout
            .contains("the server closed the connection during the TLS handshake: it may not speak TLS on this port"),
        "{}",
        out.all()
    );
}

#[test]
fn config_check_reports_every_tls_file_problem_at_once_and_warns_about_plaintext() {
    let dir = tempdir();
    let certs = TlsCerts::generate(&dir.path().join("certs"));
    let check = |text: &str| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, text).expect("config");
        crate::harness::run(
            std::process::Command::new(bin())
                .args(["config", "check"])
                .arg(&path),
            Duration::from_secs(30),
        )
    };
    let base = |listener_host: &str, tls_toml: &str, conn_extra: &str| {
        format!(
            "[device]\nname = \"c\"\n\
             \n[[device.network_connection]]\nname = \"dicom\"\nhostname = \"{listener_host}\"\nport = 11112\n{conn_extra}\
             \n[[device.network_ae]]\nae_title = \"PACS_MIRROR\"\nnetwork_connections = [\"dicom\"]\n\
             allowed_calling_aes = [\"PRIMARY\"]\nassociation_initiator = true\n\
             {tls_toml}\
             \n[[remote_device]]\nname = \"primary\"\n[[remote_device.network_ae]]\nae_title = \"PRIMARY\"\n\
             association_initiator = true\nsource_addresses = [\"192.0.2.10\"]\n\
             \n[[remote_device]]\nname = \"mirror\"\n\
             [[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"198.51.100.50\"\nport = 104\n\
             [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
             \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\n"
        )
    };
    // Plaintext outside loopback: valid, with both warnings.
    let out = check(&base("0.0.0.0", "", ""));
    assert!(out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains(
            "warning: device.network_connection[0]: plaintext DICOM listener on 0.0.0.0:11112"
        ),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("target \"MIRROR\" is reached in plaintext at 198.51.100.50:104"),
        "{}",
        out.all()
    );

    // A TLS listener with a missing certificate, a key that is not the
    // certificate's, and an unreadable CA file: every one at once.
    let bad = format!(
        "\n[device.tls]\ncertificate = {:?}\nprivate_key = {:?}\ntrusted_ca = {:?}\n",
        certs.server.cert.display().to_string(),
        certs.client.key.display().to_string(),
        dir.path().join("nope.pem").display().to_string(),
    );
    let out = check(&base("0.0.0.0", &bad, TLS_SUITES));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains("error: device.tls.private_key:"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("does not belong to certificate"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("error: device.tls.trusted_ca:"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("nope.pem: cannot read it"),
        "{}",
        out.all()
    );
    assert!(
        !out.stdout.contains("plaintext DICOM listener"),
        "{}",
        out.all()
    );
    assert!(out.stdout.contains("2 error(s)"), "{}", out.all());

    // A key file that is no key and a certificate file that holds none.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").expect("junk");
    let worse = format!(
        "\n[device.tls]\ncertificate = {:?}\nprivate_key = {:?}\ntrusted_ca = {:?}\n",
        junk.display().to_string(),
        junk.display().to_string(),
        certs.ca.display().to_string(),
    );
    let out = check(&base("127.0.0.1", &worse, TLS_SUITES));
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.stdout.contains("error: device.tls.certificate:")
            && out.stdout.contains("holds no certificate"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("error: device.tls.private_key:")
            && out.stdout.contains("holds no usable private key"),
        "{}",
        out.all()
    );

    // The agent refuses to start with them, naming them.
    let out = crate::harness::run(
        std::process::Command::new(bin())
            .args(["run", "--config"])
            .arg(dir.path().join("check.toml")),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "{}", out.all());
    assert!(
        out.all().contains("holds no usable private key"),
        "{}",
        out.all()
    );
}

/// `openssl s_client` to the agent with `args`; whether a TLS session was
/// established, and what it said.
fn s_client(port: u16, args: &[&str], client: &CertKey, ca: &Path) -> (bool, String) {
    let out = crate::harness::run(
        std::process::Command::new(crate::tls_certs::openssl())
            .args(["s_client", "-brief", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .arg("-cert")
            .arg(&client.cert)
            .arg("-key")
            .arg(&client.key)
            .arg("-CAfile")
            .arg(ca)
            .stdin(std::process::Stdio::null()),
        Duration::from_secs(30),
    );
    let all = out.all();
    (all.contains("Protocol version:"), all)
}

#[test]
fn old_tls_versions_weak_suites_and_expired_client_certificates_are_refused() {
    let dir = tempdir();
    let certs = TlsCerts::generate_with(
        &dir.path().join("certs"),
        crate::tls_certs::KeyKind::Rsa2048,
    );
    let (cfg, admin) = tls_agent(dir.path(), &certs, true);
    let agent = Agent::start(&cfg);
    let port = cfg.port;
    // What we accept: TLS 1.3, and TLS 1.2 with an ECDHE AES-GCM suite.
    let (ok, all) = s_client(port, &["-tls1_3"], &certs.client, &certs.ca);
    assert!(ok && all.contains("TLSv1.3"), "{all}");
    let (ok, all) = s_client(
        port,
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        &certs.client,
        &certs.ca,
    );
    assert!(ok && all.contains("TLSv1.2"), "{all}");
    // TLS 1.1 and 1.0 (openssl allowed to offer them), RSA key exchange,
    // CBC: no session.
    for args in [
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &["-tls1_2", "-cipher", "AES128-SHA"][..],
        &["-tls1_2", "-cipher", "AES128-GCM-SHA256"][..],
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"][..],
        &["-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"][..],
    ] {
        let (ok, all) = s_client(port, args, &certs.client, &certs.ca);
        assert!(!ok, "{args:?} got a session: {all}");
    }
    wait_log(
        &agent,
        &["TLS handshake failed", "protocol_version"],
        Duration::from_secs(5),
    );
    // An expired client certificate from our own CA.
    let expired = DcmtkTls::scu(Some(&certs.expired), &[&certs.ca]);
    let out = echoscu_tls(port, AGENT_AE, Some(&expired));
    assert!(!out.status.success(), "{}", out.all());
    let line = wait_log(
        &agent,
        &["TLS handshake failed", "expired"],
        Duration::from_secs(5),
    );
    assert!(line.contains("CN=expired"), "{line}");
    let n = metric(
        admin,
        "pacs_mirror_tls_handshake_failures_total{reason=\"protocol_version\"}",
    );
    assert!(n.is_some_and(|n| n >= 6), "{n:?}");
    agent.stop();
}
