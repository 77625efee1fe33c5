//! The spool (`[spool]`): limits on the objects held on disk between
//! reception and replication.

use serde::{Deserialize, Serialize};

/// Default for [`SpoolConfig::min_free_bytes`] (256 MiB).
pub const DEFAULT_MIN_FREE_BYTES: u64 = 268_435_456;
/// Smallest allowed [`SpoolConfig::max_bytes`] (1 MiB).
pub const MIN_SPOOL_MAX_BYTES: u64 = 1 << 20;
/// Smallest allowed [`SpoolConfig::max_object_bytes`] (1 KiB).
pub const MIN_MAX_OBJECT_BYTES: u64 = 1 << 10;

fn default_min_free_bytes() -> u64 {
    DEFAULT_MIN_FREE_BYTES
}

/// Limits on the spool (`[spool]`). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Quota on the total bytes of spooled objects; when accepting an object
    /// would exceed it, the store is refused (status A700, out of
    /// resources). At least 1048576 (1 MiB). Absent (the default): no quota.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Refuse stores (status A700) when the free space of the filesystem
    /// holding `data_dir` would drop below this many bytes.
    /// Default: 268435456 (256 MiB).
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Largest single object accepted, in bytes; larger ones are refused.
    /// At least 1024 (1 KiB). Absent (the default): no limit.
    #[serde(default)]
    pub max_object_bytes: Option<u64>,
    /// Remove an object's spool file once every replication target has had
    /// it delivered for this many seconds (its index rows stay; an identical
    /// re-send brings it back). Never with no targets. Absent (the default):
    /// keep every object.
    #[serde(default)]
    pub retain_after_delivery_secs: Option<u64>,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            max_bytes: None,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            max_object_bytes: None,
            retain_after_delivery_secs: None,
        }
    }
}
