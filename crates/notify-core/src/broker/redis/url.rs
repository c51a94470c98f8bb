//! Redis URLs and their secrets: [`redact_url`] makes a URL fit for logs and error messages,
//! with every secret it may carry masked; [`suggest_redis_url`] the URL meant by an address
//! typed without its scheme; [`read_url_file`] reads a URL (password included)
//! from a file, so the password is neither on a command line nor in every child's environment.
//! [`split_seeds`] splits a cluster's comma-separated seed URLs.

use std::path::Path;

/// Why a Redis URL file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlFileError {
    /// The file cannot be read.
    #[error("cannot read the Redis URL file {path}: {source}")]
    Unreadable {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no URL.
    #[error("the Redis URL file {path} is empty")]
    Empty {
        /// The path given.
        path: String,
    },
}

/// Reads a Redis URL from `path`: the first line that is not blank or a `#` comment, trimmed
/// (a trailing newline from `echo` or a secrets mount does not become part of the password).
pub fn read_url_file(path: &Path) -> Result<String, UrlFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| UrlFileError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .ok_or(UrlFileError::Empty { path: shown })
}

/// The URL meant by a Redis address typed without a scheme (`127.0.0.1:6379` →
/// `redis://127.0.0.1:6379`), secrets masked; `None` when `url` has a scheme.
pub fn suggest_redis_url(url: &str) -> Option<String> {
    (!url.contains("://")).then(|| redact_url(&format!("redis://{}", url.trim())))
}

/// Query parameters that carry a password (`redis+unix:///run/redis.sock?pass=secret`).
const SECRET_PARAMETERS: [&str; 3] = ["pass", "password", "sentinel_password"];

/// The URLs of a comma-separated list (`redis://h1:7000,redis://h2:7001`, a cluster's seed
/// nodes), trimmed. A list is only split before a `redis://` or `rediss://`, so a comma inside
/// a password stays in its URL.
pub fn split_seeds(urls: &str) -> Vec<&str> {
    let mut seeds = Vec::new();
    let mut start = 0;
    for (comma, _) in urls.match_indices(',') {
        let next = urls[comma + 1..].trim_start();
        if next.starts_with("redis://") || next.starts_with("rediss://") {
            seeds.push(urls[start..comma].trim());
            start = comma + 1;
        }
    }
    seeds.push(urls[start..].trim());
    seeds.retain(|seed| !seed.is_empty());
    seeds
}

/// `redis://user:secret@host` → `redis://user:***@host`; each URL of a seed list
/// ([`split_seeds`]) on its own.
///
/// The userinfo is everything before the last `@` of the URL (before its query), so a password
/// that contains `/`, `:` or `@` is masked whole; a user name is kept, a lone token
/// (`redis://token@host`) is masked. `pass`/`password` query parameters are masked too. When in
/// doubt it masks more, never less.
pub fn redact_url(url: &str) -> String {
    let seeds = split_seeds(url);
    if seeds.len() > 1 {
        return seeds
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut redacted = redact_userinfo(head);
    if let Some(query) = query {
        redacted.push('?');
        redacted.push_str(&redact_query(query));
    }
    redacted
}

fn redact_userinfo(head: &str) -> String {
    let Some((scheme, rest)) = head.split_once("://") else {
        return head.to_owned();
    };
    let Some(at) = rest.rfind('@') else {
        return head.to_owned();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{masked}{}", &rest[at..])
}

fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_files_give_their_first_url_line() {
        let path = std::env::temp_dir().join(format!("notify-url-{}", std::process::id()));
        std::fs::write(&path, "# primary\n\n  redis://:p%2Fw@10.0.0.1:6379/0  \n").unwrap();
        assert_eq!(
            read_url_file(&path).unwrap(),
            "redis://:p%2Fw@10.0.0.1:6379/0"
        );
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(matches!(
            read_url_file(&path),
            Err(UrlFileError::Empty { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_url_file(&path),
            Err(UrlFileError::Unreadable { .. })
        ));
    }

    #[test]
    fn a_missing_scheme_gets_a_suggestion() {
        assert_eq!(
            suggest_redis_url("127.0.0.1:6379").as_deref(),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(
            suggest_redis_url(":secret@10.0.0.1:6379").as_deref(),
            Some("redis://:***@10.0.0.1:6379")
        );
        assert_eq!(suggest_redis_url("redis://h:1"), None);
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://default:s3cret@10.0.0.1:6379/0"),
            "redis://default:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@h/0"), "redis://:***@h/0");
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
        assert_eq!(redact_url("unix:/tmp/redis.sock"), "unix:/tmp/redis.sock");
    }

    #[test]
    fn passwords_with_slashes_and_at_signs_are_masked_whole() {
        assert_eq!(
            redact_url("redis://gw:pa/ss/word@h:6379/2"),
            "redis://gw:***@h:6379/2"
        );
        assert_eq!(redact_url("rediss://gw:p@ss@h"), "rediss://gw:***@h");
        assert_eq!(redact_url("redis://a/b@h"), "redis://***@h");
        assert_eq!(
            redact_url("http://user:s/e:c@example.com/x"),
            "http://user:***@example.com/x"
        );
        assert_eq!(
            redact_url("redis://:pa/ss@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redact_url("rediss://u:a@b/c@h/0"), "rediss://u:***@h/0");
    }

    #[test]
    fn an_at_sign_in_the_query_is_not_userinfo() {
        assert_eq!(
            redact_url("https://gw:8443/api?x=@"),
            "https://gw:8443/api?x=@"
        );
    }

    #[test]
    fn seed_lists_are_split_before_each_url_and_masked_one_by_one() {
        assert_eq!(
            split_seeds("redis://h1:7000, redis://h2:7001,rediss://:p,w@h3:7002"),
            [
                "redis://h1:7000",
                "redis://h2:7001",
                "rediss://:p,w@h3:7002"
            ]
        );
        assert_eq!(split_seeds("redis://:a,b@h:1"), ["redis://:a,b@h:1"]);
        assert_eq!(
            redact_url("redis://:s1@h1:7000,redis://u:s2@h2:7001"),
            "redis://:***@h1:7000,redis://u:***@h2:7001"
        );
    }

    #[test]
    fn password_parameters_are_masked() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redact_url("unix:///r.sock?Password=x&user=u"),
            "unix:///r.sock?Password=***&user=u"
        );
    }
}
