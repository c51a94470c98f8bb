//! [`SentinelUrl`]: the `redis+sentinel://` URL that names a Sentinel-managed primary, parsed.
//!
//! ```text
//! redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/MASTER_NAME[/DB][?sentinel_username=…&sentinel_password=…]
//! redis+sentinels://…   (TLS to the sentinels and to the data nodes)
//! ```
//!
//! The userinfo is the **data nodes'** credentials, exactly as in `redis://` (the primary and
//! its replicas share them); the sentinels' own (`requirepass`/ACL in `sentinel.conf`) are the
//! `sentinel_username`/`sentinel_password` query parameters, and without them the sentinels
//! are asked without authentication. A host without a port means 26379, Sentinel's port.
//! Credentials are percent-decoded, as redis-rs does for `redis://`. The redis crate parses no
//! multi-host URL, hence this module; it owns only the spelling, not connecting.

use percent_encoding::percent_decode_str;

/// `redis+sentinel://`: plain TCP.
pub const SCHEME: &str = "redis+sentinel";
/// `redis+sentinels://`: TLS to the sentinels and the data nodes.
pub const TLS_SCHEME: &str = "redis+sentinels";
/// Sentinel's default port.
pub const DEFAULT_PORT: u16 = 26379;

/// Why a `redis+sentinel://` URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SentinelUrlError {
    /// No sentinel address between `://` and the master name.
    #[error("no sentinel host:port before the master name")]
    NoSentinels,
    /// A sentinel address whose port is not a number in 1..=65535.
    #[error("bad sentinel address {0:?} (expected host:port)")]
    BadAddress(String),
    /// No `/MASTER_NAME` after the sentinels.
    #[error("no master name (…/MASTER_NAME after the sentinels)")]
    NoMasterName,
    /// The part after the master name is not a database number.
    #[error("bad database {0:?} after the master name (expected a number)")]
    BadDatabase(String),
    /// A query parameter other than `sentinel_username`/`sentinel_password`.
    #[error("unknown parameter {0:?} (expected sentinel_username or sentinel_password)")]
    UnknownParameter(String),
    /// Credentials that are not UTF-8 once percent-decoded.
    #[error("credentials are not UTF-8 once percent-decoded")]
    BadEncoding,
}

/// Credentials for one kind of node.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// ACL user name, if any.
    pub username: Option<String>,
    /// Password, if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// The sentinels, in the order given (asked in this order).
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
    /// Database number on the data nodes.
    pub db: i64,
    /// TLS to every node (`redis+sentinels://`).
    pub tls: bool,
    /// For the primary (the URL's userinfo).
    pub data: Credentials,
    /// For the sentinels (query parameters).
    pub sentinel: Credentials,
}

impl SentinelUrl {
    /// Whether `url` names sentinels rather than one server.
    pub fn is_sentinel(url: &str) -> bool {
        url.split_once("://").is_some_and(|(scheme, _)| {
            scheme.eq_ignore_ascii_case(SCHEME) || scheme.eq_ignore_ascii_case(TLS_SCHEME)
        })
    }

    /// Parses `url`; `None` when it is not a sentinel URL at all (see [`is_sentinel`](Self::is_sentinel)).
    pub fn parse(url: &str) -> Option<Result<Self, SentinelUrlError>> {
        let (scheme, rest) = url.split_once("://")?;
        let tls = if scheme.eq_ignore_ascii_case(TLS_SCHEME) {
            true
        } else if scheme.eq_ignore_ascii_case(SCHEME) {
            false
        } else {
            return None;
        };
        Some(parse_rest(rest, tls))
    }
}

fn parse_rest(rest: &str, tls: bool) -> Result<SentinelUrl, SentinelUrlError> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // The userinfo ends at the last '@' (a password may hold '/' or '@' unencoded, as
    // `redact_url` assumes too).
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let sentinels = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(parse_address)
        .collect::<Result<Vec<_>, _>>()?;
    if sentinels.is_empty() {
        return Err(SentinelUrlError::NoSentinels);
    }
    let mut segments = path.split('/').filter(|segment| !segment.is_empty());
    let master_name = decode(segments.next().ok_or(SentinelUrlError::NoMasterName)?)?;
    let db = match segments.next() {
        None => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0 && segments.next().is_none())
            .ok_or_else(|| SentinelUrlError::BadDatabase(db.to_owned()))?,
    };
    let data = match userinfo {
        None => Credentials::default(),
        Some(userinfo) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            Credentials {
                username: (!user.is_empty()).then(|| decode(user)).transpose()?,
                password: password.map(decode).transpose()?,
            }
        }
    };
    let mut sentinel = Credentials::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "sentinel_username" => sentinel.username = Some(value.into_owned()),
            "sentinel_password" => sentinel.password = Some(value.into_owned()),
            other => return Err(SentinelUrlError::UnknownParameter(other.to_owned())),
        }
    }
    Ok(SentinelUrl {
        sentinels,
        master_name,
        db,
        tls,
        data,
        sentinel,
    })
}

fn parse_address(address: &str) -> Result<(String, u16), SentinelUrlError> {
    let bad = || SentinelUrlError::BadAddress(address.to_owned());
    // `[::1]:26379`, `[::1]`, `h:26379`, `h`.
    let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match address.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(bad)?,
    };
    Ok((host.to_owned(), port))
}

fn decode(text: &str) -> Result<String, SentinelUrlError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| SentinelUrlError::BadEncoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SentinelUrl, SentinelUrlError> {
        SentinelUrl::parse(url).expect("a sentinel URL")
    }

    #[test]
    fn sentinels_master_and_database() {
        let url = parse("redis+sentinel://h1:26379,10.0.0.2:26380,h3/notify/2").unwrap();
        assert_eq!(
            url.sentinels,
            vec![
                ("h1".to_owned(), 26379),
                ("10.0.0.2".to_owned(), 26380),
                ("h3".to_owned(), DEFAULT_PORT)
            ]
        );
        assert_eq!(url.master_name, "notify");
        assert_eq!(url.db, 2);
        assert!(!url.tls);
        assert_eq!(url.data, Credentials::default());
        assert_eq!(url.sentinel, Credentials::default());
        assert_eq!(
            parse("redis+sentinel://[::1]:1,[::2]/m").unwrap().sentinels[1],
            ("::2".to_owned(), DEFAULT_PORT)
        );
    }

    #[test]
    fn data_and_sentinel_credentials_are_apart() {
        let url = parse(
            "REDIS+SENTINELS://gw:p%40ss/w@h1,h2/mymaster?sentinel_password=s%26p&sentinel_username=watch",
        )
        .unwrap();
        assert!(url.tls);
        assert_eq!(url.data.username.as_deref(), Some("gw"));
        assert_eq!(url.data.password.as_deref(), Some("p@ss/w"));
        assert_eq!(url.sentinel.username.as_deref(), Some("watch"));
        assert_eq!(url.sentinel.password.as_deref(), Some("s&p"));
        let token = parse("redis+sentinel://:secret@h/m").unwrap();
        assert_eq!(token.data.username, None);
        assert_eq!(token.data.password.as_deref(), Some("secret"));
        assert!(!format!("{url:?}").contains("p@ss"));
    }

    #[test]
    fn bad_urls_name_their_fault() {
        assert_eq!(
            parse("redis+sentinel:///m"),
            Err(SentinelUrlError::NoSentinels)
        );
        assert_eq!(
            parse("redis+sentinel://h1,h2"),
            Err(SentinelUrlError::NoMasterName)
        );
        assert_eq!(
            parse("redis+sentinel://h1/"),
            Err(SentinelUrlError::NoMasterName)
        );
        assert_eq!(
            parse("redis+sentinel://h1:x/m"),
            Err(SentinelUrlError::BadAddress("h1:x".into()))
        );
        assert_eq!(
            parse("redis+sentinel://h1:0/m"),
            Err(SentinelUrlError::BadAddress("h1:0".into()))
        );
        assert_eq!(
            parse("redis+sentinel://h1/m/x"),
            Err(SentinelUrlError::BadDatabase("x".into()))
        );
        assert_eq!(
            parse("redis+sentinel://h1/m?password=x"),
            Err(SentinelUrlError::UnknownParameter("password".into()))
        );
        assert!(SentinelUrl::parse("redis://h:6379").is_none());
        assert!(SentinelUrl::is_sentinel("redis+sentinel://h/m"));
        assert!(!SentinelUrl::is_sentinel("rediss://h"));
    }
}
