//! Replication targets (`[[target]]`): where every received object is copied.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bandwidth::{Bandwidth, BandwidthWindow};

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
        /// The most associations used in parallel, 1 to 64. Default: 16.
        /// The agent adapts how many it opens to what the link and the
        /// mirror deliver (starting at 4, more while throughput grows, fewer
        /// on timeouts, A7xx answers and rejections); set it to what the
        /// mirror allows from one sender.
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
        /// The most bytes per second sent to this target, e.g.
        /// `"30 Mbit/s"`, `"4 MB/s"`. Default: `"unlimited"`.
        #[serde(default)]
        max_bandwidth: Bandwidth,
        /// Windows of the week with another cap (the first that holds
        /// wins), e.g. 30 Mbit/s on weekdays 07:00–19:00.
        #[serde(default)]
        bandwidth_schedule: Vec<BandwidthWindow>,
        /// Objects that arrived within this many seconds (and were never
        /// attempted) are sent before older ones, so that today's studies
        /// are not queued behind an outage's backlog; 1 to 86400.
        /// Default: 300.
        #[serde(default = "default_live_window_secs")]
        live_window_secs: u64,
        /// Ask the mirror for storage commitment (PS3.4 Annex J) after it
        /// stored the objects, and count an object delivered (retention,
        /// `failover check`, drills, the delivered figures) only once the
        /// mirror reports it committed. The mirror may report on a new
        /// association: it must know this agent's calling AE, and that AE
        /// must accept it (`association_initiator` on its remote AE).
        /// Default: false.
        #[serde(default)]
        storage_commitment: bool,
        /// Seconds to wait for a commitment report before asking again,
        /// 1 to 86400; the alert fires once a request has gone unanswered
        /// three times. Default: 600.
        #[serde(default = "default_commitment_timeout_secs")]
        commitment_timeout_secs: u64,
    },
    /// `type = "object_store"`: copy each object into an object store or a
    /// directory.
    ObjectStore {
        /// Name of this target, non-empty and unique among targets; used in
        /// logs, metrics and the outbox.
        name: String,
        /// Where to store: `s3://bucket/prefix`, `gs://bucket/prefix`,
        /// `az://container/prefix`, `file:///absolute/directory`, or
        /// `file://./relative/directory` (relative to the working directory,
        /// like `device.data_dir`).
        url: String,
        /// Options of the object store client, by the names `object_store`
        /// gives them (`endpoint`, `region`, `allow_http`,
        /// `virtual_hosted_style_request`…). Credentials are best left to the
        /// environment (`AWS_ACCESS_KEY_ID`…, `GOOGLE_SERVICE_ACCOUNT`,
        /// `AZURE_STORAGE_ACCOUNT_KEY`…), which is always read.
        #[serde(default)]
        options: BTreeMap<String, String>,
        /// The most uploads in flight at once, 1 to 64: the sender starts
        /// at 8 and adapts between 1 and this to what the store delivers
        /// (more over a long round trip, fewer on timeouts and 5xx).
        /// Default: 32.
        #[serde(default = "default_object_store_concurrency")]
        concurrency: u32,
        /// Seconds allowed for each request, 1 to 3600. Default: 60.
        #[serde(default = "default_object_store_timeout_secs")]
        timeout_secs: u64,
        /// As for DICOM targets. Default: 5.
        #[serde(default = "default_retry_initial_secs")]
        retry_initial_secs: u64,
        /// As for DICOM targets. Default: 3600.
        #[serde(default = "default_retry_max_secs")]
        retry_max_secs: u64,
        /// Attempts before an object the store refuses for good (the bucket
        /// already holds different bytes under its content address) goes to
        /// the dead-letter list, 1 to 100. Network and server failures are
        /// retried without limit. Default: 3.
        #[serde(default = "default_refused_attempts")]
        refused_attempts: u32,
        /// The most bytes per second sent to this target, e.g.
        /// `"30 Mbit/s"`, `"4 MB/s"`. Default: `"unlimited"`.
        #[serde(default)]
        max_bandwidth: Bandwidth,
        /// Windows of the week with another cap (the first that holds
        /// wins), e.g. 30 Mbit/s on weekdays 07:00–19:00.
        #[serde(default)]
        bandwidth_schedule: Vec<BandwidthWindow>,
        /// Objects that arrived within this many seconds (and were never
        /// attempted) are sent before older ones, so that today's studies
        /// are not queued behind an outage's backlog; 1 to 86400.
        /// Default: 300.
        #[serde(default = "default_live_window_secs")]
        live_window_secs: u64,
    },
}

/// How a target sends and retries: the settings both kinds share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Associations (DICOM) or uploads (object store) in parallel.
    pub concurrency: u32,
    /// Seconds allowed for each step.
    pub timeout_secs: u64,
    /// First retry delay ceiling, in seconds.
    pub retry_initial_secs: u64,
    /// Largest retry delay ceiling, in seconds.
    pub retry_max_secs: u64,
    /// Attempts before a refused object is dead-lettered.
    pub refused_attempts: u32,
}

fn default_concurrency() -> u32 {
    16
}
fn default_live_window_secs() -> u64 {
    300
}
fn default_commitment_timeout_secs() -> u64 {
    600
}
fn default_timeout_secs() -> u64 {
    30
}
fn default_object_store_concurrency() -> u32 {
    32
}
fn default_object_store_timeout_secs() -> u64 {
    60
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
    /// How recent an arrival counts as live (sent before the backlog).
    pub fn live_window_secs(&self) -> u64 {
        match self {
            Target::Dicom {
                live_window_secs, ..
            }
            | Target::ObjectStore {
                live_window_secs, ..
            } => *live_window_secs,
        }
    }

    /// DICOM targets with `storage_commitment`: how long a request waits
    /// for its report, in seconds; None: no storage commitment.
    pub fn commitment_timeout_secs(&self) -> Option<u64> {
        match self {
            Target::Dicom {
                storage_commitment: true,
                commitment_timeout_secs,
                ..
            } => Some(*commitment_timeout_secs),
            _ => None,
        }
    }

    /// The bandwidth cap and its windows of the week.
    pub fn bandwidth(&self) -> (&Bandwidth, &[BandwidthWindow]) {
        match self {
            Target::Dicom {
                max_bandwidth,
                bandwidth_schedule,
                ..
            }
            | Target::ObjectStore {
                max_bandwidth,
                bandwidth_schedule,
                ..
            } => (max_bandwidth, bandwidth_schedule),
        }
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        match self {
            Target::Dicom { name, .. } | Target::ObjectStore { name, .. } => name,
        }
    }

    /// The delivery settings.
    pub fn delivery(&self) -> Delivery {
        match self {
            Target::Dicom {
                concurrency,
                timeout_secs,
                retry_initial_secs,
                retry_max_secs,
                refused_attempts,
                ..
            }
            | Target::ObjectStore {
                concurrency,
                timeout_secs,
                retry_initial_secs,
                retry_max_secs,
                refused_attempts,
                ..
            } => Delivery {
                concurrency: *concurrency,
                timeout_secs: *timeout_secs,
                retry_initial_secs: *retry_initial_secs,
                retry_max_secs: *retry_max_secs,
                refused_attempts: *refused_attempts,
            },
        }
    }
}

/// What is wrong with an object store URL ([`check_object_store_url`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ObjectStoreUrlError {
    /// Whitespace or control characters.
    #[error("{url:?} contains whitespace or control characters")]
    Whitespace { url: String },
    /// No `://`.
    #[error(
        "{url:?} is not a URL: write scheme://…, e.g. \"s3://bucket/prefix\" or \"file:///var/backup\""
    )]
    NotAUrl { url: String },
    /// A cloud URL without a bucket or container.
    #[error("{url:?} has no bucket or container name: write {scheme}://bucket/prefix")]
    NoBucket { url: String, scheme: String },
    /// A `file` URL without a usable directory.
    #[error(
        "{url:?}: a file URL needs a directory, absolute as in \"file:///var/backup\" (three slashes) or relative to the working directory as in \"file://./backup\""
    )]
    NoDirectory { url: String },
    /// A `file` URL with a `..` component.
    #[error("{url:?}: \"..\" is not allowed in a file URL")]
    DotDot { url: String },
    /// A scheme not among [`OBJECT_STORE_SCHEMES`].
    #[error(
        "{url:?} has the scheme {scheme:?}; supported schemes are {}",
        OBJECT_STORE_SCHEMES.join(", ")
    )]
    Scheme { url: String, scheme: String },
}

/// Checks an object store URL: `scheme://rest` with a scheme among
/// [`OBJECT_STORE_SCHEMES`]; cloud URLs need a bucket, `file` URLs an
/// absolute path.
pub(crate) fn check_object_store_url(url: &str) -> Result<(), ObjectStoreUrlError> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ObjectStoreUrlError::Whitespace {
            url: url.to_string(),
        });
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ObjectStoreUrlError::NotAUrl {
            url: url.to_string(),
        });
    };
    match scheme {
        "s3" | "gs" | "az" => {
            if rest.split('/').next().is_none_or(str::is_empty) {
                return Err(ObjectStoreUrlError::NoBucket {
                    url: url.to_string(),
                    scheme: scheme.to_string(),
                });
            }
            Ok(())
        }
        "file" => {
            let absolute = rest.starts_with('/') && rest.len() >= 2;
            let relative = rest.starts_with("./") && rest.len() >= 3;
            if !absolute && !relative {
                return Err(ObjectStoreUrlError::NoDirectory {
                    url: url.to_string(),
                });
            }
            if rest.split('/').any(|c| c == "..") {
                return Err(ObjectStoreUrlError::DotDot {
                    url: url.to_string(),
                });
            }
            Ok(())
        }
        other => Err(ObjectStoreUrlError::Scheme {
            url: url.to_string(),
            scheme: other.to_string(),
        }),
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
            "file://./pacs-mirror-data/backup",
        ] {
            assert_eq!(check_object_store_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/var/backup",
            "s3://",
            "s3:///prefix",
            "file://var/backup",
            "file://./",
            "file:///var/../etc",
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
            options: BTreeMap::new(),
            concurrency: 8,
            timeout_secs: 60,
            retry_initial_secs: 5,
            retry_max_secs: 3600,
            refused_attempts: 3,
            max_bandwidth: Default::default(),
            bandwidth_schedule: Vec::new(),
            live_window_secs: 300,
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
            max_bandwidth: Default::default(),
            bandwidth_schedule: Vec::new(),
            live_window_secs: 300,
            storage_commitment: false,
            commitment_timeout_secs: 600,
        };
        assert_eq!(t.name(), "mirror");
    }
}
