//! Replication targets (`[[target]]`): where every received object is copied.

use serde::{Deserialize, Serialize};

/// Schemes accepted in [`Target::ObjectStore`] URLs.
pub const OBJECT_STORE_SCHEMES: [&str; 4] = ["s3", "gs", "az", "file"];

/// A replication target (`[[target]]`, selected by its `type` key). The agent
/// writes one outbox entry per received object for each target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// `type = "dicom"`: send each object with C-STORE to a remote AE.
    Dicom {
        /// Name of this target, non-empty and unique among targets; used in
        /// logs, metrics and the outbox.
        name: String,
        /// AE title of a `[[remote_device.network_ae]]` with
        /// `association_acceptor = true` and at least one network connection.
        remote_ae: String,
        /// Our calling AE title toward the target: a local network AE.
        /// Default: the first local AE with `association_initiator = true`,
        /// else the first acceptor AE.
        #[serde(default)]
        calling_ae: Option<String>,
        /// Associations used in parallel, 1 to 16. Default: 2.
        #[serde(default = "default_concurrency")]
        concurrency: u32,
        /// Seconds allowed for connecting and for each answer, 1 to 3600.
        /// Default: 30.
        #[serde(default = "default_timeout_secs")]
        timeout_secs: u64,
        /// Ceiling of the first retry delay, in seconds; each failed attempt
        /// doubles it (the delay is drawn at random below the ceiling: full
        /// jitter), up to `retry_max_secs`. Default: 5.
        #[serde(default = "default_retry_initial_secs")]
        retry_initial_secs: u64,
        /// Largest retry delay ceiling, in seconds. Default: 3600.
        #[serde(default = "default_retry_max_secs")]
        retry_max_secs: u64,
        /// Attempts before an object the target refuses (status A9xx or
        /// Cxxx, SOP class not supported, or no accepted presentation context
        /// for its transfer syntax) goes to the dead-letter list, 1 to 100.
        /// Out-of-resources answers and network failures are retried without
        /// limit. Default: 3.
        #[serde(default = "default_refused_attempts")]
        refused_attempts: u32,
    },
    /// `type = "object_store"`: copy each object into an object store or a
    /// directory.
    ObjectStore {
        /// Name of this target, non-empty and unique among targets; used in
        /// logs, metrics and the outbox.
        name: String,
        /// Where to store: `s3://bucket/prefix`, `gs://bucket/prefix`,
        /// `az://container/prefix` or `file:///absolute/directory`.
        url: String,
    },
}

fn default_concurrency() -> u32 {
    2
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_retry_initial_secs() -> u64 {
    5
}
fn default_retry_max_secs() -> u64 {
    3600
}
fn default_refused_attempts() -> u32 {
    3
}

impl Target {
    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Dicom { name, .. } | Target::ObjectStore { name, .. } => name,
        }
    }
}

/// Checks an object store URL: `scheme://rest` with a scheme among
/// [`OBJECT_STORE_SCHEMES`]; cloud URLs need a bucket, `file` URLs an
/// absolute path.
pub(crate) fn check_object_store_url(url: &str) -> Result<(), String> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains whitespace or control characters"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL: write scheme://…, e.g. \"s3://bucket/prefix\" or \"file:///var/backup\""
        ));
    };
    match scheme {
        "s3" | "gs" | "az" => {
            if rest.split('/').next().is_none_or(str::is_empty) {
                return Err(format!(
                    "{url:?} has no bucket or container name: write {scheme}://bucket/prefix"
                ));
            }
            Ok(())
        }
        "file" => {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(format!(
                    "{url:?}: a file URL needs an absolute directory, e.g. \"file:///var/backup\" (three slashes)"
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "{url:?} has the scheme {other:?}; supported schemes are {}",
            OBJECT_STORE_SCHEMES.join(", ")
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn object_store_urls() {
        for ok in [
            "s3://bucket",
            "s3://bucket/prefix",
            "gs://bucket/a/b",
            "az://container/prefix",
            "file:///var/backup",
        ] {
            assert_eq!(check_object_store_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/var/backup",
            "s3://",
            "s3:///prefix",
            "file://var/backup",
            "file:///",
            "http://example.org/x",
            "S3://bucket",
            "s3://bucket/with space",
        ] {
            assert!(check_object_store_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn target_name() {
        let t = Target::ObjectStore {
            name: "backup".into(),
            url: "file:///x".into(),
        };
        assert_eq!(t.name(), "backup");
        let t = Target::Dicom {
            name: "mirror".into(),
            remote_ae: "M".into(),
            calling_ae: None,
            concurrency: 2,
            timeout_secs: 30,
            retry_initial_secs: 5,
            retry_max_secs: 3600,
            refused_attempts: 3,
        };
        assert_eq!(t.name(), "mirror");
    }
}
