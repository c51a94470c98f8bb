//! The PROXY protocol (HAProxy, v1 text and v2 binary) on the public port: `--proxy-protocol`.
//!
//! A TCP load balancer that cannot add HTTP headers (HAProxy in TCP mode, AWS NLB, …) can
//! prepend one PROXY header naming the client's address to each connection. With
//! `--proxy-protocol`, every connection from a `--trusted-proxies` peer must start with one;
//! its source address then replaces the peer as the connection's address
//! (`ConnectInfo<SocketAddr>`), which the per-address limits and logs use. Connections from
//! any other peer are plain HTTP: a header from them is never read, so nobody can claim an
//! address by sending one. `LOCAL` (v2) and `UNKNOWN` (v1) headers, which proxies send for
//! their own health checks, keep the proxy's address.
//!
//! The header is read exactly, never past its end, so no request byte is consumed: v2 in
//! three reads (signature, length, body), v1 from one `peek` when the line has arrived whole,
//! else a byte at a time up to its 107-byte maximum.

use std::net::SocketAddr;
use std::sync::Arc;

use ppp::{v1, v2, HeaderResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::client_addr::TrustedProxies;
use crate::config::GatewayConfig;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line (RFC: 107 bytes with CRLF).
const V1_MAX_BYTES: usize = 107;
/// The longest v2 address block and TLVs accepted; proxies send a few dozen bytes.
const V2_MAX_PAYLOAD_BYTES: usize = 1024;

/// Whether connections carry PROXY headers, and from whom they are read.
#[derive(Debug, Clone, Default)]
pub struct ProxyProtocol {
    /// `Some` with `--proxy-protocol`: the peers that must send a header.
    from: Option<Arc<TrustedProxies>>,
}

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The peer closed or failed before the header was complete.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The connection from a trusted proxy does not start with a PROXY header.
    #[error("a connection from a trusted proxy must start with a PROXY header")]
    Missing,
    /// The header is longer than this gateway accepts.
    #[error("the PROXY header is longer than {V2_MAX_PAYLOAD_BYTES} bytes")]
    TooLong,
    /// The header does not parse.
    #[error("malformed PROXY v1 header: {0}")]
    MalformedV1(#[from] v1::BinaryParseError),
    /// The header does not parse.
    #[error("malformed PROXY v2 header: {0}")]
    MalformedV2(#[from] v2::ParseError),
}

impl ProxyProtocol {
    /// Off: every connection is plain HTTP.
    pub fn off() -> Self {
        ProxyProtocol { from: None }
    }

    /// As `--proxy-protocol` and `--trusted-proxies` say; registers the error counter at 0
    /// when on.
    pub fn from_config(config: &GatewayConfig) -> Self {
        if !config.proxy_protocol {
            return ProxyProtocol::off();
        }
        metrics::counter!("notify_proxy_header_errors_total").absolute(0);
        ProxyProtocol::from_trusted(TrustedProxies::new(config.trusted_proxies.clone()))
    }

    /// On for connections from `proxies`.
    pub fn from_trusted(proxies: TrustedProxies) -> Self {
        ProxyProtocol {
            from: Some(Arc::new(proxies)),
        }
    }

    /// Whether headers are read at all.
    pub fn is_on(&self) -> bool {
        self.from.is_some()
    }

    /// The connection's address: the client a trusted proxy names in its PROXY header, else
    /// `peer`. Reads the header (only from trusted proxies, only when on) off `stream`.
    pub async fn client_of(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
    ) -> Result<SocketAddr, ProxyHeaderError> {
        match &self.from {
            Some(proxies) if proxies.trusts(peer.ip().to_canonical()) => {
                Ok(read_header(stream).await?.unwrap_or(peer))
            }
            _ => Ok(peer),
        }
    }
}

/// Reads one PROXY header; `None` for `LOCAL`/`UNKNOWN`/unix-socket headers.
async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut start = [0u8; 12];
    stream.read_exact(&mut start[..6]).await?;
    if &start[..6] == b"PROXY " {
        return v1_source(&read_v1_line(stream, &start[..6]).await?);
    }
    if start[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyHeaderError::Missing);
    }
    stream.read_exact(&mut start[6..]).await?;
    if start != V2_SIGNATURE {
        return Err(ProxyHeaderError::Missing);
    }
    let mut fixed = [0u8; 4];
    stream.read_exact(&mut fixed).await?;
    let length = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if length > V2_MAX_PAYLOAD_BYTES {
        return Err(ProxyHeaderError::TooLong);
    }
    let mut header = Vec::with_capacity(16 + length);
    header.extend_from_slice(&start);
    header.extend_from_slice(&fixed);
    header.resize(16 + length, 0);
    stream.read_exact(&mut header[16..]).await?;
    v2_source(&header)
}

/// The rest of a v1 line after its `PROXY ` prefix, read exactly up to its CRLF.
async fn read_v1_line(stream: &mut TcpStream, prefix: &[u8]) -> Result<Vec<u8>, ProxyHeaderError> {
    let mut line = prefix.to_vec();
    let mut peeked = [0u8; V1_MAX_BYTES];
    let available = stream
        .peek(&mut peeked[..V1_MAX_BYTES - prefix.len()])
        .await?;
    if let Some(end) = peeked[..available]
        .windows(2)
        .position(|pair| pair == b"\r\n")
    {
        line.extend_from_slice(&peeked[..end + 2]);
        stream.read_exact(&mut peeked[..end + 2]).await?;
        return Ok(line);
    }
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX_BYTES {
            return Err(ProxyHeaderError::TooLong);
        }
        line.push(stream.read_u8().await?);
    }
    Ok(line)
}

fn v1_source(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    match HeaderResult::parse(line) {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(ip) => Some((ip.source_address, ip.source_port).into()),
            v1::Addresses::Tcp6(ip) => Some((ip.source_address, ip.source_port).into()),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V1(Err(error)) => Err(error.into()),
        HeaderResult::V2(Err(error)) => Err(error.into()),
        HeaderResult::V2(Ok(_)) => Err(ProxyHeaderError::Missing),
    }
}

fn v2_source(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = v2::Header::try_from(header)?;
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(ip) => Some((ip.source_address, ip.source_port).into()),
        v2::Addresses::IPv6(ip) => Some((ip.source_address, ip.source_port).into()),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_name_the_source() {
        let source = v1_source(b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 443\r\n").unwrap();
        assert_eq!(source, Some("198.51.100.7:4711".parse().unwrap()));
        let source = v1_source(b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n").unwrap();
        assert_eq!(source, Some("[2001:db8::7]:4711".parse().unwrap()));
        assert_eq!(v1_source(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(v1_source(b"PROXY TCP4 nonsense\r\n").is_err());
    }

    #[test]
    fn v2_headers_name_the_source_and_local_keeps_the_peer() {
        let mut proxy = V2_SIGNATURE.to_vec();
        proxy.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0x12, 0x67, 1, 187,
        ]);
        assert_eq!(
            v2_source(&proxy).unwrap(),
            Some("198.51.100.7:4711".parse().unwrap())
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(v2_source(&local).unwrap(), None);
    }
}
