//! Tests of the one-pass check of every key and type.

use super::*;

/// Line (from 1) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

/// Line (from 1) of the first line that sets `key`.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(&format!("{key} =")))
        .unwrap_or_else(|| panic!("{key} is not set in the text"))
        + 1
}

fn displayed(src: &str) -> Vec<String> {
    check(src)
        .expect("the text is TOML")
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Unknown keys in almost every kind of table, one of them nested in an
/// array of tables in an array of tables, with free-form `target.options`
/// around.
const MANY_UNKNOWN: &str = r#"bogus_top_level = 1

[device]
name = "test"
colour = "red"

[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
prot = 11112

[[device.network_ae]]
ae_title = "LOCAL"
network_connections = ["dicom"]
alowed_calling_aes = ["PRIMARY"]

[[device.network_ae.transfer_capability]]
sop_class = "1.2.840.10008.1.1"
role = "scp"
syntaxes = []

[device.tls]
certificat = "/etc/pacs-mirror/cert.pem"

[spool]
frobnicate = 1

[[remote_device]]
name = "primary"

[[remote_device.network_ae]]
ae_title = "PRIMARY"
association_initiator = true
source_addresses = ["10.0.0.1"]

[[remote_device.network_ae]]
ae_title = "OTHER"
source_address = ["10.0.0.2"]

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "MIRROR"
url = "s3://x"

[[target]]
type = "object_store"
name = "backup"
url = "s3://bucket"
timout_secs = 10

[target.options]
endpoint = "http://127.0.0.1:9000"
anything_at_all = "free-form"

[alerts]
check_interval = 30

[[alerts.silence]]
calling_ae = "CT1"
after = 600
"#;

#[test]
fn every_unknown_key_at_once_with_path_line_and_suggestion() {
    let src = MANY_UNKNOWN;
    let found = check(src).expect("TOML");
    let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "bogus_top_level",
            "device.colour",
            "device.network_connection[0].prot",
            "device.network_ae[0].alowed_calling_aes",
            "device.network_ae[0].transfer_capability[0].syntaxes",
            "device.tls.certificat",
            "spool.frobnicate",
            "remote_device[0].network_ae[1].source_address",
            "target[0].url",
            "target[1].timout_secs",
            "alerts.check_interval",
            "alerts.silence[0].after",
        ],
        "{found:#?}"
    );
    assert!(found.iter().all(Finding::is_error));
    for f in &found {
        let key = f.path.rsplit('.').next().expect("a key");
        let line = line_of_key(src, key);
        assert!(
            f.message
                .starts_with(&format!("unknown key `{key}` (line {line}, column 1); ")),
            "{f}"
        );
    }
    let suggestions: Vec<(&str, &str)> = [
        ("device.network_connection[0].prot", "port"),
        (
            "device.network_ae[0].alowed_calling_aes",
            "allowed_calling_aes",
        ),
        (
            "device.network_ae[0].transfer_capability[0].syntaxes",
            "transfer_syntaxes",
        ),
        ("device.tls.certificat", "certificate"),
        (
            "remote_device[0].network_ae[1].source_address",
            "source_addresses",
        ),
        ("target[1].timout_secs", "timeout_secs"),
        ("alerts.check_interval", "check_interval_secs"),
        ("alerts.silence[0].after", "after_secs"),
    ]
    .into();
    for f in &found {
        match suggestions.iter().find(|(p, _)| *p == f.path) {
            Some((_, s)) => assert!(
                f.message.ends_with(&format!("; did you mean `{s}`?")),
                "{f}"
            ),
            None => assert!(
                !f.message.contains("did you mean") && f.message.contains("the keys here are"),
                "{f}"
            ),
        }
    }
    assert_eq!(
        found[3].to_string(),
        format!(
            "error: device.network_ae[0].alowed_calling_aes: unknown key `alowed_calling_aes` (line {}, column 1); did you mean `allowed_calling_aes`?",
            line_of(src, "alowed_calling_aes")
        )
    );
    // A far-off key: no guess, the keys of its table instead.
    assert_eq!(
        found[1].message,
        format!(
            "unknown key `colour` (line {}, column 1); the keys here are `name`, `description`, `data_dir`, `network_connection`, `network_ae`, `tls`",
            line_of(src, "colour")
        )
    );
    // A key of the other kind of target is unknown in this one.
    assert!(
        found[8]
            .message
            .contains("the keys here are `type`, `name`, `remote_ae`,"),
        "{}",
        found[8]
    );
}

#[test]
fn unknown_keys_and_wrong_types_in_one_pass() {
    let src = r#"[device]
name = "test"
data_dir = 7

[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
port = "11112"

[[device.network_connection]]
name = "other"
hostname = "127.0.0.1"
port = 70000
instaled = false

[[device.network_ae]]
ae_title = "LOCAL"
network_connections = ["dicom"]
accept_any_calling_ae = "yes"

[spool]
max_bytes = "big"

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "MIRROR"
concurrency = "two"

[[target]]
type = "ftp"
name = "x"

[admin]
listen = 11180
"#;
    assert_eq!(
        displayed(src),
        [
            "error: device.data_dir: invalid type: integer `7`, expected path string (line 3, column 12)",
            "error: device.network_connection[0].port: invalid type: string \"11112\", expected u16 (line 8, column 8)",
            "error: device.network_connection[1].port: invalid value: integer `70000`, expected u16 (line 13, column 8)",
            "error: device.network_connection[1].instaled: unknown key `instaled` (line 14, column 1); did you mean `installed`?",
            "error: device.network_ae[0].accept_any_calling_ae: invalid type: string \"yes\", expected a boolean (line 19, column 25)",
            "error: spool.max_bytes: invalid type: string \"big\", expected u64 (line 22, column 13)",
            "error: target[0].concurrency: invalid type: string \"two\", expected u32 (line 28, column 15)",
            "error: target[1].type: unknown variant `ftp`, expected `dicom` or `object_store` (line 31, column 8)",
            "error: admin.listen: invalid type: integer `11180`, expected socket address (line 35, column 10)",
        ]
    );
}

/// A target (an internally tagged enum: serde loses the positions) with a
/// wrong-typed optional key that comes after good required ones: the
/// finding names that key and its line.
#[test]
fn wrong_type_in_a_target_is_located() {
    let src = r#"[[target]]
type = "object_store"
name = "backup"
url = "s3://bucket"
retry_max_secs = "long"
"#;
    let found = displayed(src);
    assert!(
        found.contains(
            &"error: target[0].retry_max_secs: invalid type: string \"long\", expected u64 (line 5, column 18)"
                .to_string()
        ),
        "{found:#?}"
    );
    // Two bad keys: reported at the target itself, with its line.
    let src = "[[target]]\ntype = \"dicom\"\nname = 5\nremote_ae = 6\n";
    let found = displayed(src);
    assert!(
        found.iter().any(
            |f| f.starts_with("error: target[0]: invalid type: integer `")
                && f.ends_with("(line 1, column 1)")
        ),
        "{found:#?}"
    );
}

#[test]
fn free_form_options_are_not_checked() {
    let src = r#"[device]
name = "test"
network_connection = []
network_ae = []

[[target]]
type = "object_store"
name = "backup"
url = "s3://bucket"
options = { endpoint = "http://127.0.0.1:9000", whatever_the_client_takes = "x" }
"#;
    assert_eq!(displayed(src), Vec::<String>::new());
}

#[test]
fn shipped_configurations_have_no_findings() {
    assert_eq!(displayed(Config::EXAMPLE_TOML), Vec::<String>::new());
    assert_eq!(displayed(Config::DEFAULT_TOML), Vec::<String>::new());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(displayed(&text), Vec::<String>::new(), "{}", path.display());
        }
    }
}

#[test]
fn text_that_is_not_toml_is_an_error() {
    assert!(check("[device\nname = 1\n").is_err());
    assert!(check("name = \n").is_err());
}

#[test]
fn suggestions() {
    let keys = [
        "port",
        "hostname",
        "installed",
        "allowed_calling_aes",
        "max_pdu_bytes",
    ];
    assert_eq!(closest("prot", &keys), Some("port"));
    assert_eq!(closest("Port", &keys), Some("port"));
    assert_eq!(closest("host_name", &keys), Some("hostname"));
    assert_eq!(closest("instaled", &keys), Some("installed"));
    assert_eq!(
        closest("allowed-calling-aes", &keys),
        Some("allowed_calling_aes")
    );
    assert_eq!(
        closest("alowed_calling_ae", &keys),
        Some("allowed_calling_aes")
    );
    assert_eq!(closest("max_pdu", &keys), Some("max_pdu_bytes"));
    assert_eq!(closest("frobnicate", &keys), None);
    assert_eq!(closest("colour", &keys), None);
    assert_eq!(closest("pdu", &keys), None);
    assert_eq!(closest("x", &keys), None);
}

#[test]
fn edit_distances() {
    let d = |a: &str, b: &str| edit_distance(&normalize(a), &normalize(b));
    assert_eq!(d("", ""), 0);
    assert_eq!(d("abc", ""), 3);
    assert_eq!(d("", "abc"), 3);
    assert_eq!(d("kitten", "sitting"), 3);
    assert_eq!(d("prot", "port"), 1);
    assert_eq!(d("max-pdu", "MAX_PDU"), 0);
}

/// The probe sees serde's own field list, renames included.
#[test]
fn fields_are_serde_s() {
    assert_eq!(
        fields_of::<Device>(),
        [
            "name",
            "description",
            "data_dir",
            "network_connection",
            "network_ae",
            "tls"
        ]
    );
    assert_eq!(
        fields_of::<Config>(),
        [
            "device",
            "spool",
            "index",
            "remote_device",
            "target",
            "admin",
            "drill",
            "alerts"
        ]
    );
    // An internally tagged enum does not show its fields this way.
    assert!(fields_of::<Target>().is_empty());
    for schema in [
        &TRANSFER_CAPABILITY,
        &NETWORK_CONNECTION,
        &NETWORK_AE,
        &DEVICE_TLS,
        &DEVICE,
        &SPOOL,
        &INDEX,
        &REMOTE_AE,
        &REMOTE_DEVICE,
        &ADMIN,
        &DRILL,
        &SILENCE,
        &ALERTS,
        &CONFIG,
    ] {
        let Keys::Struct(fields) = &schema.keys else {
            panic!("a struct's table");
        };
        let fields = fields();
        assert!(!fields.is_empty());
        for (child, _) in schema.children {
            assert!(fields.contains(child), "{child} is not a key of {fields:?}");
        }
    }
}

/// The hand-kept key lists of the two kinds of target are exactly what
/// serde accepts: every key parses, and serde's own "expected one of" list
/// for an unknown key is the same list.
#[test]
fn target_keys_are_serde_s() {
    let every_key = [
        (
            "dicom",
            DICOM_TARGET_KEYS,
            "type = \"dicom\"\nname = \"m\"\nremote_ae = \"M\"\ncalling_ae = \"L\"\nconcurrency = 1\ntimeout_secs = 1\nretry_initial_secs = 1\nretry_max_secs = 1\nrefused_attempts = 1\nmax_bandwidth = \"30 Mbit/s\"\nbandwidth_schedule = [{ days = [\"mon\"], from = \"07:00\", to = \"19:00\", max_bandwidth = \"1 MB/s\" }]\nlive_window_secs = 60\nstorage_commitment = true\ncommitment_timeout_secs = 60\n",
        ),
        (
            "object_store",
            OBJECT_STORE_TARGET_KEYS,
            "type = \"object_store\"\nname = \"b\"\nurl = \"s3://b\"\noptions = { a = \"b\" }\nconcurrency = 1\ntimeout_secs = 1\nretry_initial_secs = 1\nretry_max_secs = 1\nrefused_attempts = 1\nmax_bandwidth = \"30 Mbit/s\"\nbandwidth_schedule = [{ days = [\"mon\"], from = \"07:00\", to = \"19:00\", max_bandwidth = \"1 MB/s\" }]\nlive_window_secs = 60\n",
        ),
    ];
    for (kind, keys, text) in every_key {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut written: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut listed = keys.to_vec();
        written.sort_unstable();
        listed.sort_unstable();
        assert_eq!(written, listed, "{kind}: the test text has every key");
        toml::from_str::<Target>(text).unwrap_or_else(|e| panic!("{kind}: {e}"));

        let e = toml::from_str::<Target>(&format!("{text}zzz_unknown = 1\n"))
            .expect_err("an unknown key");
        let serde_list = keys
            .iter()
            .filter(|k| **k != "type")
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            e.message(),
            format!("unknown field `zzz_unknown`, expected one of {serde_list}"),
            "{kind}"
        );
    }
    let e = toml::from_str::<Target>("type = \"nope\"\nname = \"x\"\n").expect_err("no such type");
    assert!(
        e.message().contains("expected `dicom` or `object_store`"),
        "{}",
        e.message()
    );
}
