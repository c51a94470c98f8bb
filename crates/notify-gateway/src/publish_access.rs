//! Who may use `POST /api/publish`, and how a request proves it.
//!
//! Three modes, chosen once at start ([`PublishAccess::from_config`]):
//! - **Keys**: one or more bearer keys (several at once so a key can be rotated without a
//!   window where publishers fail). A request must carry `Authorization: Bearer <key>`. Keys are
//!   kept only as SHA-256 digests and compared in constant time against every configured key,
//!   so neither a key's bytes nor its length leak through timing. An empty or whitespace-only
//!   key is refused when the configuration is parsed; it can never mean "open".
//! - **Open**: no key, loopback listen address. Meant for a developer's machine, so it also
//!   refuses what a loopback address can still receive from elsewhere: requests relayed by a
//!   local reverse proxy (forwarding headers), pages of other sites (a non-loopback `Origin`),
//!   DNS-rebinding pages (a non-loopback `Host`).
//!
//! In every mode a body declared as anything but JSON is refused with 415: form-style bodies
//! are what a cross-site page can send without a CORS preflight.
//! - **Disabled**: no key on a non-loopback address.
//!
//! Every refusal has a [`Rejection`] reason: the caller counts it in
//! `notify_api_rejections_total{reason}` and logs it (rate-limited) with the peer address —
//! never with the key.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Access policy for `POST /api/publish`.
#[derive(Debug, Clone)]
pub enum PublishAccess {
    /// Anyone on this machine (loopback listen address, no key configured).
    Open,
    /// Requests with `Authorization: Bearer <key>` for one of the keys.
    Keys(ApiKeys),
    /// Nobody: non-loopback listen address and no key.
    Disabled,
}

/// Why a publish request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Publishing over HTTP is off (no key on a non-loopback address).
    #[error("publishing over HTTP is disabled on a non-loopback address without --api-key")]
    Disabled,
    /// Keys are required and the request has no `Authorization` header.
    #[error("missing API key: send Authorization: Bearer <key>")]
    MissingKey,
    /// The `Authorization` header is not `Bearer <key>` with a non-empty key.
    #[error("malformed Authorization header: send Authorization: Bearer <key>")]
    MalformedKey,
    /// The key matches none of the configured keys.
    #[error("wrong API key")]
    WrongKey,
    /// Open mode: the request was relayed (forwarding headers), so it may come from anywhere.
    #[error("open publishing accepts local requests only; this one carries forwarding headers (configure --api-key)")]
    Forwarded,
    /// Open mode: `Host` names something other than a loopback address (DNS rebinding).
    #[error("open publishing accepts local requests only; the Host header is not a loopback address (configure --api-key)")]
    ForeignHost,
    /// Open mode: `Origin` is a page of another site.
    #[error("open publishing refuses cross-site requests; the Origin is not a loopback origin (configure --api-key)")]
    ForeignOrigin,
    /// The body is declared as something other than JSON (415).
    #[error("the body must be sent as Content-Type: application/json")]
    NotJson,
    /// This address gave too many wrong keys lately ([`crate::wrong_keys`]); 429 with
    /// `Retry-After`.
    #[error("too many wrong API keys from this address; retry after the time in Retry-After")]
    TooManyWrongKeys,
}

impl Rejection {
    /// Label for `notify_api_rejections_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Disabled => "disabled",
            Rejection::MissingKey => "missing_key",
            Rejection::MalformedKey => "malformed_key",
            Rejection::WrongKey => "wrong_key",
            Rejection::Forwarded => "forwarded",
            Rejection::ForeignHost => "foreign_host",
            Rejection::ForeignOrigin => "foreign_origin",
            Rejection::NotJson => "not_json",
            Rejection::TooManyWrongKeys => "too_many_wrong_keys",
        }
    }

    /// Every reason, so the counters can be registered at 0 at start.
    pub const ALL: [Rejection; 9] = [
        Rejection::Disabled,
        Rejection::MissingKey,
        Rejection::MalformedKey,
        Rejection::WrongKey,
        Rejection::Forwarded,
        Rejection::ForeignHost,
        Rejection::ForeignOrigin,
        Rejection::NotJson,
        Rejection::TooManyWrongKeys,
    ];

    /// The HTTP status: 401 for key problems, 429 after too many wrong keys, 415 for a
    /// non-JSON body, 403 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::MissingKey | Rejection::MalformedKey | Rejection::WrongKey => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooManyWrongKeys => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// A configured key was empty or blank.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an API key must not be empty or whitespace (an empty key would not protect anything)")]
pub struct EmptyKey;

/// Validates one API key as given on the command line or in the environment.
pub fn parse_api_key(text: &str) -> Result<String, EmptyKey> {
    let key = text.trim();
    if key.is_empty() {
        return Err(EmptyKey);
    }
    Ok(key.to_owned())
}

/// Why an API key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the API key file {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no key.
    #[error("the API key file {path} holds no key (one key per line; blank lines and lines starting with # are ignored)")]
    NoKey {
        /// The path given.
        path: String,
    },
}

/// Reads an API key file: one key per line, blank lines and `#` comments ignored. Used as a
/// clap value parser, so a bad file is a usage error before anything starts.
pub fn read_key_file(path: &str) -> Result<Vec<String>, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if keys.is_empty() {
        return Err(KeyFileError::NoKey {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

/// The accepted bearer keys, as SHA-256 digests.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ApiKeys({} keys)", self.digests.len())
    }
}

impl ApiKeys {
    /// Keys from already validated, non-empty strings; `None` when there are none.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let digests: Vec<[u8; 32]> = keys.into_iter().map(digest).collect();
        (!digests.is_empty()).then_some(ApiKeys { digests })
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    /// Whether there are no keys (never true for a constructed value).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `given` is one of the keys. Compares against every key, in constant time.
    pub fn accepts(&self, given: &str) -> bool {
        let given = digest(given);
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&given)
            });
        matched.into()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl PublishAccess {
    /// The mode for `keys` (possibly none) on a gateway listening on `listen`.
    pub fn from_keys(keys: Option<ApiKeys>, listen: IpAddr) -> Self {
        match keys {
            Some(keys) => PublishAccess::Keys(keys),
            None if listen.is_loopback() => PublishAccess::Open,
            None => PublishAccess::Disabled,
        }
    }

    /// `"open"`, `"key"` or `"disabled"`, as `/api/info` reports it.
    pub fn name(&self) -> &'static str {
        match self {
            PublishAccess::Open => "open",
            PublishAccess::Keys(_) => "key",
            PublishAccess::Disabled => "disabled",
        }
    }

    /// Decides whether a request with `headers` may publish.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        match self {
            PublishAccess::Disabled => return Err(Rejection::Disabled),
            PublishAccess::Keys(keys) => {
                let value = headers
                    .get(header::AUTHORIZATION)
                    .ok_or(Rejection::MissingKey)?;
                let given = value
                    .to_str()
                    .ok()
                    .and_then(bearer_token)
                    .ok_or(Rejection::MalformedKey)?;
                if !keys.accepts(given) {
                    return Err(Rejection::WrongKey);
                }
                Ok(())
            }
            PublishAccess::Open => check_local_request(headers),
        }?;
        check_content_type(headers)
    }
}

/// `Bearer <token>` (scheme case-insensitive, RFC 7235) → the non-empty token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Headers a reverse proxy adds when it relays a request.
const FORWARDING_HEADERS: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "via",
];

/// The open mode's checks: the request must look like it came from this machine directly.
pub(crate) fn check_local_request(headers: &HeaderMap) -> Result<(), Rejection> {
    if FORWARDING_HEADERS
        .iter()
        .any(|name| headers.contains_key(*name))
    {
        return Err(Rejection::Forwarded);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    if !host.is_some_and(is_loopback_authority) {
        return Err(Rejection::ForeignHost);
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let local = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.split_once("://"))
            .is_some_and(|(scheme, authority)| {
                matches!(scheme, "http" | "https") && is_loopback_authority(authority)
            });
        if !local {
            return Err(Rejection::ForeignOrigin);
        }
    }
    Ok(())
}

/// Every mode: a body declared as anything but JSON is refused (a form post or a `text/plain`
/// body is what a cross-site page can send without a CORS preflight). No `Content-Type` at all
/// is accepted, for simple scripts.
fn check_content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let json = content_type
        .to_str()
        .ok()
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(Rejection::NotJson)
    }
}

/// `localhost[:port]`, `127.x.y.z[:port]`, `[::1][:port]`.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((host, after)) if after.is_empty() || after.starts_with(':') => host,
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => host,
            Some(_) => return false,
            None => authority,
        },
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
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

    #[test]
    fn empty_and_blank_keys_are_refused() {
        assert_eq!(parse_api_key(""), Err(EmptyKey));
        assert_eq!(parse_api_key("  \t"), Err(EmptyKey));
        assert_eq!(parse_api_key(" k1 ").unwrap(), "k1");
        assert!(ApiKeys::new([]).is_none());
    }

    #[test]
    fn keys_mode_needs_a_matching_bearer_key() {
        let access = PublishAccess::from_keys(ApiKeys::new(["old", "new"]), [0, 0, 0, 0].into());
        let check = |pairs: &[(&'static str, &str)]| access.check(&headers(pairs));
        assert_eq!(check(&[]), Err(Rejection::MissingKey));
        assert_eq!(
            check(&[("authorization", "Basic abc")]),
            Err(Rejection::MalformedKey)
        );
        assert_eq!(
            check(&[("authorization", "Bearer ")]),
            Err(Rejection::MalformedKey)
        );
        assert_eq!(
            check(&[("authorization", "Bearer")]),
            Err(Rejection::MalformedKey)
        );
        assert_eq!(
            check(&[("authorization", "Bearer olde")]),
            Err(Rejection::WrongKey)
        );
        assert_eq!(check(&[("authorization", "Bearer old")]), Ok(()));
        assert_eq!(check(&[("authorization", "bearer new")]), Ok(()));
        assert_eq!(
            check(&[
                ("authorization", "Bearer new"),
                ("content-type", "text/plain")
            ]),
            Err(Rejection::NotJson)
        );
        assert_eq!(
            Rejection::NotJson.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(Rejection::WrongKey.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn disabled_refuses_everything() {
        let access = PublishAccess::from_keys(None, [10, 0, 0, 1].into());
        assert_eq!(access.name(), "disabled");
        assert_eq!(
            access.check(&headers(&[("authorization", "Bearer x")])),
            Err(Rejection::Disabled)
        );
    }

    #[test]
    fn open_mode_accepts_only_direct_local_requests() {
        let access = PublishAccess::from_keys(None, [127, 0, 0, 1].into());
        assert_eq!(access.name(), "open");
        let check = |pairs: &[(&'static str, &str)]| access.check(&headers(pairs));
        assert_eq!(check(&[("host", "127.0.0.1:8765")]), Ok(()));
        assert_eq!(check(&[("host", "localhost")]), Ok(()));
        assert_eq!(
            check(&[
                ("host", "[::1]:8765"),
                ("origin", "http://localhost:8765"),
                ("content-type", "application/json; charset=utf-8"),
            ]),
            Ok(())
        );
        assert_eq!(check(&[]), Err(Rejection::ForeignHost));
        assert_eq!(
            check(&[("host", "evil.example:8765")]),
            Err(Rejection::ForeignHost)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1.evil.example")]),
            Err(Rejection::ForeignHost)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1"), ("x-forwarded-for", "203.0.113.9")]),
            Err(Rejection::Forwarded)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1"), ("forwarded", "for=203.0.113.9")]),
            Err(Rejection::Forwarded)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1"), ("origin", "https://evil.example")]),
            Err(Rejection::ForeignOrigin)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1"), ("origin", "null")]),
            Err(Rejection::ForeignOrigin)
        );
        assert_eq!(
            check(&[("host", "127.0.0.1"), ("content-type", "text/plain")]),
            Err(Rejection::NotJson)
        );
    }

    #[test]
    fn key_files_hold_one_key_per_line() {
        let path = std::env::temp_dir().join(format!("notify-keys-{}", std::process::id()));
        std::fs::write(&path, "# rotated 2026-11\nold\n\n  new  \n").unwrap();
        let keys = read_key_file(path.to_str().unwrap()).unwrap();
        assert_eq!(keys, ["old", "new"]);
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(matches!(
            read_key_file(path.to_str().unwrap()),
            Err(KeyFileError::NoKey { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_key_file(path.to_str().unwrap()),
            Err(KeyFileError::Unreadable { .. })
        ));
    }
}
