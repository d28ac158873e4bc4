use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// One origin a function may call, in Spin's form: `https://api.example.com`,
/// `http://127.0.0.1:9000`, `https://*.example.com`, `*://*:*`. A missing port means the
/// scheme's default (80, 443). A wasm function's requests are checked against it one by one;
/// a process function's connections by address and port (see [`OutboundRule::host`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OutboundRule {
    raw: String,
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`, not `example.com` itself.
    Subdomains(String),
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A rule's host as a network filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleHost<'a> {
    /// `*`: any host.
    Any,
    /// One name or address literal (an IPv6 literal without its brackets).
    Exact(&'a str),
    /// `*.domain`: the names under `domain`.
    Subdomains(&'a str),
}

impl OutboundRule {
    pub fn host(&self) -> RuleHost<'_> {
        match &self.host {
            HostPattern::Any => RuleHost::Any,
            HostPattern::Exact(host) => {
                RuleHost::Exact(host.trim_start_matches('[').trim_end_matches(']'))
            }
            HostPattern::Subdomains(suffix) => RuleHost::Subdomains(suffix),
        }
    }

    /// The port it allows; `None` for any port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Why a filter of addresses and ports (a process function's allow-list) cannot enforce
    /// this rule, if it cannot: a pattern of names has no addresses, and a worker's network
    /// has no IPv6 route.
    pub fn unenforceable_by_address(&self) -> Option<String> {
        match self.host() {
            RuleHost::Subdomains(domain) => Some(format!(
                "a process function's allow-list names hosts (its connections are filtered by address), not *.{domain}"
            )),
            RuleHost::Exact(host) if host.parse::<std::net::Ipv6Addr>().is_ok() => Some(
                "a process function's network has no IPv6 route; list an IPv4 address".to_owned(),
            ),
            _ => None,
        }
    }

    pub fn parse(value: &str) -> Result<Self, ModelError> {
        let invalid = |reason: &str| ModelError::InvalidOutbound {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = value.split_once("://").ok_or_else(|| {
            invalid("expected scheme://host[:port], such as https://api.example.com")
        })?;
        let scheme = match scheme {
            "*" => None,
            "http" | "https" => Some(scheme.to_owned()),
            _ => return Err(invalid("the scheme is http, https or *")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(invalid("an origin has no path, query or credentials"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal without a port: `[::1]`.
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (rest, None),
        };
        let host = host.to_ascii_lowercase();
        // A name's letters, digits, dots and hyphens, or an IPv6 literal in brackets.
        let plain = host.strip_prefix("*.").unwrap_or(&host);
        let well_formed = match plain.strip_prefix('[') {
            Some(literal) => literal
                .strip_suffix(']')
                .is_some_and(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok()),
            None => {
                plain == "*"
                    || plain
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }
        };
        if !well_formed {
            return Err(invalid(
                "the host is a name (letters, digits, dots, hyphens), an address, or *",
            ));
        }
        let host = match host.as_str() {
            "" => return Err(invalid("the host is missing")),
            "*" => HostPattern::Any,
            _ => match host.strip_prefix("*.") {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                    HostPattern::Subdomains(suffix.to_owned())
                }
                Some(_) => return Err(invalid("a wildcard host is *.domain")),
                None if host.contains('*') => return Err(invalid("a wildcard host is *.domain")),
                None => HostPattern::Exact(host),
            },
        };
        let port = match port {
            None => match scheme.as_deref().and_then(default_port) {
                Some(port) => Some(port),
                None => return Err(invalid("give a port (or *) when the scheme is *")),
            },
            Some("*") => None,
            Some(port) => Some(
                port.parse()
                    .map_err(|_| invalid("the port is a number or *"))?,
            ),
        };
        Ok(Self {
            raw: value.to_owned(),
            scheme,
            host,
            port,
        })
    }

    /// Whether a connection to `scheme://host:port` is allowed by this rule.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.port.is_none_or(|p| p == port)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::Exact(exact) => {
                    exact.trim_start_matches('[').trim_end_matches(']') == host
                }
                HostPattern::Subdomains(suffix) => host
                    .strip_suffix(suffix.as_str())
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            }
    }
}

impl TryFrom<String> for OutboundRule {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<OutboundRule> for String {
    fn from(rule: OutboundRule) -> Self {
        rule.raw
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(value: &str) -> OutboundRule {
        OutboundRule::parse(value).unwrap()
    }

    #[test]
    fn matches_spin_style_origins() {
        let api = rule("https://api.example.com");
        assert!(api.allows("https", "api.example.com", 443));
        assert!(api.allows("https", "API.example.com", 443));
        assert!(!api.allows("http", "api.example.com", 80));
        assert!(!api.allows("https", "api.example.com", 8443));
        assert!(!api.allows("https", "api.example.com.evil.net", 443));

        let local = rule("http://127.0.0.1:9000");
        assert!(local.allows("http", "127.0.0.1", 9000));
        assert!(!local.allows("http", "127.0.0.1", 9001));
        assert!(!local.allows("http", "localhost", 9000));

        let wildcard = rule("https://*.example.com");
        assert!(wildcard.allows("https", "a.example.com", 443));
        assert!(wildcard.allows("https", "a.b.example.com", 443));
        assert!(!wildcard.allows("https", "example.com", 443));
        assert!(!wildcard.allows("https", "badexample.com", 443));

        let anything = rule("*://*:*");
        assert!(anything.allows("http", "10.0.0.1", 1234));
    }

    #[test]
    fn refuses_what_is_not_an_origin() {
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://ex*ample.com",
            "https://*.",
            "https://example.com:port",
            "*://example.com",
            "https://",
            "https://a b.com",
            "https://x.com;flush",
            "https://[zz]:80",
            "https://ex}ample.com",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }
}
