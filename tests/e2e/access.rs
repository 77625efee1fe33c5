//! Acceptance: access control. Unknown calling AE, a known AE from the wrong
//! address, and a wrong called AE get A-ASSOCIATE-RJ; an allowed AE gets
//! through; `pacs-mirror echo` reports success and says what is wrong.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// Sends an A-ASSOCIATE-RQ (Verification) from a chosen source address and
/// prints ACCEPT, REJECT <result> <source> <reason>, ABORT or CLOSED.
/// (storescu/echoscu cannot bind a source address.)
const RAW_ASSOCIATE_PY: &str = r#"
import socket, struct, sys
src, port, calling, called = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def item(t, body):
    return struct.pack(">BBH", t, 0, len(body)) + body
app = item(0x10, b"1.2.840.10008.3.1.1.1")
pc = item(0x20, bytes([1, 0, 0, 0]) + item(0x30, b"1.2.840.10008.1.1") + item(0x40, b"1.2.840.10008.1.2"))
ui = item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7433.1.2"))
body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32) + app + pc + ui
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(20)
s.bind((src, 0))
s.connect(("127.0.0.1", port))
s.sendall(struct.pack(">BBI", 1, 0, len(body)) + body)
def recv_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b
h = recv_exact(6)
if h is None:
    print("CLOSED"); sys.exit(0)
t, _, n = struct.unpack(">BBI", h)
b = recv_exact(n) or b""
if t == 2:
    print("ACCEPT")
    s.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))
    recv_exact(10)
elif t == 3:
    print("REJECT %d %d %d" % (b[1], b[2], b[3]))
elif t == 7:
    print("ABORT")
else:
    print("PDU %d" % t)
"#;

pub(crate) fn raw_associate(src: &str, port: u16, calling: &str, called: &str) -> String {
    let o = run_ok(
        Command::new(tool("python3"))
            .arg("-c")
            .arg(RAW_ASSOCIATE_PY)
            .args([src, &port.to_string(), calling, called]),
        Duration::from_secs(60),
    );
    o.stdout.trim().to_string()
}

fn echoscu(port: u16, calling: &str, called: &str) -> Output {
    run(
        Command::new(tool("echoscu")).args([
            "-v",
            "-aet",
            calling,
            "-aec",
            called,
            "127.0.0.1",
            &port.to_string(),
        ]),
        Duration::from_secs(60),
    )
}

fn assert_rejected(o: &Output, reason: &str, what: &str) {
    let all = o.all();
    assert!(!o.status.success(), "{what}: exit status 0:\n{all}");
    assert!(
        all.contains("Association Rejected"),
        "{what}: no A-ASSOCIATE-RJ reported:\n{all}"
    );
    assert!(
        all.contains(reason),
        "{what}: reason {reason:?} not reported:\n{all}"
    );
}

#[test]
fn unknown_callers_wrong_addresses_and_wrong_called_ae_are_rejected() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &["--instances-per-series", "1", "--seed", "6"],
    );
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.access = Access::Allow {
        ae: SENDER_AE.into(),
        sources: vec!["127.0.0.1/32".into()],
    };
    let agent = Agent::start(&cfg);
    let port = cfg.port;

    // The allowed AE from the allowed address.
    let ok = echoscu(port, SENDER_AE, AGENT_AE);
    assert!(
        ok.status.success(),
        "allowed echoscu failed:\n{}{}",
        ok.all(),
        agent.log_tail()
    );
    assert!(
        ok.all().contains("Received Echo Response (Success)"),
        "{}",
        ok.all()
    );

    // Unknown calling AE.
    let o = echoscu(port, "INTRUDER", AGENT_AE);
    assert_rejected(
        &o,
        "Calling AE Title Not Recognized",
        "echoscu from INTRUDER",
    );
    let o = run(
        &mut storescu_cmd(port, "INTRUDER", AGENT_AE, &[], &src),
        Duration::from_secs(60),
    );
    assert_rejected(
        &o,
        "Calling AE Title Not Recognized",
        "storescu from INTRUDER",
    );

    // Wrong called AE, from an allowed caller.
    let o = echoscu(port, SENDER_AE, "NOT_THE_MIRROR");
    assert_rejected(
        &o,
        "Called AE Title Not Recognized",
        "echoscu to NOT_THE_MIRROR",
    );
    let o = echoscu(port, SENDER_AE, "ANY-SCP");
    assert_rejected(&o, "Called AE Title Not Recognized", "echoscu to ANY-SCP");

    // The allowed AE from another address: rejected; from its own: accepted.
    let from_other = raw_associate("127.0.0.2", port, SENDER_AE, AGENT_AE);
    assert!(
        from_other.starts_with("REJECT "),
        "{SENDER_AE} from 127.0.0.2 (only 127.0.0.1/32 allowed) was not rejected: {from_other}{}",
        agent.log_tail()
    );
    eprintln!("{SENDER_AE} from 127.0.0.2: {from_other}");
    let from_third = raw_associate("127.0.0.3", port, SENDER_AE, AGENT_AE);
    assert!(
        from_third.starts_with("REJECT "),
        "{SENDER_AE} from 127.0.0.3 was not rejected: {from_third}"
    );
    // An empty (all-spaces) called AE title.
    let empty_called = raw_associate("127.0.0.1", port, SENDER_AE, "");
    assert!(
        empty_called.starts_with("REJECT "),
        "an empty called AE title was not rejected: {empty_called}"
    );
    let from_own = raw_associate("127.0.0.1", port, SENDER_AE, AGENT_AE);
    assert_eq!(
        from_own,
        "ACCEPT",
        "the raw client itself is broken{}",
        agent.log_tail()
    );

    // pacs-mirror echo: success with an allowed calling AE, a diagnosis
    // with a refused one.
    let target = format!("{AGENT_AE}@127.0.0.1:{port}");
    let o = run(
        Command::new(bin()).args(["echo", &target, "--calling-ae", SENDER_AE]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "pacs-mirror echo failed:\n{}", o.all());
    assert!(o.all().contains("Success"), "{}", o.all());
    let o = run(
        Command::new(bin()).args(["echo", &target, "--calling-ae", "INTRUDER"]),
        Duration::from_secs(60),
    );
    assert!(
        !o.status.success(),
        "pacs-mirror echo from INTRUDER succeeded:\n{}",
        o.all()
    );
    assert!(
        o.all().to_lowercase().contains("reject"),
        "pacs-mirror echo does not say it was rejected:\n{}",
        o.all()
    );

    let config_path = agent.config_path.clone();
    agent.stop();
    let rows = index_dump(&config_path);
    assert!(
        rows.is_empty(),
        "rejected callers stored something: {rows:#?}"
    );
    assert!(spool_object_files(&cfg).is_empty());
}

#[test]
fn echo_succeeds_and_diagnoses_a_closed_port() {
    let dir = tempdir();
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let o = run(
        Command::new(bin()).args(["echo", &format!("{AGENT_AE}@127.0.0.1:{}", cfg.port)]),
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "pacs-mirror echo failed:\n{}{}",
        o.all(),
        agent.log_tail()
    );
    let e = echoscu(cfg.port, "ECHOSCU", AGENT_AE);
    assert!(e.status.success(), "echoscu failed:\n{}", e.all());
    agent.stop();

    // Nothing listens there any more.
    let o = run(
        Command::new(bin()).args(["echo", &format!("{AGENT_AE}@127.0.0.1:{}", cfg.port)]),
        Duration::from_secs(60),
    );
    assert!(
        !o.status.success(),
        "echo to a closed port succeeded:\n{}",
        o.all()
    );
    assert!(
        o.all().to_lowercase().contains("connection refused"),
        "echo to a closed port does not say the connection was refused:\n{}",
        o.all()
    );
}

/// T20: a listener on every interface (0.0.0.0) with no allow-list and
/// without `accept_any_calling_ae`: `config check` fails and `pacs-mirror
/// run` refuses to start, both saying why, and nothing listens on the port.
/// With the explicit override (`accept_any_calling_ae = true`) the agent
/// starts, and says at start that anyone who can reach the port may store.
#[test]
fn an_exposed_listener_without_an_allow_list_does_not_start() {
    let dir = tempdir();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.hostname = "0.0.0.0".into();
    let exposed = cfg.to_toml().replace("accept_any_calling_ae = true\n", "");
    assert_ne!(exposed, cfg.to_toml());
    let path = dir.path().join("exposed.toml");
    std::fs::write(&path, exposed).expect("writing the config");
    let why = "listener on 0.0.0.0:";
    let check = run(
        Command::new(bin()).args(["config", "check"]).arg(&path),
        Duration::from_secs(30),
    );
    assert_eq!(
        check.status.code(),
        Some(1),
        "config check: {}",
        check.all()
    );
    assert!(
        check.all().contains(why) && check.all().contains("has no allow-list"),
        "config check: {}",
        check.all()
    );
    let out = run(
        Command::new(bin()).args(["run", "--config"]).arg(&path),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "the agent started: {}", out.all());
    assert!(
        out.stderr.contains("has no allow-list"),
        "run does not say why: {}",
        out.stderr
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", cfg.port)).is_err(),
        "something listens on port {}",
        cfg.port
    );

    // The explicit override: it starts, and warns.
    let agent = Agent::start(&cfg);
    assert!(
        agent
            .log()
            .contains("accept_any_calling_ae = true on a listener reachable from the network"),
        "no warning at start{}",
        agent.log_tail()
    );
    agent.stop();
}

/// T07: connections from addresses no AE allows never take the association
/// slots. With `max_associations = 2`, 30 silent connections from 127.0.0.2
/// (a slowloris outside the allow-list) do not keep the allowed sender out:
/// it still gets both slots. Eight of them are held (to be refused after
/// ARTIM), the other 22 are closed unread, and that is logged.
#[test]
fn strangers_cannot_lock_the_allowed_sender_out() {
    use std::io::Read;
    let dir = tempdir();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.access = Access::Allow {
        ae: SENDER_AE.into(),
        sources: vec!["127.0.0.1/32".into()],
    };
    cfg.ae_extra = "max_associations = 2\nartim_timeout_secs = 10\n".into();
    let agent = Agent::start(&cfg);
    let port = cfg.port;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut strangers: Vec<std::net::TcpStream> = (0..30)
        .map(|_| {
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4().expect("socket");
                s.bind("127.0.0.2:0".parse().expect("address"))
                    .expect("bind 127.0.0.2");
                let c = s
                    .connect(([127, 0, 0, 1], port).into())
                    .await
                    .expect("connecting from 127.0.0.2");
                c.into_std().expect("std stream")
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // The allowed sender gets both slots, and the limit still holds for it.
    let [first, second] =
        two_held_third_over_the_limit(&agent, "the allowed sender, strangers waiting");
    first.release().expect("release");
    second.release().expect("release");

    // Which strangers were closed unread, which are held.
    let (mut closed, mut held) = (0, 0);
    for s in &mut strangers {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held += 1
            }
            other => panic!("a stranger's connection: {other:?}"),
        }
    }
    assert_eq!(
        (held, closed),
        (
            pacs_mirror_agent::scp::STRANGER_SLOTS,
            30 - pacs_mirror_agent::scp::STRANGER_SLOTS
        ),
        "strangers held and closed"
    );
    let log = agent.log();
    assert!(
        log.contains("closed unread"),
        "no warning about strangers closed unread{}",
        agent.log_tail()
    );
    agent.stop();
}

/// T07: `max_associations_per_address` keeps one sender from taking every
/// slot: with 3 slots and 2 per address, the third association from
/// 127.0.0.1 is rejected (transient, local limit) while 127.0.0.2 still gets
/// the slot left, and a released association gives its address's share back.
#[test]
fn one_address_cannot_take_every_slot() {
    use crate::dimse::Outcome;
    let dir = tempdir();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.access = Access::Allow {
        ae: SENDER_AE.into(),
        sources: vec!["127.0.0.1/32".into(), "127.0.0.2/32".into()],
    };
    cfg.ae_extra = "max_associations = 3\nmax_associations_per_address = 2\n".into();
    let agent = Agent::start(&cfg);
    let port = cfg.port;
    let [first, second] = two_held_third_over_the_limit(&agent, "127.0.0.1, 2 per address");
    let other = raw_associate("127.0.0.2", port, SENDER_AE, AGENT_AE);
    assert_eq!(
        other,
        "ACCEPT",
        "127.0.0.2 did not get the slot left{}",
        agent.log_tail()
    );
    first.release().expect("release");
    std::thread::sleep(Duration::from_millis(200));
    let Outcome::Accepted(again) = crate::limits::verification(port) else {
        panic!(
            "a released association did not give its slot back{}",
            agent.log_tail()
        );
    };
    again.release().expect("release");
    second.release().expect("release");
    assert!(
        agent
            .log()
            .contains("too many associations from this address"),
        "the refusal is not logged with its reason{}",
        agent.log_tail()
    );
    agent.stop();
}

/// Two Verification associations of the sender from 127.0.0.1, held; a
/// third gets A-ASSOCIATE-RJ transient/provider/local-limit.
fn two_held_third_over_the_limit(agent: &Agent, what: &str) -> [crate::dimse::Association; 2] {
    use crate::dimse::Outcome;
    let held = [1, 2].map(|n| match crate::limits::verification(agent.config.port) {
        Outcome::Accepted(a) => a,
        _ => panic!("{what}: association {n} refused{}", agent.log_tail()),
    });
    assert!(
        matches!(
            crate::limits::verification(agent.config.port),
            Outcome::Rejected {
                result: 2,
                source: 3,
                reason: 2
            }
        ),
        "{what}: a third association was not rejected as over the limit{}",
        agent.log_tail()
    );
    held
}

/// A configuration with unknown keys in several tables (misspelled ones in
/// arrays of tables, a far-off one, none in the free-form
/// `target.options`) and a wrong-typed value: `config check` prints every
/// one in one pass, each with its TOML path, line and, when a valid key is
/// close, "did you mean …?", and exits 1; `pacs-mirror run` refuses to
/// start with the same list.
#[test]
fn config_check_reports_every_unknown_key_and_wrong_type_at_once() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let text = format!(
        r#"[device]
name = "typos"
data_dir = "{data}"
colour = "red"

[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
port = "11112"

[[device.network_ae]]
ae_title = "PACS_MIRROR"
network_connections = ["dicom"]
alowed_calling_aes = ["PRIMARY"]

[[remote_device]]
name = "primary"

[[remote_device.network_ae]]
ae_title = "PRIMARY"
association_initiator = true
source_adresses = ["127.0.0.1"]

[[target]]
type = "object_store"
name = "backup"
url = "file://{backup}"
timout_secs = 10

[target.options]
anything = "free-form"
"#,
        data = data.display(),
        backup = backup.display(),
    );
    let path = dir.path().join("typos.toml");
    std::fs::write(&path, text).expect("writing the config");
    let expected = [
        "error: device.colour: unknown key `colour` (line 4, column 1); the keys here are `name`, `description`, `data_dir`, `network_connection`, `network_ae`, `tls`",
        "error: device.network_connection[0].port: invalid type: string \"11112\", expected u16 (line 9, column 8)",
        "error: device.network_ae[0].alowed_calling_aes: unknown key `alowed_calling_aes` (line 14, column 1); did you mean `allowed_calling_aes`?",
        "error: remote_device[0].network_ae[0].source_adresses: unknown key `source_adresses` (line 22, column 1); did you mean `source_addresses`?",
        "error: target[0].timout_secs: unknown key `timout_secs` (line 28, column 1); did you mean `timeout_secs`?",
    ];

    let check = run(
        Command::new(bin()).args(["config", "check"]).arg(&path),
        Duration::from_secs(30),
    );
    assert_eq!(
        check.status.code(),
        Some(1),
        "config check: {}",
        check.all()
    );
    let mut lines: Vec<String> = expected.iter().map(|l| l.to_string()).collect();
    lines.push(format!("{}: 5 error(s), 0 warning(s)", path.display()));
    assert_eq!(
        check.stdout.lines().collect::<Vec<_>>(),
        lines,
        "config check: {}",
        check.all()
    );
    assert!(
        !check.all().contains("anything"),
        "target.options is free-form: {}",
        check.all()
    );

    let out = run(
        Command::new(bin()).args(["run", "--config"]).arg(&path),
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "the agent started: {}", out.all());
    assert!(
        out.stderr.contains("the configuration has 5 problem(s):"),
        "run: {}",
        out.stderr
    );
    for line in expected {
        assert!(
            out.stderr.contains(line),
            "run does not say {line:?}: {}",
            out.stderr
        );
    }
}
