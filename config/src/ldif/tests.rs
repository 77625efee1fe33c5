//! LDIF export: exact output, escaping, and the structure of every shipped
//! configuration read back with a small LDIF reader (no `ldapadd` needed).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::*;

fn parse(toml: &str) -> Config {
    Config::from_toml_str(toml, Path::new("test")).unwrap()
}

fn options(base: &str) -> LdifOptions {
    LdifOptions {
        base_dn: base.into(),
        include_roots: true,
    }
}

const SMALL: &str = r#"
[device]
name = "mirror"
description = "Café, 2nd floor"

[[device.network_connection]]
name = "dicom"
hostname = "0.0.0.0"
port = 11112

[[device.network_ae]]
ae_title = "PACS_MIRROR"
association_initiator = true
network_connections = ["dicom"]
allowed_calling_aes = ["PRIMARY"]

[[device.network_ae.transfer_capability]]
sop_class = "1.2.840.10008.5.1.4.1.1.2"
role = "scp"
transfer_syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

[[remote_device]]
name = "primary, main site"

[[remote_device.network_ae]]
ae_title = "PRIMARY"
association_initiator = true
source_addresses = ["192.0.2.10", "198.51.100.0/24"]
"#;

const SMALL_LDIF: &str = r#"version: 1

dn: cn=DICOM Configuration,o=Example
objectClass: dicomConfigurationRoot
cn: DICOM Configuration

dn: cn=Devices,cn=DICOM Configuration,o=Example
objectClass: dicomDevicesRoot
cn: Devices

dn: cn=Unique AE Titles Registry,cn=DICOM Configuration,o=Example
objectClass: dicomUniqueAETitlesRegistryRoot
cn: Unique AE Titles Registry

dn: dicomAETitle=PACS_MIRROR,cn=Unique AE Titles Registry,cn=DICOM Configura
 tion,o=Example
objectClass: dicomUniqueAETitle
dicomAETitle: PACS_MIRROR

dn: dicomAETitle=PRIMARY,cn=Unique AE Titles Registry,cn=DICOM Configuration
 ,o=Example
objectClass: dicomUniqueAETitle
dicomAETitle: PRIMARY

# this pacs-mirror
dn: dicomDeviceName=mirror,cn=Devices,cn=DICOM Configuration,o=Example
objectClass: dicomDevice
dicomDeviceName: mirror
dicomDescription:: Q2Fmw6ksIDJuZCBmbG9vcg==
dicomInstalled: TRUE

dn: cn=dicom,dicomDeviceName=mirror,cn=Devices,cn=DICOM Configuration,o=Exam
 ple
objectClass: dicomNetworkConnection
cn: dicom
dicomHostname: 0.0.0.0
dicomPort: 11112
dicomInstalled: TRUE

dn: dicomAETitle=PACS_MIRROR,dicomDeviceName=mirror,cn=Devices,cn=DICOM Conf
 iguration,o=Example
objectClass: dicomNetworkAE
dicomAETitle: PACS_MIRROR
dicomAssociationAcceptor: TRUE
dicomAssociationInitiator: TRUE
dicomNetworkConnectionReference: cn=dicom,dicomDeviceName=mirror,cn=Devices,
 cn=DICOM Configuration,o=Example

dn: cn=1.2.840.10008.5.1.4.1.1.2 SCP,dicomAETitle=PACS_MIRROR,dicomDeviceNam
 e=mirror,cn=Devices,cn=DICOM Configuration,o=Example
objectClass: dicomTransferCapability
cn: 1.2.840.10008.5.1.4.1.1.2 SCP
dicomSOPClass: 1.2.840.10008.5.1.4.1.1.2
dicomTransferRole: SCP
dicomTransferSyntax: 1.2.840.10008.1.2.1
dicomTransferSyntax: 1.2.840.10008.1.2

# remote device
dn: dicomDeviceName=primary\, main site,cn=Devices,cn=DICOM Configuration,o=
 Example
objectClass: dicomDevice
dicomDeviceName: primary, main site
dicomInstalled: TRUE

# initiator only: an address this device connects from
dn: cn=from-192.0.2.10,dicomDeviceName=primary\, main site,cn=Devices,cn=DIC
 OM Configuration,o=Example
objectClass: dicomNetworkConnection
cn: from-192.0.2.10
dicomHostname: 192.0.2.10

# initiator only: an address this device connects from
dn: cn=from-198.51.100.0/24,dicomDeviceName=primary\, main site,cn=Devices,c
 n=DICOM Configuration,o=Example
objectClass: dicomNetworkConnection
cn: from-198.51.100.0/24
dicomHostname: 198.51.100.0/24

dn: dicomAETitle=PRIMARY,dicomDeviceName=primary\, main site,cn=Devices,cn=D
 ICOM Configuration,o=Example
objectClass: dicomNetworkAE
dicomAETitle: PRIMARY
dicomAssociationAcceptor: FALSE
dicomAssociationInitiator: TRUE
dicomNetworkConnectionReference: cn=from-192.0.2.10,dicomDeviceName=primary\
 , main site,cn=Devices,cn=DICOM Configuration,o=Example
dicomNetworkConnectionReference: cn=from-198.51.100.0/24,dicomDeviceName=pri
 mary\, main site,cn=Devices,cn=DICOM Configuration,o=Example
"#;

#[test]
fn exact_output_for_a_small_config() {
    let export = to_ldif(&parse(SMALL), &options("o=Example")).unwrap();
    assert_eq!(export.warnings, Vec::<String>::new());
    if export.text != SMALL_LDIF {
        panic!("LDIF differs; got:\n{}", export.text);
    }
    let without = to_ldif(
        &parse(SMALL),
        &LdifOptions {
            base_dn: "o=Example".into(),
            include_roots: false,
        },
    )
    .unwrap();
    let records = read_ldif(&without.text);
    assert_eq!(records.len(), read_ldif(SMALL_LDIF).len() - 3);
    assert!(
        records
            .iter()
            .all(|r| !r.dn.starts_with("cn=DICOM Configuration"))
    );
}

#[test]
fn dn_values_are_escaped() {
    for (value, escaped) in [
        ("plain", "plain"),
        ("a,b", "a\\,b"),
        ("a+b=c", "a\\+b=c"),
        ("\"q\"", "\\\"q\\\""),
        ("<x>;y", "\\<x\\>\\;y"),
        ("back\\slash", "back\\\\slash"),
        (" lead", "\\ lead"),
        ("trail ", "trail\\ "),
        (" ", "\\ "),
        ("#hash", "\\#hash"),
        ("mid#hash", "mid#hash"),
        ("nul\0", "nul\\00"),
        ("Zürich", "Zürich"),
        ("", ""),
    ] {
        assert_eq!(escape_dn_value(value), escaped, "{value:?}");
        assert_eq!(unescape_dn_value(escaped), value, "{escaped:?}");
    }
}

#[test]
fn unsafe_values_are_base64() {
    for (value, line) in [
        ("plain text", "a: plain text\n"),
        ("", "a: \n"),
        (" leading space", "a:: IGxlYWRpbmcgc3BhY2U=\n"),
        ("trailing space ", "a:: dHJhaWxpbmcgc3BhY2Ug\n"),
        (":colon", "a:: OmNvbG9u\n"),
        ("<angle", "a:: PGFuZ2xl\n"),
        ("mid: colon <ok>", "a: mid: colon <ok>\n"),
        ("two\nlines", "a:: dHdvCmxpbmVz\n"),
        ("cr\r", "a:: Y3IN\n"),
        ("Ä", "a:: w4Q=\n"),
        ("nul\0", "a:: bnVsAA==\n"),
    ] {
        assert_eq!(attr_line("a", value), line, "{value:?}");
        let back = read_ldif(&format!("version: 1\n\ndn: x=1\n{line}"));
        assert_eq!(back[0].get("a"), vec![value], "{value:?}");
    }
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foob"), "Zm9vYg==");
}

#[test]
fn long_lines_fold_and_unfold() {
    let value = "x".repeat(500);
    let text = attr_line("dicomDescription", &value);
    assert!(text.lines().all(|l| l.len() <= LINE_MAX), "{text}");
    assert!(text.lines().skip(1).all(|l| l.starts_with(' ')));
    let back = read_ldif(&format!("version: 1\n\ndn: x=1\n{text}"));
    assert_eq!(back[0].get("dicomDescription"), vec![value.as_str()]);
    let utf8 = "é".repeat(100);
    assert_eq!(fold(&utf8).replace("\n ", "").trim_end(), utf8);
    let c = comment(&"word ".repeat(40));
    assert!(c.lines().count() > 1);
    assert!(
        c.lines()
            .all(|l| l.len() <= LINE_MAX && l.starts_with("# word")),
        "{c}"
    );
}

#[test]
fn bad_base_dns_and_clashing_names_are_errors() {
    let c = parse(SMALL);
    for bad in ["", "   ", "example", "o=a\nb"] {
        assert!(
            matches!(to_ldif(&c, &options(bad)), Err(LdifError::BaseDn(_))),
            "{bad:?}"
        );
    }
    let clash = SMALL.replace("primary, main site", "MIRROR");
    let e = to_ldif(&parse(&clash), &options("o=x")).unwrap_err();
    assert!(matches!(e, LdifError::DuplicateDn(_)), "{e}");
}

#[test]
fn unnamed_duplicate_and_any_syntax_capabilities() {
    let toml = SMALL.replace(
        "transfer_syntaxes = [\"1.2.840.10008.1.2.1\", \"1.2.840.10008.1.2\"]",
        "\n[[device.network_ae.transfer_capability]]\nsop_class = \"1.2.840.10008.5.1.4.1.1.2\"\nrole = \"scp\"",
    );
    let export = to_ldif(&parse(&toml), &options("o=x")).unwrap();
    let records = read_ldif(&export.text);
    check_structure(&records, "o=x");
    let tcs: Vec<&Record> = records
        .iter()
        .filter(|r| r.class() == "dicomTransferCapability")
        .collect();
    assert_eq!(tcs.len(), 2);
    assert_eq!(tcs[0].get("cn"), vec!["1.2.840.10008.5.1.4.1.1.2 SCP"]);
    assert_eq!(tcs[1].get("cn"), vec!["1.2.840.10008.5.1.4.1.1.2 SCP #2"]);
    for tc in tcs {
        assert_eq!(
            tc.get("dicomTransferSyntax"),
            STANDARD_TRANSFER_SYNTAXES.to_vec()
        );
    }
}

#[test]
fn every_shipped_configuration_exports_with_a_sound_structure() {
    let mut configs = vec![
        ("example.toml".to_string(), Config::EXAMPLE_TOML.to_string()),
        ("default.toml".to_string(), Config::DEFAULT_TOML.to_string()),
    ];
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config");
    for entry in std::fs::read_dir(&ops).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            configs.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    assert!(configs.len() >= 4, "{configs:?}");
    for (name, toml) in configs {
        let config = parse(&toml);
        for base in [DEFAULT_BASE_DN, "dc=hospital,dc=example"] {
            let export = to_ldif(&config, &options(base)).unwrap();
            assert_eq!(export.warnings, Vec::<String>::new(), "{name}");
            let records = read_ldif(&export.text);
            check_structure(&records, base);
            // Every AE, local and remote, is there once, and in the registry.
            let titles: Vec<&str> = config
                .device
                .network_aes
                .iter()
                .map(|a| a.ae_title.trim())
                .chain(
                    config
                        .remote_devices
                        .iter()
                        .flat_map(|d| d.network_aes.iter().map(|a| a.ae_title.trim())),
                )
                .collect();
            let aes: Vec<&str> = records
                .iter()
                .filter(|r| r.class() == "dicomNetworkAE")
                .map(|r| r.get("dicomAETitle")[0])
                .collect();
            assert_eq!(aes, titles, "{name}");
            let devices = records
                .iter()
                .filter(|r| r.class() == "dicomDevice")
                .count();
            assert_eq!(devices, 1 + config.remote_devices.len(), "{name}");
        }
    }
}

// ---------------------------------------------------------------------------
// A small LDIF reader and the structure checks
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Record {
    dn: String,
    attrs: Vec<(String, String)>,
}

impl Record {
    fn get(&self, name: &str) -> Vec<&str> {
        self.attrs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn class(&self) -> &str {
        let classes = self.get("objectClass");
        assert_eq!(classes.len(), 1, "{}: {classes:?}", self.dn);
        classes[0]
    }
}

/// RFC 2849 content records: unfolds lines, skips comments, decodes `::`.
fn read_ldif(text: &str) -> Vec<Record> {
    let mut logical: Vec<String> = Vec::new();
    for line in text.split('\n') {
        if let Some(rest) = line.strip_prefix(' ') {
            logical
                .last_mut()
                .expect("a continuation line at the start")
                .push_str(rest);
        } else {
            logical.push(line.to_string());
        }
    }
    let mut lines = logical.into_iter().filter(|l| !l.starts_with('#'));
    assert_eq!(lines.next().as_deref(), Some("version: 1"));
    let mut records = Vec::new();
    let mut current: Option<Record> = None;
    for line in lines {
        if line.is_empty() {
            records.extend(current.take());
            continue;
        }
        let (name, rest) = line.split_once(':').expect("attr: value");
        let value = match rest.strip_prefix(':') {
            Some(b64) => String::from_utf8(unbase64(b64.trim_start())).unwrap(),
            None => rest.trim_start_matches(' ').to_string(),
        };
        match &mut current {
            None => {
                assert_eq!(name, "dn", "a record starts with its dn: {line}");
                current = Some(Record {
                    dn: value,
                    attrs: Vec::new(),
                });
            }
            Some(r) => r.attrs.push((name.to_string(), value)),
        }
    }
    records.extend(current);
    records
}

fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let digits: Vec<u8> = chunk
            .iter()
            .filter(|&&c| c != b'=')
            .map(|&c| val(c))
            .collect();
        let n = digits
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        for i in 0..digits.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The RDNs of a DN as (attribute, unescaped value), RFC 4514.
fn split_dn(dn: &str) -> Vec<(String, String)> {
    let mut rdns = Vec::new();
    let mut part = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                part.push('\\');
                part.extend(chars.next());
            }
            ',' => rdns.push(std::mem::take(&mut part)),
            c => part.push(c),
        }
    }
    rdns.push(part);
    rdns.into_iter()
        .map(|rdn| {
            let (a, v) = rdn.split_once('=').expect("attr=value");
            (a.to_string(), unescape_dn_value(v))
        })
        .collect()
}

fn unescape_dn_value(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = v
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(x) => {
                    out.push(x);
                    i += 3;
                }
                None => {
                    out.push(b[i + 1]);
                    i += 2;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn parent(dn: &str) -> String {
    let mut escaped = false;
    for (i, c) in dn.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => return dn[i + 1..].to_string(),
            _ => escaped = false,
        }
    }
    String::new()
}

/// What the Annex H schema requires, and what the tree must look like.
fn check_structure(records: &[Record], base: &str) {
    let by_dn: HashMap<String, &Record> =
        records.iter().map(|r| (r.dn.to_lowercase(), r)).collect();
    assert_eq!(by_dn.len(), records.len(), "duplicate DNs");
    let must: HashMap<&str, &[&str]> = HashMap::from([
        ("dicomConfigurationRoot", &["cn"][..]),
        ("dicomDevicesRoot", &["cn"][..]),
        ("dicomUniqueAETitlesRegistryRoot", &["cn"][..]),
        ("dicomDevice", &["dicomDeviceName", "dicomInstalled"][..]),
        (
            "dicomNetworkAE",
            &[
                "dicomAETitle",
                "dicomNetworkConnectionReference",
                "dicomAssociationInitiator",
                "dicomAssociationAcceptor",
            ][..],
        ),
        ("dicomNetworkConnection", &["dicomHostname"][..]),
        ("dicomUniqueAETitle", &["dicomAETitle"][..]),
        (
            "dicomTransferCapability",
            &["dicomSOPClass", "dicomTransferRole", "dicomTransferSyntax"][..],
        ),
    ]);
    let root = format!("cn=DICOM Configuration,{base}").to_lowercase();
    let registry = format!("cn=Unique AE Titles Registry,{root}").to_lowercase();
    let mut registered = HashSet::new();
    let mut seen = HashSet::new();
    for r in records {
        let dn = r.dn.to_lowercase();
        // parents first
        let p = parent(&r.dn).to_lowercase();
        assert!(
            p == base.to_lowercase() || seen.contains(&p),
            "{}: parent not (yet) defined",
            r.dn
        );
        seen.insert(dn.clone());
        assert!(
            dn.ends_with(&root),
            "{} is outside the configuration root",
            r.dn
        );
        let class = r.class();
        let required = must
            .get(class)
            .unwrap_or_else(|| panic!("{}: unknown objectClass {class}", r.dn));
        for a in *required {
            assert!(!r.get(a).is_empty(), "{}: {class} lacks {a}", r.dn);
        }
        // The RDN value is one of the entry's values of that attribute.
        let (rdn_attr, rdn_value) = split_dn(&r.dn).remove(0);
        assert!(
            r.get(&rdn_attr).contains(&rdn_value.as_str()),
            "{}: RDN value not among its {rdn_attr} values",
            r.dn
        );
        for b in [
            "dicomInstalled",
            "dicomAssociationAcceptor",
            "dicomAssociationInitiator",
        ] {
            for v in r.get(b) {
                assert!(v == "TRUE" || v == "FALSE", "{}: {b}: {v}", r.dn);
            }
        }
        for v in r.get("dicomPort") {
            v.parse::<u16>().unwrap();
        }
        for v in r.get("dicomTransferRole") {
            assert!(v == "SCU" || v == "SCP", "{}: {v}", r.dn);
        }
        for v in r
            .get("dicomSOPClass")
            .into_iter()
            .chain(r.get("dicomTransferSyntax"))
        {
            crate::validate_uid(v).unwrap();
        }
        if class == "dicomUniqueAETitle" {
            assert_eq!(p, registry);
            registered.insert(r.get("dicomAETitle")[0].to_string());
        }
        if class == "dicomNetworkAE" {
            assert_eq!(by_dn[&p].class(), "dicomDevice", "{}", r.dn);
            for reference in r.get("dicomNetworkConnectionReference") {
                let target = by_dn
                    .get(&reference.to_lowercase())
                    .unwrap_or_else(|| panic!("{}: reference {reference} points nowhere", r.dn));
                assert_eq!(target.class(), "dicomNetworkConnection");
                assert_eq!(
                    parent(reference).to_lowercase(),
                    p,
                    "{reference}: another device's"
                );
            }
            assert!(
                registered.contains(r.get("dicomAETitle")[0]),
                "{}: AE title not in the registry (or registered later)",
                r.dn
            );
        }
        if class == "dicomTransferCapability" {
            assert_eq!(by_dn[&p].class(), "dicomNetworkAE", "{}", r.dn);
        }
    }
}
