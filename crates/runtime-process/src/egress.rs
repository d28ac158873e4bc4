//! A process function's allow-list (`--allow-outbound`, the wasm tier's origins) as rules of
//! the worker's own network namespace. A wasm guest's requests are checked one by one; a
//! process function opens sockets, so here a rule means "connections to this host's addresses
//! on this port": names are resolved when the worker is specialized, and an nftables filter in
//! the namespace lets out only those addresses and ports (and DNS to slirp4netns's resolver).
//! Everything else is refused at once (a TCP reset, an ICMP error), not left to time out.
//!
//! A listed private address or address of the host gets a route of its own past the
//! `unreachable` ranges of the `outbound` policy. Only an address written in the rule can open
//! such an address: a name's non-public addresses are left out, so that whoever answers for
//! the name cannot point it at the host or the cloud's metadata service. A listed loopback
//! address means the host's loopback, as it does for a wasm guest: connections to it are
//! translated to slirp4netns's gateway, which then forwards them to the host's 127.0.0.1 (the
//! link is restarted with host loopback allowed; the filter still lets only the listed ports
//! through).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use gust_model::{OutboundRule, RuleHost, is_non_public_ipv4};

/// slirp4netns's network inside the namespace (the gateway, the resolver, broadcast).
const LINK: &str = "10.0.2.0/24";
/// slirp4netns's gateway: the host, seen from the namespace.
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// slirp4netns's resolver inside the namespace.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// How long resolving one listed name may take.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(3);

/// Where one rule lets connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// `None`: any address the `outbound` policy reaches (public ones).
    pub address: Option<Ipv4Addr>,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl Destination {
    fn is_host_loopback(&self) -> bool {
        self.address.is_some_and(|a| a.is_loopback())
    }
}

/// The destinations of `rules`, names resolved now through the host's resolver; of a name's
/// addresses only public ones that are not `host_addresses` count (`localhost` is 127.0.0.1).
pub async fn resolve(
    rules: &[OutboundRule],
    host_addresses: &[Ipv4Addr],
) -> Result<Vec<Destination>, String> {
    let mut destinations = Vec::new();
    for rule in rules {
        if let Some(why) = rule.unenforceable_by_address() {
            return Err(format!("{rule}: {why}"));
        }
        let port = rule.port();
        match rule.host() {
            RuleHost::Any => destinations.push(Destination {
                address: None,
                port,
            }),
            // Refused just above.
            RuleHost::Subdomains(_) => {}
            RuleHost::Exact(host) => {
                let addresses = addresses_of(host, host_addresses)
                    .await
                    .map_err(|e| format!("{rule}: {e}"))?;
                for address in addresses {
                    destinations.push(Destination {
                        address: Some(address),
                        port,
                    });
                }
            }
        }
    }
    destinations.sort_by_key(|d| (d.address, d.port));
    destinations.dedup();
    Ok(destinations)
}

async fn addresses_of(host: &str, host_addresses: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>, String> {
    if host == "localhost" {
        return Ok(vec![Ipv4Addr::LOCALHOST]);
    }
    if let Ok(address) = host.parse::<Ipv4Addr>() {
        return Ok(vec![address]);
    }
    let found = tokio::time::timeout(RESOLVE_DEADLINE, tokio::net::lookup_host((host, 0)))
        .await
        .map_err(|_| format!("{host} did not resolve within {RESOLVE_DEADLINE:?}"))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let mut addresses: Vec<Ipv4Addr> = found
        .filter_map(|socket| match socket.ip() {
            IpAddr::V4(address) => Some(address),
            IpAddr::V6(_) => None,
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    if addresses.is_empty() {
        return Err(format!("{host} has no IPv4 address"));
    }
    openable_by_name(host, addresses, host_addresses)
}

/// Of the addresses `host` resolved to, those a name may open: public ones, not the host's.
fn openable_by_name(
    host: &str,
    addresses: Vec<Ipv4Addr>,
    host_addresses: &[Ipv4Addr],
) -> Result<Vec<Ipv4Addr>, String> {
    let (public, other): (Vec<Ipv4Addr>, Vec<Ipv4Addr>) = addresses
        .into_iter()
        .partition(|a| !is_non_public_ipv4(*a) && !host_addresses.contains(a));
    if public.is_empty() {
        return Err(format!(
            "{host} resolves only to addresses a name cannot open ({}): list the address itself",
            other
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(public)
}

/// Whether the link must reach the host's loopback.
pub fn needs_host_loopback(destinations: &[Destination]) -> bool {
    destinations.iter().any(Destination::is_host_loopback)
}

/// Destinations no worker may send to, whatever its policy: multicast and broadcast (which a
/// socket bound to the link's interface sends past the routes; slirp4netns would deliver them to
/// the host or its network).
const NEVER: &str = "{ 224.0.0.0/4, 240.0.0.0/4, 10.0.2.255 }";

/// The filter every connected worker gets before its link exists.
pub fn base_ruleset() -> String {
    format!(
        "table inet gust_base {{\n  chain out {{\n    type filter hook output priority filter;\n    ip daddr {NEVER} drop\n  }}\n}}\n"
    )
}

/// `port` as an nftables match on TCP and UDP; empty for any port.
fn port_match(port: Option<u16>) -> String {
    match port {
        Some(port) => format!("meta l4proto {{ tcp, udp }} th dport {port} "),
        None => String::new(),
    }
}

/// The namespace's nftables ruleset (`nft -f -`): only what `destinations` allow leaves.
pub fn ruleset(destinations: &[Destination]) -> String {
    let mut filter = vec![
        // The namespace's own loopback (by interface: a socket bound to the link could
        // otherwise send loopback addresses out to a link that reaches the host's).
        "oifname \"lo\" accept".to_owned(),
        "ct state established,related accept".to_owned(),
        format!("ip daddr {RESOLVER} meta l4proto {{ tcp, udp }} th dport 53 accept"),
        // What the translation below sent to the host's loopback: listed ports only.
        "ct status dnat accept".to_owned(),
    ];
    let mut translate = Vec::new();
    for destination in destinations {
        let ports = port_match(destination.port);
        match destination.address {
            Some(address) if address.is_loopback() => {
                translate.push(format!("ip daddr {address} {ports}dnat ip to {GATEWAY}"));
            }
            Some(address) => filter.push(format!("ip daddr {address} {ports}accept")),
            // Any public address: the routes keep the others unreachable, and the link's own
            // addresses (the gateway is the host's loopback when a loopback address is listed)
            // are excluded.
            None => filter.push(format!("ip daddr != {LINK} {ports}accept")),
        }
    }
    filter.push("meta l4proto tcp reject with tcp reset".to_owned());
    filter.push("reject".to_owned());
    let mut script = String::from("table inet gust {\n");
    script.push_str("  chain out {\n    type filter hook output priority filter; policy drop;\n");
    for rule in filter {
        script.push_str(&format!("    {rule}\n"));
    }
    script.push_str("  }\n");
    if !translate.is_empty() {
        script.push_str("  chain to_host {\n    type nat hook output priority -100;\n");
        for rule in translate {
            script.push_str(&format!("    {rule}\n"));
        }
        script.push_str("  }\n");
        // The translated packets leave with a loopback source; give them the namespace's own.
        script.push_str(
            "  chain from_namespace {\n    type nat hook postrouting priority 100;\n    oifname \"tap0\" ip saddr 127.0.0.0/8 masquerade\n  }\n",
        );
    }
    script.push_str("}\n");
    script
}

/// `ip -batch` commands giving each listed address outside loopback a route through the link,
/// past the `unreachable` ranges (a private address, the host's own).
pub fn routes(destinations: &[Destination]) -> String {
    destinations
        .iter()
        .filter_map(|d| d.address.filter(|a| !a.is_loopback()))
        .map(|address| format!("route replace {address}/32 via {GATEWAY} dev tap0\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(values: &[&str]) -> Vec<OutboundRule> {
        values
            .iter()
            .map(|v| OutboundRule::parse(v).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn literals_keep_their_ports_and_subdomains_are_refused() {
        let found = resolve(
            &rules(&[
                "https://203.0.113.7",
                "*://10.1.2.3:*",
                "http://localhost:9000",
            ]),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            found,
            vec![
                Destination {
                    address: Some(Ipv4Addr::new(10, 1, 2, 3)),
                    port: None
                },
                Destination {
                    address: Some(Ipv4Addr::new(127, 0, 0, 1)),
                    port: Some(9000)
                },
                Destination {
                    address: Some(Ipv4Addr::new(203, 0, 113, 7)),
                    port: Some(443)
                },
            ]
        );
        assert!(needs_host_loopback(&found));
        let err = resolve(&rules(&["https://*.example.com"]), &[])
            .await
            .unwrap_err();
        assert!(err.contains("names hosts"), "{err}");
        let err = resolve(&rules(&["http://[2001:db8::1]:80"]), &[])
            .await
            .unwrap_err();
        assert!(err.contains("IPv6"), "{err}");
    }

    #[test]
    fn a_name_opens_only_public_addresses_that_are_not_the_hosts() {
        let host = Ipv4Addr::new(198, 51, 100, 1);
        let public = Ipv4Addr::new(203, 0, 113, 7);
        let found = openable_by_name(
            "api.example.com",
            vec![public, Ipv4Addr::new(169, 254, 169, 254), host],
            &[host],
        )
        .unwrap();
        assert_eq!(found, vec![public]);
        let err = openable_by_name(
            "rebound.example.com",
            vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 5)],
            &[],
        )
        .unwrap_err();
        assert!(err.contains("127.0.0.1, 10.0.0.5"), "{err}");
        assert!(err.contains("list the address itself"), "{err}");
    }

    #[test]
    fn the_ruleset_lets_out_only_what_is_listed() {
        let destinations = [
            Destination {
                address: Some(Ipv4Addr::new(10, 1, 2, 3)),
                port: None,
            },
            Destination {
                address: Some(Ipv4Addr::new(127, 0, 0, 1)),
                port: Some(6379),
            },
            Destination {
                address: None,
                port: Some(443),
            },
        ];
        let script = ruleset(&destinations);
        assert!(script.contains("policy drop;"), "{script}");
        assert!(
            script.contains("    ip daddr 10.1.2.3 accept\n"),
            "{script}"
        );
        assert!(
            script.contains(
                "ip daddr 127.0.0.1 meta l4proto { tcp, udp } th dport 6379 dnat ip to 10.0.2.2"
            ),
            "{script}"
        );
        assert!(
            script.contains(
                "    ip daddr != 10.0.2.0/24 meta l4proto { tcp, udp } th dport 443 accept\n"
            ),
            "{script}"
        );
        assert!(script.contains("masquerade"), "{script}");
        assert_eq!(
            routes(&destinations),
            "route replace 10.1.2.3/32 via 10.0.2.2 dev tap0\n"
        );
        let plain = ruleset(&destinations[..1]);
        assert!(!plain.contains("nat hook"), "{plain}");
    }
}
