//! What `--listen` and `--admin-listen` accept: `IP:PORT` (`127.0.0.1:8765`, `[::1]:8765`),
//! `HOST:PORT` (`localhost:8765`, resolved once at start; the first IPv4 address wins, else
//! the first address), and a bare `:PORT`, which means every IPv4 interface (`0.0.0.0`).
//!
//! IPv4 `0.0.0.0` rather than dual-stack `[::]` for the bare port: whether `[::]` also takes
//! IPv4 depends on the host's `net.ipv6.bindv6only`, and the admission and publish rules
//! that look at the listen address should not depend on a sysctl. Give `[::]:PORT` for IPv6.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Why a listen address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddressError {
    /// No port, or not `HOST:PORT` at all.
    #[error(
        "{0:?} is not HOST:PORT, IP:PORT or :PORT (e.g. 127.0.0.1:8765, localhost:8765, :8765)"
    )]
    Malformed(String),
    /// The host name does not resolve.
    #[error("the host in {input:?} does not resolve: {reason}")]
    Unresolved {
        /// The address as given.
        input: String,
        /// The resolver's answer.
        reason: String,
    },
}

/// Parses a listen address; see the module docs for the forms.
pub fn parse_listen_address(input: &str) -> Result<SocketAddr, ListenAddressError> {
    let input = input.trim();
    if let Ok(address) = input.parse::<SocketAddr>() {
        return Ok(address);
    }
    let malformed = || ListenAddressError::Malformed(input.to_owned());
    let (host, port) = input.rsplit_once(':').ok_or_else(malformed)?;
    let port: u16 = port.parse().map_err(|_| malformed())?;
    if host.is_empty() {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if host.contains(':') || host.contains('[') {
        return Err(malformed());
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|error| ListenAddressError::Unresolved {
            input: input.to_owned(),
            reason: error.to_string(),
        })?
        .collect();
    resolved
        .iter()
        .find(|address| address.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| ListenAddressError::Unresolved {
            input: input.to_owned(),
            reason: "no addresses".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_names_and_bare_ports() {
        let parse = |input| parse_listen_address(input).map(|address| address.to_string());
        assert_eq!(parse("127.0.0.1:8765").unwrap(), "127.0.0.1:8765");
        assert_eq!(parse("[::1]:8765").unwrap(), "[::1]:8765");
        assert_eq!(parse(":8765").unwrap(), "0.0.0.0:8765");
        assert_eq!(parse("localhost:8765").unwrap(), "127.0.0.1:8765");
        for bad in ["8765", "localhost", ":", "host:port", "::1:8765", ":99999"] {
            assert!(
                matches!(
                    parse_listen_address(bad),
                    Err(ListenAddressError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_listen_address("no-such-host.invalid:1"),
            Err(ListenAddressError::Unresolved { .. })
        ));
    }
}
