use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// What a process function's workers may reach on the network. Each worker has a network
/// namespace of its own either way: it never sees the host's loopback, its sockets or other
/// functions' workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkPolicy {
    /// Public addresses only: the host's loopback, link-local (cloud metadata), private and
    /// shared ranges are unreachable.
    #[default]
    Outbound,
    /// No network at all besides the worker's own loopback.
    None,
}

impl NetworkPolicy {
    pub fn parse(value: &str) -> Result<Self, ModelError> {
        match value {
            "outbound" => Ok(Self::Outbound),
            "none" => Ok(Self::None),
            _ => Err(ModelError::OutOfRange {
                field: "network",
                reason: format!("{value:?} is not one of: outbound, none"),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::None => "none",
        }
    }
}

impl fmt::Display for NetworkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// IPv4 ranges an `outbound` worker cannot reach: everything that is not a public address
/// (RFC 6890's special-purpose ranges that route anywhere). Loopback is among them: the
/// worker's own loopback is in its namespace's local table and keeps working, but a socket
/// bound to the outside interface would otherwise send 127.0.0.0/8 out to the host's.
pub const NON_PUBLIC_IPV4: [&str; 11] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "127.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Whether `address` lies in one of [`NON_PUBLIC_IPV4`]'s ranges.
pub fn is_non_public_ipv4(address: std::net::Ipv4Addr) -> bool {
    NON_PUBLIC_IPV4.iter().any(|range| {
        let (network, bits) = range.split_once('/').expect("ranges are CIDR");
        let network: std::net::Ipv4Addr = network.parse().expect("ranges are CIDR");
        let bits: u32 = bits.parse().expect("ranges are CIDR");
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        u32::from(address) & mask == u32::from(network) & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_policies_and_names_the_choices_otherwise() {
        assert_eq!(NetworkPolicy::parse("none").unwrap(), NetworkPolicy::None);
        assert_eq!(
            NetworkPolicy::parse("outbound").unwrap(),
            NetworkPolicy::Outbound
        );
        let err = NetworkPolicy::parse("host").unwrap_err().to_string();
        assert!(err.contains("outbound, none"), "{err}");
    }

    #[test]
    fn tells_public_addresses_from_the_rest() {
        for non_public in [
            "127.0.0.1",
            "10.9.8.7",
            "169.254.169.254",
            "239.1.2.3",
            "255.255.255.255",
            "172.31.0.1",
            "100.64.0.1",
        ] {
            assert!(
                is_non_public_ipv4(non_public.parse().unwrap()),
                "{non_public}"
            );
        }
        for public in ["1.1.1.1", "203.0.113.7", "172.32.0.1", "100.128.0.1"] {
            assert!(!is_non_public_ipv4(public.parse().unwrap()), "{public}");
        }
    }
}
