//! The admin HTTP endpoint (`[admin]`): status and metrics of the running
//! agent, on a loopback address only.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[admin]`: where the running agent serves `/status` (JSON) and
/// `/metrics` (Prometheus text). Absent: no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback address and port to listen on, e.g. `"127.0.0.1:11180"`.
    /// Only loopback addresses are accepted: the endpoint has no
    /// authentication.
    pub listen: SocketAddr,
}
