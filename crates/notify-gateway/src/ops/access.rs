//! Who may see the ops page and its stream.
//!
//! - **Local requests** see it without a key: the client (the TCP peer, or the address a
//!   `--trusted-proxies` peer forwards) is a loopback address and the request passes the same
//!   checks as open publishing (no forwarding headers from an untrusted relay, a loopback
//!   `Host`, no foreign `Origin`), so a local reverse proxy or a DNS-rebinding page does not
//!   make a remote visitor local.
//! - **Everyone else** needs one of the `--api-key` keys (the same keys and the same
//!   constant-time check as `POST /api/publish`), sent as `Authorization: Bearer <key>` (curl,
//!   scripts) or in the `notify_ops_key` cookie. A browser gets the cookie by opening
//!   `/ops?key=<key>` once: the gateway answers with a redirect to `/ops` that sets it
//!   (`HttpOnly`, `SameSite=Strict`, `Path=/ops`), so the key leaves the address bar at once.
//!   Without configured keys a remote client is refused with 403; with keys, a missing or
//!   wrong key is 401. The key is never logged: refusals log the client and the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

use crate::admission::per_ip::ClientKey;
use crate::client_addr::TrustedProxies;
use crate::publish_access::{self, ApiKeys, PublishAccess};
use crate::wrong_keys::WrongKeys;

/// The cookie that carries the key for a browser.
pub const KEY_COOKIE: &str = "notify_ops_key";

/// Why a request may not see the ops page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Not local, and no key is configured that could let it in.
    #[error(
        "the ops page is open to local requests only; set --api-key to reach it from elsewhere"
    )]
    NoKeys,
    /// Not local, and the request carries no key.
    #[error("the ops page needs the API key: open /ops?key=<key> once, or send Authorization: Bearer <key>")]
    MissingKey,
    /// Not local, and the key matches none of the configured keys.
    #[error("wrong API key")]
    WrongKey,
    /// This address gave too many wrong keys lately ([`crate::wrong_keys`]): 429, and the
    /// wait for `Retry-After`.
    #[error("too many wrong API keys from this address; retry after the time in Retry-After")]
    TooManyWrongKeys(Duration),
}

impl Denial {
    /// 403 when no key could help, 429 after too many wrong keys, 401 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Denial::NoKeys => StatusCode::FORBIDDEN,
            Denial::MissingKey | Denial::WrongKey => StatusCode::UNAUTHORIZED,
            Denial::TooManyWrongKeys(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A short label for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Denial::NoKeys => "no_keys",
            Denial::MissingKey => "missing_key",
            Denial::WrongKey => "wrong_key",
            Denial::TooManyWrongKeys(_) => "too_many_wrong_keys",
        }
    }
}

/// How a request was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// A local request.
    Local,
    /// A valid key in the `Authorization` header or the cookie.
    Key,
}

/// The ops page's access rule, fixed at start.
#[derive(Debug, Clone)]
pub struct OpsAccess {
    keys: Option<ApiKeys>,
    trusted_proxies: TrustedProxies,
    wrong_keys: Arc<WrongKeys>,
}

impl OpsAccess {
    /// The rule for a gateway with `publish_access` (whose keys are the ops keys) and
    /// `trusted_proxies`; wrong keys count in `wrong_keys`, shared with `/api/publish`.
    pub fn new(
        publish_access: &PublishAccess,
        trusted_proxies: TrustedProxies,
        wrong_keys: Arc<WrongKeys>,
    ) -> Self {
        let keys = match publish_access {
            PublishAccess::Keys(keys) => Some(keys.clone()),
            PublishAccess::Open | PublishAccess::Disabled => None,
        };
        OpsAccess {
            keys,
            trusted_proxies,
            wrong_keys,
        }
    }

    /// Whether a request from `peer` with `headers` may see the page.
    pub fn check(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<Grant, Denial> {
        if self.is_local(peer, headers) {
            return Ok(Grant::Local);
        }
        let given = bearer_key(headers).or_else(|| cookie_key(headers));
        self.check_key(peer, headers, given.as_deref())
            .map(|()| Grant::Key)
    }

    /// Whether `key`, offered by a request from `peer` (`/ops?key=`), is one of the keys.
    pub fn check_offered(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        key: &str,
    ) -> Result<(), Denial> {
        self.check_key(peer, headers, Some(key))
    }

    /// The key check of a remote request, counting a wrong key against its address and
    /// refusing an address that gave too many.
    fn check_key(
        &self,
        peer: SocketAddr,
        headers: &HeaderMap,
        given: Option<&str>,
    ) -> Result<(), Denial> {
        let keys = self.keys.as_ref().ok_or(Denial::NoKeys)?;
        let guesser = ClientKey::of(self.trusted_proxies.client(peer, headers));
        if let Some(wait) = self.wrong_keys.refused(guesser) {
            return Err(Denial::TooManyWrongKeys(wait));
        }
        let given = given.ok_or(Denial::MissingKey)?;
        if keys.accepts(given) {
            Ok(())
        } else {
            self.wrong_keys.record(guesser);
            Err(Denial::WrongKey)
        }
    }

    fn is_local(&self, peer: SocketAddr, headers: &HeaderMap) -> bool {
        self.trusted_proxies.client(peer, headers).is_loopback()
            && publish_access::check_local_request(headers).is_ok()
    }
}

/// The `Set-Cookie` value that keeps `key` for the ops page.
pub fn key_cookie(key: &str, secure: bool) -> String {
    let encoded: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let secure = if secure { "; Secure" } else { "" };
    format!("{KEY_COOKIE}={encoded}; Path=/ops; HttpOnly; SameSite=Strict{secure}")
}

/// `Authorization: Bearer <key>` → the key.
fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_owned())
}

/// The key from the `notify_ops_key` cookie of any `Cookie` header.
fn cookie_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == KEY_COOKIE).then(|| {
                form_urlencoded::parse(format!("k={value}").as_bytes())
                    .next()
                    .map(|(_, key)| key.into_owned())
            })?
        })
        .filter(|key| !key.is_empty())
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

    const LOCAL: &str = "127.0.0.1:40000";
    const REMOTE: &str = "192.0.2.7:40000";

    fn keyed(proxies: &str) -> OpsAccess {
        let proxies = proxies
            .split(',')
            .filter(|text| !text.is_empty())
            .map(|text| crate::client_addr::parse_proxy_network(text).unwrap())
            .collect();
        OpsAccess::new(
            &PublishAccess::Keys(ApiKeys::new(["s3cret key;1"]).unwrap()),
            TrustedProxies::new(proxies),
            Arc::default(),
        )
    }

    #[test]
    fn a_remote_address_that_guesses_keys_is_refused_even_its_right_key() {
        let access = keyed("");
        let host = ("host", "127.0.0.1:8765");
        let remote = REMOTE.parse().unwrap();
        for guess in 0..crate::wrong_keys::WRONG_KEYS_PER_WINDOW {
            let wrong = format!("Bearer guess-{guess}");
            assert_eq!(
                access.check(remote, &headers(&[host, ("authorization", &wrong)])),
                Err(Denial::WrongKey)
            );
        }
        let right = headers(&[host, ("authorization", "Bearer s3cret key;1")]);
        assert!(matches!(
            access.check(remote, &right),
            Err(Denial::TooManyWrongKeys(wait)) if wait <= crate::wrong_keys::WINDOW
        ));
        assert!(matches!(
            access.check_offered(remote, &headers(&[host]), "s3cret key;1"),
            Err(Denial::TooManyWrongKeys(_))
        ));
        assert_eq!(
            access.check("192.0.2.8:40000".parse().unwrap(), &right),
            Ok(Grant::Key)
        );
        assert_eq!(
            access.check(LOCAL.parse().unwrap(), &headers(&[host])),
            Ok(Grant::Local)
        );
    }

    #[test]
    fn local_requests_need_no_key_and_remote_ones_do() {
        let access = keyed("");
        let host = ("host", "127.0.0.1:8765");
        assert_eq!(
            access.check(LOCAL.parse().unwrap(), &headers(&[host])),
            Ok(Grant::Local)
        );
        assert_eq!(
            access.check(REMOTE.parse().unwrap(), &headers(&[host])),
            Err(Denial::MissingKey)
        );
        // A relayed request from an untrusted local proxy is not local.
        assert_eq!(
            access.check(
                LOCAL.parse().unwrap(),
                &headers(&[host, ("x-forwarded-for", "203.0.113.9")])
            ),
            Err(Denial::MissingKey)
        );
        // DNS rebinding: a foreign Host on a loopback connection.
        assert_eq!(
            access.check(
                LOCAL.parse().unwrap(),
                &headers(&[("host", "evil.example")])
            ),
            Err(Denial::MissingKey)
        );
        assert_eq!(
            access.check(
                REMOTE.parse().unwrap(),
                &headers(&[host, ("authorization", "Bearer wrong")])
            ),
            Err(Denial::WrongKey)
        );
        assert_eq!(
            access.check(
                REMOTE.parse().unwrap(),
                &headers(&[host, ("authorization", "Bearer s3cret key;1")])
            ),
            Ok(Grant::Key)
        );
        let cookie = key_cookie("s3cret key;1", false);
        let value = cookie.split(';').next().unwrap();
        assert_eq!(
            access.check(
                REMOTE.parse().unwrap(),
                &headers(&[host, ("cookie", &format!("other=1; {value}"))])
            ),
            Ok(Grant::Key)
        );
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let access = keyed("127.0.0.1");
        let relayed = |client: &str| headers(&[("host", "127.0.0.1"), ("x-forwarded-for", client)]);
        assert_eq!(
            access.check(LOCAL.parse().unwrap(), &relayed("203.0.113.9")),
            Err(Denial::MissingKey)
        );
        let open = OpsAccess::new(
            &PublishAccess::Open,
            access.trusted_proxies.clone(),
            Arc::default(),
        );
        assert_eq!(
            open.check(LOCAL.parse().unwrap(), &relayed("203.0.113.9")),
            Err(Denial::NoKeys)
        );
        assert_eq!(Denial::NoKeys.status(), StatusCode::FORBIDDEN);
        assert_eq!(Denial::WrongKey.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_cookie_is_scoped_and_hidden_from_scripts() {
        let cookie = key_cookie("a b", true);
        assert_eq!(
            cookie,
            "notify_ops_key=a+b; Path=/ops; HttpOnly; SameSite=Strict; Secure"
        );
    }
}
