//! Tests of parsing, loading and the built-in configurations.

use std::io::Write;
use std::path::Path;

use super::*;

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(toml, Path::new("test.toml"))
}

fn parse_error(toml: &str) -> String {
    match parse(toml) {
        Err(ConfigError::Parse { message, path }) => {
            assert_eq!(path, Path::new("test.toml"));
            message
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// The findings of text that is TOML but does not fit the schema.
fn findings(toml: &str) -> Vec<Finding> {
    match parse(toml) {
        Err(ConfigError::Invalid { findings }) => findings,
        other => panic!("expected findings, got {other:?}"),
    }
}

/// The one finding of text with one unknown key or wrong type, as
/// displayed (`error: PATH: MESSAGE`).
fn one_finding(toml: &str) -> String {
    let findings = findings(toml);
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert!(findings[0].is_error());
    findings[0].to_string()
}

use crate::validate::tests::MINIMAL;

#[test]
fn embedded_default_is_clean_and_matches_code() {
    let parsed = Config::from_toml_str(Config::DEFAULT_TOML, Path::new("default.toml"))
        .expect("default.toml parses");
    assert_eq!(parsed, Config::builtin_default());
    let config = Config::embedded_default();
    assert_eq!(config, parsed);
    assert_eq!(config.validate(), Vec::<Finding>::new());
    assert_eq!(config.device.name, "pacs-mirror");
    assert_eq!(config.device.data_dir, Path::new("./pacs-mirror-data"));
    let names: Vec<&str> = config.targets.iter().map(Target::name).collect();
    assert_eq!(
        names,
        ["backup"],
        "the default backs up into a local folder"
    );
    let ae = &config.device.network_aes[0];
    assert_eq!(ae.ae_title, "PACS_MIRROR");
    assert!(ae.association_acceptor && ae.accept_any_calling_ae);
    let c = config.connection("dicom").expect("connection");
    assert_eq!((c.hostname.as_str(), c.port), ("127.0.0.1", 11112));
}

#[test]
fn example_is_clean() {
    let config = Config::from_toml_str(Config::EXAMPLE_TOML, Path::new("example.toml"))
        .expect("example.toml parses");
    assert_eq!(config.validate(), Vec::<Finding>::new());

    let ae = &config.device.network_aes[0];
    assert_eq!(ae.ae_title, "PACS_MIRROR");
    assert_eq!(ae.allowed_calling_aes, ["PRIMARY_PACS", "CT_SCANNER_1"]);
    assert!(!ae.accept_any_calling_ae);
    assert_eq!(config.device.network_connections[0].hostname, "0.0.0.0");
    assert_eq!(config.device.network_connections[0].port, 11112);
    assert!(config.spool.max_bytes.is_some());
    assert_eq!(config.index.cache_bytes, 256 << 20);
    let names: Vec<&str> = config.targets.iter().map(Target::name).collect();
    assert_eq!(names, ["mirror", "backup"]);
    assert_eq!(
        config.targets[1],
        Target::ObjectStore {
            name: "backup".into(),
            url: "s3://hospital-pacs-backup/site-a".into(),
            options: [("region".to_string(), "eu-west-1".to_string())].into(),
            concurrency: 32,
            timeout_secs: 60,
            retry_initial_secs: 5,
            retry_max_secs: 3600,
            refused_attempts: 3,
            max_bandwidth: Default::default(),
            bandwidth_schedule: Vec::new(),
            live_window_secs: 300,
        }
    );
    let (device, mirror) = config.remote_ae("MIRROR_PACS").expect("mirror AE");
    assert_eq!(device.name, "mirror-pacs");
    assert!(mirror.association_acceptor);
    let (_, ct) = config.remote_ae("CT_SCANNER_1").expect("CT AE");
    assert_eq!(ct.source_addresses, ["198.51.100.21/32".parse().unwrap()]);
    // A C-MOVE drill of the mirror to the drill receiver AE.
    let drill_ae = &config.device.network_aes[1];
    assert!(drill_ae.drill_receiver && !ae.drill_receiver);
    assert_eq!(config.drills[0].retrieve, crate::Retrieve::CMove);
    assert_eq!(
        config.drills[0].move_destination.as_deref(),
        Some(drill_ae.ae_title.as_str())
    );
}

#[test]
fn defaults_are_applied() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.device.data_dir, Path::new(DEFAULT_DATA_DIR));
    assert_eq!(config.spool, SpoolConfig::default());
    assert_eq!(config.spool.min_free_bytes, 268_435_456);
    assert_eq!(config.index, IndexConfig::default());
    assert_eq!(config.index.cache_bytes, 64 << 20);
    let c = &config.device.network_connections[0];
    assert!(c.installed);
    let ae = &config.device.network_aes[0];
    assert!(ae.association_acceptor);
    assert!(!ae.association_initiator);
    assert!(ae.allowed_calling_aes.is_empty());
    assert!(ae.transfer_capabilities.is_empty());
    assert_eq!(ae.max_associations, 32);
    assert_eq!(ae.max_pdu_bytes, 262_144);
    assert_eq!(ae.artim_timeout_secs, 30);
    assert_eq!(ae.idle_timeout_secs, 300);
    assert!(config.remote_devices.is_empty());
    assert!(config.targets.is_empty());
    assert_eq!(config.validate(), Vec::<Finding>::new());
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    let cases = [
        ("[device]\n", "[device]\ncolour = \"red\"\n", "colour"),
        ("port = 11112\n", "port = 11112\nprot = 1\n", "prot"),
        (
            "accept_any_calling_ae = true\n",
            "accept_any_calling_ae = true\nmax_pdu = 1\n",
            "max_pdu",
        ),
        ("", "[spool]\nmax_gigabytes = 1\n", "max_gigabytes"),
        ("", "bogus_top_level = 1\n", "bogus_top_level"),
        (
            "",
            "[[remote_device]]\nname = \"r\"\n[[remote_device.network_ae]]\nae_title = \"R\"\nsource_address = [\"10.0.0.1\"]\n",
            "source_address",
        ),
        (
            "",
            "[[target]]\ntype = \"dicom\"\nname = \"m\"\nremote_ae = \"M\"\nurl = \"s3://x\"\n",
            "url",
        ),
        (
            "accept_any_calling_ae = true\n",
            "accept_any_calling_ae = true\n[[device.network_ae.transfer_capability]]\nsop_class = \"1.2\"\nrole = \"scp\"\nsyntaxes = []\n",
            "syntaxes",
        ),
    ];
    for (anchor, replacement, field) in cases {
        let toml = if anchor.is_empty() {
            format!("{MINIMAL}{replacement}")
        } else {
            assert!(MINIMAL.contains(anchor));
            MINIMAL.replacen(anchor, replacement, 1)
        };
        let message = one_finding(&toml);
        assert!(
            message.contains(&format!(".{field}: unknown key `{field}` (line "))
                || message.starts_with(&format!("error: {field}: unknown key `{field}` (line ")),
            "{field}: {message}"
        );
    }
}

#[test]
fn parse_error_has_line_and_column() {
    let message = parse_error("[device]\nname = \n");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("column"), "{message}");
    let e = parse("[device]\nname = \n").unwrap_err().to_string();
    assert!(
        e.starts_with("cannot parse configuration file test.toml: "),
        "{e}"
    );
}

#[test]
fn wrong_types_and_enum_values_are_findings() {
    let m = one_finding(&MINIMAL.replace("port = 11112", "port = 70000"));
    assert!(
        m.starts_with("error: device.network_connection[0].port: ") && m.contains("70000"),
        "{m}"
    );
    assert!(m.contains("(line 8, column 8)"), "{m}");
    let m = one_finding(&MINIMAL.replace("port = 11112", "port = \"11112\""));
    assert!(
        m.starts_with("error: device.network_connection[0].port: "),
        "{m}"
    );
    assert!(m.contains("line 8"), "{m}");
    let m = one_finding(&format!(
        "{MINIMAL}[[device.network_ae.transfer_capability]]\nsop_class = \"1.2\"\nrole = \"SCU\"\n"
    ));
    assert!(
        m.starts_with("error: device.network_ae[0].transfer_capability[0].role: ")
            && m.contains("SCU"),
        "{m}"
    );
    let m = one_finding(&format!(
        "{MINIMAL}[[target]]\ntype = \"ftp\"\nname = \"x\"\nurl = \"ftp://x\"\n"
    ));
    assert!(
        m.starts_with("error: target[0]") && m.contains("ftp"),
        "{m}"
    );
}

#[test]
fn missing_required_fields_are_findings() {
    let m = one_finding(&MINIMAL.replace("hostname = \"127.0.0.1\"\n", ""));
    assert!(
        m.starts_with("error: device.network_connection[0].hostname: missing field `hostname`"),
        "{m}"
    );
    let m = one_finding("[device]\nname = \"x\"\nnetwork_connection = []\n");
    assert!(
        m.starts_with("error: device.network_ae: missing field `network_ae`"),
        "{m}"
    );
    let m = one_finding("[spool]\n");
    assert!(
        m.starts_with("error: device: missing field `device`"),
        "{m}"
    );
}

#[test]
fn roles_and_transfer_capabilities_parse() {
    let config = parse(&format!(
        "{MINIMAL}[[device.network_ae.transfer_capability]]\nname = \"ct\"\nsop_class = \"1.2.840.10008.5.1.4.1.1.2\"\nrole = \"scp\"\ntransfer_syntaxes = [\"1.2.840.10008.1.2.1\"]\n\
         [[device.network_ae.transfer_capability]]\nsop_class = \"1.2.840.10008.1.1\"\nrole = \"scu\"\n"
    ))
    .unwrap();
    let tcs = &config.device.network_aes[0].transfer_capabilities;
    assert_eq!(tcs.len(), 2);
    assert_eq!(tcs[0].role, Role::Scp);
    assert_eq!(tcs[0].name.as_deref(), Some("ct"));
    assert_eq!(tcs[1].role, Role::Scu);
    assert!(tcs[1].transfer_syntaxes.is_empty());
}

#[test]
fn source_addresses_accept_bare_ips_and_networks() {
    let config = parse(&format!(
        "{MINIMAL}[[remote_device]]\nname = \"r\"\n[[remote_device.network_ae]]\nae_title = \"R\"\nassociation_initiator = true\n\
         source_addresses = [\"10.0.0.5\", \"10.1.0.0/16\", \"2001:db8::7\", \" 192.0.2.0/24 \"]\n"
    ))
    .unwrap();
    let (_, ae) = config.remote_ae("R").unwrap();
    let expected: Vec<ipnet::IpNet> = [
        "10.0.0.5/32",
        "10.1.0.0/16",
        "2001:db8::7/128",
        "192.0.2.0/24",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(ae.source_addresses, expected);

    let m = one_finding(&format!(
        "{MINIMAL}[[remote_device]]\nname = \"r\"\n[[remote_device.network_ae]]\nae_title = \"R\"\nsource_addresses = [\"10.0.0.5\", \"pacs.example.org\"]\n"
    ));
    assert!(
        m.starts_with("error: remote_device[0].network_ae[0].source_addresses"),
        "{m}"
    );
    assert!(m.contains("pacs.example.org"), "{m}");
    assert!(m.contains("line 18"), "{m}");
}

#[test]
fn serialize_round_trip() {
    let config = Config::from_toml_str(Config::EXAMPLE_TOML, Path::new("example.toml")).unwrap();
    let text = toml::to_string(&config).unwrap();
    let again = parse(&text).unwrap();
    assert_eq!(again, config);
}

#[test]
fn load_reads_files_and_reports_read_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pacs-mirror.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(Config::EXAMPLE_TOML.as_bytes())
        .unwrap();
    let (config, warnings) = Config::load_validated(&path).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(config, Config::load(&path).unwrap());

    let missing = dir.path().join("missing.toml");
    match Config::load(&missing) {
        Err(e @ ConfigError::Read { .. }) => {
            assert!(e.to_string().contains("missing.toml"), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn load_validated_fails_on_errors_and_returns_warnings() {
    let dir = tempfile::tempdir().unwrap();

    let warn = dir.path().join("warn.toml");
    std::fs::write(&warn, MINIMAL.replace("127.0.0.1", "0.0.0.0")).unwrap();
    let (_, warnings) = Config::load_validated(&warn).unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].severity, Severity::Warning);

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        MINIMAL
            .replace("\"LOCAL\"", "\"TOO_LONG_AE_TITLE_X\"")
            .replace("127.0.0.1", "0.0.0.0"),
    )
    .unwrap();
    match Config::load_validated(&bad) {
        Err(e @ ConfigError::Invalid { .. }) => {
            let text = e.to_string();
            assert!(text.contains("error: device.network_ae[0].ae_title: \"TOO_LONG_AE_TITLE_X\" is 19 characters; an AE title has 1 to 16"), "{text}");
            assert!(
                text.contains("warning: device.network_ae[0].accept_any_calling_ae"),
                "{text}"
            );
            assert_eq!(text.lines().count(), 3, "{text}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn helpers() {
    let config = parse(&format!(
        "{MINIMAL}\
[[device.network_connection]]\nname = \"off\"\nhostname = \"127.0.0.1\"\nport = 11113\ninstalled = false\n\
[[device.network_ae]]\nae_title = \"IDLE\"\nnetwork_connections = [\"off\"]\naccept_any_calling_ae = true\n\
[[device.network_ae]]\nae_title = \"SENDER\"\nassociation_acceptor = false\nassociation_initiator = true\nnetwork_connections = []\n\
[[remote_device]]\nname = \"r\"\n[[remote_device.network_ae]]\nae_title = \"REMOTE\"\nassociation_initiator = true\n"
    ))
    .unwrap();
    let acceptors: Vec<&str> = config
        .acceptor_aes()
        .map(|ae| ae.ae_title.as_str())
        .collect();
    assert_eq!(acceptors, ["LOCAL"]);
    assert_eq!(config.connection("off").map(|c| c.port), Some(11113));
    assert!(config.connection("nope").is_none());
    assert!(config.remote_ae("REMOTE").is_some());
    assert!(config.remote_ae(" REMOTE  ").is_some());
    assert!(config.remote_ae("remote").is_none());
    assert!(config.remote_ae("LOCAL").is_none());
}

/// Every example configuration shipped under `ops/config/` parses and
/// validates without errors or warnings.
#[test]
fn ops_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let findings = config.validate();
        assert!(findings.is_empty(), "{}: {findings:?}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 5,
        "expected the five deployment examples in {}",
        dir.display()
    );
    // The copy of the embedded default is the embedded default.
    let copy = std::fs::read_to_string(dir.join("default.toml")).unwrap();
    assert_eq!(
        copy,
        Config::DEFAULT_TOML,
        "ops/config/default.toml differs from config/src/default.toml: copy it again"
    );
}

#[test]
fn storage_commitment_settings_are_checked() {
    let text = format!(
        "{MINIMAL}\n[[remote_device]]\nname = \"ct\"\n[[remote_device.network_ae]]\nae_title = \"CT1\"\nassociation_initiator = true\ncommit_after_delivery_to = [\"nowhere\"]\ncommit_wait_secs = 0\n\
         \n[[remote_device]]\nname = \"m\"\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = 104\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR\"\nassociation_acceptor = true\nnetwork_connections = [\"dicom\"]\n\
         \n[[target]]\ntype = \"dicom\"\nname = \"mirror\"\nremote_ae = \"MIRROR\"\nstorage_commitment = true\ncommitment_timeout_secs = 0\n"
    );
    let config = parse(&text).unwrap();
    let errors: Vec<String> = config
        .validate()
        .iter()
        .filter(|f| f.is_error())
        .map(ToString::to_string)
        .collect();
    for expected in [
        "remote_device[0].network_ae[0].commit_after_delivery_to[0]: \"nowhere\" is not the name of a [[target]]",
        "remote_device[0].network_ae[0].commit_wait_secs: 0 is out of range",
        "target[0].commitment_timeout_secs: 0 is out of range",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected} not in {errors:#?}"
        );
    }
    assert_eq!(config.targets[0].commitment_timeout_secs(), Some(0));
    let ok = text
        .replace("\"nowhere\"", "\"mirror\"")
        .replace("commit_wait_secs = 0", "commit_wait_secs = 60")
        .replace(
            "commitment_timeout_secs = 0",
            "commitment_timeout_secs = 600",
        );
    let config = parse(&ok).unwrap();
    assert!(
        config.validate().iter().all(|f| !f.is_error()),
        "{:#?}",
        config.validate()
    );
    assert_eq!(
        config.remote_devices[0].network_aes[0].commit_after_delivery_to,
        ["mirror"]
    );
}
