//! The index (`[index]`): how much memory the index's engine may keep.

use serde::{Deserialize, Serialize};

/// Default for [`IndexConfig::cache_bytes`] (64 MiB).
pub const DEFAULT_INDEX_CACHE_BYTES: u64 = 67_108_864;
/// Smallest allowed [`IndexConfig::cache_bytes`] (1 MiB).
pub const MIN_INDEX_CACHE_BYTES: u64 = 1 << 20;

fn default_cache_bytes() -> u64 {
    DEFAULT_INDEX_CACHE_BYTES
}

/// The index (`[index]`). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Bound on the index's page cache, in bytes: what the agent keeps of
    /// the index in memory, whatever the size of the archive (the rest is
    /// read from disk, through the operating system's cache). At least
    /// 1048576 (1 MiB). Default: 67108864 (64 MiB).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            cache_bytes: DEFAULT_INDEX_CACHE_BYTES,
        }
    }
}
