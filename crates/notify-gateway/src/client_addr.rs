//! Who the client is: the TCP peer, or — only when that peer is a trusted proxy — the address
//! the proxy names in `Forwarded` (RFC 7239) or `X-Forwarded-For`.
//!
//! Forwarding headers are never trusted by default: anyone can send them. With
//! `--trusted-proxies CIDR,…` the gateway walks the forwarding chain from the right (the hop
//! nearest to us) and takes the first address that is not itself a trusted proxy, so a client
//! cannot choose its own address by prepending entries. `Forwarded` wins when both headers
//! are present. A hop that is not an IP address (`unknown`, an obfuscated `_name`, garbage)
//! ends the walk: the client is then the nearest trusted hop, the last address we can vouch
//! for. The resolved address is what the per-address limits and logs use.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

/// A `--trusted-proxies` entry that is neither a CIDR block nor an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a CIDR block (10.0.0.0/8, fd00::/8) or an IP address")]
pub struct BadProxyNetwork(pub String);

/// Parses one `--trusted-proxies` entry: a CIDR block, or one address (a /32 or /128).
pub fn parse_proxy_network(text: &str) -> Result<IpNet, BadProxyNetwork> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|network| network.trunc())
        .map_err(|_| BadProxyNetwork(text.to_owned()))
}

impl TrustedProxies {
    /// Trusts the given networks (none: forwarding headers are ignored).
    pub fn new(networks: Vec<IpNet>) -> Self {
        TrustedProxies { networks }
    }

    /// The networks, as configured.
    pub fn networks(&self) -> &[IpNet] {
        &self.networks
    }

    /// Whether `address` is one of the trusted proxies.
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.networks
            .iter()
            .any(|network| network.contains(&address))
    }

    /// The client's address for a request from `peer` carrying `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.ip().to_canonical();
        if !self.trusts(client) {
            return client;
        }
        let hops = forwarded_hops(headers);
        for hop in hops.iter().rev() {
            let Some(address) = parse_hop(hop) else {
                return client;
            };
            client = address;
            if !self.trusts(address) {
                return address;
            }
        }
        client
    }
}

/// The forwarding chain, client first: the `for=` parameters of every `Forwarded` header line,
/// or, when there is none, the entries of every `X-Forwarded-For` line.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let forwarded: Vec<String> = header_items(headers, header::FORWARDED)
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim().trim_matches('"').to_owned())
            })
        })
        .collect();
    if !forwarded.is_empty() || headers.contains_key(header::FORWARDED) {
        return forwarded;
    }
    header_items(headers, "x-forwarded-for")
        .map(str::to_owned)
        .collect()
}

/// The comma-separated items of every line of header `name`, in order. A line that is not
/// visible ASCII yields one item that parses as no address.
fn header_items(
    headers: &HeaderMap,
    name: impl header::AsHeaderName,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
}

/// One hop: `203.0.113.9`, `203.0.113.9:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let address = if let Some(rest) = hop.strip_prefix('[') {
        rest.split_once(']')?.0.parse().ok()?
    } else if let Ok(address) = hop.parse::<IpAddr>() {
        address
    } else {
        hop.parse::<SocketAddr>().ok()?.ip()
    };
    Some(IpAddr::to_canonical(&address))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn proxies(networks: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            networks
                .iter()
                .map(|text| parse_proxy_network(text).unwrap())
                .collect(),
        )
    }

    const PROXY: &str = "10.0.0.5:40000";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn headers_are_ignored_from_untrusted_peers_and_by_default() {
        let spoofed = headers(&[("x-forwarded-for", "198.51.100.7")]);
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(proxies(&[]).client(peer, &spoofed), ip("203.0.113.9"));
        assert_eq!(
            proxies(&["10.0.0.0/8"]).client(peer, &spoofed),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.1"]);
        let peer = PROXY.parse().unwrap();
        let client = |pairs: &[(&'static str, &str)]| trusted.client(peer, &headers(pairs));
        assert_eq!(
            client(&[("x-forwarded-for", "198.51.100.7")]),
            ip("198.51.100.7")
        );
        // The client prepended a lie; the proxies appended what they saw.
        assert_eq!(
            client(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 192.0.2.1")]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "198.51.100.7:999")
            ]),
            ip("198.51.100.7")
        );
        assert_eq!(
            client(&[(
                "forwarded",
                r#"for=1.2.3.4, for="[2001:db8::7]:4711";proto=https"#
            )]),
            ip("2001:db8::7")
        );
        // Forwarded wins over X-Forwarded-For.
        assert_eq!(
            client(&[
                ("forwarded", "for=198.51.100.8"),
                ("x-forwarded-for", "198.51.100.9")
            ]),
            ip("198.51.100.8")
        );
        // Only proxies in the chain: the leftmost one.
        assert_eq!(client(&[("x-forwarded-for", "10.1.1.1")]), ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(client(&[]), ip("10.0.0.5"));
        // An unusable hop stops the walk at the nearest trusted address.
        assert_eq!(
            client(&[("x-forwarded-for", "198.51.100.7, unknown")]),
            ip("10.0.0.5")
        );
        assert_eq!(client(&[("forwarded", "for=_hidden")]), ip("10.0.0.5"));
    }

    #[test]
    fn proxy_networks_parse_strictly() {
        assert_eq!(
            parse_proxy_network("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_proxy_network("::1").unwrap().to_string(), "::1/128");
        assert!(parse_proxy_network("10.0.0.0/33").is_err());
        assert!(parse_proxy_network("proxy.internal").is_err());
    }
}
