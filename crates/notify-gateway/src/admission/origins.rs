//! Which web pages may open WebSockets: `--allowed-origins`.
//!
//! Entries are exact origins (`https://www.example.com`, `http://localhost:8080`) or
//! subdomain patterns (`https://*.example.com`). Matching is scheme-aware: the scheme and
//! the port must match exactly (the default port of the scheme may be written or left out).
//! A pattern matches every subdomain at any depth but **not the apex**: `https://*.example.com`
//! allows `https://www.example.com` and `https://a.b.example.com`, not `https://example.com`
//! (list it too when wanted), so a pattern never widens to a whole registrable domain by
//! accident. An empty list allows every origin.

use std::fmt;

/// One allowed origin or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// This host only.
    Exact(String),
    /// Any host ending in `.{suffix}`.
    SubdomainsOf(String),
}

/// Why an `--allowed-origins` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not an origin or pattern: {problem} (write https://www.example.com or https://*.example.com)")]
pub struct BadOriginPattern {
    /// The entry as given.
    pub entry: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl OriginPattern {
    /// Parses one `--allowed-origins` entry.
    pub fn parse(entry: &str) -> Result<Self, BadOriginPattern> {
        let bad = |problem| BadOriginPattern {
            entry: entry.to_owned(),
            problem,
        };
        let origin =
            Origin::parse(entry.trim()).ok_or_else(|| bad("expected scheme://host[:port]"))?;
        let host = match origin.host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostPattern::SubdomainsOf(suffix.to_owned())
            }
            Some(_) => return Err(bad("a pattern is *. followed by a domain")),
            None if origin.host.contains('*') => {
                return Err(bad(
                    "* is only allowed as the first label, as in *.example.com",
                ))
            }
            None => HostPattern::Exact(origin.host),
        };
        Ok(OriginPattern {
            scheme: origin.scheme,
            host,
            port: origin.port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        self.scheme == origin.scheme
            && self.port == origin.port
            && match &self.host {
                HostPattern::Exact(host) => *host == origin.host,
                HostPattern::SubdomainsOf(suffix) => origin
                    .host
                    .strip_suffix(suffix.as_str())
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty()),
            }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Exact(host) => write!(formatter, "{host}")?,
            HostPattern::SubdomainsOf(suffix) => write!(formatter, "*.{suffix}")?,
        }
        if Some(self.port) != default_port(&self.scheme) {
            write!(formatter, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// A parsed `Origin` header value: lowercase scheme and host, explicit port.
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if scheme.is_empty() || authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let host = &authority[..inside.len() + 2];
            let port = match after {
                "" => default_port(&scheme)?,
                after => after.strip_prefix(':')?.parse().ok()?,
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, default_port(&scheme)?),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The allowed origins; empty allows all.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    patterns: Vec<OriginPattern>,
}

impl AllowedOrigins {
    /// Allows the listed origins (none: all).
    pub fn new(patterns: Vec<OriginPattern>) -> Self {
        AllowedOrigins { patterns }
    }

    /// Whether every origin is allowed.
    pub fn allows_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The configured entries, as written back out.
    pub fn patterns(&self) -> &[OriginPattern] {
        &self.patterns
    }

    /// Whether a page of `origin` (the `Origin` header's value) may connect. `null` and
    /// unparsable values are allowed only when every origin is.
    pub fn allows(&self, origin: &[u8]) -> bool {
        if self.allows_all() {
            return true;
        }
        let Some(origin) = std::str::from_utf8(origin).ok().and_then(Origin::parse) else {
            return false;
        };
        self.patterns.iter().any(|pattern| pattern.matches(&origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedOrigins {
        AllowedOrigins::new(
            entries
                .iter()
                .map(|entry| OriginPattern::parse(entry).unwrap())
                .collect(),
        )
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let origins = allowed(&["https://www.example.com", "http://localhost:8080"]);
        for origin in [
            "https://www.example.com",
            "HTTPS://WWW.Example.com",
            "https://www.example.com:443",
            "http://localhost:8080",
        ] {
            assert!(origins.allows(origin.as_bytes()), "{origin}");
        }
        for origin in [
            "http://www.example.com",
            "https://www.example.com:8443",
            "https://example.com",
            "https://www.example.com.evil.example",
            "http://localhost",
            "null",
            "",
            "https://",
        ] {
            assert!(!origins.allows(origin.as_bytes()), "{origin}");
        }
    }

    #[test]
    fn patterns_match_subdomains_not_the_apex() {
        let origins = allowed(&["https://*.example.com"]);
        assert!(origins.allows(b"https://www.example.com"));
        assert!(origins.allows(b"https://a.b.example.com"));
        assert!(!origins.allows(b"https://example.com"));
        assert!(!origins.allows(b"https://evilexample.com"));
        assert!(!origins.allows(b"https://.example.com"));
        assert!(!origins.allows(b"http://www.example.com"));
        assert!(!origins.allows(b"https://www.example.com.evil.example"));
    }

    #[test]
    fn ipv6_origins_and_display() {
        let origins = allowed(&["http://[::1]:8765"]);
        assert!(origins.allows(b"http://[::1]:8765"));
        assert!(!origins.allows(b"http://[::1]"));
        for entry in [
            "https://*.example.com",
            "http://[::1]:8765",
            "https://a.example",
        ] {
            assert_eq!(OriginPattern::parse(entry).unwrap().to_string(), entry);
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        for entry in [
            "*.example.com",
            "example.com",
            "https://*",
            "https://www.*.com",
            "https://a.example/path",
            "ftp://a.example",
        ] {
            assert!(OriginPattern::parse(entry).is_err(), "{entry}");
        }
        assert!(allowed(&[]).allows(b"https://anything.example"));
    }
}
