//! Host names and addresses: loopback detection, listener formatting and
//! the parsing of remote AE source addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// `true` if `hostname` can only ever be reached from this machine:
/// an IPv4 address in `127.0.0.0/8`, the IPv6 loopback `::1` (also written
/// `[::1]`, or IPv4-mapped `::ffff:127.x.x.x`), or the name `localhost`
/// (any case, optionally with a trailing dot).
///
/// The wildcard addresses `0.0.0.0` and `::` are **not** loopback: a
/// listener bound to them is reachable from the network.
pub fn is_loopback_host(hostname: &str) -> bool {
    let h = hostname.trim();
    if h.eq_ignore_ascii_case("localhost") || h.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let h = h
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(h);
    if let Ok(v4) = h.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    if let Ok(v6) = h.parse::<Ipv6Addr>() {
        return v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
    }
    false
}

/// `true` if `hostname` is a wildcard ("any address") literal, `0.0.0.0` or `::`.
pub(crate) fn is_wildcard_host(hostname: &str) -> bool {
    hostname
        .trim()
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// `host:port`, with IPv6 literals in brackets: `0.0.0.0:11112`, `[::]:11112`.
pub(crate) fn listener_display(hostname: &str, port: u16) -> String {
    if hostname.contains(':') {
        format!("[{hostname}]:{port}")
    } else {
        format!("{hostname}:{port}")
    }
}

/// What is wrong with the spelling of a hostname ([`check_hostname`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostnameError {
    /// Empty or blank.
    #[error("the hostname is empty; write an IP address or a DNS name")]
    Empty,
    /// Whitespace or control characters.
    #[error("{0:?} contains whitespace or control characters")]
    Whitespace(String),
    /// An IPv6 address in brackets.
    #[error("{0:?}: write IPv6 addresses without brackets, e.g. \"::1\"")]
    Brackets(String),
    /// A colon in something that is not an IPv6 address (`host:port`).
    #[error("{0:?} contains ':' but is not an IPv6 address; put the port number in `port`")]
    Colon(String),
}

/// Checks the spelling of a connection's hostname; pure, no DNS.
pub(crate) fn check_hostname(hostname: &str) -> Result<(), HostnameError> {
    if hostname.trim().is_empty() {
        return Err(HostnameError::Empty);
    }
    if hostname
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(HostnameError::Whitespace(hostname.to_string()));
    }
    if hostname.starts_with('[') || hostname.ends_with(']') {
        return Err(HostnameError::Brackets(hostname.to_string()));
    }
    if hostname.contains(':') && hostname.parse::<Ipv6Addr>().is_err() {
        return Err(HostnameError::Colon(hostname.to_string()));
    }
    Ok(())
}

/// A source address that is neither an IP address nor a CIDR network
/// ([`parse_source_address`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid source address {address:?}: expected an IP address such as \"192.0.2.10\" or a CIDR network such as \"192.0.2.0/24\" (\"0.0.0.0/0\" allows any IPv4 address)"
)]
pub struct SourceAddressError {
    /// The address as written.
    pub address: String,
}

/// Parses a source address: a CIDR network (`10.1.0.0/16`, `2001:db8::/32`)
/// or a bare IP address (`10.0.0.5`), which means that single address
/// (`/32` for IPv4, `/128` for IPv6).
pub fn parse_source_address(s: &str) -> Result<IpNet, SourceAddressError> {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(SourceAddressError {
        address: s.to_string(),
    })
}

/// One element of `source_addresses`, deserialized from a string so that a
/// parse error points at the offending element.
struct SourceAddress(IpNet);

impl<'de> Deserialize<'de> for SourceAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_source_address(&s)
            .map(SourceAddress)
            .map_err(serde::de::Error::custom)
    }
}

/// `deserialize_with` helper for `source_addresses`: accepts CIDR networks
/// and bare IP addresses.
pub(crate) fn deserialize_source_addresses<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<IpNet>, D::Error> {
    let list = Vec::<SourceAddress>::deserialize(d)?;
    Ok(list.into_iter().map(|a| a.0).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "127.255.255.255",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LOCALHOST",
            "localhost.",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn non_loopback_hosts() {
        for h in [
            "0.0.0.0",
            "::",
            "192.0.2.1",
            "128.0.0.1",
            "10.0.0.1",
            "pacs.example.org",
            "localhost.example.org",
            "mylocalhost",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn source_address_parsing() {
        assert_eq!(
            parse_source_address("10.0.0.5"),
            Ok("10.0.0.5/32".parse::<IpNet>().unwrap())
        );
        assert_eq!(
            parse_source_address("2001:db8::5"),
            Ok("2001:db8::5/128".parse::<IpNet>().unwrap())
        );
        assert_eq!(
            parse_source_address("10.1.0.0/16"),
            Ok("10.1.0.0/16".parse::<IpNet>().unwrap())
        );
        assert!(parse_source_address("10.0.0.300").is_err());
        assert!(parse_source_address("pacs.example.org").is_err());
        assert!(parse_source_address("10.0.0.0/33").is_err());
    }

    #[test]
    fn hostname_spelling() {
        assert!(check_hostname("0.0.0.0").is_ok());
        assert!(check_hostname("::").is_ok());
        assert!(check_hostname("pacs.example.org").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("[::1]").is_err());
        assert!(check_hostname("pacs:104").is_err());
        assert!(check_hostname("pacs example").is_err());
    }

    #[test]
    fn listener_formatting() {
        assert_eq!(listener_display("0.0.0.0", 11112), "0.0.0.0:11112");
        assert_eq!(listener_display("::", 11112), "[::]:11112");
    }
}
