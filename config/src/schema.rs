//! Every unknown key and every wrong-typed value of a configuration file,
//! found in one pass, before the file is deserialized into a [`Config`].
//!
//! serde with `deny_unknown_fields` stops at the first problem. Here the
//! text is first parsed into a [`DeTable`] (which keeps the position of
//! every key and value), then walked table by table:
//!
//! 1. every key a table does not accept is a [`Finding`] with its TOML path,
//!    its line and column and, when a valid key is close enough, "did you
//!    mean …?"; the key is then dropped, so that it does not hide the next
//!    problem;
//! 2. every table is deserialized on its own, innermost first (a table whose
//!    sub-tables already failed is skipped, not to report one problem
//!    twice), so a wrong type, a bad enum value or a missing key in each
//!    entry is reported too.
//!
//! The keys a table accepts are not written down here: they are the field
//! names serde's derived `Deserialize` of its struct passes to
//! `deserialize_struct` ([`fields_of`]), so they cannot drift from what
//! deserializing accepts. Only the two kinds of `[[target]]` (an internally
//! tagged enum, whose fields serde does not expose that way) are listed by
//! hand; a unit test keeps those lists equal to what serde accepts.

use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeOwned, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::{
    AdminConfig, AlertsConfig, Config, Device, DeviceTls, DrillConfig, Finding, IndexConfig,
    NetworkAe, NetworkConnection, RemoteAe, RemoteDevice, SilenceRule, SpoolConfig, Target,
    TransferCapability,
};

/// The unknown keys and wrong-typed values of the TOML text `src`, in
/// document order. Fails only if `src` is not TOML at all.
pub(crate) fn check(src: &str) -> Result<Vec<Finding>, toml::de::Error> {
    let root = DeTable::parse(src)?;
    let span = root.span();
    let mut root = Spanned::new(span, DeValue::Table(root.into_inner()));
    let mut walker = Walker {
        src,
        found: Vec::new(),
    };
    walker.walk(&CONFIG, &mut root, "");
    walker.found.sort_by_key(|(at, _)| *at);
    Ok(walker.found.into_iter().map(|(_, f)| f).collect())
}

/// What a table of the configuration accepts.
struct TableSchema {
    /// The keys it accepts.
    keys: Keys,
    /// Its keys that hold tables of their own, with what those accept.
    children: &'static [(&'static str, Child)],
    /// Deserializes it as its Rust type, to find wrong types, bad enum
    /// values and missing keys.
    check: for<'a> fn(Spanned<DeValue<'a>>) -> Result<(), toml::de::Error>,
}

enum Keys {
    /// A struct's field names (see [`fields_of`]).
    Struct(fn() -> &'static [&'static str]),
    /// An internally tagged enum: the key `tag` names the variant, and each
    /// variant accepts its own keys (the tag among them).
    Tagged {
        tag: &'static str,
        variants: &'static [(&'static str, &'static [&'static str])],
    },
}

enum Child {
    /// A table (`[device]`, `device.tls`).
    Table(&'static TableSchema),
    /// An array of tables (`[[target]]`).
    Array(&'static TableSchema),
    /// A table of any keys (`target.options`): not checked.
    FreeForm,
}

impl Keys {
    /// The keys accepted in `table`.
    fn accepted(&self, table: &DeTable<'_>) -> Vec<&'static str> {
        match self {
            Keys::Struct(fields) => fields().to_vec(),
            Keys::Tagged { tag, variants } => {
                let chosen = table
                    .get(*tag)
                    .and_then(|v| v.get_ref().as_str())
                    .and_then(|name| variants.iter().find(|(n, _)| *n == name));
                match chosen {
                    Some((_, keys)) => keys.to_vec(),
                    // No or an unknown variant (reported by the type check):
                    // any variant's keys.
                    None => {
                        let mut all: Vec<&'static str> = variants
                            .iter()
                            .flat_map(|(_, k)| k.iter().copied())
                            .collect();
                        all.sort_unstable();
                        all.dedup();
                        all
                    }
                }
            }
        }
    }
}

fn check_as<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<(), toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value)).map(drop)
}

/// The schema of the table of struct `$t`, with its sub-tables.
macro_rules! table_of {
    ($t:ty, [$($child:expr),* $(,)?]) => {
        TableSchema {
            keys: Keys::Struct(fields_of::<$t>),
            children: &[$($child),*],
            check: check_as::<$t>,
        }
    };
}

static TRANSFER_CAPABILITY: TableSchema = table_of!(TransferCapability, []);
static NETWORK_CONNECTION: TableSchema = table_of!(NetworkConnection, []);
static NETWORK_AE: TableSchema = table_of!(
    NetworkAe,
    [("transfer_capability", Child::Array(&TRANSFER_CAPABILITY))]
);
static DEVICE_TLS: TableSchema = table_of!(DeviceTls, []);
static DEVICE: TableSchema = table_of!(
    Device,
    [
        ("network_connection", Child::Array(&NETWORK_CONNECTION)),
        ("network_ae", Child::Array(&NETWORK_AE)),
        ("tls", Child::Table(&DEVICE_TLS)),
    ]
);
static SPOOL: TableSchema = table_of!(SpoolConfig, []);
static INDEX: TableSchema = table_of!(IndexConfig, []);
static REMOTE_AE: TableSchema = table_of!(RemoteAe, []);
static REMOTE_DEVICE: TableSchema = table_of!(
    RemoteDevice,
    [
        ("network_connection", Child::Array(&NETWORK_CONNECTION)),
        ("network_ae", Child::Array(&REMOTE_AE)),
    ]
);

/// The keys of `[[target]]` with `type = "dicom"` ([`Target::Dicom`]).
pub(crate) const DICOM_TARGET_KEYS: &[&str] = &[
    "type",
    "name",
    "remote_ae",
    "calling_ae",
    "concurrency",
    "timeout_secs",
    "retry_initial_secs",
    "retry_max_secs",
    "refused_attempts",
    "max_bandwidth",
    "bandwidth_schedule",
    "live_window_secs",
    "storage_commitment",
    "commitment_timeout_secs",
];
/// The keys of `[[target]]` with `type = "object_store"`
/// ([`Target::ObjectStore`]).
pub(crate) const OBJECT_STORE_TARGET_KEYS: &[&str] = &[
    "type",
    "name",
    "url",
    "options",
    "concurrency",
    "timeout_secs",
    "retry_initial_secs",
    "retry_max_secs",
    "refused_attempts",
    "max_bandwidth",
    "bandwidth_schedule",
    "live_window_secs",
];
static BANDWIDTH_WINDOW: TableSchema = table_of!(crate::bandwidth::BandwidthWindow, []);
static TARGET: TableSchema = TableSchema {
    keys: Keys::Tagged {
        tag: "type",
        variants: &[
            ("dicom", DICOM_TARGET_KEYS),
            ("object_store", OBJECT_STORE_TARGET_KEYS),
        ],
    },
    children: &[
        ("options", Child::FreeForm),
        ("bandwidth_schedule", Child::Array(&BANDWIDTH_WINDOW)),
    ],
    check: check_as::<Target>,
};
static ADMIN: TableSchema = table_of!(AdminConfig, []);
static DRILL: TableSchema = table_of!(DrillConfig, []);
static SILENCE: TableSchema = table_of!(SilenceRule, []);
static ALERTS: TableSchema = table_of!(AlertsConfig, [("silence", Child::Array(&SILENCE))]);
static CONFIG: TableSchema = table_of!(
    Config,
    [
        ("device", Child::Table(&DEVICE)),
        ("spool", Child::Table(&SPOOL)),
        ("index", Child::Table(&INDEX)),
        ("remote_device", Child::Array(&REMOTE_DEVICE)),
        ("target", Child::Array(&TARGET)),
        ("admin", Child::Table(&ADMIN)),
        ("drill", Child::Array(&DRILL)),
        ("alerts", Child::Table(&ALERTS)),
    ]
);

struct Walker<'s> {
    src: &'s str,
    /// Findings with the byte offset they are about, for sorting.
    found: Vec<(usize, Finding)>,
}

impl Walker<'_> {
    /// Checks `value` against `schema` and its sub-tables against theirs,
    /// dropping unknown keys. Returns `false` if a type check failed here
    /// or below.
    fn walk(&mut self, schema: &TableSchema, value: &mut Spanned<DeValue<'_>>, path: &str) -> bool {
        let mut clean = true;
        // The keys suggested for misspelled ones here: their absence is not
        // reported again as a missing key.
        let mut suggested = Vec::new();
        if let DeValue::Table(table) = value.get_mut() {
            let accepted = schema.keys.accepted(table);
            let unknown: Vec<(String, Range<usize>)> = table
                .iter()
                .filter(|(k, _)| {
                    let name: &str = k.get_ref();
                    !accepted.contains(&name)
                })
                .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                .collect();
            for (key, span) in unknown {
                table.remove(key.as_str());
                suggested.extend(self.unknown_key(path, &key, span, &accepted));
            }
            for (key, child) in schema.children {
                let Some(v) = table.get_mut(*key) else {
                    continue;
                };
                let child_path = join(path, key);
                match child {
                    Child::Table(s) => clean &= self.walk(s, v, &child_path),
                    Child::Array(s) => {
                        if let DeValue::Array(items) = v.get_mut() {
                            for (i, item) in items.iter_mut().enumerate() {
                                clean &= self.walk(s, item, &format!("{child_path}[{i}]"));
                            }
                        }
                    }
                    Child::FreeForm => {}
                }
            }
        }
        // A table whose sub-tables failed is still checked for its other
        // keys: without those sub-tables, and then not missing them. (serde
        // reports a missing key only once every present one deserialized.)
        let mut checked = value.clone();
        let mut dropped = Vec::new();
        if !clean && let DeValue::Table(table) = checked.get_mut() {
            for (key, _) in schema.children {
                if table.remove(*key).is_some() {
                    dropped.push(*key);
                }
            }
        }
        if let Err(e) = (schema.check)(checked.clone()) {
            if missing_key(&e).is_some_and(|k| dropped.contains(&k)) {
                return false;
            }
            self.type_error(schema, path, &checked, &e, &suggested);
            return false;
        }
        clean
    }

    /// Reports the unknown `key`; returns the key suggested instead, if any.
    fn unknown_key(
        &mut self,
        path: &str,
        key: &str,
        span: Range<usize>,
        accepted: &[&'static str],
    ) -> Option<&'static str> {
        let at = self.position(span.start);
        let suggestion = closest(key, accepted);
        let message = match suggestion {
            Some(suggestion) => {
                format!("unknown key `{key}` ({at}); did you mean `{suggestion}`?")
            }
            None => format!(
                "unknown key `{key}` ({at}); the keys here are {}",
                accepted
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.found
            .push((span.start, Finding::error(join(path, key), message)));
        suggestion
    }

    /// A deserialization error of the table (or value) `value` at `path`:
    /// reported at the key it is about when that can be told.
    /// A missing key among `suggested` is not reported: "did you mean …?"
    /// already named it.
    fn type_error(
        &mut self,
        schema: &TableSchema,
        path: &str,
        value: &Spanned<DeValue<'_>>,
        e: &toml::de::Error,
        suggested: &[&str],
    ) {
        let mut offset = e.span().map_or(value.span().start, |s| s.start);
        let message = e.message().trim_end();
        let mut at_path = path.to_string();
        if let DeValue::Table(table) = value.get_ref() {
            if let Some(missing) = missing_key(e) {
                if suggested.contains(&missing) {
                    return;
                }
                at_path = join(path, missing);
            } else if e.span().is_none_or(|s| s == value.span())
                && let Some((k, at)) = culprit(schema, value, table)
            {
                // An error about the whole table (an internally tagged enum
                // buffers its content and loses the positions): the key
                // without which it goes away.
                at_path = join(path, &k);
                offset = at;
            } else if let Some((k, v)) = table
                .iter()
                .find(|(k, v)| k.span().contains(&offset) || v.span().contains(&offset))
            {
                at_path = join(path, k.get_ref());
                if let DeValue::Array(items) = v.get_ref()
                    && let Some(i) = items.iter().position(|i| i.span().contains(&offset))
                {
                    at_path = format!("{at_path}[{i}]");
                }
            }
        }
        if at_path.is_empty() {
            at_path = "(top level)".to_string();
        }
        let at = self.position(offset);
        self.found
            .push((offset, Finding::error(at_path, format!("{message} ({at})"))));
    }

    fn position(&self, offset: usize) -> Position {
        let before = self.src.get(..offset).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Position { line, column }
    }
}

/// The key of a "missing field" error.
fn missing_key(e: &toml::de::Error) -> Option<&str> {
    e.message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

/// The key of `table` (the value of `value`) that makes `schema`'s check
/// fail: without it, the check passes. (A required key cannot be told this
/// way: without it, the check fails whether its value was good or bad.)
/// Returns the key and where its value starts.
fn culprit(
    schema: &TableSchema,
    value: &Spanned<DeValue<'_>>,
    table: &DeTable<'_>,
) -> Option<(String, usize)> {
    table.iter().find_map(|(k, v)| {
        let key: &str = k.get_ref();
        let mut without = value.clone();
        if let DeValue::Table(t) = without.get_mut() {
            t.remove(key);
        }
        (schema.check)(without)
            .is_ok()
            .then(|| (key.to_string(), v.span().start))
    })
}

/// A line and column, both from 1.
struct Position {
    line: usize,
    column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The accepted key `key` was most likely meant to be, if one is close
/// enough: a small edit distance (case, `-` for `_` and swapped letters
/// count little), else a key that starts or ends with it.
pub(crate) fn closest<'a>(key: &str, accepted: &[&'a str]) -> Option<&'a str> {
    let wanted = normalize(key);
    let by_distance = accepted
        .iter()
        .map(|k| (edit_distance(&wanted, &normalize(k)), *k))
        .filter(|(d, k)| *d <= max_distance(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    by_distance.or_else(|| {
        if wanted.len() < 4 {
            return None;
        }
        accepted
            .iter()
            .filter(|k| {
                let k = normalize(k);
                k.starts_with(&wanted) || k.ends_with(&wanted)
            })
            .min_by_key(|k| k.len())
            .copied()
    })
}

fn normalize(key: &str) -> Vec<char> {
    key.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Edits allowed between a key of `len` characters and what was written.
fn max_distance(len: usize) -> usize {
    match len {
        0..=3 => 1,
        4..=9 => 2,
        _ => 3,
    }
}

/// The optimal string alignment distance: insertions, deletions,
/// substitutions and transpositions of two neighbours each count 1.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The keys serde accepts in the struct `T`: the field names its derived
/// `Deserialize` passes to [`Deserializer::deserialize_struct`] (after
/// `rename`). Empty for anything else.
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = FieldsProbe { fields: &[] };
    // The probe always fails, once it has the field names.
    let _ = T::deserialize(&mut probe);
    probe.fields
}

struct FieldsProbe {
    fields: &'static [&'static str],
}

/// The only "error" of [`FieldsProbe`]: it never produces a value.
#[derive(Debug)]
struct Probed;

impl fmt::Display for Probed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names probed")
    }
}

impl std::error::Error for Probed {}

impl serde::de::Error for Probed {
    fn custom<T: fmt::Display>(_msg: T) -> Self {
        Probed
    }
}

impl<'de> Deserializer<'de> for &mut FieldsProbe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Probed> {
        self.fields = fields;
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
