//! One small configuration per finding, plus combined cases.

use std::path::Path;

use crate::{Config, Finding, Severity};

/// Valid: loopback listener that accepts any calling AE.
pub(crate) const MINIMAL: &str = r#"
[device]
name = "test"

[[device.network_connection]]
name = "dicom"
hostname = "127.0.0.1"
port = 11112

[[device.network_ae]]
ae_title = "LOCAL"
network_connections = ["dicom"]
accept_any_calling_ae = true
"#;

/// Valid: network listener with an allow-list of one sender.
const EXPOSED: &str = r#"
[device]
name = "test"

[[device.network_connection]]
name = "dicom"
hostname = "0.0.0.0"
port = 11112

[[device.network_ae]]
ae_title = "LOCAL"
association_initiator = true
network_connections = ["dicom"]
allowed_calling_aes = ["PRIMARY"]

[[remote_device]]
name = "primary"

[[remote_device.network_ae]]
ae_title = "PRIMARY"
association_initiator = true
source_addresses = ["192.0.2.10"]

[[remote_device]]
name = "mirror"

[[remote_device.network_connection]]
name = "dicom"
hostname = "198.51.100.50"
port = 104

[[remote_device.network_ae]]
ae_title = "MIRROR"
association_acceptor = true
network_connections = ["dicom"]

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "MIRROR"
"#;

fn findings(toml: &str) -> Vec<Finding> {
    Config::from_toml_str(toml, Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"))
        .validate()
}

/// `base` with the first `from` replaced by `to`; `from` must occur.
fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} not in base");
    base.replacen(from, to, 1)
}

fn has(findings: &[Finding], severity: Severity, path: &str) -> Finding {
    findings
        .iter()
        .find(|f| f.severity == severity && f.path == path)
        .cloned()
        .unwrap_or_else(|| panic!("no {severity} at {path}; findings: {findings:#?}"))
}

/// Exactly these (severity, path) findings, in any order.
fn only(findings: &[Finding], expected: &[(Severity, &str)]) {
    let mut got: Vec<(Severity, &str)> = findings
        .iter()
        .map(|f| (f.severity, f.path.as_str()))
        .collect();
    let mut want = expected.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "findings: {findings:#?}");
}

use Severity::{Error, Warning};

#[test]
fn bases_are_clean() {
    assert_eq!(findings(MINIMAL), []);
    assert_eq!(findings(EXPOSED), []);
}

// ---------------------------------------------------------------- AE titles

#[test]
fn local_ae_title_too_long() {
    let f = findings(&edit(MINIMAL, "\"LOCAL\"", "\"TOO_LONG_AE_TITLE_X\""));
    only(&f, &[(Error, "device.network_ae[0].ae_title")]);
    assert_eq!(
        f[0].to_string(),
        "error: device.network_ae[0].ae_title: \"TOO_LONG_AE_TITLE_X\" is 19 characters; an AE title has 1 to 16"
    );
}

#[test]
fn local_ae_title_empty_spaces_and_padded() {
    let f = findings(&edit(MINIMAL, "\"LOCAL\"", "\"   \""));
    only(&f, &[(Error, "device.network_ae[0].ae_title")]);
    let f = findings(&edit(MINIMAL, "\"LOCAL\"", "\"  SIXTEEN_CHARS_XX \""));
    only(&f, &[]);
}

#[test]
fn remote_ae_title_with_backslash() {
    let f = findings(&edit(
        EXPOSED,
        "ae_title = \"MIRROR\"",
        "ae_title = \"MIR\\\\ROR\"",
    ));
    // The target now names an AE that does not exist, too.
    only(
        &f,
        &[
            (Error, "remote_device[1].network_ae[0].ae_title"),
            (Error, "target[0].remote_ae"),
        ],
    );
    assert!(f[0].message.contains("backslash"), "{}", f[0]);
}

#[test]
fn duplicate_ae_titles_across_local_and_remote() {
    let toml = format!(
        "{}\n[[remote_device]]\nname = \"dup\"\n[[remote_device.network_ae]]\nae_title = \" LOCAL \"\nassociation_initiator = true\n",
        edit(EXPOSED, "ae_title = \"MIRROR\"", "ae_title = \"PRIMARY\"")
    );
    let f = findings(&toml);
    // PRIMARY is used twice (remote_device[0] and [1]); LOCAL twice (local, remote_device[2]).
    let dup_primary = has(&f, Error, "remote_device[1].network_ae[0].ae_title");
    assert!(
        dup_primary.message.contains(
            "remote_device[0].network_ae[0].ae_title, remote_device[1].network_ae[0].ae_title"
        ),
        "{dup_primary}"
    );
    let dup_local = has(&f, Error, "remote_device[2].network_ae[0].ae_title");
    assert!(
        dup_local.message.contains("device.network_ae[0].ae_title")
            && dup_local
                .message
                .contains("remote_device[2].network_ae[0].ae_title"),
        "{dup_local}"
    );
    assert!(
        !f.iter().any(|x| x.path == "device.network_ae[0].ae_title"
            || x.path == "remote_device[0].network_ae[0].ae_title"),
        "the first occurrence is not reported: {f:#?}"
    );
}

#[test]
fn ae_titles_are_case_sensitive() {
    let toml = format!(
        "{MINIMAL}\n[[remote_device]]\nname = \"r\"\n[[remote_device.network_ae]]\nae_title = \"local\"\nassociation_initiator = true\n"
    );
    only(&findings(&toml), &[]);
}

// -------------------------------------------------------------------- names

#[test]
fn device_name_empty() {
    let f = findings(&edit(MINIMAL, "name = \"test\"", "name = \" \""));
    only(&f, &[(Error, "device.name")]);
}

#[test]
fn remote_device_names_empty_and_duplicate() {
    let f = findings(&edit(
        EXPOSED,
        "name = \"mirror\"\n\n[[remote",
        "name = \"primary\"\n\n[[remote",
    ));
    only(&f, &[(Error, "remote_device[1].name")]);
    assert!(f[0].message.contains("remote_device[0]"), "{}", f[0]);
    let f = findings(&edit(EXPOSED, "name = \"primary\"", "name = \"\""));
    only(&f, &[(Error, "remote_device[0].name")]);
}

#[test]
fn connection_names_duplicate_within_a_device() {
    let toml = format!(
        "{MINIMAL}[[device.network_connection]]\nname = \"dicom\"\nhostname = \"127.0.0.1\"\nport = 11113\n"
    );
    only(
        &findings(&toml),
        &[(Error, "device.network_connection[1].name")],
    );

    let toml = edit(
        EXPOSED,
        "port = 104\n",
        "port = 104\n\n[[remote_device.network_connection]]\nname = \"dicom\"\nhostname = \"198.51.100.51\"\nport = 104\n",
    );
    only(
        &findings(&toml),
        &[(Error, "remote_device[1].network_connection[1].name")],
    );
    // The same name in two different devices is fine: EXPOSED has "dicom" in both.
}

#[test]
fn target_names_empty_and_duplicate() {
    let toml = format!(
        "{EXPOSED}\n[[target]]\ntype = \"object_store\"\nname = \"mirror\"\nurl = \"s3://bucket\"\n\n[[target]]\ntype = \"object_store\"\nname = \"\"\nurl = \"gs://bucket/x\"\n"
    );
    only(
        &findings(&toml),
        &[(Error, "target[1].name"), (Error, "target[2].name")],
    );
}

// ---------------------------------------------------- connections and ports

#[test]
fn port_zero() {
    let f = findings(&edit(MINIMAL, "port = 11112", "port = 0"));
    only(&f, &[(Error, "device.network_connection[0].port")]);
    let f = findings(&edit(EXPOSED, "port = 104", "port = 0"));
    only(
        &f,
        &[(Error, "remote_device[1].network_connection[0].port")],
    );
}

#[test]
fn same_host_and_port_twice() {
    let second =
        "[[device.network_connection]]\nname = \"again\"\nhostname = \"127.0.0.1\"\nport = 11112\n";
    let f = findings(&format!("{MINIMAL}{second}"));
    only(&f, &[(Error, "device.network_connection[1]")]);
    assert!(f[0].message.contains("127.0.0.1:11112"), "{}", f[0]);
    // Not when one of them is not installed.
    let f = findings(&format!("{MINIMAL}{second}installed = false\n"));
    only(&f, &[]);
}

#[test]
fn wildcard_overlap_is_a_warning() {
    let toml = format!(
        "{MINIMAL}[[device.network_connection]]\nname = \"any\"\nhostname = \"0.0.0.0\"\nport = 11112\n"
    );
    only(
        &findings(&toml),
        &[(Warning, "device.network_connection[1]")],
    );
}

#[test]
fn bad_hostnames() {
    for bad in ["", "[::1]", "pacs:104", "pacs example.org"] {
        let f = findings(&edit(MINIMAL, "\"127.0.0.1\"", &format!("{bad:?}")));
        has(&f, Error, "device.network_connection[0].hostname");
    }
}

// ------------------------------------------------------ dangling references

#[test]
fn ae_names_a_missing_connection() {
    let f = findings(&edit(MINIMAL, "[\"dicom\"]", "[\"dicom\", \"dicm\"]"));
    only(
        &f,
        &[(Error, "device.network_ae[0].network_connections[1]")],
    );
    assert!(
        f[0].message.contains("\"dicm\"") && f[0].message.contains("\"dicom\""),
        "{}",
        f[0]
    );

    let f = findings(&edit(
        EXPOSED,
        "network_connections = [\"dicom\"]\n\n[[target]]",
        "network_connections = [\"dicm\"]\n\n[[target]]",
    ));
    only(
        &f,
        &[
            (
                Error,
                "remote_device[1].network_ae[0].network_connections[0]",
            ),
            (Error, "target[0].remote_ae"),
        ],
    );
}

#[test]
fn allowed_calling_ae_unknown_local_or_not_initiator() {
    let f = findings(&edit(
        EXPOSED,
        "[\"PRIMARY\"]",
        "[\"PRIMARY\", \"NOBODY\", \"LOCAL\", \"MIRROR\"]",
    ));
    only(
        &f,
        &[
            (Error, "device.network_ae[0].allowed_calling_aes[1]"),
            (Error, "device.network_ae[0].allowed_calling_aes[2]"),
            (Error, "device.network_ae[0].allowed_calling_aes[3]"),
            // MIRROR is now allowed to call, so it needs source addresses.
            (Error, "remote_device[1].network_ae[0].source_addresses"),
        ],
    );
    assert!(
        f.iter()
            .any(|x| x.message.contains("not the AE title of any remote_device"))
    );
    assert!(f.iter().any(|x| x.message.contains("is a local AE")));
    assert!(
        f.iter()
            .any(|x| x.message.contains("association_initiator = true"))
    );
}

#[test]
fn allowed_calling_ae_matches_trimmed() {
    only(
        &findings(&edit(EXPOSED, "[\"PRIMARY\"]", "[\" PRIMARY \"]")),
        &[],
    );
}

#[test]
fn dicom_target_unknown_not_acceptor_or_unreachable() {
    let f = findings(&edit(
        EXPOSED,
        "remote_ae = \"MIRROR\"",
        "remote_ae = \"NOBODY\"",
    ));
    only(&f, &[(Error, "target[0].remote_ae")]);

    let f = findings(&edit(
        EXPOSED,
        "remote_ae = \"MIRROR\"",
        "remote_ae = \"LOCAL\"",
    ));
    only(&f, &[(Error, "target[0].remote_ae")]);
    assert!(f[0].message.contains("local AE"), "{}", f[0]);

    // PRIMARY is not an acceptor and has no connection: two findings.
    let f = findings(&edit(
        EXPOSED,
        "remote_ae = \"MIRROR\"",
        "remote_ae = \"PRIMARY\"",
    ));
    only(
        &f,
        &[
            (Error, "target[0].remote_ae"),
            (Error, "target[0].remote_ae"),
        ],
    );
    assert!(f[0].message.contains("association_acceptor"), "{}", f[0]);
    assert!(
        f[1].message.contains("no installed network connection"),
        "{}",
        f[1]
    );

    let f = findings(&edit(
        EXPOSED,
        "port = 104\n",
        "port = 104\ninstalled = false\n",
    ));
    only(&f, &[(Error, "target[0].remote_ae")]);
}

#[test]
fn dicom_target_without_local_initiator_warns() {
    let f = findings(&edit(
        EXPOSED,
        "association_initiator = true\nnetwork_connections",
        "network_connections",
    ));
    only(&f, &[(Warning, "target[0]")]);
}

// ------------------------------------------------------------- acceptors

#[test]
fn acceptor_without_connections() {
    let toml = format!(
        "{MINIMAL}[[device.network_ae]]\nae_title = \"NOWHERE\"\nnetwork_connections = []\naccept_any_calling_ae = true\n"
    );
    only(
        &findings(&toml),
        &[(Error, "device.network_ae[1].network_connections")],
    );
}

#[test]
fn no_installed_acceptor() {
    let f = findings(&edit(
        MINIMAL,
        "port = 11112\n",
        "port = 11112\ninstalled = false\n",
    ));
    only(
        &f,
        &[
            (Warning, "device.network_ae[0].network_connections"),
            (Error, "device.network_ae"),
        ],
    );
    let f = findings(&edit(
        MINIMAL,
        "accept_any_calling_ae = true",
        "association_acceptor = false\nassociation_initiator = true",
    ));
    only(&f, &[(Error, "device.network_ae")]);
    let f = findings("[device]\nname = \"x\"\nnetwork_connection = []\nnetwork_ae = []\n");
    only(&f, &[(Error, "device.network_ae")]);
}

#[test]
fn ae_that_neither_accepts_nor_initiates_warns() {
    let toml = format!(
        "{MINIMAL}[[device.network_ae]]\nae_title = \"INERT\"\nassociation_acceptor = false\nnetwork_connections = []\n"
    );
    only(&findings(&toml), &[(Warning, "device.network_ae[1]")]);
}

#[test]
fn allowed_sender_needs_source_addresses() {
    let f = findings(&edit(EXPOSED, "source_addresses = [\"192.0.2.10\"]\n", ""));
    only(
        &f,
        &[(Error, "remote_device[0].network_ae[0].source_addresses")],
    );
    assert!(f[0].message.contains("0.0.0.0/0"), "{}", f[0]);
    // Explicitly any address is fine.
    let f = findings(&edit(
        EXPOSED,
        "[\"192.0.2.10\"]",
        "[\"0.0.0.0/0\", \"::/0\"]",
    ));
    only(&f, &[]);
}

#[test]
fn source_address_with_host_bits_warns() {
    let f = findings(&edit(EXPOSED, "[\"192.0.2.10\"]", "[\"192.0.2.10/24\"]"));
    only(
        &f,
        &[(
            Warning,
            "remote_device[0].network_ae[0].source_addresses[0]",
        )],
    );
    assert!(f[0].message.contains("192.0.2.0/24"), "{}", f[0]);
}

// ---------------------------------------------------------------- security

#[test]
fn network_listener_without_allow_list_is_an_error() {
    let f = findings(&edit(EXPOSED, "allowed_calling_aes = [\"PRIMARY\"]\n", ""));
    only(&f, &[(Error, "device.network_ae[0].allowed_calling_aes")]);
    assert_eq!(
        f[0].message,
        "listener on 0.0.0.0:11112 has no allow-list: list the senders in allowed_calling_aes, or write accept_any_calling_ae = true to accept any calling AE (not recommended)"
    );
    let f = findings(&edit(
        &edit(EXPOSED, "allowed_calling_aes = [\"PRIMARY\"]\n", ""),
        "\"0.0.0.0\"",
        "\"::\"",
    ));
    only(&f, &[(Error, "device.network_ae[0].allowed_calling_aes")]);
    assert!(
        f[0].message
            .starts_with("listener on [::]:11112 has no allow-list"),
        "{}",
        f[0]
    );
}

#[test]
fn accept_any_on_network_listener_is_a_warning() {
    for host in ["0.0.0.0", "::", "192.0.2.1", "pacs.example.org"] {
        let f = findings(&edit(MINIMAL, "\"127.0.0.1\"", &format!("{host:?}")));
        only(
            &f,
            &[(Warning, "device.network_ae[0].accept_any_calling_ae")],
        );
    }
}

#[test]
fn accept_any_on_loopback_is_clean() {
    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"] {
        only(
            &findings(&edit(MINIMAL, "\"127.0.0.1\"", &format!("{host:?}"))),
            &[],
        );
    }
}

#[test]
fn loopback_listener_without_allow_list_is_an_error() {
    let f = findings(&edit(MINIMAL, "accept_any_calling_ae = true\n", ""));
    only(&f, &[(Error, "device.network_ae[0].allowed_calling_aes")]);
    assert!(
        f[0].message.contains("no calling AE could ever connect"),
        "{}",
        f[0]
    );
}

#[test]
fn accept_any_with_allow_list_is_contradictory() {
    let f = findings(&edit(
        EXPOSED,
        "allowed_calling_aes = [\"PRIMARY\"]",
        "allowed_calling_aes = [\"PRIMARY\"]\naccept_any_calling_ae = true",
    ));
    only(&f, &[(Error, "device.network_ae[0].allowed_calling_aes")]);
    assert!(f[0].message.contains("contradicts"), "{}", f[0]);
}

#[test]
fn calling_ae_policy_on_a_non_acceptor_is_ignored_with_a_warning() {
    let toml = format!(
        "{EXPOSED}[[device.network_ae]]\nae_title = \"SENDER\"\nassociation_acceptor = false\nassociation_initiator = true\nnetwork_connections = []\naccept_any_calling_ae = true\n"
    );
    only(&findings(&toml), &[(Warning, "device.network_ae[1]")]);
}

// -------------------------------------------------------------------- UIDs

#[test]
fn bad_uids_in_transfer_capabilities() {
    let toml = format!(
        "{MINIMAL}[[device.network_ae.transfer_capability]]\nsop_class = \"1.2.840.10008.5.1.4.1.1.02\"\nrole = \"scp\"\ntransfer_syntaxes = [\"1.2.840.10008.1.2.1\", \"1.2.840.10008.1.2.\", \"\"]\n"
    );
    only(
        &findings(&toml),
        &[
            (
                Error,
                "device.network_ae[0].transfer_capability[0].sop_class",
            ),
            (
                Error,
                "device.network_ae[0].transfer_capability[0].transfer_syntaxes[1]",
            ),
            (
                Error,
                "device.network_ae[0].transfer_capability[0].transfer_syntaxes[2]",
            ),
        ],
    );
}

// ------------------------------------------------------------------ ranges

#[test]
fn association_limits_out_of_range() {
    let cases = [
        ("max_pdu_bytes", "1017"),
        ("max_pdu_bytes", "16777217"),
        ("max_associations", "0"),
        ("max_associations", "1001"),
        ("artim_timeout_secs", "0"),
        ("artim_timeout_secs", "3601"),
        ("idle_timeout_secs", "0"),
        ("idle_timeout_secs", "86401"),
        ("max_associations_per_address", "0"),
        // more than max_associations (default 32)
        ("max_associations_per_address", "33"),
    ];
    for (key, value) in cases {
        let f = findings(&format!("{MINIMAL}{key} = {value}\n"));
        only(&f, &[(Error, &format!("device.network_ae[0].{key}"))]);
        assert!(f[0].message.contains(value), "{}", f[0]);
    }
    let edges = [
        ("max_pdu_bytes", "1018"),
        ("max_pdu_bytes", "16777216"),
        ("max_associations", "1"),
        ("max_associations", "1000"),
        ("artim_timeout_secs", "3600"),
        ("idle_timeout_secs", "86400"),
        ("max_associations_per_address", "1"),
        ("max_associations_per_address", "32"),
    ];
    for (key, value) in edges {
        only(&findings(&format!("{MINIMAL}{key} = {value}\n")), &[]);
    }
}

#[test]
fn spool_limits() {
    let f = findings(&format!(
        "{MINIMAL}[spool]\nmax_bytes = 1048575\nmax_object_bytes = 1023\n"
    ));
    only(
        &f,
        &[
            (Error, "spool.max_bytes"),
            (Error, "spool.max_object_bytes"),
        ],
    );
    only(
        &findings(&format!(
            "{MINIMAL}[spool]\nmax_bytes = 1048576\nmax_object_bytes = 1024\nmin_free_bytes = 67108864\n"
        )),
        &[],
    );
    let f = findings(&format!(
        "{MINIMAL}[spool]\nmax_bytes = 1048576\nmax_object_bytes = 1048577\n"
    ));
    only(&f, &[(Warning, "spool.max_object_bytes")]);
}

#[test]
fn index_cache_bounds() {
    let f = findings(&format!("{MINIMAL}[index]\ncache_bytes = 1048575\n"));
    only(&f, &[(Error, "index.cache_bytes")]);
    only(
        &findings(&format!("{MINIMAL}[index]\ncache_bytes = 1048576\n")),
        &[],
    );
    // A wrong type and an unknown key are findings too (the schema's).
    let config = Config::from_toml_str(
        &format!("{MINIMAL}[index]\ncache_byte = 1\n"),
        Path::new("t"),
    );
    assert!(
        format!("{config:?}").contains("did you mean `cache_bytes`"),
        "{config:?}"
    );
}

#[test]
fn empty_data_dir() {
    let f = findings(&edit(
        MINIMAL,
        "name = \"test\"\n",
        "name = \"test\"\ndata_dir = \"\"\n",
    ));
    only(&f, &[(Error, "device.data_dir")]);
}

#[test]
fn object_store_url_scheme() {
    for bad in [
        "http://example.org/backup",
        "/var/backup",
        "file://var/backup",
        "s3://",
    ] {
        let f = findings(&format!(
            "{MINIMAL}[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = {bad:?}\n"
        ));
        only(&f, &[(Error, "target[0].url")]);
    }
    for ok in [
        "s3://bucket/prefix",
        "gs://bucket",
        "az://container/p",
        "file:///var/backup",
    ] {
        only(
            &findings(&format!(
                "{MINIMAL}[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = {ok:?}\n"
            )),
            &[],
        );
    }
}

// ---------------------------------------------------------------- together

#[test]
fn every_finding_is_reported_at_once() {
    let toml = r#"
[device]
name = ""
data_dir = ""

[[device.network_connection]]
name = "dicom"
hostname = "0.0.0.0"
port = 0

[[device.network_connection]]
name = "dicom"
hostname = "0.0.0.0"
port = 11112

[[device.network_ae]]
ae_title = "THIS_AE_TITLE_IS_TOO_LONG"
network_connections = ["dicom", "missing"]
allowed_calling_aes = ["GHOST"]
accept_any_calling_ae = true
max_pdu_bytes = 512
max_associations = 0

[[device.network_ae.transfer_capability]]
sop_class = "1.2.840.10008.5.1.4.1.1.2."
role = "scp"

[spool]
max_bytes = 10

[[remote_device]]
name = "pacs"

[[remote_device.network_ae]]
ae_title = "PA\\CS"
association_initiator = true

[[remote_device]]
name = "pacs"

[[remote_device.network_ae]]
ae_title = "MIRROR"
association_acceptor = true

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "MIRROR"

[[target]]
type = "object_store"
name = "mirror"
url = "ftp://backup.example.org/"
"#;
    let f = findings(toml);
    only(
        &f,
        &[
            (Error, "device.name"),
            (Error, "device.data_dir"),
            (Error, "device.network_connection[0].port"),
            (Error, "device.network_connection[1].name"),
            (Error, "device.network_ae[0].ae_title"),
            (Error, "device.network_ae[0].network_connections[1]"),
            (Error, "device.network_ae[0].allowed_calling_aes"),
            (Error, "device.network_ae[0].allowed_calling_aes[0]"),
            (Error, "device.network_ae[0].max_associations"),
            (Error, "device.network_ae[0].max_pdu_bytes"),
            (
                Error,
                "device.network_ae[0].transfer_capability[0].sop_class",
            ),
            (Error, "spool.max_bytes"),
            (Error, "remote_device[0].network_ae[0].ae_title"),
            (Error, "remote_device[1].name"),
            (Error, "target[0].remote_ae"),
            (Error, "target[1].name"),
            (Error, "target[1].url"),
            (Warning, "target[0]"),
        ],
    );
    let error = crate::ConfigError::Invalid {
        findings: f.clone(),
    };
    assert_eq!(error.to_string().lines().count(), f.len() + 1);
}

#[test]
fn tiny_free_space_watermark_is_warned_about() {
    let config = Config::from_toml_str(
        &format!("{MINIMAL}\n[spool]\nmin_free_bytes = 0\n"),
        Path::new("t.toml"),
    )
    .unwrap();
    let findings = config.validate();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].severity, Severity::Warning);
    assert_eq!(findings[0].path, "spool.min_free_bytes");
}

#[test]
fn admin_endpoint_must_be_loopback() {
    let ok = findings(&format!(
        "{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:11180\"\n"
    ));
    only(&ok, &[]);
    let f = findings(&format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:11180\"\n"));
    only(&f, &[(Error, "admin.listen")]);
}

#[test]
fn dicom_target_settings_are_range_checked() {
    let mut toml = EXPOSED.to_string();
    toml.push_str(
        "\n[[remote_device]]\nname = \"m2\"\n[[remote_device.network_connection]]\nname = \"d\"\nhostname = \"192.0.2.20\"\nport = 104\n\
         [[remote_device.network_ae]]\nae_title = \"MIRROR2\"\nassociation_acceptor = true\nnetwork_connections = [\"d\"]\n\
         [[target]]\ntype = \"dicom\"\nname = \"mirror2\"\nremote_ae = \"MIRROR2\"\nconcurrency = 0\nretry_initial_secs = 10\nretry_max_secs = 5\ncalling_ae = \"NOBODY\"\n",
    );
    let f = findings(&toml);
    only(
        &f,
        &[
            (Error, "target[1].calling_ae"),
            (Error, "target[1].concurrency"),
            (Error, "target[1].retry_max_secs"),
        ],
    );
}

// ------------------------------------------------------------ C-MOVE drills

/// Valid: an ingest AE and a drill receiver on the same connection; the
/// mirror may call the drill receiver; a C-MOVE drill of the mirror.
const MOVE_DRILL: &str = r#"
[device]
name = "test"

[[device.network_connection]]
name = "dicom"
hostname = "0.0.0.0"
port = 11112

[[device.network_ae]]
ae_title = "LOCAL"
association_initiator = true
network_connections = ["dicom"]
allowed_calling_aes = ["PRIMARY"]

[[device.network_ae]]
ae_title = "LOCAL_DRILL"
network_connections = ["dicom"]
drill_receiver = true
allowed_calling_aes = ["MIRROR"]

[[remote_device]]
name = "primary"

[[remote_device.network_ae]]
ae_title = "PRIMARY"
association_initiator = true
source_addresses = ["192.0.2.10"]

[[remote_device]]
name = "mirror"

[[remote_device.network_connection]]
name = "dicom"
hostname = "198.51.100.50"
port = 104

[[remote_device.network_ae]]
ae_title = "MIRROR"
association_acceptor = true
association_initiator = true
network_connections = ["dicom"]
source_addresses = ["198.51.100.50"]

[[target]]
type = "dicom"
name = "mirror"
remote_ae = "MIRROR"

[[drill]]
target = "mirror"
retrieve = "c-move"
move_destination = "LOCAL_DRILL"
"#;

#[test]
fn move_drill_base_is_clean_and_parses() {
    only(&findings(MOVE_DRILL), &[]);
    let c = Config::from_toml_str(MOVE_DRILL, Path::new("t.toml")).unwrap();
    assert_eq!(c.drills[0].retrieve, crate::Retrieve::CMove);
    assert_eq!(c.drills[0].move_destination.as_deref(), Some("LOCAL_DRILL"));
    assert!(c.device.network_aes[1].drill_receiver);
    assert!(!c.device.network_aes[0].drill_receiver);
    // The default is C-GET, without a destination.
    let c = Config::from_toml_str(
        &format!("{EXPOSED}\n[[drill]]\ntarget = \"mirror\"\n"),
        Path::new("t.toml"),
    )
    .unwrap();
    assert_eq!(c.drills[0].retrieve, crate::Retrieve::CGet);
    let e = Config::from_toml_str(
        &edit(MOVE_DRILL, "\"c-move\"", "\"move\""),
        Path::new("t.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("c-move"), "{e}");
}

#[test]
fn move_drill_needs_a_destination_and_c_get_takes_none() {
    let f = findings(&edit(
        MOVE_DRILL,
        "move_destination = \"LOCAL_DRILL\"\n",
        "",
    ));
    // ...and the receiver is now named by no drill.
    only(
        &f,
        &[
            (Error, "drill[0].move_destination"),
            (Warning, "device.network_ae[1].drill_receiver"),
        ],
    );
    assert!(f[0].message.contains("drill_receiver = true"), "{}", f[0]);
    let f = findings(&edit(MOVE_DRILL, "\"c-move\"", "\"c-get\""));
    only(
        &f,
        &[
            (Error, "drill[0].move_destination"),
            (Warning, "device.network_ae[1].drill_receiver"),
        ],
    );
}

#[test]
fn move_destination_must_be_a_local_drill_receiver() {
    for (destination, says) in [
        // The ingest AE: its C-STOREs would land in the spool.
        ("LOCAL", Some("not a drill receiver")),
        ("PRIMARY", Some("remote AE")),
        ("NOBODY", Some("not the AE title")),
        // Not an AE title.
        ("SEVENTEEN_CHARS_XX", None),
    ] {
        let f = findings(&edit(
            MOVE_DRILL,
            "move_destination = \"LOCAL_DRILL\"",
            &format!("move_destination = \"{destination}\""),
        ));
        let e = has(&f, Error, "drill[0].move_destination");
        if let Some(says) = says {
            assert!(e.message.contains(says), "{destination}: {e}");
        }
    }
}

#[test]
fn drill_receiver_must_accept_and_let_the_mirror_call() {
    // Not an acceptor: reported once, on the AE.
    let f = findings(&edit(
        MOVE_DRILL,
        "drill_receiver = true\n",
        "drill_receiver = true\nassociation_acceptor = false\n",
    ));
    let e = has(&f, Error, "device.network_ae[1].drill_receiver");
    assert!(e.message.contains("association_acceptor"), "{e}");
    assert!(
        !f.iter().any(|x| x.path == "drill[0].move_destination"),
        "{f:#?}"
    );
    // The mirror is not allowed to call it; the AE allowed instead is warned about.
    let f = findings(&edit(
        MOVE_DRILL,
        "allowed_calling_aes = [\"MIRROR\"]",
        "allowed_calling_aes = [\"PRIMARY\"]",
    ));
    only(
        &f,
        &[
            (Error, "drill[0].move_destination"),
            (Warning, "device.network_ae[1].allowed_calling_aes[0]"),
        ],
    );
    let e = has(&f, Error, "drill[0].move_destination");
    assert!(
        e.message.contains("may not call") && e.message.contains("MIRROR"),
        "{e}"
    );
    // Any calling AE is allowed: fine (on loopback, no warning either).
    let f = findings(
        &edit(
            MOVE_DRILL,
            "allowed_calling_aes = [\"MIRROR\"]",
            "accept_any_calling_ae = true",
        )
        .replace("hostname = \"0.0.0.0\"", "hostname = \"127.0.0.1\""),
    );
    only(&f, &[]);
}

#[test]
fn a_drill_receiver_is_not_the_ingest_ae() {
    // The only acceptor is a drill receiver: nothing could be stored.
    let toml = edit(
        &edit(MOVE_DRILL, "allowed_calling_aes = [\"PRIMARY\"]\n", ""),
        "association_initiator = true\nnetwork_connections = [\"dicom\"]\n",
        "association_initiator = true\nassociation_acceptor = false\nnetwork_connections = [\"dicom\"]\n",
    );
    let f = findings(&toml);
    only(&f, &[(Error, "device.network_ae")]);
    assert!(f[0].message.contains("drill receiver"), "{}", f[0]);
}

#[test]
fn c_move_of_an_object_store_is_refused_and_all_findings_come_at_once() {
    let toml = format!(
        "{}\n[[target]]\ntype = \"object_store\"\nname = \"backup\"\nurl = \"file:///tmp/b\"\n\
         \n[[drill]]\ntarget = \"backup\"\nretrieve = \"c-move\"\nmove_destination = \"LOCAL\"\n",
        edit(
            MOVE_DRILL,
            "allowed_calling_aes = [\"MIRROR\"]",
            "allowed_calling_aes = [\"PRIMARY\"]"
        )
    );
    let f = findings(&toml);
    only(
        &f,
        &[
            (Error, "drill[0].move_destination"),
            (Warning, "device.network_ae[1].allowed_calling_aes[0]"),
            (Error, "drill[1].retrieve"),
            (Error, "drill[1].move_destination"),
        ],
    );
}

#[test]
fn alerts_are_checked_all_at_once() {
    let ok = findings(&format!(
        "{EXPOSED}\n[alerts]\nwebhook_url = \"https://chat.example/hook\"\ncheck_interval_secs = 10\n\
         [[alerts.silence]]\ncalling_ae = \"PRIMARY\"\nafter_secs = 10800\nactive_hours = \"07:00-19:00\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n"
    ));
    only(&ok, &[]);
    let f = findings(&format!(
        "{EXPOSED}\n[alerts]\nwebhook_url = \"ftp://x\"\ncheck_interval_secs = 0\nqueue_stuck_after_secs = 0\nspool_headroom_min_bytes = 0\n\
         [[alerts.silence]]\ncalling_ae = \"PRIMARY\"\nafter_secs = 0\nactive_hours = \"7-19\"\n\
         [[alerts.silence]]\ncalling_ae = \"PRIMARY\"\nafter_secs = 60\n\
         [[alerts.silence]]\ncalling_ae = \"CT_TYPO\"\nafter_secs = 60\ndays = [\"monday\"]\n\
         [[alerts.silence]]\ncalling_ae = \"BAD\\\\AE\"\nafter_secs = 60\n"
    ));
    only(
        &f,
        &[
            (Error, "alerts.webhook_url"),
            (Error, "alerts.check_interval_secs"),
            (Error, "alerts.queue_stuck_after_secs"),
            (Warning, "alerts.spool_headroom_min_bytes"),
            (Error, "alerts.silence[0].after_secs"),
            (Error, "alerts.silence[0]"),
            (Error, "alerts.silence[1].calling_ae"),
            (Warning, "alerts.silence[2].calling_ae"),
            (Error, "alerts.silence[2]"),
            (Error, "alerts.silence[3].calling_ae"),
        ],
    );
}

#[test]
fn silence_that_can_never_accrue_is_an_error() {
    let f = findings(&format!(
        "{EXPOSED}\n[[alerts.silence]]\ncalling_ae = \"PRIMARY\"\nafter_secs = 86400\nactive_hours = \"07:00-08:00\"\ndays = [\"sat\"]\n"
    ));
    only(&f, &[(Error, "alerts.silence[0].after_secs")]);
}

#[test]
fn alerts_without_webhook_are_valid() {
    only(
        &findings(&format!(
            "{MINIMAL}\n[alerts]\nqueue_stuck_after_secs = 600\n"
        )),
        &[],
    );
}

#[test]
fn tls_connections_need_their_files_named_and_every_tls_problem_comes_at_once() {
    // A TLS listener with mutual TLS and a TLS mirror, without [device.tls].
    let tls = edit(
        EXPOSED,
        "hostname = \"0.0.0.0\"\nport = 11112\n",
        "hostname = \"0.0.0.0\"\nport = 11112\ntls_cipher_suites = [\"BCP195-ND\", \"TLS_RSA_WITH_RC4_128_SHA\"]\nrequire_client_certificate = true\n",
    );
    let tls = edit(
        &tls,
        "hostname = \"198.51.100.50\"\nport = 104\n",
        "hostname = \"198.51.100.50\"\nport = 104\ntls_cipher_suites = [\"bcp195-nd\"]\nrequire_client_certificate = true\n",
    );
    let tls = edit(
        &tls,
        "ae_title = \"MIRROR\"\n",
        "ae_title = \"MIRROR\"\ncertificate_sha256 = \"AB:CD\"\ncertificate_name = \" \"\n",
    );
    let f = findings(&tls);
    only(
        &f,
        &[
            (Error, "device.network_connection[0].tls_cipher_suites[1]"),
            (
                Error,
                "remote_device[1].network_connection[0].require_client_certificate",
            ),
            (Error, "remote_device[1].network_ae[0].certificate_sha256"),
            (Error, "remote_device[1].network_ae[0].certificate_name"),
            (Error, "device.tls"),
            (Error, "device.tls.trusted_ca"),
        ],
    );
    assert!(
        has(
            &f,
            Error,
            "device.network_connection[0].tls_cipher_suites[1]"
        )
        .message
        .contains("TLS_RSA_WITH_RC4_128_SHA")
    );
    assert!(
        has(
            &f,
            Error,
            "remote_device[1].network_ae[0].certificate_sha256"
        )
        .message
        .contains("64 hexadecimal digits")
    );

    // The files named: clean, and the plaintext warnings are gone.
    let named = format!(
        "{tls}\n[device.tls]\ncertificate = \"/etc/a.pem\"\nprivate_key = \"/etc/a.key\"\ntrusted_ca = \"/etc/ca.pem\"\n"
    )
    .replace(", \"TLS_RSA_WITH_RC4_128_SHA\"", "")
    .replace(
        "tls_cipher_suites = [\"bcp195-nd\"]\nrequire_client_certificate = true\n",
        "tls_cipher_suites = [\"bcp195-nd\"]\n",
    )
    .replace("certificate_sha256 = \"AB:CD\"\ncertificate_name = \" \"\n", "certificate_name = \"mirror.example\"\n");
    let config = Config::from_toml_str(&named, Path::new("t.toml")).expect("parses");
    assert_eq!(config.validate(), Vec::<Finding>::new());
    assert_eq!(config.plaintext_findings(), Vec::<Finding>::new());

    // A certificate without its key, and the other way round.
    let half = named.replace("private_key = \"/etc/a.key\"\n", "");
    only(&findings(&half), &[(Error, "device.tls.private_key")]);
    let half = named.replace("certificate = \"/etc/a.pem\"\n", "");
    only(&findings(&half), &[(Error, "device.tls.certificate")]);
}

#[test]
fn plaintext_outside_loopback_is_warned_about_separately() {
    let config = Config::from_toml_str(EXPOSED, Path::new("t.toml")).expect("parses");
    assert_eq!(
        config.validate(),
        Vec::<Finding>::new(),
        "validate is about correctness"
    );
    let f = config.plaintext_findings();
    only(
        &f,
        &[
            (Warning, "device.network_connection[0]"),
            (Warning, "remote_device[1].network_ae[0]"),
        ],
    );
    assert!(
        f[0].message
            .contains("plaintext DICOM listener on 0.0.0.0:11112"),
        "{f:?}"
    );
    // On loopback, nothing to say.
    let local = EXPOSED
        .replace("0.0.0.0", "127.0.0.1")
        .replace("198.51.100.50", "127.0.0.1");
    let config = Config::from_toml_str(&local, Path::new("t.toml")).expect("parses");
    assert_eq!(config.plaintext_findings(), Vec::<Finding>::new());
}

#[test]
fn an_ae_with_a_certificate_identity_on_a_plaintext_listener_is_warned_about() {
    let pinned = edit(
        EXPOSED,
        "source_addresses = [\"192.0.2.10\"]\n",
        "source_addresses = [\"192.0.2.10\"]\ncertificate_name = \"primary.example\"\n",
    );
    only(
        &findings(&pinned),
        &[(Warning, "device.network_ae[0].allowed_calling_aes")],
    );
}
