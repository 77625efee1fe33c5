//! The configuration as LDIF (RFC 2849), in the LDAP schema of the DICOM
//! Application Configuration Management Profile (PS3.15 Annex H, H.1.3), for
//! loading into a site's configuration directory with `ldapadd`.
//!
//! # Directory tree (PS3.15 H.1.2)
//! ```text
//! <base DN>
//!   cn=DICOM Configuration                     dicomConfigurationRoot
//!     cn=Devices                               dicomDevicesRoot
//!       dicomDeviceName=<device>               dicomDevice (this one, then every remote device)
//!         cn=<connection>                      dicomNetworkConnection
//!         dicomAETitle=<AE title>              dicomNetworkAE
//!           cn=<capability>                    dicomTransferCapability
//!     cn=Unique AE Titles Registry             dicomUniqueAETitlesRegistryRoot
//!       dicomAETitle=<AE title>                dicomUniqueAETitle (every AE title of the file)
//! ```
//! Entries come parents first, so `ldapadd` can load the file as it is
//! ([`LdifOptions::include_roots`] leaves out the three roots when the
//! directory has them already).
//!
//! # Mapping (see the table in the crate documentation)
//! - Booleans are `TRUE` / `FALSE`. A device is exported with
//!   `dicomInstalled: TRUE` (required; the file describes devices in use);
//!   a connection's `installed` becomes its `dicomInstalled`.
//! - `dicomNetworkConnectionReference` holds the DNs of the AE's connections.
//!   A remote AE without connections (a sender, known by the addresses it
//!   connects from) gets one initiator-only connection per source address,
//!   named `from-<address>`, with that address (or CIDR network) as
//!   `dicomHostname` and no `dicomPort` (Annex H: a connection without a port
//!   only initiates), because the schema requires the reference.
//! - A transfer capability without `name` is named `<SOP class UID> <role>`.
//!   One with no transfer syntaxes (pacs-mirror: any) lists every standard
//!   transfer syntax ([`STANDARD_TRANSFER_SYNTAXES`]): `dicomTransferSyntax`
//!   is required and has OID syntax, so there is no wildcard.
//! - An AE without transfer capabilities (pacs-mirror: every storage SOP
//!   class and Verification) has no `dicomTransferCapability` children; a
//!   comment says so.
//! - What Annex H has no attribute for (data directory, calling-AE
//!   allow-lists, association limits, spool, index, targets, admin
//!   endpoint) is not exported.
//!
//! # Encoding
//! Attribute values and DNs that are not RFC 2849 SAFE-STRINGs (non-ASCII,
//! leading space, `:` or `<`, line breaks) or that end in a space are written
//! base64 (`attr:: …`); lines are folded at 76 characters. RDN values are
//! escaped per RFC 4514 ([`escape_dn_value`]).

use std::collections::{BTreeMap, HashSet};

use crate::Config;
use crate::device::{NetworkConnection, Role, TransferCapability};

/// Default [`LdifOptions::base_dn`]: a placeholder organization; use your
/// directory's suffix.
pub const DEFAULT_BASE_DN: &str = "o=pacs-mirror";

/// Longest LDIF line before folding (RFC 2849 recommends 76).
const LINE_MAX: usize = 76;

/// The standard transfer syntaxes (PS3.5 §10, PS3.6 Table A-1), written for a
/// transfer capability whose TOML lists none (any).
pub const STANDARD_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2",       // Implicit VR Little Endian
    "1.2.840.10008.1.2.1",     // Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     // Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  // JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  // JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.80",  // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  // JPEG-LS Lossy (Near-Lossless)
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.92",  // JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.93",  // JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.100", // MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101", // MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102", // MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103", // MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104", // MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105", // MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106", // MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107", // HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108", // HEVC/H.265 Main 10 Profile / Level 5.1
    "1.2.840.10008.1.2.4.201", // High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202", // High-Throughput JPEG 2000 with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.203", // High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5",     // RLE Lossless
];

/// How to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdifOptions {
    /// The DN under which `cn=DICOM Configuration` goes, e.g.
    /// `dc=hospital,dc=example` or `o=Sometown Hospital`. Written as given
    /// (it must already be a valid DN).
    pub base_dn: String,
    /// Write the three roots (configuration, devices, AE titles registry).
    pub include_roots: bool,
}

impl Default for LdifOptions {
    fn default() -> Self {
        LdifOptions {
            base_dn: DEFAULT_BASE_DN.to_string(),
            include_roots: true,
        }
    }
}

/// An export: the LDIF text and what could not be said in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdifExport {
    /// The LDIF document (`version: 1`, then one record per entry).
    pub text: String,
    /// Things the schema wants that the configuration does not have.
    pub warnings: Vec<String>,
}

/// Why the configuration cannot be exported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LdifError {
    /// The base DN is empty, has no `attribute=value`, or has line breaks.
    #[error(
        "base DN {0:?} is not a DN (write e.g. \"dc=hospital,dc=example\" or \"o=Sometown Hospital\")"
    )]
    BaseDn(String),
    /// Two entries would have the same DN (LDAP compares these names
    /// without regard to case).
    #[error("two entries would have the DN {0:?}: rename one of them in the configuration")]
    DuplicateDn(String),
}

/// One LDIF record.
struct Entry {
    comment: Option<String>,
    dn: String,
    attrs: Vec<(&'static str, String)>,
}

impl Entry {
    fn new(dn: String, object_class: &str) -> Self {
        Entry {
            comment: None,
            dn,
            attrs: vec![("objectClass", object_class.to_string())],
        }
    }

    fn attr(&mut self, name: &'static str, value: impl Into<String>) -> &mut Self {
        self.attrs.push((name, value.into()));
        self
    }

    fn description(&mut self, d: Option<&String>) -> &mut Self {
        if let Some(d) = d.filter(|d| !d.is_empty()) {
            self.attr("dicomDescription", d.as_str());
        }
        self
    }
}

fn boolean(b: bool) -> &'static str {
    if b { "TRUE" } else { "FALSE" }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Scu => "SCU",
        Role::Scp => "SCP",
    }
}

/// `attr=escaped value,parent`.
fn child(attr: &str, value: &str, parent: &str) -> String {
    format!("{attr}={},{parent}", escape_dn_value(value))
}

/// Export `config` as LDIF.
pub fn to_ldif(config: &Config, options: &LdifOptions) -> Result<LdifExport, LdifError> {
    let base = options.base_dn.trim();
    if base.is_empty() || !base.contains('=') || base.chars().any(char::is_control) {
        return Err(LdifError::BaseDn(options.base_dn.clone()));
    }
    let root = format!("cn=DICOM Configuration,{base}");
    let devices = format!("cn=Devices,{root}");
    let registry = format!("cn=Unique AE Titles Registry,{root}");
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    if options.include_roots {
        for (dn, class, cn) in [
            (&root, "dicomConfigurationRoot", "DICOM Configuration"),
            (&devices, "dicomDevicesRoot", "Devices"),
            (
                &registry,
                "dicomUniqueAETitlesRegistryRoot",
                "Unique AE Titles Registry",
            ),
        ] {
            let mut e = Entry::new(dn.clone(), class);
            e.attr("cn", cn);
            entries.push(e);
        }
    }

    // The Unique AE Titles Registry: every AE title, local and remote.
    let mut titles: Vec<&str> = Vec::new();
    let all_titles = config
        .device
        .network_aes
        .iter()
        .map(|ae| ae.ae_title.trim())
        .chain(
            config
                .remote_devices
                .iter()
                .flat_map(|d| d.network_aes.iter().map(|ae| ae.ae_title.trim())),
        );
    for t in all_titles {
        if !titles.contains(&t) {
            titles.push(t);
        }
    }
    for t in &titles {
        let mut e = Entry::new(child("dicomAETitle", t, &registry), "dicomUniqueAETitle");
        e.attr("dicomAETitle", *t);
        entries.push(e);
    }

    // This device.
    let device = &config.device;
    let device_dn = child("dicomDeviceName", &device.name, &devices);
    let mut e = Entry::new(device_dn.clone(), "dicomDevice");
    e.comment = Some("this pacs-mirror".into());
    e.attr("dicomDeviceName", device.name.as_str())
        .description(device.description.as_ref())
        .attr("dicomInstalled", boolean(true));
    entries.push(e);
    push_connections(&mut entries, &device.network_connections, &device_dn);
    for ae in &device.network_aes {
        let ae_dn = child("dicomAETitle", ae.ae_title.trim(), &device_dn);
        let mut e = Entry::new(ae_dn.clone(), "dicomNetworkAE");
        e.attr("dicomAETitle", ae.ae_title.trim())
            .description(ae.description.as_ref())
            .attr("dicomAssociationAcceptor", boolean(ae.association_acceptor))
            .attr(
                "dicomAssociationInitiator",
                boolean(ae.association_initiator),
            );
        let refs = connection_refs(
            &ae.network_connections,
            &device.network_connections,
            &device_dn,
            &format!("AE {}", ae.ae_title.trim()),
            &mut warnings,
        );
        if refs.is_empty() {
            warnings.push(format!(
                "AE {} has no network connection: dicomNetworkConnectionReference, required by the schema, is left out",
                ae.ae_title.trim()
            ));
        }
        for r in refs {
            e.attr("dicomNetworkConnectionReference", r);
        }
        if ae.drill_receiver {
            e.comment = Some(
                "pacs-mirror drill receiver: the Move Destination of C-MOVE restore drills; what it receives goes to a scratch folder, never the spool"
                    .into(),
            );
        } else if ae.transfer_capabilities.is_empty() {
            e.comment = Some(
                "no transfer capabilities listed: pacs-mirror accepts every standard storage SOP class and Verification, in every transfer syntax"
                    .into(),
            );
        }
        entries.push(e);
        push_capabilities(&mut entries, &ae.transfer_capabilities, &ae_dn);
    }

    // Remote devices.
    for remote in &config.remote_devices {
        let dev_dn = child("dicomDeviceName", &remote.name, &devices);
        let mut e = Entry::new(dev_dn.clone(), "dicomDevice");
        e.comment = Some("remote device".into());
        e.attr("dicomDeviceName", remote.name.as_str())
            .description(remote.description.as_ref())
            .attr("dicomInstalled", boolean(true));
        entries.push(e);
        push_connections(&mut entries, &remote.network_connections, &dev_dn);
        // Initiator-only connections for senders, one per source address,
        // shared by the device's AEs.
        let mut synthetic: BTreeMap<String, String> = BTreeMap::new();
        let mut aes = Vec::new();
        for ae in &remote.network_aes {
            let title = ae.ae_title.trim();
            let mut refs = connection_refs(
                &ae.network_connections,
                &remote.network_connections,
                &dev_dn,
                &format!("remote AE {title}"),
                &mut warnings,
            );
            if ae.network_connections.is_empty() {
                for net in &ae.source_addresses {
                    let host = if net.prefix_len() == net.max_prefix_len() {
                        net.addr().to_string()
                    } else {
                        net.to_string()
                    };
                    let name = format!("from-{host}");
                    refs.push(child("cn", &name, &dev_dn));
                    synthetic.insert(name, host);
                }
            }
            if refs.is_empty() {
                warnings.push(format!(
                    "remote AE {title} has neither network connections nor source addresses: dicomNetworkConnectionReference, required by the schema, is left out"
                ));
            }
            let mut e = Entry::new(child("dicomAETitle", title, &dev_dn), "dicomNetworkAE");
            e.attr("dicomAETitle", title)
                .attr("dicomAssociationAcceptor", boolean(ae.association_acceptor))
                .attr(
                    "dicomAssociationInitiator",
                    boolean(ae.association_initiator),
                );
            for r in refs {
                e.attr("dicomNetworkConnectionReference", r);
            }
            aes.push(e);
        }
        for (name, host) in synthetic {
            let mut e = Entry::new(child("cn", &name, &dev_dn), "dicomNetworkConnection");
            e.comment = Some("initiator only: an address this device connects from".into());
            e.attr("cn", name).attr("dicomHostname", host);
            entries.push(e);
        }
        entries.extend(aes);
    }

    let mut seen = HashSet::new();
    for e in &entries {
        if !seen.insert(e.dn.to_lowercase()) {
            return Err(LdifError::DuplicateDn(e.dn.clone()));
        }
    }
    let mut text = String::from("version: 1\n");
    for e in &entries {
        text.push('\n');
        if let Some(c) = &e.comment {
            text.push_str(&comment(c));
        }
        text.push_str(&attr_line("dn", &e.dn));
        for (name, value) in &e.attrs {
            text.push_str(&attr_line(name, value));
        }
    }
    Ok(LdifExport { text, warnings })
}

fn push_connections(entries: &mut Vec<Entry>, conns: &[NetworkConnection], device_dn: &str) {
    for c in conns {
        let mut e = Entry::new(child("cn", &c.name, device_dn), "dicomNetworkConnection");
        e.attr("cn", c.name.as_str())
            .attr("dicomHostname", c.hostname.as_str())
            .attr("dicomPort", c.port.to_string())
            .attr("dicomInstalled", boolean(c.installed));
        // Annex H: one dicomTLSCipherSuite value per suite (the profile
        // name is expanded; an unknown entry is written as given).
        let suites: Vec<String> = crate::tls::expand_cipher_suites(&c.tls_cipher_suites)
            .map(|v| v.into_iter().map(str::to_string).collect())
            .unwrap_or_else(|_| c.tls_cipher_suites.clone());
        for suite in suites {
            e.attr("dicomTLSCipherSuite", suite);
        }
        entries.push(e);
    }
}

/// The DNs of the named connections; unknown names are warned about.
fn connection_refs(
    names: &[String],
    conns: &[NetworkConnection],
    device_dn: &str,
    owner: &str,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let mut refs = Vec::new();
    for name in names {
        if conns.iter().any(|c| &c.name == name) {
            refs.push(child("cn", name, device_dn));
        } else {
            warnings.push(format!(
                "{owner} refers to the network connection {name:?}, which its device does not have: reference left out"
            ));
        }
    }
    refs
}

fn push_capabilities(entries: &mut Vec<Entry>, caps: &[TransferCapability], ae_dn: &str) {
    let mut names: Vec<String> = Vec::new();
    for tc in caps {
        let base = tc
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{} {}", tc.sop_class, role(tc.role)));
        let mut name = base.clone();
        let mut n = 2;
        while names.iter().any(|x| x.eq_ignore_ascii_case(&name)) {
            name = format!("{base} #{n}");
            n += 1;
        }
        names.push(name.clone());
        let mut e = Entry::new(child("cn", &name, ae_dn), "dicomTransferCapability");
        e.attr("cn", name)
            .attr("dicomSOPClass", tc.sop_class.as_str())
            .attr("dicomTransferRole", role(tc.role));
        if tc.transfer_syntaxes.is_empty() {
            e.comment = Some(
                "transfer_syntaxes empty (any): every standard transfer syntax is listed".into(),
            );
            for ts in STANDARD_TRANSFER_SYNTAXES {
                e.attr("dicomTransferSyntax", *ts);
            }
        } else {
            for ts in &tc.transfer_syntaxes {
                e.attr("dicomTransferSyntax", ts.as_str());
            }
        }
        entries.push(e);
    }
}

/// Escape an attribute value for use in an RDN (RFC 4514 §2.4): `"`, `+`,
/// `,`, `;`, `<`, `>` and `\` get a backslash, as do a leading space or `#`
/// and a trailing space; NUL becomes `\00`. Other characters, non-ASCII
/// included, are kept as they are.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 2849 SAFE-STRING: ASCII without NUL, LF or CR, not starting with a
/// space, `:` or `<`.
fn is_safe_string(s: &str) -> bool {
    let bytes = s.as_bytes();
    if let Some(&first) = bytes.first()
        && matches!(first, b' ' | b':' | b'<')
    {
        return false;
    }
    bytes
        .iter()
        .all(|&b| b < 0x80 && !matches!(b, 0 | b'\n' | b'\r'))
}

/// `name: value`, or `name:: base64` when the value is not a SAFE-STRING or
/// ends with a space; folded at [`LINE_MAX`]; with the line break.
fn attr_line(name: &str, value: &str) -> String {
    let line = if is_safe_string(value) && !value.ends_with(' ') {
        format!("{name}: {value}")
    } else {
        format!("{name}:: {}", base64(value.as_bytes()))
    };
    fold(&line)
}

/// Fold a line (ASCII in practice: SAFE-STRINGs and base64): the first
/// piece up to [`LINE_MAX`] characters, each continuation a space and up to
/// `LINE_MAX - 1` more; with the final line break.
fn fold(line: &str) -> String {
    // Cut at character boundaries, so that any text folds safely.
    let cut = |from: usize, max: usize| {
        let mut end = (from + max).min(line.len());
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        end
    };
    let mut out = String::with_capacity(line.len() + line.len() / LINE_MAX * 2 + 1);
    let mut at = cut(0, LINE_MAX);
    out.push_str(&line[..at]);
    out.push('\n');
    while at < line.len() {
        let end = cut(at, LINE_MAX - 1);
        out.push(' ');
        out.push_str(&line[at..end]);
        out.push('\n');
        at = end;
    }
    out
}

/// `# text`, wrapped at word boundaries into several comment lines of at
/// most [`LINE_MAX`] characters (not folded: some readers do not unfold
/// comments).
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > LINE_MAX {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// Standard base64 (RFC 4648) with padding.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
